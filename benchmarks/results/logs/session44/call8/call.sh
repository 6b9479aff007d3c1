set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
nvidia-smi -i 0 --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 20 > $OUT/x/smi0.csv 2>&1 &
smi=$!
(CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 150 python3 layer.py --shapes 16384:8:2:4096:14336 4096:8:2:4096:14336 --out $OUT/x/top2 > $OUT/x/layer_top2.log 2>&1; echo "top2 rc $?" >> $OUT/x/layer_top2.log) &
CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 200 python3 .call176.py 4096:64:8:7168:2048 16384:128:8:2048:768 > $OUT/x/clocks.log 2>&1
echo "probe rc $? $SECONDS"
kill $smi
wait
grep PHASE $OUT/x/clocks.log; grep -v -i warn $OUT/x/layer_top2.log; wc -l $OUT/x/smi0.csv; head -3 $OUT/x/smi0.csv
