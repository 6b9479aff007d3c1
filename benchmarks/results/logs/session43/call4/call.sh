set -u
mkdir -p $OUT/x
# session 43 call 4: the full suite on the final column_sums plan (GPU 0, both visible); beside it on
# GPU 1 bias.py's record at 2880 columns with the compiled reference and torch.sum's partials, then
# (GPU 0 once the suite is done) at 768 columns
(TEST_TIMEOUT=430 OUT=/tmp/s bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1; echo "suite rc $? $SECONDS" >> $OUT/x/suite.log
 for f in /tmp/s/tests-*.log; do echo "== $f"; cat $f; done > $OUT/x/tests.log  # one file: at most 8 come back
 cd benchmarks && CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 230 python3 bias.py --torch-sum --width 768 --out $OUT/x --tag _w768 > $OUT/x/bias_w768.log 2>&1; echo "bias.py 768 rc $? $SECONDS") &
sleep 25  # device_run.sh installs the package first
cd benchmarks
CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 400 python3 bias.py --torch-sum --width 2880 --out $OUT/x --tag _w2880 > $OUT/x/bias_w2880.log 2>&1
echo "bias.py 2880 rc $? $SECONDS"
wait
cd ..
tail -2 $OUT/x/suite.log
grep -h -E "passed|failed|FAILED|ERROR" $OUT/x/tests.log | head -20
