set -u
# session 47 call 6: the first half of Triton 3.9.0 into /tmp for call 7; then, under Triton 3.6
# (the machine's), the tile sweeps that call 7 repeats under 3.9: SwiGLU's backward (bf16 and fp8
# saved input) at 65536 x 2048, Quick-GEGLU's forward (with and without the fp8 copy) at 16384 x 2880.
mkdir -p $OUT/x /tmp/s47t1 && cp bench_s47t1/part /tmp/s47t1/part && sha256sum /tmp/s47t1/part
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
python3 -c "import triton; print('triton', triton.__version__)"
cd benchmarks
PYTHONUNBUFFERED=1 timeout 90 python3 sweep.py --only blocks --parts bwd --acts swiglu --shapes 65536x2048 --bwd-tiles 1024x4 2048x4 512x2 --out $OUT/x/bwd36 > $OUT/x/bwd36.log 2>&1
echo "bwd rc $? $SECONDS s"
PYTHONUNBUFFERED=1 timeout 60 python3 sweep.py --only blocks --parts fwd --acts quick_geglu --shapes 16384x2880 --fwd-tiles 1024x4 4096x8 --out $OUT/x/fwd36 > $OUT/x/fwd36.log 2>&1
echo "fwd rc $? $SECONDS s"
grep -h "shipped\|copy" $OUT/x/bwd36.log $OUT/x/fwd36.log | head -20
