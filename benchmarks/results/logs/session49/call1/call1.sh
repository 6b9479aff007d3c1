set -u
# session 49 call 1: under Triton 3.6 (the machine's) ab.py of the working tree ("new": the weighted
# backward's column steps load the next step before their stores, PREFETCH, split layout) against
# bench_s49a (HEAD 3459e89, "old"), two processes each.
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
python3 -c "import triton; print('triton', triton.__version__)"
cd benchmarks
PYTHONUNBUFFERED=1 timeout 540 python3 ab.py --old ../bench_s49a --out $OUT/x/ab --runs 2 --timeout 200 -- --only ops --no-routing --act-names swiglu quick_geglu geglu --act-shapes 16384x768 16384x1408 16384x2048 16384x2880 65536x768 65536x2048 65536x2880 16384x7168 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS s"
cat $OUT/x/ab.log
