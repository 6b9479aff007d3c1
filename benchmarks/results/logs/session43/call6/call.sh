set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
# session 43 call 6: on 474dd18 (one pass up to 4096 rows of partial sums; the kernels of call 5's
# full suite) the bias's GPU tests and the sum's (GPU 0), bias.py's record (GPU 1, then GPU 0)
(CUDA_VISIBLE_DEVICES=0 timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_activations.py \
   -k "sum_partials or bias_sum or past_2_31 or cuda_graph" > $OUT/x/tests.log 2>&1; echo "tests rc $? $SECONDS" >> $OUT/x/tests.log
 cd benchmarks && CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 80 python3 bias.py --torch-sum --width 768 --out $OUT/x --tag _w768 > $OUT/x/bias_w768.log 2>&1; echo "bias.py 768 rc $? $SECONDS") &
cd benchmarks
CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 120 python3 bias.py --torch-sum --width 2880 --out $OUT/x --tag _w2880 > $OUT/x/bias_w2880.log 2>&1
echo "bias.py 2880 rc $? $SECONDS"
wait
cd ..
grep -E "passed|failed|FAILED|rc" $OUT/x/tests.log | head -20
