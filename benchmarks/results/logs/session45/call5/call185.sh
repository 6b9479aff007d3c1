set -u
mkdir -p $OUT/x
# session 45 call 5: the full suite on the permute backward without the plan's materialized zero
# gradient (set_materialize_grads(False)), one H200
TEST_TIMEOUT=560 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
cat $OUT/x/suite.log | tail -20
cat $OUT/x/tests-*.log > $OUT/x/tests-all.log; rm -f $OUT/x/tests-[0-9].log
