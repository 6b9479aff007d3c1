set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 41 call 9: the dispatch by row count (the kernel's bias sum from 4096 rows, session 40's path
# below; kernels unchanged since call 5's full suite): every test that reaches it, on the GPU
timeout 280 python3 -m pytest -q -p no:cacheprovider tests/test_activations.py tests/test_compile.py tests/test_gpu.py tests/test_properties.py -k "bias or subset or opcheck_activation or autodiff or cuda_graph or past_2_31" > $OUT/x/tests.log 2>&1
echo "tests rc $? $SECONDS"
grep -E "^E  |passed|failed|FAILED" $OUT/x/tests.log | head -20
