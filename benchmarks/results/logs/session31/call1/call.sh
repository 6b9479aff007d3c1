set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
S="4096x2048 4096x7168 16384x1408 16384x2048 16384x2880 16384x7168 65536x768 65536x2048 262144x2048 262144x2880"
for i in 1 2 3; do
  timeout 130 python3 experiments.py --only act --act-shapes $S --out $OUT/x/act --tag=-act$i > $OUT/x/act$i.log 2>&1
  echo "act$i rc $? $SECONDS"
done
timeout 230 python3 ab.py --old ../bench_s31a --out $OUT/x/ab --runs 2 --timeout 110 -- --only ops \
  --forms-shapes 4096x256x2x2048 4096x64x2x2048 --act-names swiglu --act-shapes 16384x768 65536x2048 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
tail -30 $OUT/x/ab.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
