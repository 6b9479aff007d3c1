set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
# A/B of the routing ops against the package before this session (bench_s33a): the gather now has
# CHECK_EXPERTS (False on this path: unpermute is given routing_map) and E = 0 as before.
cd benchmarks
timeout 240 python3 ab.py --old ../bench_s33a --out $OUT/x/ab --runs 2 --timeout 110 -- --only ops \
  --forms-shapes 4096x256x2x2048 65536x64x2x2048 --act-names swiglu --act-shapes 16384x768 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
tail -16 $OUT/x/ab.log
cd ..
TEST_TIMEOUT=330 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -20
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
