set -u
mkdir -p $OUT/x
# session 45 call 4: gaps inside ours as a CUDA graph (layer.py), against eager
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
PYTHONUNBUFFERED=1 timeout 200 python3 .call184.py 16384:128:8:2048:768 4096:128:8:2048:768 > $OUT/x/gaps.log 2>&1
echo "probe rc $? $SECONDS"
grep -v -i warn $OUT/x/gaps.log | grep -v -e _warn_once -e USDT
