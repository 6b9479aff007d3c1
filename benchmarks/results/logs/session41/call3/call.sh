set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/x/card.txt
timeout 200 python3 benchmarks/.call151.py > $OUT/x/probe.log 2>&1
echo "probe rc $? $SECONDS"
cat $OUT/x/probe.log | grep -v Warning | head -120



