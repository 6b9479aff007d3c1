set -u
# session 47 call 5: Triton 3.9.0 assembled again (call 2's way) from call 4's half and this call's;
# under it, test_gpu.py whole (the erf over all 2**32 inputs) and every erf and exact GEGLU test.
mkdir -p $OUT/x
[ -f /tmp/s47t1/part ] || { echo "no /tmp/s47t1/part: a fresh machine"; exit 3; }
rm -rf /tmp/t39 && mkdir -p /tmp/t39 && cat /tmp/s47t1/part bench_s47t2/part | xz -d | tar x -C /tmp/t39 || exit 4
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
export PYTHONPATH=/tmp/t39
python3 -c "import triton; from moe_utils import _kernel_lib as k; print('triton', triton.__version__, triton.__file__, 'ERF_CUDA13', k.ERF_CUDA13)"
PYTHONUNBUFFERED=1 timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > $OUT/x/t39-gpu.log 2>&1 &
PYTHONUNBUFFERED=1 timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_activations.py -k "erf or exact_geglu" > $OUT/x/t39-erf.log 2>&1
wait
echo "tests $SECONDS s"
grep -h -E "passed|failed|^(FAILED|ERROR)" $OUT/x/t39-*.log | head -20
