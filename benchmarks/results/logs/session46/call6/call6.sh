set -u
mkdir -p $OUT/x
# session 46 call 6: A/B of the fp8 copy's clamp as tl.clamp (new) against the two tl.where (bench_s46a,
# old), experiments.py --only ops, activations only, two processes each; then the full suite.
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
PYTHONUNBUFFERED=1 timeout 250 python3 ab.py --old ../bench_s46a --out $OUT/x/ab --runs 2 --timeout 100 -- --only ops --no-routing --act-names swiglu quick_geglu --act-shapes 16384x768 16384x2880 65536x2048 65536x2880 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
cd ..
TEST_TIMEOUT=330 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
cat $OUT/x/tests-*.log > $OUT/x/tests-all.log; rm -f $OUT/x/tests-[0-9].log
echo "suite $SECONDS"
tail -20 $OUT/x/ab.log; grep -h "passed\|failed" $OUT/x/tests-all.log | tail -6
