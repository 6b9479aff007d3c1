set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
# session 42 call 4: the tests that reach the bias's sum and its partials' sum on the final package
# (GPU 0), beside bias.py's record with the compiled reference and torch.sum's partials (GPU 1; then GPU 0)
(CUDA_VISIBLE_DEVICES=0 timeout 250 python3 -m pytest -q -p no:cacheprovider tests/test_activations.py tests/test_compile.py tests/test_gpu.py tests/test_properties.py -k "bias or subset or opcheck_activation or autodiff or cuda_graph or past_2_31 or sum_partials" > $OUT/x/tests.log 2>&1; echo "tests rc $? $SECONDS" >> $OUT/x/tests.log
 cd benchmarks && CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 200 python3 bias.py --torch-sum --width 768 --out $OUT/x --tag _w768 > $OUT/x/bias_w768.log 2>&1; echo "bias.py 768 rc $? $SECONDS") &
cd benchmarks
CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 330 python3 bias.py --torch-sum --width 2880 --out $OUT/x --tag _w2880 > $OUT/x/bias_w2880.log 2>&1
echo "bias.py 2880 rc $? $SECONDS"
wait
cd ..
grep -E "^E  |passed|failed|FAILED|rc" $OUT/x/tests.log | head -20
