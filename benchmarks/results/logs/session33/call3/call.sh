set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
# the two-device tests on the package before the guard. Call 108 ran them with `python3 -m pytest` from
# the repository root, which puts the root (the new package) first on sys.path: run from tests/.
cd tests
PYTHONPATH=../bench_s33a:$PYTHONPATH python3 -c "import moe_utils, moe_utils.generated.swiglu as s; print('old package at', moe_utils.__file__, s.__file__)"
PYTHONPATH=../bench_s33a:$PYTHONPATH timeout 200 python3 -m pytest -q -p no:cacheprovider test_gpu.py -k "inputs_device" > $OUT/x/old_two_device.log 2>&1
echo "old two-device rc $? $SECONDS"; grep -E "passed|failed|differs|bench_s33a/moe_utils/[a-z_]*.py" $OUT/x/old_two_device.log | sort | uniq -c | head -20
cd ..
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "inputs_device" > $OUT/x/new_two_device.log 2>&1
echo "new two-device rc $? $SECONDS"; tail -1 $OUT/x/new_two_device.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
