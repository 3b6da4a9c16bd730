#!/usr/bin/env bash
# The GPU benchmark in one go (fits an 8-minute slot): VAR d16/d30 and LlamaGen B/XL, batch 1 and 16,
# bf16 and int8, ours vs the official code, ours against the memory-bandwidth bound; then the raster
# decode strategies (plain / sjd / gsd wall time on emoji-raster and GPT-B).
#   bench/gpu.sh OUT_DIR [--var-src DIR] [--llamagen-src DIR]   -> OUT_DIR/gpu.json, OUT_DIR/decode_gpu.json
#   bench/gpu.sh OUT_DIR --smoke                                  -> the same code paths on the CPU, < 1 minute
# The official checkouts are read from the given folders, never committed.
set -euo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR [--smoke] [--var-src DIR] [--llamagen-src DIR]}
shift
here=$(cd "$(dirname "$0")" && pwd)
smoke=0
for arg in "$@"; do [[ $arg == --smoke ]] && smoke=1; done
timeout 400 python "$here/gpu_bench.py" --out "$out" --budget-s 330 "$@"  # jobs in priority order
if (( smoke )); then
  timeout 70 python "$here/decode_strategies.py" --models fixture --seeds 1 --out "$out/decode_smoke.json" >/dev/null
else
  timeout 70 python "$here/decode_strategies.py" --device cuda --dtype bfloat16 --models emoji-raster gpt-b \
    --seeds 1 --out "$out/decode_gpu.json" >/dev/null
fi
