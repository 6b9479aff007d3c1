set -u
mkdir -p $OUT/x
# session 44 call 11: the full suite on the final main (GPU 0, both visible), and layer.py with its
# grouped-GEMM probe at two shapes (GPU 1)
(TEST_TIMEOUT=430 OUT=/tmp/s bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1; echo "suite rc $? $SECONDS" >> $OUT/x/suite.log
 for f in /tmp/s/tests-*.log; do echo "== $f"; cat $f; done > $OUT/x/tests.log) &
suite=$!
sleep 25  # device_run.sh installs the package first
cd benchmarks
CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 150 python3 layer.py --shapes 4096:128:8:2048:768 16384:64:6:2048:1408 --out /tmp/layer > $OUT/x/layer.log 2>&1
echo "layer rc $? $SECONDS"
cd ..
wait $suite
tail -2 $OUT/x/suite.log
grep -h -E "passed|failed|FAILED|ERROR" $OUT/x/tests.log | head -20
grep -v -i warn $OUT/x/layer.log
