set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
# session 38: the shapes that read 6-14% slower in call 3's grid than in the committed one (session
# 22 call 5), timed against session 22's package (799d86e, bench_s22a, "old") in alternating
# processes: a regression or the run-to-run drift of NOTES Next 7?
cd benchmarks
timeout 330 python3 ab.py --old ../bench_s22a --out $OUT/x/ab --runs 3 --timeout 100 -- --only ops --no-routing \
  --act-shapes 262144x2048 65536x2880 65536x7168 > $OUT/x/ab.log 2>&1
echo "ab rc $? $SECONDS"
cat $OUT/x/ab.log | tail -30
cd ..
# bench.py's fwd_fp8 rows timed with autograd recording (the fix): ours should write the copy again
PYTHONUNBUFFERED=1 timeout 110 python3 benchmarks/bench.py --sections activations --shapes 4096x2880 --tag=-fp8check --out $OUT/x > $OUT/x/fp8check.log 2>&1
echo "bench rc $? $SECONDS"
grep fwd_fp8 $OUT/x/fp8check.log
