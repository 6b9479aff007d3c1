set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > $OUT/x/smi.log
S="65536x768 16384x2880 65536x2048"
i=0
for pkg in new old new old new old; do
  i=$((i+1))
  if [ $pkg = old ]; then pp=../bench_s29a:/tmp/site; else pp=/tmp/site; fi
  PYTHONPATH=$pp timeout 50 python3 experiments.py --out $OUT/x --only ops --no-routing --act-names swiglu quick_geglu_noclamp exact_geglu --act-interleaved --act-shapes $S --tag=-ops-$pkg$i > $OUT/x/ops-$pkg$i.log 2>&1
  echo "ops $pkg rc $?"
  cat $OUT/x/ops-$pkg$i.log >> $OUT/x/ops-all.log
  nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/x/smi.log
done
grep -E 'package|bwd' $OUT/x/ops-all.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
