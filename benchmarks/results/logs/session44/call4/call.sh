set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 200 python3 .call172.py > $OUT/x/profile.log 2>&1
echo "rc $? $SECONDS"
grep -E "^rep|host calls" $OUT/x/profile.log
