set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
S="65536x7168 16384x7168 65536x4096 16384x4096"
for pkg in old new old new old new; do
  if [ $pkg = old ]; then pp=../bench_s30a:/tmp/site; else pp=/tmp/site; fi
  PYTHONPATH=$pp timeout 75 python3 experiments.py --out $OUT/x --only ops --no-routing --act-names geglu quick_geglu exact_geglu --act-interleaved --act-shapes $S --tag=-ops-$pkg > $OUT/x/ops-$pkg.log 2>&1
  echo "ops $pkg rc $? $SECONDS"
  cat $OUT/x/ops-$pkg.log >> $OUT/x/ops-all.log
done
grep -E 'package|bwd' $OUT/x/ops-all.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
