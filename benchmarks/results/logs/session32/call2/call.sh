set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
TORCH_LOGS=perf_hints timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_compile.py tests/test_gpu.py -k "compile or inductor" > $OUT/x/compile.log 2>&1
rc=$?; echo "compile tests rc $rc $SECONDS"; tail -3 $OUT/x/compile.log; grep -E "^(FAILED|ERROR)|skipping cudagraphs" $OUT/x/compile.log | head
if [ $rc = 0 ]; then
  TEST_TIMEOUT=400 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
  echo "suite rc $? $SECONDS"
  tail -22 $OUT/x/suite.log
else
  grep "^E " $OUT/x/compile.log | sort | uniq -c | sort -rn | head -20
fi
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
