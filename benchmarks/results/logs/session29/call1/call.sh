set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
timeout 150 python3 sweep.py --only blocks --parts bwd --acts swiglu --interleaved --bwd-tiles 1024x4 1024x2 2048x4 512x2 \
  --shapes 16384x768 65536x768 16384x1408 16384x2880 65536x2048 --out $OUT/x/il > $OUT/x/sweep-il.log 2>&1
echo "sweep il rc $?"
timeout 60 python3 sweep.py --only blocks --parts bwd --acts swiglu --bwd-tiles 1024x4 1024x2 2048x4 512x2 \
  --shapes 16384x768 16384x2880 --out $OUT/x/split > $OUT/x/sweep-split.log 2>&1
echo "sweep split rc $?"
R="4096x8x8x4096 4096x64x8x2048 16384x128x8x4096 65536x64x8x2048 4096x256x2x2048 16384x8x2x2048 65536x256x2x2048 4096x64x2x7168 16384x64x4x2048"
for pkg in base g h base g h; do
  case $pkg in base) pp=/tmp/site;; g) pp=../bench_s29g:/tmp/site;; h) pp=../bench_s29h:/tmp/site;; esac
  PYTHONPATH=$pp timeout 70 python3 experiments.py --out $OUT/x --only ops --act-names --forms-shapes $R --tag=-ops-$pkg > $OUT/x/ops-$pkg.log 2>&1
  echo "ops $pkg rc $?"
  cat $OUT/x/ops-$pkg.log >> $OUT/x/ops-all.log
done
grep -E 'package|permute_bwd' $OUT/x/ops-all.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
