#!/usr/bin/env bash
# The CUDA checks in one go (issue 13), for a GPU machine: the port's CUDA
# agreement tests, the host-sync count of a three-head call, then the CUDA
# benchmark; prints a summary. Well under 6 minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "gpu_check: no CUDA device visible to torch"; exit 2; }
mkdir -p out
timeout 300 $PY -m pytest -q -p no:cacheprovider -k "cuda" tests/test_torch_syncs.py tests/test_torch_agreement.py \
  > out/gpu_tests.log 2>&1
tests_rc=$?
timeout 150 $PY benchmarks/bench_yolov4.py --against none --repeats 9 --json out/bench_gpu.json > out/gpu_bench.log 2>&1
bench_rc=$?
echo "== CUDA tests (rc $tests_rc) =="; tail -n 15 out/gpu_tests.log
echo "== benchmark (rc $bench_rc) =="; cat out/gpu_bench.log | tail -n 15
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
