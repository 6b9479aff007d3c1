set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 41 call 6: the activations' property tests (the kernels' gradients against autograd of the
# spec's forward, every subset of trained tensors and bias shape: the shared bias takes bias_sum)
# with 400 fresh random examples each on the GPU's kernels, on d337ca6
MOE_UTILS_HYPOTHESIS_EXAMPLES=400 timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_properties.py -k "not routing" > $OUT/x/properties400.log 2>&1
echo "properties rc $? $SECONDS"
grep -E "^E  |passed|failed" $OUT/x/properties400.log | head -20
