set -u
# session 47 call 7: Triton 3.9.0 assembled (call 2's way) from call 6's half and this call's; under it
# the tile sweeps of call 6: SwiGLU's backward (bf16 and fp8
# saved input) at 65536 x 2048, Quick-GEGLU's forward (with and without the fp8 copy) at 16384 x 2880.
mkdir -p $OUT/x
[ -f /tmp/s47t1/part ] || { echo "no /tmp/s47t1/part: a fresh machine"; exit 3; }
rm -rf /tmp/t39 && mkdir -p /tmp/t39 && cat /tmp/s47t1/part bench_s47t2/part | xz -d | tar x -C /tmp/t39 || exit 4
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
export PYTHONPATH=/tmp/t39
python3 -c "import triton; print('triton', triton.__version__)"
cd benchmarks
PYTHONUNBUFFERED=1 timeout 110 python3 sweep.py --only blocks --parts bwd --acts swiglu --shapes 65536x2048 --bwd-tiles 1024x4 2048x4 512x2 --out $OUT/x/bwd39 > $OUT/x/bwd39.log 2>&1
echo "bwd rc $? $SECONDS s"
PYTHONUNBUFFERED=1 timeout 80 python3 sweep.py --only blocks --parts fwd --acts quick_geglu --shapes 16384x2880 --fwd-tiles 1024x4 4096x8 --out $OUT/x/fwd39 > $OUT/x/fwd39.log 2>&1
echo "fwd rc $? $SECONDS s"
grep -h "shipped\|copy" $OUT/x/bwd39.log $OUT/x/fwd39.log | head -20
