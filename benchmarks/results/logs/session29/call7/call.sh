set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONUNBUFFERED=1 timeout 140 python3 -m pytest tests/test_activations.py -k "interleaved_backward_tiles or interleaved_fp8_backward or interleaved_backward_rule" -q -p no:cacheprovider -o cache_dir=/tmp/pc 2>&1 | tail -8 | tee $OUT/x/tiles.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
