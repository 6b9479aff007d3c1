set -u
# session 48 call 4: Triton 3.9.0 (stripped: libtriton.so without its symbols, no AMD codegen, no
# CUPTI or Blackwell ptxas; its own sm_90 ptxas) assembled from call 3's half and this call's, on
# PYTHONPATH before the machine's Triton 3.6; then every test file but test_compile.py (torch
# 2.11's Inductor is not made for Triton 3.9) and test_sm90_compile.py (run under 3.9 on the CPU).
mkdir -p $OUT/x
[ -f /tmp/s47t1/part ] || { echo "no /tmp/s47t1/part: a fresh machine"; exit 3; }
bash benchmarks/triton_parts.sh join /tmp/t39 /tmp/s47t1/part bench_s47t2/part || exit 4
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
export PYTHONPATH=/tmp/t39
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, triton.__file__)"
groups=(
  "tests/test_activations.py::test_weighted_impl_matches_float64 tests/test_properties.py tests/test_user_spec.py tests/test_launch_options.py tests/test_symbolic.py"
  "tests/test_activations.py --deselect tests/test_activations.py::test_weighted_impl_matches_float64"
  "tests/test_routing.py tests/test_layer.py tests/test_aux_loss.py tests/test_gpu.py tests/test_higher_order.py tests/test_tensor_subclasses.py tests/test_func_transforms.py"
)
pids=(); i=0
for group in "${groups[@]}"; do
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 480 python3 -m pytest $group -q -p no:cacheprovider >"$OUT/x/t39-$i.log" 2>&1 &
  pids+=($!); i=$((i + 1))
done
for pid in "${pids[@]}"; do wait "$pid"; echo "rc $?"; done
cat $OUT/x/t39-*.log > $OUT/x/t39-all.log; rm -f $OUT/x/t39-[0-9].log
echo "tests $SECONDS s"
grep -h -E "passed|failed|^(FAILED|ERROR)" $OUT/x/t39-all.log | head -40
