set -u
mkdir -p $OUT/x
# session 44 call 3: layer.py's 7168-wide shape, ours eager 3.5-8% slower than its graph in call 2
# (the GEMMs alone level): three times a process, with PDL (GPU 0) and without (GPU 1)
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
cd benchmarks
s="4096:64:8:7168:2048 4096:64:8:7168:2048 4096:64:8:7168:2048 4096:128:8:2048:768"
(CUDA_VISIBLE_DEVICES=1 PYTHONUNBUFFERED=1 timeout 200 python3 -c "
import sys; sys.argv = ['layer.py', '--out', '/tmp/l1', '--shapes', *'$s'.split()]
import moe_utils._runtime as rt; rt.PDL = False
import layer; sys.exit(layer.main())" > $OUT/x/layer_nopdl.log 2>&1; echo "gpu1 rc $? $SECONDS" >> $OUT/x/layer_nopdl.log) &
CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1 timeout 200 python3 layer.py --out /tmp/l0 --shapes $s > $OUT/x/layer_pdl.log 2>&1
echo "gpu0 rc $? $SECONDS"
wait
cat $OUT/x/layer_pdl.log $OUT/x/layer_nopdl.log | grep -v relative
