set -u
# session 51 call 6: Triton 3.9 joined (call 5 carried the first half). ab.py of the working tree
# against bench_s51a for clamped SwiGLU (heavy math, its clamp symbolic: no clamp_value, so the
# new rule gives it 2 warps), then every test file but test_compile and test_sm90_compile under 3.9.
mkdir -p $OUT/x
[ -f /tmp/s51t1/part ] || { echo "no /tmp/s51t1/part: a fresh machine"; exit 3; }
bash benchmarks/triton_parts.sh join /tmp/t39 /tmp/s51t1/part bench_s51t2/part || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 5
export PYTHONPATH=/tmp/t39:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
(cd benchmarks && PYTHONUNBUFFERED=1 timeout 100 python3 ab.py --old ../bench_s51a --out $OUT/x/ab_cs --runs 2 --timeout 45 -- --only ops --no-routing --act-names clamped_swiglu --act-shapes 16384x2880 16384x7168 65536x7168 > $OUT/x/ab_cs.log 2>&1; echo "ab_cs rc $? $SECONDS s")
groups=(
  "tests/test_activations.py::test_weighted_impl_matches_float64 tests/test_properties.py tests/test_user_spec.py tests/test_launch_options.py tests/test_symbolic.py"
  "tests/test_activations.py --deselect tests/test_activations.py::test_weighted_impl_matches_float64"
  "tests/test_routing.py tests/test_layer.py tests/test_aux_loss.py tests/test_gpu.py tests/test_higher_order.py tests/test_tensor_subclasses.py tests/test_func_transforms.py"
)
pids=(); i=0
for group in "${groups[@]}"; do
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 400 python3 -m pytest $group -q -p no:cacheprovider >"$OUT/x/t39-$i.log" 2>&1 &
  pids+=($!); i=$((i + 1))
done
for pid in "${pids[@]}"; do wait "$pid"; echo "rc $?"; done
cat $OUT/x/t39-*.log > $OUT/x/t39-all.log; rm -f $OUT/x/t39-[0-9].log
(cd $OUT/x && tar czf ab_cs.tgz ab_cs && rm -rf ab_cs)
echo "tests $SECONDS s"
grep -h "bwd_fp8" $OUT/x/ab_cs.log
grep -h -E "passed|failed|^(FAILED|ERROR)" $OUT/x/t39-all.log | head -20
