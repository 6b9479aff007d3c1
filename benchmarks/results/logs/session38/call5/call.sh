set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $OUT/x/smi.txt
# session 38: the routing grid and the extra section on the final package (b26e154), a regression
# check against the committed grids (session 26 call 9, session 29 call 6)
PYTHONUNBUFFERED=1 timeout 300 python3 benchmarks/bench.py --sections routing --tag=-routing --out $OUT/x > $OUT/x/routing.log 2>&1
echo "routing rc $? $SECONDS"
PYTHONUNBUFFERED=1 timeout 200 python3 benchmarks/bench.py --sections extra --tag=-act-extra --out $OUT/x > $OUT/x/extra.log 2>&1
echo "bench rc $? $SECONDS"
tail -2 $OUT/x/routing.log $OUT/x/extra.log
