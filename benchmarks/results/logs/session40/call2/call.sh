set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 40 call 2: the full suite on 11fc0ab, the final package (call 1's kernels; the tests since:
# the Hessian test's device, the autodiff property test, elementwise bounds); then the property
# tests with 400 fresh random examples each on the GPU's kernels
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -30
export PYTHONPATH=/tmp/site
MOE_UTILS_HYPOTHESIS_EXAMPLES=400 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_properties.py > $OUT/x/properties400.log 2>&1
echo "properties rc $? $SECONDS"
grep -E "^E  |passed|failed" $OUT/x/properties400.log | head -20
