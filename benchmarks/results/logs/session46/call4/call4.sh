set -x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /dev/null 2>&1 || exit 1
mkdir -p $OUT/c4
TRITON_DEFAULT_FP_FUSION=0 python3 benchmarks/.call4.py > $OUT/c4/fusion.log 2>&1
tail -40 $OUT/c4/fusion.log
