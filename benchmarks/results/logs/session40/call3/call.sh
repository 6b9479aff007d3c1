set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 40 call 3: the full suite on 1987a4d, the final package (call 2's plus the eager
# backward's refactor: only the d_x a clamped_dx mode returns; the float64 and CPU paths run it)
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -30
