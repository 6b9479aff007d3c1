set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
timeout 200 python3 sweep.py --only blocks --parts bwd --acts geglu quick_geglu exact_geglu reglu --interleaved --bwd-tiles 1024x4 1024x2 \
  --shapes 16384x768 65536x768 16384x1408 16384x2880 65536x2048 --out $OUT/x/il > $OUT/x/sweep-il.log 2>&1
echo "sweep il rc $?"
S="16384x768 65536x768 16384x1408 16384x2880 65536x2048 65536x7168"
for pkg in old new old new; do
  if [ $pkg = old ]; then pp=../bench_s29a:/tmp/site; else pp=/tmp/site; fi
  PYTHONPATH=$pp timeout 60 python3 experiments.py --out $OUT/x --only ops --no-routing --act-names swiglu quick_geglu --act-interleaved --act-shapes $S --tag=-ops-$pkg > $OUT/x/ops-$pkg.log 2>&1
  echo "ops $pkg rc $?"
  cat $OUT/x/ops-$pkg.log >> $OUT/x/ops-all.log
done
grep -E 'package|bwd' $OUT/x/ops-all.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
