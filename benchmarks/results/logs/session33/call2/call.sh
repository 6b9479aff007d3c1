set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
python3 -c "import torch; print('devices', torch.cuda.device_count(), 'peer 0->1', torch.cuda.can_device_access_peer(0, 1))"
# the two-device tests (now with writes queued behind work on cuda:1's stream) on the package before the guard
PYTHONPATH=bench_s33a:$PYTHONPATH timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "inputs_device" > $OUT/x/old_two_device.log 2>&1
echo "old two-device rc $? $SECONDS"; grep -E "passed|failed|^E .*(differs|Mismatch|Error)" $OUT/x/old_two_device.log | head -12
# the GPU test file on the new package
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > $OUT/x/new_test_gpu.log 2>&1
echo "new test_gpu.py rc $? $SECONDS"; tail -3 $OUT/x/new_test_gpu.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
