set -u
mkdir -p $OUT/x
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
nvidia-smi --query-gpu=name --format=csv,noheader
# session 42 call 2: the bias's sum on whole rows (c00b211's kernels): multi-row blocks and more rows a
# program against session 41's one-row rule, at 4096 and 16384 rows, the routing weights trained
cd benchmarks
run() {  # gpu width tiles...
  local gpu=$1 width=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu PYTHONUNBUFFERED=1 timeout 270 python3 bias.py --no-reference --no-pytorch-sum --train-weights \
    --subsets input+bias bias --rows 4096 16384 --width $width --tile "$@" --out /tmp/bias --tag _w$width > $OUT/x/bias_w$width.log 2>&1
  echo "bias.py width $width rc $? $SECONDS"
}
common="1:1024:4:8 1:1024:4:16 1:1024:4:32 2:1024:4:4 2:1024:4:8 2:1024:4:16 2:1024:4:32 2:1024:8:8 2:1024:8:16 2:1024:8:32"
(run 0 768 $common 4:256:4:16 4:256:4:32 4:256:4:64; run 0 7168 $common 4:1024:8:16 4:1024:8:32) &
run 1 2880 $common 4:1024:8:16 4:1024:8:32
wait
