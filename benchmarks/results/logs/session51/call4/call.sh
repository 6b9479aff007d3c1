set -u
# session 51 call 4: Triton 3.9 joined. ab.py of the working tree ("new": the fp8 backward's
# 1024-column steps in 2 warps from Triton 3.8 for heavy math without the clamp) against
# bench_s51a (HEAD 9a64e06), GEGLU and exact GEGLU (changed), Quick-GEGLU with its clamp
# (unchanged); split layout, then the interleaved one at 16384 x 2880 (below 4096 columns
# its heavy fp8 backward takes the split's tiles).
mkdir -p $OUT/x
[ -f /tmp/s51t1/part ] || { echo "no /tmp/s51t1/part: a fresh machine"; exit 3; }
bash benchmarks/triton_parts.sh join /tmp/t39 /tmp/s51t1/part bench_s51t2/part || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 5
export PYTHONPATH=/tmp/t39:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
python3 -c "import triton; print('triton', triton.__version__)"
cd benchmarks
PYTHONUNBUFFERED=1 timeout 260 python3 ab.py --old ../bench_s51a --out $OUT/x/ab_split --runs 2 --timeout 120 -- --only ops --no-routing --act-names geglu exact_geglu quick_geglu --act-shapes 16384x2880 16384x7168 65536x7168 > $OUT/x/ab_split.log 2>&1
echo "ab_split rc $? $SECONDS s"
PYTHONUNBUFFERED=1 timeout 200 python3 ab.py --old ../bench_s51a --out $OUT/x/ab_il --runs 2 --timeout 90 -- --only ops --no-routing --act-interleaved --act-names geglu exact_geglu --act-shapes 16384x2880 > $OUT/x/ab_il.log 2>&1
echo "ab_il rc $? $SECONDS s"
cd $OUT/x && for d in ab_split ab_il; do tar czf $d.tgz $d && rm -rf $d; done
grep -h "bwd_fp8" $OUT/x/ab_split.log $OUT/x/ab_il.log
