set -u
# session 47 call 8: the first half of Triton 3.9.0 into /tmp for call 9; under Triton 3.6 the
# backward tile sweep of call 6 at three more shapes, the shipped 4-warp tile of 1024 elements
# against 2 warps (bf16 and fp8 saved input).
mkdir -p $OUT/x /tmp/s47t1 && cp bench_s47t1/part /tmp/s47t1/part
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
python3 -c "import triton; print('triton', triton.__version__)"
cd benchmarks
PYTHONUNBUFFERED=1 timeout 100 python3 sweep.py --only blocks --parts bwd --acts swiglu --shapes 16384x2880 65536x2880 65536x1408 --bwd-tiles 1024x4 1024x2 --out $OUT/x/bwd36 > $OUT/x/bwd36.log 2>&1
echo "bwd rc $? $SECONDS s"
grep -h "fp8" $OUT/x/bwd36.log | grep "1024, [24]\]\|shipped"
