set -u
mkdir -p $OUT/x
# session 45 call 7: the full suite on the final package (the op-level autograd without materialized
# zeros too), one H200; then layer.py --kernels, bf16 and fp8 store (the record without the fill)
TEST_TIMEOUT=500 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
tail -20 $OUT/x/suite.log
cat $OUT/x/tests-*.log > $OUT/x/tests-all.log; rm -f $OUT/x/tests-[0-9].log
cd benchmarks
PYTHONUNBUFFERED=1 timeout 100 python3 layer.py --kernels --out $OUT/x > $OUT/x/kernels.log 2>&1
echo "kernels rc $? $SECONDS"
PYTHONUNBUFFERED=1 timeout 80 python3 layer.py --kernels --fp8-input-store --out $OUT/x > $OUT/x/kernels-fp8.log 2>&1
echo "kernels fp8 rc $? $SECONDS"
grep -e Fill -e 'all three' $OUT/x/kernels.log $OUT/x/kernels-fp8.log
