set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
PYTHONUNBUFFERED=1 timeout 400 python3 -m pytest tests/test_gpu.py -v -p no:cacheprovider --durations=10 > $OUT/x/test_gpu.log 2>&1
echo "tests rc $? $SECONDS"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/x/test_gpu.log | tail -30
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
