set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 36: the full suite on the no-d_x tiles, then the weights-only backward twice (two processes)
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -30
for i in 1 2; do
  python3 benchmarks/experiments.py --only wonly --out $OUT/x --tag -p$i > $OUT/x/wonly-$i.log 2>&1
  echo "wonly $i rc $? $SECONDS"
done
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
