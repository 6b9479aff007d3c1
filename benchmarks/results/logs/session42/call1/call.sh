set -u
mkdir -p $OUT/x
# session 42 call 1: the full suite on the column-split kernels (GPU 0, both visible for the two-device
# tests), and beside it on GPU 1 the bias's sum: whole rows (session 41) against column splits
(TEST_TIMEOUT=430 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1; echo "suite rc $? $SECONDS" >> $OUT/x/suite.log) &
suite=$!
sleep 25  # device_run.sh installs the package first
cd benchmarks
declare -A splits=([768]="256:16 256:32 256:64 256:128 128:32 128:64" [2880]="128:16 128:32 128:64 128:128 256:32 256:64" [7168]="256:16 256:32 256:64 256:128 128:32 128:64")
for width in 768 2880 7168; do
  CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 185 python3 bias.py --no-reference --no-pytorch-sum --train-weights \
    --subsets input+bias bias --rows 4096 16384 65536 --width $width --whole-rows --split ${splits[$width]} \
    --out /tmp/bias --tag _w$width > $OUT/x/bias_w$width.log 2>&1
  echo "bias.py width $width rc $? $SECONDS"
done
cd ..
wait $suite
tail -3 $OUT/x/suite.log
cat $OUT/x/tests-*.log | grep -E "passed|failed|FAILED|ERROR" | head -20
grep -h "rows a\|ours \|whole\|split" $OUT/x/bias_w*.log | head -5
