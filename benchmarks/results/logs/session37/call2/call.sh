set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 37: A/B of db21a4b (weights-only backward on [8, 128] x 4 where it pads less) against
# e317d36 (bench_s37a: the store's tiles), three processes each, alternating
cd benchmarks
python3 ab.py --old ../bench_s37a --out $OUT/x/ab --runs 3 --timeout 150 -- --only wonly \
  --act-shapes 16384x1408 65536x1408 262144x1408 16384x2880 65536x2880 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
grep "d_w alone" $OUT/x/ab.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
