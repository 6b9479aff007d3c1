set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
TEST_TIMEOUT=420 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
tail -22 $OUT/x/suite.log
TORCH_LOGS=perf_hints,recompiles timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py -k inductor_cuda_graphs > $OUT/x/perf_hints.log 2>&1
echo "perf_hints rc $? $SECONDS"; grep -i "skip\|passed\|failed" $OUT/x/perf_hints.log | head -8
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
