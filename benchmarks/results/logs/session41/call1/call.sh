set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 41 call 1: the bias tests on the GPU's kernels (bias_sum), then bias.py: ours (the bias's
# sum in the kernel) against session 40's path (sum in PyTorch) and each grouping of rows a program
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_activations.py tests/test_compile.py -k "bias or subset or opcheck_activation" > $OUT/x/tests.log 2>&1
echo "tests rc $? $SECONDS"
grep -E "^E  |passed|failed" $OUT/x/tests.log | head -20
cd benchmarks
for width in 2880 7168 768; do
  timeout 200 python3 bias.py --no-reference --rows 4096 16384 65536 --width $width --rows-per-program 4 8 16 32 64 --out $OUT/x --tag _w$width > $OUT/x/bias_w$width.log 2>&1
  echo "bias.py width $width rc $? $SECONDS"
done
cat $OUT/x/bias_w*.log | grep -v "^ " | head -400
