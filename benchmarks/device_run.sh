#!/usr/bin/env bash
# One call on the device tool's GPU machine: install (no network there; wheels travel in .whl/),
# then the given steps: "tests", "bench", "bench-quick". Logs and results go to $OUT.
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
status=0
for step in "$@"; do
  case "$step" in
    tests) PYTHONUNBUFFERED=1 timeout "${TEST_TIMEOUT:-540}" python3 -m pytest tests -q -p no:cacheprovider \
             -o cache_dir=/tmp/pytest_cache 2>&1 | tee "$out/tests.log" | tail -${TEST_TAIL:-25} || status=1 ;;
    bench) PYTHONUNBUFFERED=1 python3 benchmarks/bench.py --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" | tail -5 || status=1 ;;
    bench-quick) PYTHONUNBUFFERED=1 python3 benchmarks/bench.py --quick --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" || status=1 ;;
  esac
done
exit $status
