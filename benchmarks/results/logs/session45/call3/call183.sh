set -u
mkdir -p $OUT/x
# session 45 call 3: the graph-vs-eager oddity of layer.py (Next 14), SM clocks beside each mode
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
nvidia-smi -i 0 --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 20 > $OUT/x/smi0.csv 2>&1 &
smi=$!
PYTHONUNBUFFERED=1 timeout 200 python3 .call183.py 4096:128:8:2048:768 16384:128:8:2048:768 > $OUT/x/clocks.log 2>&1
echo "probe rc $? $SECONDS"
kill $smi
wait
grep -v -i warn $OUT/x/clocks.log | grep -v _warn_once; wc -l $OUT/x/smi0.csv; head -3 $OUT/x/smi0.csv
PYTHONUNBUFFERED=1 timeout 120 python3 layer.py --kernels --out $OUT/x > $OUT/x/kernels.log 2>&1
echo "kernels rc $? $SECONDS"
PYTHONUNBUFFERED=1 timeout 100 python3 layer.py --kernels --fp8-input-store --out $OUT/x > $OUT/x/kernels-fp8.log 2>&1
echo "kernels fp8 rc $? $SECONDS"
grep 'all three' $OUT/x/kernels.log $OUT/x/kernels-fp8.log
