#!/usr/bin/env bash
# The GPU benchmark in one go (fits an 8-minute slot): VAR d16/d30 and LlamaGen B/XL, batch 1 and 16,
# bf16 and int8, ours vs the official code, ours against the memory-bandwidth bound.
#   bench/gpu.sh OUT_DIR [--var-src DIR] [--llamagen-src DIR]   -> OUT_DIR/gpu.json
#   bench/gpu.sh OUT_DIR --smoke                                  -> the same code paths on the CPU, < 1 minute
# The official checkouts are read from the given folders, never committed.
set -euo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR [--smoke] [--var-src DIR] [--llamagen-src DIR]}
shift
here=$(cd "$(dirname "$0")" && pwd)
exec timeout 470 python "$here/gpu_bench.py" --out "$out" "$@"
