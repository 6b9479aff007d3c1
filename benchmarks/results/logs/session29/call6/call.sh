set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || echo "install failed"
timeout 90 python3 benchmarks/bench.py --sections extra --out $OUT/x --tag=-s29-call6 > $OUT/x/extra.log 2>&1
echo "extra rc $?"
grep -E "ours_interleaved" $OUT/x/extra.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
