#!/usr/bin/env bash
# Every GPU check and benchmark of the project, in two parts that each fit one device call (600 s).
#
#   bash benchmarks/gpu_session.sh 1   # gpu tests, accuracy harness, 1M-cell embed    (~350 s on an H100)
#   bash benchmarks/gpu_session.sh 2   # FM vs linear, throughput, 1M classification, profile (~450 s)
#
# Run from the repository root on the GPU machine, after the preamble of benchmarks/README.md
# ("Reproducing the GPU runs": wheels in .whl/, shared data in .data/). Results go to $OUT (or
# ./gpu_out): JSON and PNG per benchmark, and session.log with the output of every step. A step
# that fails or times out is logged and the next one runs. Times are the H100 wall times of the
# last session that ran them (the 1M-cell atlas now generates in a fraction of the ~100 s it took
# then).
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"

step() {  # step TIMEOUT_S NAME COMMAND...
  local limit=$1 name=$2
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  tail -n 3 "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import cupy, numpy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'numpy', numpy.__version__)"
} >>"$LOG" 2>&1

case "${1:-}" in
  1)
    step 120 gpu-tests python3 -m pytest -m gpu -q -p no:cacheprovider
    step 150 accuracy python3 benchmarks/accuracy.py --device cuda --skip-reference --repeats 1 --out "$OUT/accuracy_cuda.json"
    step 260 embed-1m python3 benchmarks/embed_cpu.py --device cuda --gpu-cells 1000000 --skip-peers --quick --out "$OUT/embed_cuda.json"
    ;;
  2)
    step 150 fm-vs-linear python3 benchmarks/fm_vs_linear.py --device cuda --quick --n-cells 200000 --out "$OUT/fm_vs_linear_cuda.json"
    step 120 throughput python3 benchmarks/throughput.py --device cuda --sizes 100000 300000 --out "$OUT/throughput_cuda.json"
    step 200 classify-1m python3 benchmarks/classify_synthetic.py --device cuda --n-cells 1000000 --out "$OUT/classify_synthetic_cuda.json"
    step 90 gpu-profile python3 benchmarks/gpu_profile.py --n-cells 200000 --out "$OUT/gpu_profile_cuda.json"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh 1|2" >&2
    exit 2
    ;;
esac
