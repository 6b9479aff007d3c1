set -u
mkdir -p $OUT/x
# session 42 call 3: the full suite on the final kernels with _kernel_lib.column_sums (GPU 0, both
# visible), and beside it on GPU 1 the partials' sum alone, then bias.py with it against torch.sum
(TEST_TIMEOUT=430 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1; echo "suite rc $? $SECONDS" >> $OUT/x/suite.log) &
suite=$!
sleep 25  # device_run.sh installs the package first
cd benchmarks
export CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1
timeout 100 python3 bias.py --partials > $OUT/x/bias_w768.log 2>&1
echo "partials rc $? $SECONDS"
for width in 768 2880 7168; do
  timeout 110 python3 bias.py --no-reference --no-pytorch-sum --train-weights --torch-sum --all-rows \
    --subsets input+bias bias --rows 1024 2048 4096 16384 65536 --width $width --out /tmp/bias --tag _w$width >> $OUT/x/bias_w$width.log 2>&1
  echo "bias.py width $width rc $? $SECONDS"
done
cd ..
wait $suite
tail -3 $OUT/x/suite.log
grep -h -E "passed|failed|FAILED|ERROR" $OUT/x/tests-*.log | head -20
grep partials $OUT/x/bias_w768.log
