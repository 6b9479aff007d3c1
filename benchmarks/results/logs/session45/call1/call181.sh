set -u
mkdir -p $OUT/x
# session 45 call 1: Next 14. layer.py --kernels (each of our kernels inside the layer against its
# op alone, L2 cold and warm), bf16 and fp8 store; then the graph-vs-eager oddity: the first shape
# twice in one process.
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
