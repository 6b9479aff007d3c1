set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 41 call 7 (data for NOTES, main unchanged: 0e4e2a6): bias_sum below 4096 rows (the rule's one
# row a program: partial sums twice d_x's bytes) against 2, 4, 8 rows a program and session 40's path;
# and 262144 rows (the rule's cap) against 16 and 128
# (rebuilt from the session's record; the file was edited into call 8's script after the run)
# NOTE: bias.py's override lambda took bias_sum_rows' heavy argument as its row count here, so the
# "N rows a program" rows are not what they say (Quick-GEGLU ran 1 row a program; SwiGLU raised
# ZeroDivisionError); the "ours" and "sum in PyTorch" rows are valid. Fixed for call 8.
cd benchmarks
timeout 120 python3 bias.py --no-reference --rows 1024 2048 --width 2880 --rows-per-program 2 4 8 --out $OUT/x --tag _small2880 > $OUT/x/bias_small2880.log 2>&1
echo "small 2880 rc $? $SECONDS"
timeout 100 python3 bias.py --no-reference --rows 1024 2048 --width 768 --rows-per-program 2 4 8 --out $OUT/x --tag _small768 > $OUT/x/bias_small768.log 2>&1
echo "small 768 rc $? $SECONDS"
timeout 150 python3 bias.py --no-reference --rows 262144 --width 2880 --rows-per-program 16 128 --out $OUT/x --tag _large > $OUT/x/bias_large.log 2>&1
echo "large rc $? $SECONDS"
grep -h -v "^ \|Warn\|warn" $OUT/x/bias_*.log | head -150
