set -u
mkdir -p $OUT/x
# session 45 call 6: A/B of the permute backward without the plan's zero fill (new) against HEAD
# before it (bench_s45a, old), experiments.py --only ops at four routing shapes, two processes
# each; then layer.py --kernels (the fill gone from permute's row)
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
PYTHONUNBUFFERED=1 timeout 330 python3 ab.py --old ../bench_s45a --out $OUT/x/ab --runs 2 --timeout 120 -- --only ops --act-names swiglu --act-shapes 4096x768 --forms-shapes 4096x8x2x2048 4096x256x2x2048 4096x128x8x2048 16384x64x8x2048 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
PYTHONUNBUFFERED=1 timeout 120 python3 layer.py --kernels --out $OUT/x/kernels > $OUT/x/kernels.log 2>&1
echo "kernels rc $? $SECONDS"
tail -40 $OUT/x/ab.log; grep -e Fill -e 'all three' $OUT/x/kernels.log
