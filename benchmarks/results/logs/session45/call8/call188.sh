set -u
mkdir -p $OUT/x
# session 45 call 8 (review): layer.py after kernel_us and kernels_by_name share one profiling
# helper; one shape of the main run and of --kernels
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
PYTHONUNBUFFERED=1 timeout 150 python3 layer.py --shapes 4096:128:8:2048:768 --out /tmp/l > $OUT/x/layer.log 2>&1
echo "layer rc $? $SECONDS"
PYTHONUNBUFFERED=1 timeout 100 python3 layer.py --kernels --shapes 4096:128:8:2048:768 --out /tmp/k > $OUT/x/kernels.log 2>&1
echo "kernels rc $? $SECONDS"
grep -v -i -e warn -e USDT $OUT/x/layer.log $OUT/x/kernels.log
