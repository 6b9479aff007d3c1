set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
S="4096x7168 16384x1408 16384x2048 16384x2880 16384x7168 65536x768 65536x2048"
for i in 1 2; do
  timeout 220 python3 experiments.py --only act --cold --act-shapes $S --out $OUT/x/act --tag=-cold$i > $OUT/x/cold$i.log 2>&1
  echo "cold$i rc $? $SECONDS"
done
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
