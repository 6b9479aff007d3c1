set -u
mkdir -p $OUT/x
# session 43 call 1: the full suite with column_sums' two passes (GPU 0, both visible), and beside it
# on GPU 1 the partials' sum alone at several plans, then fwd+bwd where the backward leaves 2048 rows
(TEST_TIMEOUT=430 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1; echo "suite rc $? $SECONDS" >> $OUT/x/suite.log) &
suite=$!
sleep 25  # device_run.sh installs the package first
cd benchmarks
export CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1
plans="128:4:0 128:4:128 128:4:512 256:8:0 512:8:0 256:8:256"
timeout 150 python3 bias.py --partials --sum-plan $plans > $OUT/x/partials.log 2>&1
echo "partials rc $? $SECONDS"
timeout 200 python3 bias.py --no-reference --no-pytorch-sum --train-weights --torch-sum --sum-plan $plans \
  --subsets input+bias bias --forms quick_geglu_clamp --rows 16384 65536 --width 768 2880 7168 --out /tmp/bias > $OUT/x/bias_clamp.log 2>&1
echo "clamp rc $? $SECONDS"
timeout 120 python3 bias.py --no-reference --no-pytorch-sum --train-weights --torch-sum --sum-plan $plans \
  --subsets input+bias bias --forms swiglu --rows 131072 --width 768 2880 --out /tmp/bias > $OUT/x/bias_swiglu.log 2>&1
echo "swiglu rc $? $SECONDS"
cd ..
wait $suite
tail -3 $OUT/x/suite.log
grep -h -E "passed|failed|FAILED|ERROR" $OUT/x/tests-*.log | head -20
