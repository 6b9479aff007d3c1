set -u
mkdir -p $OUT/x
# session 45 call 2: Next 14 again: layer.py --kernels with the GPU kept behind the host (sleep before each
# call), the ops alone summed by kernel name, bf16 and fp8 store; the order test again
# (the first shape twice in one process, then after another).
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.limit --format=csv
cd benchmarks
PYTHONUNBUFFERED=1 timeout 200 python3 layer.py --kernels --out $OUT/x > $OUT/x/kernels.log 2>&1
echo "kernels rc $? $SECONDS"
PYTHONUNBUFFERED=1 timeout 150 python3 layer.py --kernels --fp8-input-store --out $OUT/x > $OUT/x/kernels-fp8.log 2>&1
echo "kernels fp8 rc $? $SECONDS"
PYTHONUNBUFFERED=1 timeout 200 python3 layer.py --shapes 4096:128:8:2048:768 4096:128:8:2048:768 16384:128:8:2048:768 4096:128:8:2048:768 --out /tmp/l > $OUT/x/order.log 2>&1
echo "order rc $? $SECONDS"
grep -v -i warn $OUT/x/kernels.log | cut -c1-200; grep -v -i warn $OUT/x/order.log
