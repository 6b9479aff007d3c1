set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
# session 43 call 2: column_sums' plans where the backward leaves 1024 rows of partial sums (one pass
# today), fwd+bwd, on both GPUs at once (different shapes); then the partials alone again
cd benchmarks
export PYTHONUNBUFFERED=1
plans="512:8:0 256:8:0 128:4:128 128:4:256"
common="--no-reference --no-pytorch-sum --train-weights --torch-sum --sum-plan $plans --subsets input+bias bias --out /tmp/bias"
(CUDA_VISIBLE_DEVICES=0 timeout 420 python3 bias.py $common --forms swiglu --rows 4096 16384 65536 --width 768 2880 7168 > $OUT/x/bias_swiglu.log 2>&1; echo "swiglu rc $? $SECONDS") &
(CUDA_VISIBLE_DEVICES=1 timeout 200 python3 bias.py $common --forms quick_geglu_clamp --rows 4096 --width 768 2880 7168 > $OUT/x/bias_clamp.log 2>&1; echo "clamp rc $? $SECONDS"
 CUDA_VISIBLE_DEVICES=1 timeout 150 python3 bias.py --partials --sum-plan 512:8:0 128:4:128 128:4:256 > $OUT/x/partials.log 2>&1; echo "partials rc $? $SECONDS") &
wait
