set -u
mkdir -p $OUT/x
# session 44 call 1: the full suite on main 36f3153 (GPU 0, both visible: the seed Functions' traced
# constants, 3751cc0, have run on the CPU only), and beside it on GPU 1 NOTES Next 13: past 4096 rows
# of partial sums, one pass against splits of 256 (shipped), 1024, 4096 rows
(TEST_TIMEOUT=430 OUT=/tmp/s bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1; echo "suite rc $? $SECONDS" >> $OUT/x/suite.log
 for f in /tmp/s/tests-*.log; do echo "== $f"; cat $f; done > $OUT/x/tests.log) &
suite=$!
sleep 25  # device_run.sh installs the package first
cd benchmarks
export CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1
plans="256:4:0:3 256:4:256:3 256:4:1024:3 256:4:4096:3"
timeout 100 python3 bias.py --partials --parts 4096 8192 16384 --sum-plan $plans > $OUT/x/partials.log 2>&1
echo "partials rc $? $SECONDS"
common="--no-reference --no-pytorch-sum --train-weights --torch-sum --sum-plan $plans --subsets input+bias bias --out /tmp/bias"
timeout 150 python3 bias.py $common --forms swiglu --rows 524288 --width 768 2880 > $OUT/x/bias_swiglu.log 2>&1
echo "swiglu rc $? $SECONDS"
timeout 150 python3 bias.py $common --forms quick_geglu_clamp --rows 262144 --width 768 2880 > $OUT/x/bias_clamp.log 2>&1
echo "clamp rc $? $SECONDS"
cd ..
wait $suite
tail -2 $OUT/x/suite.log
grep -h -E "passed|failed|FAILED|ERROR" $OUT/x/tests.log | head -20
