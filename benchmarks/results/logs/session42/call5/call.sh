set -u
mkdir -p $OUT/x
# session 42 call 5: the full suite on the final package
TEST_TIMEOUT=430 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
tail -8 $OUT/x/suite.log
