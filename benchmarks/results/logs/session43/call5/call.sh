set -u
mkdir -p $OUT/x
# session 43 call 5: the full suite on the pipelined column_sums candidate (GPU 0, both visible), and
# beside it on GPU 1 the plans: the partials alone, then fwd+bwd at 1024 and 2048 rows of partials
(TEST_TIMEOUT=430 OUT=/tmp/s bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1; echo "suite rc $? $SECONDS" >> $OUT/x/suite.log
 for f in /tmp/s/tests-*.log; do echo "== $f"; cat $f; done > $OUT/x/tests.log) &  # one file: at most 8 come back
suite=$!
sleep 25  # device_run.sh installs the package first
cd benchmarks
export CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1
plans="512:8:0 128:4:256 256:4:0:3 512:8:0:3 512:8:0:2 128:4:0:4 128:4:256:3 256:4:512:3"
common="--no-reference --no-pytorch-sum --train-weights --torch-sum --sum-plan $plans --subsets input+bias bias --out /tmp/bias"
timeout 100 python3 bias.py --partials --sum-plan $plans > $OUT/x/partials.log 2>&1
echo "partials rc $? $SECONDS"
timeout 200 python3 bias.py $common --forms swiglu --rows 4096 16384 65536 131072 --width 768 2880 7168 > $OUT/x/bias_swiglu.log 2>&1
echo "swiglu rc $? $SECONDS"
timeout 150 python3 bias.py $common --forms quick_geglu_clamp --rows 4096 16384 65536 --width 768 2880 7168 > $OUT/x/bias_clamp.log 2>&1
echo "clamp rc $? $SECONDS"
cd ..
wait $suite
tail -2 $OUT/x/suite.log
grep -h -E "passed|failed|FAILED|ERROR" $OUT/x/tests.log | head -20
