set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 36: tiles of the backward without d_x (store_dx=False)
python3 benchmarks/sweep.py --only blocks --parts bwd --no-dx --acts swiglu quick_geglu \
  --shapes 16384x768 65536x1408 65536x2880 262144x2048 --bwd-tiles 1024x2 1024x4 2048x4 2048x8 4096x4 4096x8 \
  --budget-s 380 --out $OUT/x > $OUT/x/sweep.log 2>&1
echo "sweep rc $? $SECONDS"
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
