set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 41 call 4: the full suite on the final package (bias_sum: the shared bias's gradient summed
# in the backward kernel, one-row blocks, the rows-a-program rule with heavy math), then bias.py
# side by side with session 40's path and the compiled reference at 768 and 2880 columns
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -30
export PYTHONPATH=/tmp/site
cd benchmarks
for width in 2880 768; do
  timeout 150 python3 bias.py --rows 4096 16384 65536 --width $width --out $OUT/x --tag _w$width > $OUT/x/bias_w$width.log 2>&1
  echo "bias.py width $width rc $? $SECONDS"
done
grep -h -v "^ \|Warn\|warn" $OUT/x/bias_w*.log | head -150
