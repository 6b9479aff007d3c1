set -u
# session 48 call 1: the first half of Triton 3.9 into /tmp; under 3.6 (the machine's) ab.py of the
# working tree ("new": the fp8 forward's weight loaded before the copy's stores, the light fp8
# backward in 2 warps on 1024-column steps) against bench_s48a (HEAD 6462ee8, "old"), two processes each.
mkdir -p $OUT/x /tmp/s47t1
cp bench_s47t1/part /tmp/s47t1/part
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
python3 -c "import triton; print('triton', triton.__version__)"
cd benchmarks
PYTHONUNBUFFERED=1 timeout 520 python3 ab.py --old ../bench_s48a --out $OUT/x/ab --runs 2 --timeout 150 -- --only ops --no-routing --act-names swiglu quick_geglu quick_geglu_noclamp --act-shapes 16384x768 16384x2048 16384x2880 65536x1408 65536x2048 65536x2880 16384x7168 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS s"
cat $OUT/x/ab.log
