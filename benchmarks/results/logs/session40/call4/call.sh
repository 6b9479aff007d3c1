set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 40 call 4: the routing property tests with 400 fresh random examples each on the GPU's
# kernels (call 2 gave them too little time), on 31d3d67 (the final package, 1987a4d's code)
MOE_UTILS_HYPOTHESIS_EXAMPLES=400 timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_properties.py -k routing > $OUT/x/routing400.log 2>&1
echo "routing properties rc $? $SECONDS"
grep -E "^E  |passed|failed" $OUT/x/routing400.log | head -20
