set -u
# session 49 call 2: the full suite on 42575cc (DTensor inputs in the activations' functional forms;
# no kernel change since session 48's call 10), Triton 3.6.
mkdir -p $OUT/x
TEST_TIMEOUT=480 OUT=$OUT/x bash benchmarks/device_run.sh tests
echo "tests rc $? $SECONDS s"
