set -u
# session 47 call 4: keep the first half of the stripped Triton 3.9.0 in /tmp for call 5, then the
# full suite on the package with the libdevice-aware erf (Triton 3.6, the machine's own).
mkdir -p $OUT/x /tmp/s47t1 && cp bench_s47t1/part /tmp/s47t1/part && sha256sum /tmp/s47t1/part
TEST_TIMEOUT=450 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
cat $OUT/x/tests-*.log > $OUT/x/tests-all.log; rm -f $OUT/x/tests-[0-9].log
echo "suite $SECONDS s"
head -5 $OUT/x/suite.log; grep -h "passed\|failed" $OUT/x/tests-all.log | tail -6
