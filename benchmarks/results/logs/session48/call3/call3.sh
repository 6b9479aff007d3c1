set -u
# session 48 call 3: the first half of Triton 3.9 into /tmp for call 4; then the full suite on
# 4307292 (the fp8 forward's weight load, the light fp8 backward's wide-step warps by Triton
# version) under the machine's Triton 3.6.
mkdir -p $OUT/x /tmp/s47t1 && cp bench_s47t1/part /tmp/s47t1/part && sha256sum /tmp/s47t1/part
TEST_TIMEOUT=450 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
cat $OUT/x/tests-*.log > $OUT/x/tests-all.log; rm -f $OUT/x/tests-[0-9].log
echo "suite $SECONDS s"
head -5 $OUT/x/suite.log; grep -h -E "passed|failed|^(FAILED|ERROR)" $OUT/x/tests-all.log | tail -12
