set -u
mkdir -p $OUT/x
python3 -c "import setuptools; print('setuptools', setuptools.__version__)" | tee $OUT/x/setuptools.log
if ! python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $OUT/x/install.log 2>&1; then
  echo "install with the SPDX license failed:"; tail -5 $OUT/x/install.log
  sed -i 's/^license = "Apache-2.0"/license = { text = "Apache-2.0" }/' pyproject.toml
fi
TEST_TIMEOUT=340 OUT=$OUT/x bash benchmarks/device_run.sh tests > $OUT/x/suite.log 2>&1
echo "suite rc $? $SECONDS"
tail -25 $OUT/x/suite.log
cd $OUT/x && tar czf ../logs.tgz * && cd .. && rm -rf x
