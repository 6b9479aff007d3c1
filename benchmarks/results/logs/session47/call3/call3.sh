set -u
# session 47 call 3: our ops under Triton 3.6 (the machine's, "new" in ab.py's table) and 3.9.0
# (call 2's /tmp/t39 first on PYTHONPATH, "old" in the table), experiments.py --only ops, two
# processes each, alternating.
mkdir -p $OUT/x
[ -d /tmp/t39/triton ] || { echo "no /tmp/t39: a fresh machine"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
for p in "" /tmp/t39; do PYTHONPATH=$p python3 -c "import triton; print(\"PYTHONPATH=$p: triton\", triton.__version__, triton.__file__)"; done
cd benchmarks
PYTHONUNBUFFERED=1 timeout 480 python3 ab.py --old /tmp/t39 --out $OUT/x/ab --runs 2 --timeout 200 -- --only ops --act-names swiglu geglu quick_geglu --act-shapes 16384x768 16384x2880 65536x2048 65536x2880 --forms-shapes 4096x256x2x2048 16384x64x8x2048 65536x256x2x2048 8192x128x8x7168 65536x8x8x4096 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS s"
grep -h "triton" $OUT/x/ab/ab-*.log | head -4
cat $OUT/x/ab.log
