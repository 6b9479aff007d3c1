set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
cd benchmarks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > $OUT/x/smi.log
S="65536x7168 16384x7168 65536x4096 16384x4096"
timeout 330 python3 sweep.py --only blocks --parts bwd --acts swiglu geglu quick_geglu exact_geglu --interleaved --bwd-tiles 1024x4 1024x2 512x2 \
  --shapes $S --out $OUT/x/il > $OUT/x/sweep-il.log 2>&1
echo "sweep il rc $?"
timeout 60 python3 sweep.py --only blocks --parts bwd --acts swiglu --bwd-tiles 1024x4 1024x2 \
  --shapes 65536x7168 16384x4096 --out $OUT/x/split > $OUT/x/sweep-split.log 2>&1
echo "sweep split rc $?"
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
