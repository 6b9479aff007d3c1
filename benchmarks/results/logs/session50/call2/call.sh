set -u
# session 50 call 2: the DTensor test alone (call 1 failed it under torch 2.11: a gathered uneven
# shard reshaped as a DTensor), then the full suite on the final code, Triton 3.6.
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_tensor_subclasses.py > $OUT/x/subclasses.log 2>&1
echo "subclasses rc $?"; tail -n 3 $OUT/x/subclasses.log
TEST_TIMEOUT=480 OUT=$OUT/x bash benchmarks/device_run.sh tests
echo "tests rc $? $SECONDS s"
