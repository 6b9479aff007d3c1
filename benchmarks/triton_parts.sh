#!/usr/bin/env bash
# A newer Triton for the device machine, whose calls carry 64 MiB at most (the whole working tree
# included) and which reaches no index: the wheel (285 MB for 3.9.0) stripped to what compiles and
# runs sm_90 kernels, packed with xz and split into two halves, each carried by its own call while
# the machine stays warm (idle_release_s: 30 s). Session 47 (3.9.0: 54 MB in two 27 MB halves).
#   bash benchmarks/triton_parts.sh 3.9.0 bench_s47t    # -> bench_s47t1/part, bench_s47t2/part
# Call 1 (carry bench_s47t1): cp bench_s47t1/part /tmp/s47t1/part, then its own work.
# Call 2 at once (carry bench_s47t2):
#   bash benchmarks/triton_parts.sh join /tmp/t39 /tmp/s47t1/part bench_s47t2/part || exit 3
# then PYTHONPATH=/tmp/t39 puts it before the machine's Triton (session 47's calls 2, 5 and 7 ran
# the join's lines inline).
# Left out: the AMD codegen library (its Python stays: Triton imports every backend it lists),
# CUPTI, Proton, the instrumentation library, the Blackwell ptxas (a link to the sm_90 one, which
# Triton looks up at every compile); libtriton.so loses its symbol tables (strip --strip-unneeded).
# The machine's python3 is 3.12: the cp312 (abi3) wheel. Set bench folders' /bench_s*/ in
# .git/info/exclude so that the halves travel only when carried.
set -euo pipefail
if [ "$1" = join ]; then  # on the device machine: unpack the halves into $2
  dest=$2 first=$3 second=$4
  [ -f "$first" ] || { echo "no $first: a fresh machine (the first half's call must come just before)" >&2; exit 3; }
  rm -rf "$dest" && mkdir -p "$dest"
  cat "$first" "$second" | xz -d | tar x -C "$dest"
  PYTHONPATH=$dest python3 -c "import triton; print('triton', triton.__version__, triton.__file__)"
  exit 0
fi
version=$1 prefix=$2
work=$(mktemp -d)
PIP_CONFIG_FILE=/dev/null PIP_CONSTRAINT='' python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d "$work" "triton==$version"
(
  cd "$work"
  python3 -m zipfile -e triton-*.whl tree
  cd tree
  rm -rf triton/backends/amd/lib/libtriton_amd_codegen.so triton/backends/nvidia/bin/ptxas-blackwell \
    triton/backends/nvidia/lib/cupti-blackwell triton/backends/nvidia/lib/cupti triton/_C/libproton.so \
    triton/instrumentation
  strip --strip-unneeded triton/_C/libtriton.so
  chmod +x triton/backends/nvidia/bin/*
  ln -sf ptxas triton/backends/nvidia/bin/ptxas-blackwell
  tar cf - triton triton-*.dist-info | xz -T2 -9 > "$work/triton.tar.xz"
)
mkdir -p "${prefix}1" "${prefix}2"
split -n 2 -d "$work/triton.tar.xz" "$work/part"
mv "$work/part00" "${prefix}1/part"
mv "$work/part01" "${prefix}2/part"
sha256sum "$work/triton.tar.xz"
ls -l "${prefix}1/part" "${prefix}2/part"
rm -rf "$work"
