set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 41 call 3: bias_sum on one-row blocks ([1, up to 1024]) at n_rows / 1024 rows a program
# (the rule) against 2, 8 and 32 rows a program and against session 40's path (sum in PyTorch)
cd benchmarks
for width in 768 2880 1408 7168; do
  timeout 150 python3 bias.py --no-reference --rows 4096 16384 65536 --width $width --rows-per-program 2 8 32 --out $OUT/x --tag _w$width > $OUT/x/bias_w$width.log 2>&1
  echo "bias.py width $width rc $? $SECONDS"
done
cat $OUT/x/bias_w*.log | grep -v "^ " | grep -v Warn | head -400
