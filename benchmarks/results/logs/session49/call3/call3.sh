set -u
# session 49 call 3: the full suite on 3ba76ba (DTensors in the interleaved layout's column shards,
# the shape checks in one helper; no kernel change since session 48's call 10), Triton 3.6.
mkdir -p $OUT/x
TEST_TIMEOUT=480 OUT=$OUT/x bash benchmarks/device_run.sh tests
echo "tests rc $? $SECONDS s"
