set -u
# session 51 call 1: the first half of Triton 3.9 into /tmp (call 2 joins it); the full suite on
# HEAD (9a64e06: the Functions' DTensor path inline, host code only), Triton 3.6.
mkdir -p $OUT/x /tmp/s51t1
cp bench_s51t1/part /tmp/s51t1/part
TEST_TIMEOUT=480 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "tests rc $? $SECONDS s"
cat $OUT/x/tests-*.log > $OUT/x/tests-all.log; rm -f $OUT/x/tests-[0-9].log
head -4 $OUT/x/suite.log; grep -h -E "passed|failed|^(FAILED|ERROR)" $OUT/x/tests-all.log | tail -12
