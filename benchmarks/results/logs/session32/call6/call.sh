set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
TEST_TIMEOUT=400 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
tail -22 $OUT/x/suite.log | grep -E "passed|failed|FAILED|ERROR"
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
