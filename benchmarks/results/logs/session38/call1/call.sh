set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 38: NOTES Next 11's predicted rule for the router-only backward, [8, 128] x 4 from the
# fp8 copy from 32768 rows at any width ("new", the working tree) against main's rule (bench_s38a,
# "old"); three processes each, alternating
cd benchmarks
timeout 400 python3 ab.py --old ../bench_s38a --out $OUT/x/ab --runs 3 --timeout 150 -- --only wonly \
  --act-shapes 32768x2048 65536x768 65536x2048 65536x7168 262144x768 262144x2048 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
grep "fp8 d_w alone" $OUT/x/ab.log
