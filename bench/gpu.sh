#!/usr/bin/env bash
# The GPU benchmark in one go (fits an 8-minute slot): VAR d16/d30 and LlamaGen B/XL, batch 1 and 16,
# bf16 and int8, ours vs the official code, ours against the memory-bandwidth bound; then serving (the
# model cache switching VAR-d30 and LlamaGen-XL under a memory cap that holds one, request batching on
# the device); then the raster decode strategies (plain / sjd / gsd wall time on emoji-raster and GPT-B).
# Each part has its own time limit; a part that fails or runs out does not stop the next (exit status 1).
#   bench/gpu.sh OUT_DIR [--var-src DIR] [--llamagen-src DIR]
#       -> OUT_DIR/gpu.json, OUT_DIR/gpu_serving.json, OUT_DIR/decode_gpu.json
#   bench/gpu.sh OUT_DIR --smoke                                  -> the same code paths on the CPU, < 1 minute
# The official checkouts are read from the given folders, never committed.
# Needs only torch, numpy, pillow and safetensors: where arnodes is not installed (a bare GPU machine), the
# checkout is put on PYTHONPATH under its package name. $PYTHON picks the interpreter (default python3).
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR [--smoke] [--var-src DIR] [--llamagen-src DIR]}
shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
if ! "$py" -c "import arnodes" 2>/dev/null; then
  link_dir=$(mktemp -d)
  trap 'rm -rf "$link_dir"' EXIT
  ln -s "$(dirname "$here")" "$link_dir/arnodes"
  export PYTHONPATH="$link_dir${PYTHONPATH:+:$PYTHONPATH}"
fi
smoke=0
for arg in "$@"; do [[ $arg == --smoke ]] && smoke=1; done
status=0
part() {  # part SECONDS COMMAND...: run it under a time limit; note a failure and go on
  local secs=$1; shift
  timeout "$secs" "$@" || { echo "gpu.sh: $(basename "$2") failed or ran past ${secs} s" >&2; status=1; }
}
part 300 "$py" "$here/gpu_bench.py" --out "$out" --budget-s 240 "$@"  # jobs in priority order, JSON after each
if (( smoke )); then
  part 120 "$py" "$here/gpu_serving.py" --out "$out" --smoke
  part 60 "$py" "$here/decode_strategies.py" --models fixture --seeds 1 --out "$out/decode_smoke.json" >/dev/null
else
  part 120 "$py" "$here/gpu_serving.py" --out "$out"
  part 60 "$py" "$here/decode_strategies.py" --device cuda --dtype bfloat16 --models emoji-raster gpt-b \
    --seeds 1 --out "$out/decode_gpu.json" >/dev/null
fi
exit $status
