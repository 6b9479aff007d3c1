set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1 || tail -5 $OUT/x/install.log
nproc; lscpu | grep -i "model name"
python3 benchmarks/.call103.py prof > $OUT/x/host.log 2>&1; echo "rc $?"; head -16 $OUT/x/host.log
MOE_UTILS_PDL=0 python3 benchmarks/.call103.py > $OUT/x/host_nopdl.log 2>&1; echo "rc $?"; head -16 $OUT/x/host_nopdl.log
cp benchmarks/.call103.py $OUT/x/
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
