set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
# the full suite on the final package (two devices: the two-device tests run)
TEST_TIMEOUT=340 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
grep -E "passed|failed|FAILED|ERROR" $OUT/x/suite.log | head -20
# host time A/B: one plan view a permute (split_with_sizes) against bench_s33b, alternating
for i in 1 2; do
  timeout 40 python3 benchmarks/host.py --calls 100 --repeats 5 > $OUT/x/host-new$i.log 2>&1
  PYTHONPATH=bench_s33b:$PYTHONPATH timeout 40 python3 benchmarks/host.py --calls 100 --repeats 5 > $OUT/x/host-old$i.log 2>&1
  echo "host pair $i $SECONDS"
done
for f in $OUT/x/host-*.log; do echo "== $(basename $f)"; grep -E "package|permute|torch.add" $f; done
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
