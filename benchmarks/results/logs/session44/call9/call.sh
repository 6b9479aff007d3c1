set -u
mkdir -p $OUT/x
# session 44 call 9: layer.py's record (five shapes, held memory): bf16 on GPU 0,
# fp8_input_store on GPU 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
(CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 300 python3 layer.py --fp8-input-store --out $OUT/x > $OUT/x/layer_fp8.log 2>&1; echo "fp8 rc $? $SECONDS" >> $OUT/x/layer_fp8.log) &
CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 300 python3 layer.py --out $OUT/x > $OUT/x/layer.log 2>&1
echo "bf16 rc $? $SECONDS"
wait
grep -v -i warn $OUT/x/layer.log $OUT/x/layer_fp8.log
