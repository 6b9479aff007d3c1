set -u
mkdir -p $OUT/x
# session 44 call 5: layer.py (8580170: eager rounds alternating, the kernels' split by torch.profiler)
# bf16 on GPU 0, fp8_input_store on GPU 1; then tests/test_layer.py on the GPU
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
(CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 250 python3 layer.py --fp8-input-store --out $OUT/x > $OUT/x/layer_fp8.log 2>&1; echo "fp8 rc $? $SECONDS" >> $OUT/x/layer_fp8.log) &
CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 250 python3 layer.py --out $OUT/x > $OUT/x/layer.log 2>&1
echo "bf16 rc $? $SECONDS"
wait
cd ..
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_layer.py > $OUT/x/test_layer.log 2>&1; echo "test_layer rc $?"
tail -2 $OUT/x/test_layer.log
cat $OUT/x/layer.log $OUT/x/layer_fp8.log
