set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
(CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 200 python3 .call174.py 4096:64:8:7168:2048 16384:64:6:2048:1408 > $OUT/x/gemms_gpu1.log 2>&1; echo "gpu1 rc $?" >> $OUT/x/gemms_gpu1.log) &
CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 200 python3 .call174.py 4096:128:8:2048:768 16384:128:8:2048:768 > $OUT/x/gemms_gpu0.log 2>&1
echo "gpu0 rc $? $SECONDS"
wait
grep -v Warn $OUT/x/gemms_gpu0.log $OUT/x/gemms_gpu1.log | grep -v _warn_once
