set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
git log --oneline -1 2>/dev/null || true
# host cost of one Triton launch: JITFunction's path against the compiled kernel called directly
python3 benchmarks/.call110.py > $OUT/x/launch_cost.log 2>&1; echo "launch cost rc $?"; cat $OUT/x/launch_cost.log
cp benchmarks/.call110.py $OUT/x/launch_cost.py.txt
# the full suite on the final package (two devices: the two-device tests run)
TEST_TIMEOUT=360 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -20
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
