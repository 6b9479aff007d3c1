set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
cp benchmarks/.call125.py /tmp/c125.py
root=$PWD
cd /tmp
for run in 1 2; do
  python3 /tmp/c125.py > $OUT/x/new$run.log 2>&1; echo "new rc $?"
  PYTHONPATH=$root/bench_s34a:${PYTHONPATH:-} python3 /tmp/c125.py > $OUT/x/old$run.log 2>&1; echo "old rc $?"
done
cat $OUT/x/new1.log $OUT/x/old1.log $OUT/x/new2.log $OUT/x/old2.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
