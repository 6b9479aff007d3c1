set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > $OUT/x/smi.log
S="65536x7168 16384x7168 65536x4096 16384x4096 65536x4352"
i=0
for pkg in new old new old new old; do
  i=$((i+1))
  if [ $pkg = old ]; then pp=../bench_s30e:/tmp/site; else pp=/tmp/site; fi
  PYTHONPATH=$pp timeout 60 python3 experiments.py --out $OUT/x --only ops --no-routing --act-names geglu quick_geglu exact_geglu --act-interleaved --act-shapes $S --tag=-ops-$pkg$i > $OUT/x/ops-$pkg$i.log 2>&1
  echo "ops $pkg rc $? $SECONDS"
  cat $OUT/x/ops-$pkg$i.log >> $OUT/x/ops-all.log
done
cd ..
TEST_TIMEOUT=280 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "tests rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -20
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
