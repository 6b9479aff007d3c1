set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# A/B: plan layout 3 (the map kernel without its marker store) against 797c454's package
cd benchmarks && timeout 500 python3 ab.py --old ../bench_s34a --out $OUT/x/ab --runs 2 --timeout 115 -- --only ops \
  --forms-shapes 4096x256x2x2048 65536x64x2x2048 16384x64x8x2048 --act-names swiglu --act-shapes 16384x768 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
tail -40 $OUT/x/ab.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
