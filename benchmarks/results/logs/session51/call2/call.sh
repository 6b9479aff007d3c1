set -u
# session 51 call 2: Triton 3.9 joined (call 1's half and this call's). Under it ab.py of HEAD
# ("new") against (a) bench_s51b (5339df0: the bias loaded after the fp8 copy's stores), the bias
# forms, session 48 call 8's shapes; (b) bench_s51h (HEAD with the heavy fp8 backward's 1024-column
# steps in 2 warps from Triton 3.8), GEGLU and clamped Quick-GEGLU where that tile runs.
mkdir -p $OUT/x
[ -f /tmp/s51t1/part ] || { echo "no /tmp/s51t1/part: a fresh machine"; exit 3; }
bash benchmarks/triton_parts.sh join /tmp/t39 /tmp/s51t1/part bench_s51t2/part || exit 4
export PYTHONPATH=/tmp/t39:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
python3 -c "import triton; print('triton', triton.__version__)"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
cd benchmarks
PYTHONUNBUFFERED=1 timeout 240 python3 ab.py --old ../bench_s51b --out $OUT/x/ab_bias --runs 2 --timeout 100 -- --only ops --no-routing --act-bias --act-names swiglu quick_geglu --act-shapes 4096x768 16384x768 16384x2880 65536x1408 65536x2880 > $OUT/x/ab_bias.log 2>&1
echo "ab_bias rc $? $SECONDS s"
PYTHONUNBUFFERED=1 timeout 240 python3 ab.py --old ../bench_s51h --out $OUT/x/ab_heavy --runs 2 --timeout 100 -- --only ops --no-routing --act-names geglu quick_geglu --act-shapes 16384x2880 16384x7168 65536x7168 > $OUT/x/ab_heavy.log 2>&1
echo "ab_heavy rc $? $SECONDS s"
cd $OUT/x && for d in ab_bias ab_heavy; do tar czf $d.tgz $d && rm -rf $d; done
grep -h "fp8" $OUT/x/ab_bias.log $OUT/x/ab_heavy.log
