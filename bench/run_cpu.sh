#!/usr/bin/env bash
# The CPU runs behind every CPU figure in README.md / bench/README.md, then the re-rendered tables.
#   bench/run_cpu.sh VAR_CHECKOUT LLAMAGEN_CHECKOUT
# The checkouts are FoundationVision/VAR and FoundationVision/LlamaGen, read from the given folders and
# never committed. Run it on an otherwise idle machine: the 2-thread rows mean nothing under load.
set -euo pipefail
var_src=${1:?usage: bench/run_cpu.sh VAR_CHECKOUT LLAMAGEN_CHECKOUT}
lg_src=${2:?usage: bench/run_cpu.sh VAR_CHECKOUT LLAMAGEN_CHECKOUT}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
python var_generate.py --reference-src "$var_src" --configs fixture d16 --batch 1 --threads 1 2 \
  --dtypes float32 bfloat16 --dtypes-large float32 bfloat16 --repeats 7 --repeats-large 2 --warmup-large 1 \
  --out results/var_cpu.json > /dev/null
python llamagen_generate.py --reference-src "$lg_src" --models fixture gpt-b --batch 1 --threads 1 2 \
  --dtypes float32 bfloat16 --compile off on --iters 3 --warmup 1 --out results/llamagen_cpu.json > /dev/null
python linear_kernels.py --rows 1 2 3 4 16 40 64 --out results/linear_kernels.json > /dev/null
python quantize_speed.py --threads 1 --repeats 9 --out results/quantize_speed.json > /dev/null
python emoji_generate.py --threads 1 --repeats 10 --out results/emoji_generate.json > /dev/null
python report.py --write
