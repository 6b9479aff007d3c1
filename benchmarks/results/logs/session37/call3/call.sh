set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 37: the full suite on e0dbd23 (weights-only tiles, final rule), then the A/B of that
# rule against e317d36 (bench_s37a), three processes each
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -30
cd benchmarks
timeout 230 python3 ab.py --old ../bench_s37a --out $OUT/x/ab --runs 3 --timeout 70 -- --only wonly \
  --act-shapes 16384x1408 65536x1408 16384x2880 65536x2880 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
grep "d_w alone" $OUT/x/ab.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
