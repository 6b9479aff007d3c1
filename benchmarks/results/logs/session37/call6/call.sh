set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 37: data for NOTES Next 11, not a change of main: the router-only backward from the fp8
# copy on [8, 128] x 4 everywhere (bench_s37b, "old") against main's rule ("new"), where nothing
# pads; two processes each
cd benchmarks
timeout 250 python3 ab.py --old ../bench_s37b --out $OUT/x/ab --runs 2 --timeout 110 -- --only wonly \
  --act-shapes 65536x768 16384x2048 65536x2048 65536x7168 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
grep "fp8 d_w alone" $OUT/x/ab.log
