set -u
# session 50 call 1: the full suite on the package's final code (DTensors in the seed Function
# classes; no kernel change since session 48's call 10), Triton 3.6.
mkdir -p $OUT/x
git log --oneline -1 2>/dev/null || true
TEST_TIMEOUT=480 OUT=$OUT/x bash benchmarks/device_run.sh tests
echo "tests rc $? $SECONDS s"
