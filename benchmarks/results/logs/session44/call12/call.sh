set -u
mkdir -p $OUT/x
# session 44 call 12: layer.py after its peak came from bench.peak_memory_mb (one shape, GPU 1);
# tests/test_layer.py (GPU 0)
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
(CUDA_VISIBLE_DEVICES=0 timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_layer.py > $OUT/x/test_layer.log 2>&1; echo "test_layer rc $?" >> $OUT/x/test_layer.log) &
cd benchmarks
CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 100 python3 layer.py --shapes 4096:128:8:2048:768 --out /tmp/l > $OUT/x/layer.log 2>&1
echo "layer rc $? $SECONDS"
wait
tail -2 $OUT/x/test_layer.log; grep -v -i warn $OUT/x/layer.log
