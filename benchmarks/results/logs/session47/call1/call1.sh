set -u
# session 47 call 1: keep the first half of a stripped Triton 3.9.0 (bench_s47t1/part) in /tmp for
# call 2, then the full suite on the package (Triton 3.6, the machine's own).
mkdir -p $OUT/x /tmp/s47t1 && cp bench_s47t1/part /tmp/s47t1/part && sha256sum /tmp/s47t1/part
TEST_TIMEOUT=450 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
cat $OUT/x/tests-*.log > $OUT/x/tests-all.log; rm -f $OUT/x/tests-[0-9].log
echo "suite $SECONDS s"
head -5 $OUT/x/suite.log; grep -h "passed\|failed" $OUT/x/tests-all.log | tail -6
