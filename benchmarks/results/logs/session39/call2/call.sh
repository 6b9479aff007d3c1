set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 39: the full suite on 5356049, the final package (call 1 plus the import message and the
# map kernel's store order for Triton 3.7+; on this Triton 3.6 its SASS is unchanged;
# the sm_90 SASS tests run here too)
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log $OUT/x/tests-*.log | head -30
