#!/usr/bin/env bash
# One call on the device tool's GPU machine: install (no network there; wheels travel in .whl/),
# then the given steps: "tests", "bench", "bench-quick". Logs and results go to $OUT.
#   tests: the whole suite, in four pytest processes at once (Triton compiles on 16 cores; the GPU
#          is shared), each with its own log; the step fails if any of them does.
#   env: TEST_TIMEOUT (s, default 480), BENCH_ARGS (extra arguments of bench.py)
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
status=0
run_tests() {
  local groups=(
    "tests/test_activations.py::test_weighted_impl_matches_float64 tests/test_compile.py"
    "tests/test_activations.py --deselect tests/test_activations.py::test_weighted_impl_matches_float64"
    "tests/test_properties.py tests/test_user_spec.py tests/test_symbolic.py tests/test_generated_up_to_date.py tests/test_sm90_compile.py tests/test_launch_options.py"
    "tests/test_routing.py tests/test_layer.py tests/test_aux_loss.py tests/test_gpu.py tests/test_higher_order.py tests/test_tensor_subclasses.py tests/test_func_transforms.py"
  )
  # Every test file in some group: a new file left out would never run on the GPU.
  local f
  for f in tests/test_*.py; do
    case " ${groups[*]} " in
      *" $f "* | *" $f::"*) ;;
      *) echo "device_run.sh: $f is in no test group; add it to one" >&2; return 1 ;;
    esac
  done
  local pids=() i=0
  for group in "${groups[@]}"; do
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 timeout "${TEST_TIMEOUT:-480}" python3 -m pytest $group -q -p no:cacheprovider \
      -o cache_dir=/tmp/pytest_cache >"$out/tests-$i.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
  local rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  for log in "$out"/tests-*.log; do echo "== $log"; tail -n 4 "$log"; done
  grep -h -E "^(FAILED|ERROR)" "$out"/tests-*.log | head -40
  return $rc
}
for step in "$@"; do
  case "$step" in
    tests) run_tests || status=1 ;;
    bench) PYTHONUNBUFFERED=1 python3 benchmarks/bench.py --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" | tail -5 || status=1 ;;
    bench-quick) PYTHONUNBUFFERED=1 python3 benchmarks/bench.py --quick --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" || status=1 ;;
  esac
done
exit $status
