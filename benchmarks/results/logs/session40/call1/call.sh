set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 40 call 1: the full suite on the package with the clamp's bias gradient (the backward's
# CLAMPED_DX; every existing variant's sm_90 SASS unchanged) and torch.func support; then the
# clamp-with-bias timing beside the compiled reference
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log $OUT/x/tests-*.log | head -30
cd benchmarks && timeout 150 python3 clamp_bias.py --out $OUT/x > $OUT/x/clamp_bias.log 2>&1; echo "clamp_bias rc $? $SECONDS"
tail -20 $OUT/x/clamp_bias.log
