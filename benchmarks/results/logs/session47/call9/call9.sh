set -u
# session 47 call 9: Triton 3.9.0 from call 8's half and this call's (triton_parts.sh join); call 8's
# sweep under it.
mkdir -p $OUT/x
bash benchmarks/triton_parts.sh join /tmp/t39 /tmp/s47t1/part bench_s47t2/part || exit 3
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
export PYTHONPATH=/tmp/t39
cd benchmarks
PYTHONUNBUFFERED=1 timeout 130 python3 sweep.py --only blocks --parts bwd --acts swiglu --shapes 16384x2880 65536x2880 65536x1408 --bwd-tiles 1024x4 1024x2 --out $OUT/x/bwd39 > $OUT/x/bwd39.log 2>&1
echo "bwd rc $? $SECONDS s"
grep -h "fp8" $OUT/x/bwd39.log | grep "1024, [24]\]\|shipped"
