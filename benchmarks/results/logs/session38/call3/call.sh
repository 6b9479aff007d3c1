set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $OUT/x/smi.txt
# session 38: the activation grid on the final package (b26e154), a regression check against the
# committed grid (session 22 call 5)
PYTHONUNBUFFERED=1 timeout 560 python3 benchmarks/bench.py --sections activations --tag -activations --out $OUT/x > $OUT/x/activations.log 2>&1
echo "bench rc $? $SECONDS"
tail -3 $OUT/x/activations.log
