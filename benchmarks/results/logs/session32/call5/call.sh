set -u
mkdir -p $OUT/x/host
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
for i in 1 2 3 4 5 6; do
  if [ $((i % 2)) = 1 ]; then pkg=new; pp=${PYTHONPATH:-}; else pkg=old; pp=$PWD/bench_s32a:${PYTHONPATH:-}; fi
  PYTHONPATH=$pp timeout 70 python3 benchmarks/host.py --repeats 5 --out $OUT/x/host --tag=-$pkg$i > $OUT/x/host/$pkg$i.log 2>&1
  echo "$pkg$i rc $? $SECONDS"
done
for f in $OUT/x/host/*.log; do echo "== $f"; cat $f; done
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
