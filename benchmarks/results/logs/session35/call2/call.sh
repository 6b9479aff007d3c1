set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 35: the misaligned-input tests after the weight gradient's tolerance; how far apart the two are
python3 -m pytest -q -p no:cacheprovider tests/test_activations.py tests/test_routing.py -k misaligned > $OUT/x/misaligned.log 2>&1
echo "tests rc $?"; tail -3 $OUT/x/misaligned.log
python3 benchmarks/.call122.py > $OUT/x/dw.log 2>&1; echo "dw rc $?"; cat $OUT/x/dw.log | tail -12
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
