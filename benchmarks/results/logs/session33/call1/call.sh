set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi -L
python3 -c "import torch; print('devices', torch.cuda.device_count(), 'peer 0->1', torch.cuda.can_device_access_peer(0, 1))"
# 1. the two-device tests against the package before the guard (bench_s33a first on the path)
( cd tests && PYTHONPATH=../bench_s33a:$PYTHONPATH python3 -c "import moe_utils; print('old package at', moe_utils.__file__)" )
PYTHONPATH=bench_s33a:$PYTHONPATH timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "inputs_device" > $OUT/x/old_two_device.log 2>&1
echo "old two-device rc $? $SECONDS"; grep -E "passed|failed|Error|error" $OUT/x/old_two_device.log | head -12
# 2. the same tests on the new package
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "inputs_device" > $OUT/x/new_two_device.log 2>&1
echo "new two-device rc $? $SECONDS"; tail -3 $OUT/x/new_two_device.log
# 3. what the guard costs a launcher call on this host: the device query alone, and the eager forward
python3 - > $OUT/x/guard_cost.log 2>&1 <<'PY'
import time, torch
from moe_utils import weighted_bias_swiglu_impl
x = torch.randn(4096, 1536, device="cuda", dtype=torch.bfloat16); w = torch.rand(4096, 1, device="cuda")
def per_call(fn, n=20000):
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n): fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best
print("torch.cuda.current_device() min us/call", round(per_call(torch.cuda.current_device), 3))
print("x.device min us/call", round(per_call(lambda: x.device), 3))
for _ in range(3):
    torch.cuda.synchronize(); print("swiglu_impl fwd min us/call (host)", round(per_call(lambda: weighted_bias_swiglu_impl(x, w, False), 2000), 1))
PY
cat $OUT/x/guard_cost.log
# 4. the full suite (two devices present: the two-device tests run)
TEST_TIMEOUT=330 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -20
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
