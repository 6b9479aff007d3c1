set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
S="16384x768 65536x768 16384x1408 16384x2880 65536x2048"
for pkg in old new old new; do
  if [ $pkg = old ]; then pp=../bench_s29a:/tmp/site; else pp=/tmp/site; fi
  PYTHONPATH=$pp timeout 55 python3 experiments.py --out $OUT/x --only ops --no-routing --act-names swiglu geglu exact_geglu quick_geglu quick_geglu_noclamp --act-interleaved --act-shapes $S --tag=-ops-$pkg > $OUT/x/ops-$pkg.log 2>&1
  echo "ops $pkg rc $?"
  cat $OUT/x/ops-$pkg.log >> $OUT/x/ops-all.log
done
cd ..
TEST_TIMEOUT=280 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "tests rc $?"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -20
timeout 70 python3 benchmarks/bench.py --sections extra --out $OUT/x --tag=-s29-call3 > $OUT/x/extra.log 2>&1
echo "extra rc $?"
grep -E "swiglu.*(fwd_bwd|bwd)" $OUT/x/extra.log | head -20
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
