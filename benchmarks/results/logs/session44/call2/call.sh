set -u
mkdir -p $OUT/x
# session 44 call 2: benchmarks/layer.py (new): one MoE layer fwd+bwd, ours against the reference,
# the grouped GEMMs alone beside them; GPU 0 and, as a second process, GPU 1 (two samples)
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
cd benchmarks
(CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 200 python3 layer.py --out $OUT/x/gpu1 > $OUT/x/layer_gpu1.log 2>&1; echo "gpu1 rc $? $SECONDS" >> $OUT/x/layer_gpu1.log) &
CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 200 python3 layer.py --out $OUT/x > $OUT/x/layer.log 2>&1
echo "gpu0 rc $? $SECONDS"
wait
cat $OUT/x/layer.log; tail -3 $OUT/x/layer_gpu1.log
