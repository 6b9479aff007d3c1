"""Kernel experiments for the open targets of issue 4, measured against the shipped kernels.

    python benchmarks/experiments.py --out DIR [--only KIND ...]
        KIND: act, scatter, plan, inplace, liger, order, ops, gather, pdl, prefetch, group, segments,
              counts, segwarps, early, scanmap, segscan, realloc, writeroof, stores, tiles, rowstore,
              padrows, worder, segcopy, wordpairs
    SWEEP_DRY=1 TRITON_INTERPRET=1 python benchmarks/experiments.py --out DIR   # CPU check

``--only act``: hand-written variants of the weighted SwiGLU forward/backward (the math of
generated/swiglu.py, written out here only to time launch-level ideas; nothing in the package
uses them):

- ``evict``: streaming loads (``eviction_policy="evict_first"``), as Inductor emits;
- ``const_h``: the half width H as a ``tl.constexpr`` (one compile per width), as Liger does;
- ``flat``: the forward over a flattened 1-D grid of T*H outputs (no masked lanes), Inductor's shape;
  ``flat_const`` the same with the width a constexpr, as Inductor compiles a static width;
- ``inductor``: the reference's weighted SwiGLU through ``torch.compile`` for this one shape (fresh
  compile state), alone and writing into the variants' output (session 11 found it 2-4% ahead of
  the shipped forward at 2880 columns). ``--act-shapes TxH ...`` picks the forward's shapes.

``--only scatter``: permute's scatter with several tokens per program, cache policies, and on a
1-D grid in memory order (``ordered``) against the shipped 2-D grid.
``--only inplace``: the unweighted SwiGLU backward writing d_x over its input, as Liger does.
``--only wonly``: the weighted backward with d_x stored (the shipped default) and without (store_dx=False:
only the routing weights require grad), SwiGLU and Quick-GEGLU, from bf16 input and its fp8 copy, both
layouts.
``--only liger``: the unweighted SwiGLU forward and backward, ours and Liger-Kernel's, each alone.
``--only ops``: the shipped routing plan, permute/unpermute and weighted activations alone; run it with an older
copy of the package first on PYTHONPATH too, to time a change of the package on one machine
(a copy from session 10 on: the kernels here decode their grid with its ``grid_tile``).
``--only gather``: the gather (unpermute forward, permute backward) on both grids at each shape.
(Session 12's ``--only gather_unrolled``, each token's first BLOCK_K entries unrolled, was shipped in
session 13: commit 84c3603 for its code, results/history for its times.)
``--only pdl``: the four fused routing ops with programmatic dependent launch off, and on with no
kernel, the plan's kernels or every kernel letting the next launch at its start (the package's
switches ``_runtime.PDL`` and ``PDL_TRIGGER``). Session 12's form of this experiment (wrappers
generated around the kernels; commit 84c3603) measured every kernel waiting, and every kernel
triggering.
``--only prefetch``: the plan's map kernel with and without loading each step's map tile one step
ahead (the package's switch ``routing._MAP_PREFETCH``): build_plan and the whole permute forward,
plans checked bit-equal. (Session 14 also ran the count kernel so: 2-7% slower, not kept;
results/history/experiments-prefetch-s14-call5-*.)
``--only group``: the plan with the map kernel's expert groups of 8 (shipped), 4, 2 and 1 experts
(``routing._map_group``): build_plan and the whole permute forward.
``--only segments``: the plan with segments of at least 1, 8 and 16 tokens (the package's switch
``routing._MIN_SEGMENT_TOKENS``): build_plan and the whole permute forward.
``--only early``: permute's forward with the map kernel triggering the scatter's launch and the
scatter loading its source rows before it waits (``_runtime.PDL_EARLY_SOURCE``), against waiting.
``--only segwarps``: the plan with segments of at least 8 tokens only where the map kernel runs
several warps (shipped) and at every warp count (``routing._MIN_SEGMENT_WARPS``).
(Session 17's ``--only dottokens``, the scatter-dot (unpermute's backward with the probs gradient)
with 2 and 4 tokens per program in [TOKENS, k, BLOCK_H] tiles, and ``--only scansteps``, the
plan's scan with at least 4 or 8 experts per program walking the segments in steps: slower, and
their one-token / one-step forms slower than the kernels they replaced; commits 2c564d0 and
97d2d10 for their code, results/logs/session17 for their times.)
``--only scanmap``: the plan with the map kernel doing the scan's work where the count table is
small (``routing._SCAN_IN_MAP``: 0, 8192, 4096 counts; 4096 shipped) in chunks
(``routing._SCAN_IN_MAP_TILE``), one launch fewer.
``--only segscan``: at most 256 or 64 segments (``routing._MAX_SEGMENTS``) with the scan kernel
or with the map kernel doing its work, against the shipped 1024, at E >= 64.
``--only realloc``: the permute and unpermute forwards over several fresh allocations of the same
inputs in one process (NOTES Next 4: does a 16 µs op's level follow its buffers?).
``--only writeroof``: torch's fill_ and the scatter's bare pattern (a row read once, written to k
rows, in order or permuted) with plain, streaming (.cs) and TMA stores: is the H200's write roof
the stores' or the memory's?
``--only stores``: permute's scatter with plain stores, streaming stores as shipped, and streaming
stores at top-4 and at top-2 at any size (``permutation._STREAM_STORE_K``, ``_STREAM_STORE_BYTES``).
``--only tiles``: the gather's column blocks (unpermute forward, permute backward) and the
scatter-dot's column step (unpermute backward) at 512, 1024 and 2048 columns and as shipped.
(Session 22's ``--only planlast``, the scatter's plan programs after its copies instead of
before them: slower at all eight shapes, 0-7%; commit 04e3dfd for its code,
results/logs/session22/call1 for its times.)
(Session 23's ``--only dotpipe``, the scatter-dot's column loop with the next step's tiles loaded
a step ahead, with the dot products reduced once per row, and both: slower at every shape
(prefetch 1.4-6.5% at top-2, 5-26% at top-4 and top-8); commit 2204899 for its code,
results/logs/session23/call1 for its times.)
(Session 24's ``--only countscan``, the plan's count and scan kernels replaced by one kernel in
which each program (a block of 1-8 experts) walks every segment, summing each and scanning down
them: slower at all twelve shapes, build_plan 8.5 -> 10.5-23 µs at 4096 x 256 x 2, the permute
forward +9% at best; commit c760798 for its code, results/logs/session24/call1 for its times.)
``--only rowstore``: permute's backward with d_probs's rows stored once per token, built in
registers, against zeros, a barrier and each entry's value, and the shipped rule
(``unpermutation.d_probs_row_store``). (Session 23's same row store in unpermute's scatter-dot:
1-8% slower at 8 of 10 shapes; commit 5ff0ff0 for its code, results/logs/session23/call3.)
``--only padrows``: the padding programs of permute's scatter and unpermute's backward with 16,
64 and 256 rows each and as shipped, with and without drop_and_pad, and unpermute's backward on a
plan without the padding marker.
(Session 24's ``--only rowdot``, unpermute's backward over the permuted rows in memory order, each
token's gradient row gathered: slower at 7 of 8 shapes, 3-10% at top-2 (4096 x 256 x 2 x 2048 24.4
-> 28.2 µs at best, 65536 x 64 x 2 337 -> 382), 2.3x at 4096 x 256 x 8; level at 4096 x 64 x 2
(23.5 -> 23.2 with evict-last gradient and evict-first row loads); commit a9f61ac for its code,
results/logs/session24/call2 for its times.)
(Session 25's ``--only dotcap``, unpermute's backward (the scatter-dot) on a persistent grid of 4,
6, 8 or 10 programs an SM, each walking tokens pid, pid + grid, ...: slower at all nine shapes,
8-40% at 4 an SM and still 5-8% at 8-10 at the 4096-token top-2 shapes (4096 x 64 x 2 x 2048 23.4
-> 25.1 µs at best), 4.5% at 4096 x 256 x 8 (76.5 -> 79.9 at 6); commit 194c169 for its code,
results/logs/session25/call1 for its times.)
(Session 25's ``--only dotcache``, unpermute's backward (the scatter-dot) with evict-first loads
(the gradient's, the permuted rows') and streaming stores (d_perm), each form timed back to back
(graph replays on one input set, as the grid) and cold (a graph of calls each after a 256 MiB
read that leaves L2 full of other clean lines, less the reads alone): back to back, evict-first
rows with streaming stores 9-14% faster at the 4096-token top-2 shapes (4096 x 8 x 2 x 2048 22.7
-> 19.6 µs) and 3-4% slower from 16384 tokens; cold, **the shipped form fastest at all eight
shapes** (4096 x 8 x 2 x 2048 27.9 against 28.1-29.5; 65536 x 64 x 2 341.2 against 342.9-359.1),
and with a consumer reading d_perm after it too: the back-to-back gain was the inputs left in L2
by the call before. The shipped scatter-dot's cold timings ran 4-7 µs above back to back at
every size, 4096 to 65536 tokens alike (the read's write-backs, not L2 hits), so its grid
figures carry no such gain (other ops: ``cold_us``). Commit 59bad57 for its code (c49be6a, 9403d2c for the cold timer),
results/logs/session25/calls 2-4 for its times.)
``--only worder``: the rows of a shipped plan copied by the scatter, by its bare pattern (plan rows
and rows in order) and as gathers of (row, token) pairs in windows of W tokens: does the order of
the writes cost the permute forward? (Session 26 call 1: the scatter at its bare pattern, rows in
order 2-5% faster, every gather window slower.)
``--only segcopy``: the copy of a permute whose map walk also scatters (one program per segment of
tokens, in order), bare over the shipped plan's rows, beside the shipped permute, build_plan and its
count and scan launches. (Session 26 call 2: level with the scatter or within 4.2%.)
(Session 26's ``--only mapcopy``, permute's forward with that copy inside the map kernel's walk
at E = 129-256 (each step copying its token, padding programs after the segments', no scatter
launch), in four forms: the row loaded after the walk's step, at its start, a step ahead, and
each token copied a step behind its walk: slower or level at all ten shapes, 65536 x 256 x 2 x
2048 +6.5% to +13%, top-8 up to +30%; 4096 x 256 x 2 level to 6% faster. Commits 5c436c7,
fce8ae3, e3ff10f and 89bda22 for its code, results/logs/session26/calls 3-5 and 7 for its times.)
``--only wordpairs``: the map kernel's word walk in two-token steps (``routing._WORDS_PAIRS``) against
one-token steps: build_plan and the permute forward. (Session 26 call 8: the permute forward 0.2-1.9%
faster at all six word-walk shapes; shipped.)
``--only words``: the map kernel's one-token steps over uint64 words of the map against its tile
walk (``routing._MAP_WORDS``): build_plan and the permute forward at E = 256-1024.
``--only counts``: the plan with the scan's size bound (``routing._MOST_COUNTS``: at most 2^19
segments x experts unless walks pass 64 steps) and without it, at E = 1024 (and 512, unaffected).
(Session 21's ``--only stream``, permute's scatter copying each token, in step-major order, as
soon as the map kernel had published its segment's progress that far instead of waiting for the
whole map kernel: slower everywhere, 1-15%; commit 6ecb6c5 for its code,
results/history/experiments-stream-s21-call1-* and results/logs/session21/call1 for its times.)
(Session 16's ``--only countgroup``, the count kernel counting groups of up to 2, 4 or 8 segments
per program so that the scan ran over at most 256 groups: slower; commit 059e7d7 for its code,
results/history/experiments-countgroup-s16-call1-* for its times.)
(Session 15's ``--only unroll``, the count kernel's step loop unrolled 1, 8 and 16 times by
Triton: no gain; commit 9523d6f for its code, results/history/experiments-unroll-s15-* for its times.)
``--only order``: the weighted SwiGLU forward's tiles in memory order (a 1-D grid) against the 2-D grid.
``--only plan``: the routing plan (its token-major half; permute's scatter writes the rest) as
shipped and with the segment count capped at 256 ... 4096. Run it once more with an older copy of
the package first on PYTHONPATH to time a change of the plan kernels against it. (Session 7
measured here, against the plan layout of two stores per entry: one store per entry, taken;
``_map_compact``, each token's entries gathered by sums over the experts, slower; the count kernel
in wider steps, no gain: results/history/experiments-plan-s7-call1-*.json, commit ab7f8bc for
their code. ``_scan_split``, the scan's token-major prefix in a program of its own, was never run:
session 8 removed that prefix from the scan instead, commit 4913e41 for its code.)

Each variant is checked against the shipped op (same bits) before it is timed. Writes
``experiments-<card>.json`` and prints one line per (shape, variant).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import pathlib
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import baselines

# one timing method and one dry-run switch for both scripts
from sweep import DEVICE, DRY, bench, capture_graph, dims, forward_launch, gen, warm_up
from sweep import copy_gbs as sweep_copy_gbs

from moe_utils import _runtime as _rt
from moe_utils import routing, unpermutation
from moe_utils._kernel_lib import grid_tile
from moe_utils.routing import entry_row

#: --only act: the generated forward under these (tile elements, warps, policy of the loads of x)
#: beside the shipped launch (its column block, capped at the tile).
GEN_FWD_TILES = (
    (1024, 4, ""), (1024, 4, "evict_first"), (1024, 4, "evict_last"), (2048, 4, ""), (2048, 8, ""), (4096, 8, ""),
    (512, 4, ""),
)  # fmt: skip


@triton.jit
def _silu_mul(gate, up):
    return gate * tl.sigmoid(gate) * up


@triton.jit
def _fwd_2d_tile(x_ptr, w_ptr, out_ptr, n_rows, H, stride, POLICY: tl.constexpr, ORDERED: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    # ORDERED: a 1-D grid, row blocks outer and column blocks inner, so consecutive programs take
    # consecutive tiles of memory; else a 2-D grid, rows on the fast axis (program_id(0)), where a
    # wide row's first column block is read for every row before any row's second block.
    row_block, col_block = grid_tile(H, BLOCK_H, ORDERED)
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = col_block * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < n_rows)[:, None] & (cols < H)[None, :]
    offs = rows[:, None] * stride + cols[None, :]
    gate = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy=POLICY).to(tl.float32)
    up = tl.load(x_ptr + offs + H, mask=mask, other=0.0, eviction_policy=POLICY).to(tl.float32)
    w = tl.load(w_ptr + rows, mask=rows < n_rows, other=0.0)[:, None]
    out = _silu_mul(gate, up) * w
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_2d(x_ptr, w_ptr, out_ptr, n_rows, H, stride, POLICY: tl.constexpr, ORDERED: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    _fwd_2d_tile(x_ptr, w_ptr, out_ptr, n_rows, H, stride, POLICY, ORDERED, BLOCK_R, BLOCK_H)


@triton.jit
def _fwd_2d_const(x_ptr, w_ptr, out_ptr, n_rows, H: tl.constexpr, stride, POLICY: tl.constexpr,
                  ORDERED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    # _fwd_2d with the width a constexpr (one compile per width): in the ordered grid the division
    # by the number of column blocks becomes a multiply and shift, and the masks fold.
    _fwd_2d_tile(x_ptr, w_ptr, out_ptr, n_rows, H, stride, POLICY, ORDERED, BLOCK_R, BLOCK_H)


@triton.jit
def _fwd_flat_tile(x_ptr, w_ptr, out_ptr, n_out, H, stride, POLICY: tl.constexpr, BLOCK: tl.constexpr):
    # One program per BLOCK consecutive outputs of the [T, H] result: (row, col) by division.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_out
    rows = offs // H
    cols = offs - rows * H
    src = rows * stride + cols
    gate = tl.load(x_ptr + src, mask=ok, other=0.0, eviction_policy=POLICY).to(tl.float32)
    up = tl.load(x_ptr + src + H, mask=ok, other=0.0, eviction_policy=POLICY).to(tl.float32)
    w = tl.load(w_ptr + rows, mask=ok, other=0.0)
    tl.store(out_ptr + offs, (_silu_mul(gate, up) * w).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _fwd_flat(x_ptr, w_ptr, out_ptr, n_out, H, stride, POLICY: tl.constexpr, BLOCK: tl.constexpr):
    _fwd_flat_tile(x_ptr, w_ptr, out_ptr, n_out, H, stride, POLICY, BLOCK)


@triton.jit
def _fwd_flat_const(x_ptr, w_ptr, out_ptr, n_out, H: tl.constexpr, stride, POLICY: tl.constexpr, BLOCK: tl.constexpr):
    # _fwd_flat with the width a constexpr (one compile per width), as Inductor compiles a static
    # width: the division by H becomes a multiply and shift, and rows of H % 8 == 0 keep loads wide.
    _fwd_flat_tile(x_ptr, w_ptr, out_ptr, n_out, H, stride, POLICY, BLOCK)


@triton.jit
def _fwd_even(x_ptr, w_ptr, out_ptr, H, stride, WIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    # The 2-D tile on the grid in memory order without masks (n_rows % BLOCK_R == 0 and H % BLOCK_H
    # == 0), offsets in int64 (WIDE) or int32, as Inductor's kernel below 2**31 elements.
    n_col_blocks = H // BLOCK_H
    pid = tl.program_id(0)
    row_block = pid // n_col_blocks
    if WIDE:
        row_block = row_block.to(tl.int64)
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (pid % n_col_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs = rows[:, None] * stride + cols[None, :]
    gate = tl.load(x_ptr + offs).to(tl.float32)
    up = tl.load(x_ptr + offs + H).to(tl.float32)
    w = tl.load(w_ptr + rows)[:, None]
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], (_silu_mul(gate, up) * w).to(out_ptr.dtype.element_ty))


@triton.jit
def _fwd_flat_even(x_ptr, w_ptr, out_ptr, H: tl.constexpr, BLOCK: tl.constexpr):
    # Inductor's kernel for a static width: int32 offsets, no masks (n_out % BLOCK == 0).
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rows = offs // H
    cols = offs % H
    gate = tl.load(x_ptr + (cols + 2 * H * rows)).to(tl.float32)
    up = tl.load(x_ptr + (H + cols + 2 * H * rows)).to(tl.float32)
    w = tl.load(w_ptr + rows, eviction_policy="evict_last")
    tl.store(out_ptr + offs, (_silu_mul(gate, up) * w).to(out_ptr.dtype.element_ty))


@triton.jit
def _bwd(g_ptr, x_ptr, w_ptr, dx_ptr, dw_ptr, n_rows, H: tl.constexpr, stride, POLICY: tl.constexpr,
         BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    w = tl.load(w_ptr + rows, mask=row_ok, other=0.0)[:, None]
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        mask = row_ok[:, None] & (cols < H)[None, :]
        offs = rows[:, None] * stride + cols[None, :]
        gate = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy=POLICY).to(tl.float32)
        up = tl.load(x_ptr + offs + H, mask=mask, other=0.0, eviction_policy=POLICY).to(tl.float32)
        g = tl.load(g_ptr + rows[:, None] * H + cols[None, :], mask=mask, other=0.0, eviction_policy=POLICY)
        g = g.to(tl.float32)
        s = tl.sigmoid(gate)
        f = gate * s
        d_gate = g * w * up * s * (1.0 + gate * (1.0 - s))
        d_up = g * w * f
        d_offs = rows[:, None] * (2 * H) + cols[None, :]
        tl.store(dx_ptr + d_offs, d_gate.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + d_offs + H, d_up.to(dx_ptr.dtype.element_ty), mask=mask)
        acc += tl.sum(tl.where(mask, g * f * up, 0.0), axis=1)
    tl.store(dw_ptr + rows, acc, mask=row_ok)


@triton.jit
def _scatter_multi(src_ptr, src_row_stride, dst_ptr, token_ptr_ptr, entry_ptr, n_tokens, n_rows, hidden,
                   LOAD_POLICY: tl.constexpr, STORE_POLICY: tl.constexpr, ORDERED: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    # permute's scatter with BLOCK_T tokens per program: all plan loads first, then the stores.
    # ORDERED: a 1-D grid in memory order (token blocks outer, column blocks inner), as the
    # generated forward runs since session 8; else the shipped 2-D grid, tokens on the fast axis.
    token_block, col_block = grid_tile(hidden, BLOCK_H, ORDERED)
    tokens = token_block * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = tokens < n_tokens
    cols = col_block * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    first = tl.load(token_ptr_ptr + tokens, mask=t_ok, other=0)
    last = tl.minimum(tl.load(token_ptr_ptr + tokens + 1, mask=t_ok, other=0), n_rows)
    x_mask = t_ok[:, None] & col_ok[None, :]
    x = tl.load(src_ptr + tokens[:, None] * src_row_stride + cols[None, :], mask=x_mask, eviction_policy=LOAD_POLICY)
    ks = tl.arange(0, BLOCK_K)
    entries = first[:, None] + ks[None, :]
    rows = entry_row(tl.load(entry_ptr + entries, mask=entries < last[:, None], other=-1))
    for j in tl.static_range(BLOCK_K):
        row = tl.sum(tl.where(ks[None, :] == j, rows, 0), axis=1)
        ok = (row >= 0)[:, None] & col_ok[None, :]
        tl.store(dst_ptr + row[:, None] * hidden + cols[None, :], x, mask=ok, eviction_policy=STORE_POLICY)
    for e in range(BLOCK_K, tl.max(last - first, axis=0)):  # tokens with more than BLOCK_K entries
        entry = first + e
        row = entry_row(tl.load(entry_ptr + entry, mask=entry < last, other=-1))
        ok = (row >= 0)[:, None] & col_ok[None, :]
        tl.store(dst_ptr + row[:, None] * hidden + cols[None, :], x, mask=ok, eviction_policy=STORE_POLICY)


def scatter_experiments(results, shapes, basic: bool = False) -> None:
    """permute's scatter: the shipped launcher against multi-token programs and cache policies.
    Also the shipped launcher as permute runs it (with the plan's expert-major programs first in
    its grid, rest=...), and the bare pattern over the same rows (_write_rows_kernel: each
    program's k rows read from a [T, k] table, no plan loads): where do the scatter's points of
    copy below the bare pattern go (NOTES Next 2)? ``basic`` (``--scatter-basic``): only those."""
    from sweep import routing_map

    from moe_utils.permutation import scatter_rows
    from moe_utils.routing import build_plan, plan_view

    g = torch.Generator(device=DEVICE).manual_seed(0)
    for n_tokens, n_experts, k, hidden in shapes:
        m = routing_map(n_tokens, n_experts, k, g)
        x = torch.randn(n_tokens, hidden, device=DEVICE, dtype=torch.bfloat16)
        p = torch.softmax(torch.rand(n_tokens, n_experts, device=DEVICE, generator=g), -1) * m
        n_rows = n_tokens * k
        plan, rest, _ = build_plan("exp", m, p, n_rows, False)
        view = plan_view("exp", plan, n_tokens, n_rows)
        want = torch.empty(n_rows, hidden, device=DEVICE, dtype=x.dtype)
        scatter_rows(x, want, view)
        out = torch.empty_like(want)
        rows = view.entry >> routing.EXPERT_BITS  # token t's rows at t * k .. t * k + k - 1 (exact top-k)
        block_h = triton.next_power_of_2(hidden)
        variants = {
            "shipped": lambda: scatter_rows(x, out, view),
            "shipped, with the plan's programs": lambda: scatter_rows(x, out, view, rest=rest),
        }
        for cache in ("", ".cs"):
            variants[f"bare rows{cache}"] = lambda cache=cache: _write_rows_kernel[(n_tokens,)](
                x, out, rows, hidden, K=k, BLOCK_H=block_h, CACHE=cache, num_warps=4
            )
        policies = [("", ""), ("evict_first", ""), ("", "evict_first"), ("evict_first", "evict_first")]
        configs = [(1, 2048, 4, False), (1, 2048, 4, True), (2, 1024, 4, False), (2, 2048, 8, False)]
        configs += [(4, 512, 4, False), (4, 1024, 8, False), (8, 512, 8, False), (2, 2048, 8, True)]
        if basic:
            configs = []
        for bt, bh, nw, ordered in configs:
            for lp, sp in policies if (bt, bh) == (2, 1024) else policies[:1]:
                n_tiles = (triton.cdiv(n_tokens, bt), triton.cdiv(hidden, bh))
                grid = (n_tiles[0] * n_tiles[1],) if ordered else n_tiles
                name = f"multi {bt}x{bh}/{nw}{' ordered' if ordered else ''} {lp or '-'} {sp or '-'}"
                bk = 1 << (min(k, 8).bit_length() - 1)  # below k for k = 3: the overflow loop runs too

                def run(grid=grid, bt=bt, bh=bh, nw=nw, lp=lp, sp=sp, bk=bk, ordered=ordered):
                    _scatter_multi[grid](
                        x, x.stride(0), out, view.token_ptr, view.entry, n_tokens, n_rows, hidden,
                        LOAD_POLICY=lp, STORE_POLICY=sp, ORDERED=ordered, BLOCK_T=bt, BLOCK_K=bk, BLOCK_H=bh,
                        num_warps=nw,
                    )  # fmt: skip

                variants[name] = run
        moved = (n_tokens + n_rows) * hidden * 2
        for name, fn in variants.items():
            out.fill_(float("nan"))
            fn()
            assert torch.equal(out, want), f"scatter variant {name} differs"
            us = bench(fn)
            shape = [n_tokens, n_experts, k, hidden]
            results.append(dict(kind="scatter", shape=shape, variant=name, us=us))
            print(f"scatter {shape} {name:34s} {us:8.1f} us {moved / us / 1e3:7.0f} GB/s", flush=True)


def plan_experiments(results, shapes) -> None:
    """build_plan as shipped (routing's segment rule) and with the segment count capped at 256 ...
    4096 (at most that many segments, never doubled); the same plan each time, checked. Run it
    against two versions of the package (PYTHONPATH) to time a change of the plan kernels."""
    from sweep import routing_map

    from moe_utils.routing import build_plan

    print("routing from", routing.__file__, flush=True)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    shipped = routing._MAX_SEGMENTS, routing._LONG_SEGMENT
    variants = {"shipped": shipped, **{f"{n} segments": (n, 1 << 62) for n in (256, 512, 1024, 2048, 4096)}}
    for n_tokens, n_experts, k in shapes:
        m = routing_map(n_tokens, n_experts, k, g)
        p = torch.rand(n_tokens, n_experts, device=DEVICE)
        n_rows = n_tokens * k
        want, _, _ = build_plan("exp", m, p, n_rows, False)
        for variant, setting in variants.items():
            routing._MAX_SEGMENTS, routing._LONG_SEGMENT = setting
            try:
                segments = routing._segments(n_tokens, n_experts)[1]
                plan, _, _ = build_plan("exp", m, p, n_rows, False)
                # src_token (the first n_rows) is the scatter's to write
                assert torch.equal(plan[n_rows:], want[n_rows:]), variant
                us = bench(lambda: build_plan("exp", m, p, n_rows, False))
            finally:
                routing._MAX_SEGMENTS, routing._LONG_SEGMENT = shipped
            row = dict(kind="plan", shape=[n_tokens, n_experts, k], variant=variant, segments=segments, us=us)
            results.append(row)
            print(f"plan {n_tokens}x{n_experts} k={k} {variant:14s} ({segments:4d}) {us:8.1f} us", flush=True)


def order_experiments(results, shapes) -> None:
    """The weighted SwiGLU forward: shipped, then its kernel's tile on a 1-D grid in memory order
    (row blocks outer, column blocks inner) and on the shipped 2-D grid (rows fastest), both
    _fwd_2d, a few other tiles in memory order, and the flat 1-D forward. Input sets
    rotate through 256 MB or more, as in bench.py; times are per set. Session 2 measured the flat
    forward 2.7% faster than the shipped one at 65536 x 7168 (916 vs 941 µs): is it the order?"""
    for n_rows, h in shapes:
        sets = 1 if DRY else max(1, min(64, (256 << 20) // (n_rows * h * 6)))
        xs = [torch.randn(n_rows, 2 * h, device=DEVICE, dtype=torch.bfloat16) for _ in range(sets)]
        ws = [torch.rand(n_rows, device=DEVICE) for _ in range(sets)]
        outs = [torch.empty(n_rows, h, device=DEVICE, dtype=torch.bfloat16) for _ in range(sets)]
        want = [gen._launch_forward(x, None, w, False, None, False)[0] for x, w in zip(xs, ws, strict=True)]
        cfg = _rt.forward_config(n_rows, h)
        tiles = [(cfg.block_r, cfg.block_h, cfg.num_warps), (1, 4096, 8), (2, 2048, 8), (4, 1024, 8), (1, 2048, 4)]
        tiles = [t for i, t in enumerate(tiles) if t[1] <= max(64, triton.next_power_of_2(h)) and t not in tiles[:i]]

        def each(launch):
            def run():
                for x, w, out in zip(xs, ws, outs, strict=True):
                    launch(x, w, out)

            return run

        variants = {"shipped": each(lambda x, w, out: gen._launch_forward(x, None, w, False, None, False))}
        br, bh, nw = tiles[0]
        variants[f"2d grid {br}x{bh}/{nw}"] = each(
            lambda x, w, out: _fwd_2d[(triton.cdiv(n_rows, br), triton.cdiv(h, bh))](
                x, w, out, n_rows, h, x.stride(0), POLICY="", ORDERED=False, BLOCK_R=br, BLOCK_H=bh, num_warps=nw
            )
        )
        for br, bh, nw in tiles:
            variants[f"ordered {br}x{bh}/{nw}"] = each(
                lambda x, w, out, br=br, bh=bh, nw=nw: _fwd_2d[(triton.cdiv(n_rows, br) * triton.cdiv(h, bh),)](
                    x, w, out, n_rows, h, x.stride(0), POLICY="", ORDERED=True, BLOCK_R=br, BLOCK_H=bh, num_warps=nw
                )
            )
        for block, warps in ((2048, 8), (4096, 8)):
            variants[f"flat {block}/{warps}"] = each(
                lambda x, w, out, b=block, nw=warps: _fwd_flat[(triton.cdiv(n_rows * h, b),)](
                    x, w, out, n_rows * h, h, x.stride(0), POLICY="", BLOCK=b, num_warps=nw
                )
            )
        for name, fn in variants.items():
            for out in outs:
                out.fill_(float("nan"))
            fn()
            if name != "shipped":  # the same math, maybe in another order of fp32 operations
                for out, ref in zip(outs, want, strict=True):
                    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
            us = bench(fn) / sets
            results.append(dict(kind="fwd_order", shape=[n_rows, h], variant=name, us=us, sets=sets))
            print(f"fwd {n_rows}x{h} {name:24s} {us:8.2f} us", flush=True)


def inplace_experiments(results, shapes) -> None:
    """The unweighted SwiGLU backward as shipped (d_x in a fresh buffer) against the same kernel
    writing d_x over its input x, as Liger-Kernel's backward does (it overwrites the inputs it
    was given). Only the destination differs: a test of whether writing over the lines just
    read is what puts Liger ahead at H = 7168 (fwd+bwd 2476 vs 2521 µs at 65536 x 7168)."""
    for n_rows, h in shapes:
        x = torch.randn(n_rows, 2 * h, device=DEVICE, dtype=torch.bfloat16)
        g = torch.randn(n_rows, h, device=DEVICE, dtype=torch.bfloat16)
        want, _, _ = gen._launch_backward(g, x, None, None, None, False, x.dtype)
        over = x.clone()
        fresh = gen._rt.empty

        def in_place(shape, dtype, device):  # d_x takes x's buffer; d_w (empty) keeps its own
            return over if tuple(shape) == tuple(x.shape) else fresh(shape, dtype, device)

        def run_in_place():
            gen._rt.empty = in_place
            try:
                return gen._launch_backward(g, over, None, None, None, False, x.dtype)
            finally:
                gen._rt.empty = fresh

        got, _, _ = run_in_place()
        assert got.data_ptr() == over.data_ptr() and torch.equal(got, want), "in-place d_x differs"
        variants = {
            "shipped (fresh d_x)": lambda: gen._launch_backward(g, x, None, None, None, False, x.dtype),
            "d_x over x": run_in_place,
        }
        for name, fn in variants.items():
            us = bench(fn)
            results.append(dict(kind="bwd_unweighted", shape=[n_rows, h], variant=name, us=us))
            print(f"bwd unweighted {n_rows}x{h} {name:24s} {us:8.1f} us", flush=True)


def weights_only_experiments(results, shapes, copy: float) -> None:
    """The weighted backward (launcher alone, CUDA-graph replays) with store_dx True and False, in
    both layouts: the weight gradients the same bits on the same tiles, within fp32 rounding where
    backward_config gives the form without d_x its own (session 37: [8, 128] x 4 where they pad
    less; another order of the row sums); GB/s from each form's own byte model (x or its fp8 copy,
    g and w read, d_x (if stored) and d_w written) and its share of the copy rate. Kinds
    ``bwd_weights_only <label>``, one per form, so that ab.py compares like with like."""
    from bench import activation_params

    for name in ("swiglu", "quick_geglu"):
        module, params, clamp = activation_params(name)
        mod = importlib.import_module(f"moe_utils.generated.{module}")
        for n_rows, h in shapes:
            x = torch.randn(n_rows, 2 * h, device=DEVICE, dtype=torch.bfloat16)
            g = torch.randn(n_rows, h, device=DEVICE, dtype=torch.bfloat16)
            w = torch.rand(n_rows, device=DEVICE)
            for il, fp8 in ((False, False), (False, True), (True, False), (True, True)):
                x8 = mod._launch_forward(x, None, w, True, clamp, il, *params)[1].view(torch.float8_e4m3fn)
                args = (g, x8 if fp8 else x, None, w, clamp, il, x.dtype, *params)
                forms = {store: functools.partial(mod._launch_backward, *args, store) for store in (True, False)}
                full, alone = forms[True](), forms[False]()
                assert alone[0].numel() == 0, "d_x written without store_dx"
                rule = (n_rows, h, True, _rt.heavy_backward(clamp, fp8, mod._BACKWARD_OPS), fp8, il, clamp is not None)
                try:
                    tiles = {store: _rt.backward_config(*rule, mod._BACKWARD_OPS, store) for store in (True, False)}
                except TypeError:  # a package before session 37 (ab.py's old copy): the store's tiles for both
                    tiles = dict.fromkeys((True, False), _rt.backward_config(*rule, mod._BACKWARD_OPS))
                if tiles[True] == tiles[False]:
                    assert torch.equal(full[1], alone[1]), "d_w differs without d_x on the same tiles"
                else:  # another order of each row's sum
                    torch.testing.assert_close(alone[1], full[1], rtol=1e-5, atol=1e-5 * full[1].abs().max().item())
                for store, fn in forms.items():
                    us = bench(fn)
                    moved = n_rows * (2 * h * (1 if fp8 else 2) + 2 * h + 8 + (4 * h if store else 0))
                    gbs = moved / us / 1e3
                    form = "d_x+d_w" if store else "d_w alone"
                    label = f"{'interleaved ' if il else ''}{'fp8' if fp8 else 'bf16'} {form}"
                    results.append(
                        dict(
                            kind=f"bwd_weights_only {label}", name=name, shape=[n_rows, h], variant=label, us=us,
                            gbs=gbs, config=[tiles[store].block_r, tiles[store].block_h, tiles[store].num_warps],
                        )
                    )  # fmt: skip
                    share = 100 * gbs / copy
                    cfg = tiles[store]
                    print(
                        f"bwd {name:11s} {n_rows}x{h} {label:28s} {us:8.1f} us {gbs:6.0f} GB/s {share:5.1f}%"
                        f"  [{cfg.block_r}, {cfg.block_h}] x {cfg.num_warps}",
                        flush=True,
                    )


def liger_experiments(results, shapes) -> None:
    """The unweighted SwiGLU forward and backward, ours and Liger-Kernel's, each timed alone (bench.py
    times only Liger's forward+backward, where it leads by 1.7-1.8% at H = 7168). Eager medians of
    triton.testing.do_bench for all four (Liger's launches do not survive graph capture here), and
    GB/s from the same byte model: forward reads 2H and writes H per row, backward reads 3H and
    writes 2H. Liger takes gate and up as two contiguous [T, H] tensors (bench.py's layout for it),
    ours one [T, 2H]; its backward overwrites them, which only changes their values here."""
    try:
        from liger_kernel.ops.swiglu import swiglu_backward, swiglu_forward
    except ImportError as exc:
        print(f"Liger-Kernel not available ({exc}); skipping")
        return
    for n_rows, h in shapes:
        x = torch.randn(n_rows, 2 * h, device=DEVICE, dtype=torch.bfloat16)
        g = torch.randn(n_rows, h, device=DEVICE, dtype=torch.bfloat16)
        a, b = x[:, :h].contiguous(), x[:, h:].contiguous()
        variants = {
            ("fwd", "ours"): lambda: gen._launch_forward(x, None, None, False, None, False),
            ("fwd", "liger"): lambda: swiglu_forward(a, b),
            ("bwd", "ours"): lambda: gen._launch_backward(g, x, None, None, None, False, x.dtype),
            ("bwd", "liger"): lambda: swiglu_backward(a, b, g),
        }
        if DRY:  # Liger's kernels do not run in Triton's interpreter (a float scalar's .to())
            variants = {key: fn for key, fn in variants.items() if key[1] == "ours"}
        else:
            ours, _ = gen._launch_forward(x, None, None, False, None, False)
            torch.testing.assert_close(ours.float(), swiglu_forward(a, b)[2].float(), rtol=2e-2, atol=2e-2)
        for (op, impl), fn in variants.items():
            fn()
            us = 1.0 if DRY else triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
            moved = n_rows * h * 2 * (3 if op == "fwd" else 5)
            results.append(dict(kind=f"liger_{op}", shape=[n_rows, h], variant=impl, us=us, gbs=moved / us / 1e3))
            print(f"{op} unweighted {n_rows}x{h} {impl:6s} {us:9.1f} us {moved / us / 1e3:7.0f} GB/s", flush=True)


def _routing_ops(shape, g, inputs: dict | None = None) -> dict:
    """The four fused routing ops at ``shape`` = (tokens, experts, k, hidden), bf16 rows, top-k of
    random scores, as bench.py calls them, and build_plan alone: name -> a function that runs one.
    ``inputs``, if given, receives the source rows, routing map and probs."""
    from sweep import routing_map

    import moe_utils
    from moe_utils.permutation import _launch_permute_backward
    from moe_utils.routing import build_plan
    from moe_utils.unpermutation import _launch_unpermute_backward

    n_tokens, n_experts, k, hidden = shape
    x = torch.randn(n_tokens, hidden, device=DEVICE, dtype=torch.bfloat16, generator=g)
    m = routing_map(n_tokens, n_experts, k, g)
    p = torch.softmax(torch.rand(n_tokens, n_experts, device=DEVICE, generator=g), -1) * m
    n_rows = n_tokens * k
    rows, perm_probs, plan = moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True)
    g_rows, g_probs, g_out = torch.randn_like(rows), torch.randn_like(perm_probs), torch.randn_like(x)
    if inputs is not None:  # for experiments that look at where the inputs live
        inputs.update(x=x, routing_map=m, probs=p)
    return {
        "plan": lambda: build_plan("exp", m, p, n_rows, False),
        "permute_fwd": lambda: moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True),
        "permute_bwd": lambda: _launch_permute_backward(g_rows, g_probs, plan, n_tokens, n_experts, p.dtype),
        "unpermute_fwd": lambda: moe_utils.unpermute(rows, plan, x.shape, p, m, fused=True),
        "unpermute_bwd": lambda: _launch_unpermute_backward(g_out, rows, plan, p, True),
    }


def gather_experiments(results, shapes) -> None:
    """The gather (unpermute forward, permute backward) on its 2-D grid and on the 1-D grid in
    memory order at each shape, whatever the shipped threshold (``_ORDERED_GATHER_ABOVE``, on
    source rows) would pick there: where should the threshold be? Session 10 ran the k = 2 shapes
    (the 2-D grid 6-12% faster at 4096 tokens, the ordered one from 16384); the routing grid then
    showed the ordered grid ahead at 4096 tokens with k = 8, hence the k = 4 and 8 shapes: is the
    rule one on source rows (tokens * k)? Session 11: yes, the 2-D grid below 16384 source rows,
    level at 16384, the grid in memory order from 32768 at any token count."""

    g = torch.Generator(device=DEVICE).manual_seed(0)
    saved = unpermutation._ORDERED_GATHER_ABOVE
    try:
        with torch.no_grad():
            for shape in shapes:
                ops = _routing_ops(shape, g)
                for order, threshold in (("2d", 1 << 62), ("ordered", 0)):
                    unpermutation._ORDERED_GATHER_ABOVE = threshold
                    for kind in ("unpermute_fwd", "permute_bwd"):
                        us = bench(ops[kind])
                        results.append(dict(kind=f"gather_{kind}", shape=list(shape), variant=order, us=us))
                        print(f"{kind:14s} {list(shape)!s:24s} {order:8s} {us:8.1f} us", flush=True)
    finally:
        unpermutation._ORDERED_GATHER_ABOVE = saved


#: Forms of programmatic dependent launch: None off, else the kernels that let the next grid launch at their
#: start (the others: as their programs exit).
_PDL_FORMS = {
    "pdl off": None,
    "pdl wait": (),
    "pdl plan trigger": ("count", "scan", "map"),
    "pdl trigger": tuple(_rt.PDL_TRIGGER),  # every routing kernel
}


#: --cold: --only ops and the forms kinds also time each op with L2 cold (cold_us).
COLD = [False]


def cold_us(fn, calls: int = 40) -> float:
    """µs of fn with L2 cold: a CUDA graph of ``calls`` calls, each after a read of 256 MiB (which
    leaves L2 full of other, clean lines), less a graph of the reads alone. bench() replays the op
    back to back on one input set, which rewards a form that leaves its inputs in L2 for the next
    call; a training step never runs an op twice on the same tensors. Session 25: evict-first
    loads with streaming stores in the scatter-dot ran 9-14% faster back to back at 4096 tokens
    and slower cold (commit 59bad57). The read before each call adds 1-8 µs to an op (call 5:
    about 1 to the gathers from 16384 tokens, 4-5 to the scatter-dot at every size, 5-8 to the
    permute forward; the dirty lines an op leaves for the read to write back, and the plan's
    chains of loads missing L2): compare cold times with cold times.
    (triton's do_bench flushes L2 between eager calls, but at these sizes it timed host gaps.)"""
    if DRY:
        fn()
        return 1.0
    scratch = torch.ones(128 << 20, device=DEVICE, dtype=torch.bfloat16)

    def read() -> None:
        scratch.sum()

    base = _replay_timer(read, calls)()
    return _replay_timer(lambda: (read(), fn()), calls)() - base


def _timed(fn, **fields) -> tuple[dict, str]:
    """A result row for fn (``fields`` and its bench() time in us, with --cold its cold_us too)
    and the times as printed."""
    row = dict(fields, us=bench(fn))
    if COLD[0]:
        row["cold_us"] = cold_us(fn)
    return row, f"{row['us']:8.1f} us" + (f"  cold {row['cold_us']:8.1f} us" if COLD[0] else "")


def _forms_experiment(results, shapes, kinds, forms, use, exact: bool = True, ops_for=None, tag=None) -> None:
    """Each op of ``kinds`` (of ``ops_for(shape, generator)``, _routing_ops unless given) at each
    shape under each of ``forms`` (name -> value, set by ``use(value)``): outputs poisoned and
    checked bit-equal across forms (or, not ``exact``, within fp32 rounding of sums of a few
    thousand terms: forms that sum in another order), then timed. ``tag`` is appended to the
    shapes recorded."""

    def flat(out) -> list:
        return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]

    g = torch.Generator(device=DEVICE).manual_seed(0)
    with torch.no_grad():
        for shape in shapes:
            ops = (ops_for or _routing_ops)(shape, g)
            label = [*shape, tag] if tag else list(shape)
            for kind in kinds:
                want = None
                for name, form in forms.items():
                    use(form)
                    with _rt.poisoned_outputs():
                        got = [t.clone() for t in flat(ops[kind]())]
                    want = want or got
                    for a, b in zip(want, got, strict=True):
                        same = torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-4, atol=1e-3)
                        assert same, f"{kind} with {name} differs at {label}"
                    row, times = _timed(ops[kind], kind=kind, shape=label, variant=name)
                    results.append(row)
                    print(f"{kind:14s} {label!s:24s} {name:18s} {times}", flush=True)


def _pdl_forms_experiment(results, shapes, kinds, forms) -> None:
    """Ops of ``kinds`` under each of ``forms`` through the package's switches: a form is None (PDL
    off) or the routing kernels that let the next launch at their start, plus "early" where
    permute's scatter loads its source rows before it waits, and "rule" where the scan triggers by
    shape (``_runtime.PDL``, ``PDL_TRIGGER``, ``PDL_EARLY_SOURCE``, ``PDL_SCAN_TRIGGER_UP_TO``);
    all four restored afterwards."""
    saved = _rt.PDL, dict(_rt.PDL_TRIGGER), _rt.PDL_EARLY_SOURCE, _rt.PDL_SCAN_TRIGGER_UP_TO

    def use(form) -> None:
        _rt.PDL = form is not None
        for kernel in _rt.PDL_TRIGGER:
            _rt.PDL_TRIGGER[kernel] = form is not None and kernel in form
        _rt.PDL_EARLY_SOURCE = form is not None and "early" in form
        _rt.PDL_SCAN_TRIGGER_UP_TO = saved[3] if form is not None and "rule" in form else (0, 0)

    try:
        _forms_experiment(results, shapes, kinds, forms, use)
    finally:
        _rt.PDL, _rt.PDL_EARLY_SOURCE, _rt.PDL_SCAN_TRIGGER_UP_TO = saved[0], saved[2], saved[3]
        _rt.PDL_TRIGGER.update(saved[1])


def pdl_experiments(results, shapes) -> None:
    """The four fused routing ops (bench.py's calls) under each form of ``_PDL_FORMS``, through the
    package's own switches. Programmatic dependent launch (Hopper) lets a kernel launch and start
    while the one before it finishes; each kernel waits for that one's writes before it reads
    anything. permute's forward is four launches in a row (count, scan, map, scatter), at 4096
    tokens 20-26 µs against a 12-15 µs copy on the H200. The forms are session 13's, without the
    early source (``--only early`` times that). Under the interpreter every form runs without PDL
    (pdl_args), which checks only the script."""
    kinds = ("permute_fwd", "permute_bwd", "unpermute_fwd", "unpermute_bwd")
    _pdl_forms_experiment(results, shapes, kinds, _PDL_FORMS)


#: --only early: kernels that let the next launch at their start, "early": permute's scatter
#: loads its source rows before it waits (``_runtime.PDL_EARLY_SOURCE``), and "rule": the scan
#: kernel triggers too where the routing map is small (``_runtime.PDL_SCAN_TRIGGER_UP_TO``; off in
#: every other form). The last form is the one shipped since session 17.
_EARLY_FORMS = {
    "pdl wait": (),
    "map trigger": ("map",),
    "map trigger, early source": ("map", "early"),
    "plan trigger, early source": ("count", "scan", "map", "early"),
    "scan trigger, early source": ("scan", "map", "early"),
    "count trigger, early source": ("count", "map", "early"),
    "map trigger, early source, rule": ("map", "early", "rule"),
    "count trigger, early source, rule": ("count", "map", "early", "rule"),
}


def early_experiments(results, shapes) -> None:
    """permute's forward with the map kernel letting the scatter launch at its start, and the
    scatter loading its source rows before it waits for the map kernel (the rows are the op's
    input), against every kernel waiting (session 14 run 2: the plan's kernels triggering alone
    were 4-9% slower at 256 experts, 8% faster at 4096 x 8 x 2); since session 17 also the count
    kernel, or the scan kernel, or both triggering, and the scan's trigger by shape ("rule")."""
    _pdl_forms_experiment(results, shapes, ("permute_fwd",), _EARLY_FORMS)


def scan_in_map_experiments(results, shapes) -> None:
    """The plan with the scan kernel, or the map kernel doing the scan's work where the count
    table's tile has at most 4096 or 8192 counts (the package's switch ``routing._SCAN_IN_MAP``,
    4096 shipped), summing 1024 counts at a time (``routing._SCAN_IN_MAP_TILE``, shipped) or the
    whole table at once (4096: 255 registers and spills at 16384 x 8): one launch fewer at 4096 x 8
    (128 segments x 8 experts) and 16384 x 8 (512 segments), 65536 x 8 (1024 segments) within
    8192. Session 17 call 5 ran 1024 and 4096 at once."""
    forms = {
        "scan kernel": (0, 1024),
        "map kernel scans <= 4096 counts at once": (4096, 4096),
        "map kernel scans <= 8192 counts, 1024 at a time": (8192, 1024),
        "map kernel scans <= 4096 counts, 1024 at a time": (4096, 1024),
    }
    _plan_switch_experiment(results, shapes, ("_SCAN_IN_MAP", "_SCAN_IN_MAP_TILE"), forms)


def segment_scan_experiments(results, shapes) -> None:
    """Fewer, longer segments so that the count table is small enough for the map kernel to do the
    scan's work (``routing._MAX_SEGMENTS``, ``_SCAN_IN_MAP``, ``_SCAN_IN_MAP_TILE``), at the
    4096-token shapes with E >= 64 where the plan's three launches are a third of the permute: at
    most 256 or 64 segments (the rule doubles them for long one-warp walks: 4096 x 64 runs 256 or
    128), with the scan kernel or the map kernel summing 2048 counts at a time, against the
    shipped 1024 segments."""
    forms = {"shipped": (routing._MAX_SEGMENTS, routing._SCAN_IN_MAP, routing._SCAN_IN_MAP_TILE)}
    for most in (256, 64):
        forms[f"<= {most} segments, scan kernel"] = (most, 0, 2048)
        forms[f"<= {most} segments, map kernel scans"] = (most, 1 << 17, 2048)
    _plan_switch_experiment(results, shapes, ("_MAX_SEGMENTS", "_SCAN_IN_MAP", "_SCAN_IN_MAP_TILE"), forms)


def _switch_experiment(results, shapes, module, names: tuple[str, ...], forms: dict, kinds, exact=True) -> None:
    """_forms_experiment over the package's switches: each form is a tuple of values for ``names``
    (attributes of ``module``), set before the form runs; all restored afterwards."""
    saved = tuple(getattr(module, n) for n in names)

    def use(form) -> None:
        for n, v in zip(names, form, strict=True):
            setattr(module, n, v)

    try:
        _forms_experiment(results, shapes, kinds, forms, use, exact)
    finally:
        use(saved)


def _plan_switch_experiment(results, shapes, name: str | tuple[str, ...], forms: dict) -> None:
    """build_plan and the fused permute forward with ``routing.<name>`` set to each value of forms
    (_forms_experiment: outputs checked bit-equal, then timed), restored afterwards. With a tuple
    of names each form is a tuple of their values."""
    if isinstance(name, str):
        name, forms = (name,), {label: (value,) for label, value in forms.items()}
    _switch_experiment(results, shapes, routing, name, forms, ("plan", "permute_fwd"))


def words_experiments(results, shapes) -> None:
    """The map kernel's one-token steps over uint64 words of the map (``routing._MAP_WORDS``, the
    rule ``routing._map_words``: byte maps, E > 128 and a multiple of 8, segments under 256
    tokens) against its tile walk: build_plan and the fused permute forward. On the CPU the word
    step compiled for sm_90 was 126 SASS on its one-entry-a-thread path against the tile walk's
    205, 96 registers against 80 (session 25)."""
    _plan_switch_experiment(results, shapes, "_MAP_WORDS", {"tile walk": False, "word walk": True})


def word_pairs_experiments(results, shapes) -> None:
    """The map kernel's word walk in two-token steps (``routing._WORDS_PAIRS``: the two tokens'
    group counts packed in one int32, one scan and one sum across the warp for both) against
    one-token steps: build_plan and the fused permute forward where the word walk runs (top-2 of
    129-256 experts from 16384 tokens). On the CPU (sm_90 SASS): 633 instructions a two-token
    step against 321 a one-token step, 120 registers against 96."""
    _plan_switch_experiment(results, shapes, "_WORDS_PAIRS", {"one token a step": False, "two tokens a step": True})


def prefetch_experiments(results, shapes) -> None:
    """The map kernel's prefetch off and on (the package's switch ``routing._MAP_PREFETCH``):
    loading each step's routing-map tile during the step before, above that step's stores, which
    the compiler cannot move a load past. Session 14's profile had the map kernel at 42 µs of 270
    at (65536, 256, 2, 2048), a walk of 32 one-token steps per segment."""
    _plan_switch_experiment(results, shapes, "_MAP_PREFETCH", {"map prefetch off": False, "map prefetch on": True})


def store_experiments(results, shapes) -> None:
    """permute's scatter with plain stores, with streaming stores (.cs) as shipped (top-4 and more,
    outputs of 256 MiB and more: ``permutation._STREAM_STORE_K``, ``_STREAM_STORE_BYTES``), at
    top-4 and more at any size, and at top-2 and more at any size: where does the rule's edge
    belong? (Session 21 call 3: shipped 1.1-1.3% faster at six top-8 shapes of 268 MiB to 8.6 GB.)"""
    from moe_utils import permutation

    names = ("_STREAM_STORE_K", "_STREAM_STORE_BYTES")
    shipped = tuple(getattr(permutation, n) for n in names)
    forms = {
        "plain stores": (shipped[0], 1 << 62),
        "shipped rule": shipped,
        "top-4+, any size": (4, 0),
        "top-2+, any size": (2, 0),
    }
    _switch_experiment(results, shapes, permutation, names, forms, ("permute_fwd",))


def tiles_experiments(results, shapes) -> None:
    """The gather (unpermute forward, permute backward) in column blocks of 512, 1024 or 2048 on
    the grid the shipped rule picks (``unpermutation._GATHER_BLOCK_H`` on the 2-D grid,
    ``_ORDERED_GATHER_BLOCK_H`` in memory order, ``_NARROW_GATHER_BLOCK_H`` where its rule holds),
    and unpermute's backward (the scatter-dot) in column steps of 1024, 2048 or 512 up to 2048
    columns (``_DOT_BLOCK_H``, ``_DOT_TOP4_BLOCK_H``), each against the shipped rules. Session 22
    calls 1-2 (with 1024 on both grids then): on the 2-D grid 1024 best; in memory order 2048
    2-6.5% faster at 12 of 14 shapes (65536 x 64 x 2 x 2048 unpermute fwd 201.6 -> 190.4 µs),
    hence the shipped 2048 there; 8 warps at 2048 columns slower everywhere; the scatter-dot's
    1024 best at top-2, level at top-8. Call 6: unpermute fwd at top-8 of at most 8192 tokens and
    2048 columns faster with 512 (``_NARROW_GATHER_BLOCK_H``), the scatter-dot at top-4 with 2048
    (``_DOT_TOP4_BLOCK_H``), both shipped after it."""
    names = (
        "_GATHER_BLOCK_H",
        "_ORDERED_GATHER_BLOCK_H",
        "_NARROW_GATHER_BLOCK_H",
        "_DOT_BLOCK_H",
        "_DOT_TOP4_BLOCK_H",
    )
    shipped = tuple(getattr(unpermutation, n) for n in names)
    gather = {f"{b} columns": (b, b, b, *shipped[3:]) for b in (1024, 2048, 512)}
    gather["shipped"] = shipped
    dot = {f"dot {b}": (*shipped[:3], b, b) for b in (1024, 2048, 512)}
    dot["dot shipped"] = shipped
    _switch_experiment(results, shapes, unpermutation, names, gather, ("permute_bwd", "unpermute_fwd"))
    _switch_experiment(results, shapes, unpermutation, names, dot, ("unpermute_bwd",), exact=False)


def row_store_experiments(results, shapes) -> None:
    """permute's backward (the gather with the probs gradient) with d_probs's rows stored as zeros,
    then a barrier, then each entry's value, and with each row built in registers and stored once
    per token, at every expert count and k (``unpermutation._ROW_STORE_MOST_E``,
    ``_ROW_STORE_MANY_K``), and as shipped. Session 23 call 3 (with the same switch in unpermute's
    scatter-dot too, commit 5ff0ff0): the row store 2.5-10% faster in permute's backward up to 256
    experts at the shapes timed, 2.8% slower at 1024; in the scatter-dot 1-8% slower at 8 of 10
    shapes. Call 5: at top-8 with 8-128 experts 1.4-3.1% slower at 4096 tokens, 0.8% at 16384 x 128
    x 8 x 4096, 0.9-1.1% faster at 2048 columns from 16384 tokens. Shipped for permute's backward
    up to 256 experts, at top-8 only at 129-256."""
    names = ("_ROW_STORE_MOST_E", "_ROW_STORE_MANY_K")
    shipped = tuple(getattr(unpermutation, n) for n in names)
    forms = {"zeros, barrier": (0, 1 << 30), "row store": (1024, 1 << 30), "shipped": shipped}
    _switch_experiment(results, shapes, unpermutation, names, forms, ("permute_bwd",))


def group_experiments(results, shapes) -> None:
    """The map kernel's expert groups (GROUP, the tiles' last dimension, ``routing._map_group``) of
    8 (shipped), 4, 2 and 1 experts. Session 15's 3-D tiles made build_plan 0.2-0.7 µs slower at
    E = 8 ([32, 1, 8] tiles) while every wider E gained: is it the group?"""
    forms = {f"group {g}": (lambda block_e, g=g: min(g, block_e)) for g in (8, 4, 2, 1)}
    _plan_switch_experiment(results, shapes, "_map_group", forms)


def segments_experiments(results, shapes) -> None:
    """Segments of at least 1, 8 and 16 tokens (the package's switch
    ``routing._MIN_SEGMENT_TOKENS``): at 4096 tokens and 64-1024 experts the shipped rule's 1024
    segments are 1-4 tokens long."""
    forms = {f"segments >= {n} tokens": n for n in (1, 8, 16)}
    _plan_switch_experiment(results, shapes, "_MIN_SEGMENT_TOKENS", forms)


def segment_warps_experiments(results, shapes) -> None:
    """Segments of at least 8 tokens only where the map kernel runs several warps (shipped) or at
    every warp count (the package's switch ``routing._MIN_SEGMENT_WARPS``). Session 15 run 3 had
    the rule at one warp mixed in the permute forward at 4096 tokens; session 16's plan sweep had
    512 segments ahead at 4096 x 256 x 2 (12.7 against 13.6 µs, the whole plan)."""
    forms = {"rule from 2 warps": 2, "rule at every warp count": 1}
    _plan_switch_experiment(results, shapes, "_MIN_SEGMENT_WARPS", forms)


def counts_experiments(results, shapes) -> None:
    """The scan's size bound (the package's switch ``routing._MOST_COUNTS``): at most 2^19 counts
    (segments x experts) unless the walks pass 64 steps, against no bound (1024 segments at
    E = 1024)."""
    forms = {"at most 2^19 counts": 1 << 19, "no bound on counts": 1 << 40}
    _plan_switch_experiment(results, shapes, "_MOST_COUNTS", forms)


def _recording(fn, seen: list):
    """fn, noting the address of its first output at every call (the eager warm-up call and every
    call a CUDA-graph capture records)."""

    def call():
        out = fn()
        seen.append((out[0] if isinstance(out, tuple) else out).data_ptr())
        return out

    return call


def _replay_timer(fn, calls: int = 200):
    """A function that times fn from one CUDA graph of ``calls`` calls, captured now (so the
    outputs' memory is fixed before any timing): µs per call, median of do_bench's replays.

    The returned function holds fn, and through it the inputs its calls read: the graph replays
    kernels on their addresses. Session 21's version held only the graph; the caller's next
    inputs then took the freed plan's memory, and a replay's gather read rows from whatever
    landed there (an illegal memory access at the second timing)."""
    fn()
    if DRY:
        return lambda: 1.0
    torch.cuda.synchronize()

    def body() -> None:
        for _ in range(calls):
            fn()

    graph = capture_graph(fn, body)

    def timer(fn=fn) -> float:  # fn kept alive with the graph
        return triton.testing.do_bench(graph.replay, warmup=5, rep=20, return_mode="median") * 1e3 / calls

    return timer


def realloc_experiments(results, shapes, copies: int = 6, captured_once: bool = False) -> None:
    """The permute forward and the unpermute forward at each shape over several fresh allocations
    of the same inputs in one process (the same seed each time; the earlier copies stay alive, so
    each lands on other memory): does a small op's time follow its buffers? Session 18 had 4096 x
    8 x 2 x 2048 at 16.0 or 17.0 µs per process, whichever package ran. Each shape's copies are
    timed twice: in allocation order, then in reverse (a level that follows the copy is the
    memory's, one that follows the order is the process's). Prints the source rows' address
    modulo 2 MiB beside each time (virtual: the physical pages may differ per process), and the
    first output's (permuted rows, unpermuted tokens): modulo 2 MiB, its distance from the first
    timing's in MiB, how many addresses the timing's calls used and whether any was new to the
    process. Session 20: the first three timings in a process are slow whatever the inputs, so
    the outputs, which every capture allocates anew, were the suspect left (NOTES Next 3).

    ``captured_once`` (``--realloc-captured-once``): every (copy, op) is captured in one CUDA graph
    of 200 calls before anything is timed, and each timing replays its graph: no allocation and
    no capture between timings. If the first timings are still slow then, the outputs are not
    the cause. Session 23 call 2: none is slow that way (4096 x 8 x 2 x 2048 at 15.5-15.8 µs from
    the first timing on)."""
    started = time.time()
    seen_before: set = set()
    base: list = []
    with torch.no_grad():
        for shape in shapes:
            kept = []
            for _ in range(copies):
                g = torch.Generator(device=DEVICE).manual_seed(0)
                inputs: dict = {}
                ops = _routing_ops(shape, g, inputs)
                timers = {}
                for kind in ("permute_fwd", "unpermute_fwd"):
                    seen: list = []
                    fn = _recording(ops[kind], seen)
                    timers[kind] = (_replay_timer(fn), seen) if captured_once else (lambda fn=fn: bench(fn), seen)
                kept.append((timers, inputs))
            for rep, order in enumerate((range(copies), reversed(range(copies)))):
                for copy in order:
                    timers, inputs = kept[copy]
                    for kind in ("permute_fwd", "unpermute_fwd"):
                        timer, seen = timers[kind]
                        if not captured_once:
                            seen.clear()
                        us = timer()
                        offset = inputs["x"].data_ptr() % (2 << 20)
                        out_at = seen[-1] if seen else 0
                        base = base or [out_at]
                        fresh = bool(set(seen) - seen_before)
                        seen_before.update(seen)
                        row = dict(
                            kind=f"realloc_{kind}", shape=list(shape), variant=copy, us=us, offset=offset,
                            out_offset=out_at % (2 << 20), out_mib=(out_at - base[0]) / 2**20,
                            out_addresses=len(set(seen)), out_fresh=fresh, captured_once=captured_once,
                        )  # fmt: skip
                        results.append({**row, "pass": rep, "t_s": time.time() - started})
                        print(
                            f"{kind:14s} {list(shape)!s:24s} pass {rep} copy {copy} x at {offset:>8d} {us:8.1f} us"
                            f" at {time.time() - started:5.1f} s; out at {out_at % (2 << 20):>8d}"
                            f" ({row['out_mib']:+9.1f} MiB, {row['out_addresses']} addresses"
                            f"{', new' if fresh else ''})",
                            flush=True,
                        )


@triton.jit
def _write_rows_kernel(src_ptr, dst_ptr, rows_ptr, hidden, K: tl.constexpr, BLOCK_H: tl.constexpr, CACHE: tl.constexpr):
    # Program p reads source row p once and writes it to rows rows[p * K] .. rows[p * K + K - 1] of
    # dst (stores with the cache modifier CACHE): the permute scatter's bare loop, no plan loads.
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    ok = cols < hidden
    x = tl.load(src_ptr + pid * hidden + cols, mask=ok)
    for j in tl.static_range(K):
        row = tl.load(rows_ptr + pid * K + j)
        tl.store(dst_ptr + row * hidden + cols, x, mask=ok, cache_modifier=CACHE)


@triton.jit
def _write_rows_tma_kernel(src_ptr, dst_desc, rows_ptr, hidden, K: tl.constexpr, BLOCK_H: tl.constexpr,
                           BOX: tl.constexpr):  # fmt: skip
    # The same with TMA stores of [1, BOX] boxes (Hopper's bulk tensor copies from shared memory).
    pid = tl.program_id(0).to(tl.int64)
    for c in tl.static_range(0, BLOCK_H, BOX):
        cols = c + tl.arange(0, BOX)
        x = tl.load(src_ptr + pid * hidden + cols[None, :], mask=(cols < hidden)[None, :])
        for j in tl.static_range(K):
            row = tl.load(rows_ptr + pid * K + j).to(tl.int32)
            dst_desc.store([row, c], x)


@triton.jit
def _gather_rows_kernel(src_ptr, dst_ptr, rows_ptr, toks_ptr, n, hidden, R: tl.constexpr, BLOCK_H: tl.constexpr,
                        CACHE: tl.constexpr):  # fmt: skip
    # Program p copies R (row, token) pairs, positions p * R .. p * R + R - 1 of the lists:
    # dst[rows[i]] = src[toks[i]], BLOCK_H columns at a time. The order of the pairs is the order
    # of the writes (--only worder).
    i = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)
    ok = i < n
    row = tl.load(rows_ptr + i, mask=ok, other=0)
    tok = tl.load(toks_ptr + i, mask=ok, other=0)
    for c in range(0, hidden, BLOCK_H):
        cols = c + tl.arange(0, BLOCK_H)
        m = ok[:, None] & (cols < hidden)[None, :]
        x = tl.load(src_ptr + tok[:, None] * hidden + cols[None, :], mask=m)
        tl.store(dst_ptr + row[:, None] * hidden + cols[None, :], x, mask=m, cache_modifier=CACHE)


def write_order_experiments(results, shapes) -> None:
    """Does the order of permute's writes cost it (session 21 call 2: the bare pattern 3-5 points
    of copy slower with its rows permuted; call 7: 8% between the scatter's rows and rows in order
    at 65536 x 256 x 2)? At each routing shape, the rows of the shipped plan copied: by the shipped
    scatter (no plan programs), by the bare pattern over the plan's rows and over rows in order
    (each token's k rows next to each other: what no plan gives), and as a gather of (row, token)
    pairs, R = 4 a program, in windows of W tokens: the pairs sorted by (token // W, row), so
    that a window's rows of one expert are written one after another and its source rows are
    read k times while they are in L2 (W = all: the rows in memory order; W = 1: the scatter's
    order). The stores' cache modifier follows the shipped rule (_streaming_stores). Outputs
    poisoned and checked bit-equal to the scatter's; with --cold also timed cold."""
    from sweep import routing_map

    import moe_utils
    from moe_utils.permutation import _streaming_stores, scatter_rows
    from moe_utils.routing import plan_view

    g = torch.Generator(device=DEVICE).manual_seed(0)
    for n_tokens, n_experts, k, hidden in shapes:
        m = routing_map(n_tokens, n_experts, k, g)
        x = torch.randn(n_tokens, hidden, device=DEVICE, dtype=torch.bfloat16, generator=g)
        _, _, plan = moe_utils.permute(x, m, fused=True)
        n_rows = n_tokens * k
        view = plan_view("exp", plan, n_tokens, n_rows)
        want = torch.empty(n_rows, hidden, device=DEVICE, dtype=x.dtype)
        scatter_rows(x, want, view)
        out = torch.empty_like(want)
        cache = ".cs" if _streaming_stores(k, n_rows, hidden, x.element_size()) else ""
        block_h = min(triton.next_power_of_2(hidden), 2048)
        plan_rows = view.entry >> routing.EXPERT_BITS  # token t's rows at t * k .. t * k + k - 1 (exact top-k)
        in_order = torch.arange(n_rows, device=DEVICE)
        in_order_src = torch.arange(n_tokens, device=DEVICE).repeat_interleave(k)
        want_in_order = x.repeat_interleave(k, 0)
        variants = {"scatter (shipped)": (lambda: scatter_rows(x, out, view), want)}
        for name, rows in (("bare, plan rows", plan_rows), ("bare, rows in order", in_order)):
            variants[name] = (
                lambda rows=rows: _write_rows_kernel[(n_tokens,)](
                    x, out, rows, hidden, K=k, BLOCK_H=triton.next_power_of_2(hidden), CACHE=cache, num_warps=4
                ),
                want if rows is plan_rows else want_in_order,
            )
        src_token = view.src_token
        for w in (1, 16, 128, 1024, 4096, "all"):
            key = in_order if w == "all" else (src_token // w) * n_rows + in_order
            order = torch.argsort(key)
            rows, toks = order.contiguous(), src_token[order].contiguous()
            variants[f"gather W={w} R=4"] = (
                lambda rows=rows, toks=toks: _gather_rows_kernel[(triton.cdiv(n_rows, 4),)](
                    x, out, rows, toks, n_rows, hidden, R=4, BLOCK_H=block_h, CACHE=cache, num_warps=4
                ),
                want,
            )
        variants["gather in order R=4"] = (
            lambda: _gather_rows_kernel[(triton.cdiv(n_rows, 4),)](
                x, out, in_order, in_order_src, n_rows, hidden, R=4, BLOCK_H=block_h, CACHE=cache, num_warps=4
            ),
            want_in_order,
        )
        moved = (n_tokens + n_rows) * hidden * 2
        shape = [n_tokens, n_experts, k, hidden]
        for name, (fn, expect) in variants.items():
            out.fill_(float("nan"))
            fn()
            assert torch.equal(out, expect), f"worder variant {name} differs at {shape}"
            row, times = _timed(fn, kind="worder", shape=shape, variant=name)
            results.append(row)
            print(f"worder {shape!s:24s} {name:22s} {times} {moved / row['us'] / 1e3:7.0f} GB/s", flush=True)


@triton.jit
def _segment_copy_kernel(src_ptr, dst_ptr, rows_ptr, n_tokens, seg_len, hidden, K: tl.constexpr,
                         BLOCK_H: tl.constexpr, AHEAD: tl.constexpr, CACHE: tl.constexpr):  # fmt: skip
    # Program s walks the tokens of segment s (seg_len of them) one after another, as the plan's
    # map kernel does, and copies each token's row to its K rows (rows[t * K + j]): the copy of a
    # permute whose map walk also scatters (--only segcopy). AHEAD: each token's row (hidden <=
    # BLOCK_H) is loaded during the step before.
    first = tl.program_id(0).to(tl.int64) * seg_len
    cols = tl.arange(0, BLOCK_H)
    c_ok = cols < hidden
    if AHEAD:
        x_next = tl.load(src_ptr + first * hidden + cols, mask=c_ok & (first < n_tokens))
    for off in range(0, seg_len):
        t = first + off
        if AHEAD:
            x = x_next
            x_next = tl.load(src_ptr + (t + 1) * hidden + cols, mask=c_ok & (t + 1 < n_tokens))
            for j in tl.static_range(K):
                row = tl.load(rows_ptr + t * K + j, mask=t < n_tokens, other=0)
                tl.store(dst_ptr + row * hidden + cols, x, mask=c_ok & (t < n_tokens), cache_modifier=CACHE)
        else:
            for c in range(0, hidden, BLOCK_H):
                cc = c + cols
                ok = (cc < hidden) & (t < n_tokens)
                x = tl.load(src_ptr + t * hidden + cc, mask=ok)
                for j in tl.static_range(K):
                    row = tl.load(rows_ptr + t * K + j, mask=t < n_tokens, other=0)
                    tl.store(dst_ptr + row * hidden + cc, x, mask=ok, cache_modifier=CACHE)


def _count_and_scan(m: torch.Tensor) -> None:
    """The plan's first two launches (count, scan) as build_plan makes them, with num_out_tokens."""
    seg_len, n_seg, block_t, block_e = routing._segments(*m.shape)
    scan_in_map = routing._scan_in_map(triton.next_power_of_2(n_seg), block_e)
    routing._count_and_scan(routing._map_pointer(m), seg_len, n_seg, block_t, block_e, scan_in_map)


def segment_copy_experiments(results, shapes) -> None:
    """Would a permute whose map walk also copies the rows (one program per segment of tokens,
    walking them in order as the map kernel does, no map kernel and no scatter launch of its own)
    be faster? Its copy's pattern, bare: _segment_copy_kernel over the shipped plan's rows, with
    the plan's segments and twice / half as many, 1, 2 or 4 warps, each token's row loaded a step
    ahead or not; beside the shipped permute, build_plan, its count and scan launches alone, and
    the scatter as permute launches it. Such a permute would take about count + scan + the copy
    (if the walk, 26-36 µs at 65536 x 256, hides under it). Outputs checked bit-equal."""
    from sweep import routing_map

    import moe_utils
    from moe_utils.permutation import _streaming_stores, scatter_rows
    from moe_utils.routing import build_plan, plan_view

    g = torch.Generator(device=DEVICE).manual_seed(0)
    for n_tokens, n_experts, k, hidden in shapes:
        m = routing_map(n_tokens, n_experts, k, g)
        x = torch.randn(n_tokens, hidden, device=DEVICE, dtype=torch.bfloat16, generator=g)
        p = torch.softmax(torch.rand(n_tokens, n_experts, device=DEVICE, generator=g), -1) * m
        n_rows = n_tokens * k
        plan, rest, _ = build_plan("exp", m, p, n_rows, False)
        view = plan_view("exp", plan, n_tokens, n_rows)
        want = torch.empty(n_rows, hidden, device=DEVICE, dtype=x.dtype)
        scatter_rows(x, want, view, rest=rest)  # src_token too: the padding programs read it without rest
        out = torch.empty_like(want)
        rows = (view.entry >> routing.EXPERT_BITS).contiguous()  # token t's rows at t * k .. (exact top-k)
        cache = ".cs" if _streaming_stores(k, n_rows, hidden, x.element_size()) else ""
        seg_len = routing._segments(n_tokens, n_experts)[0]
        variants = {
            "permute (shipped)": (lambda: moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True), None),
            "build_plan": (lambda: build_plan("exp", m, p, n_rows, False), None),
            "count + scan": (lambda: _count_and_scan(m), None),
            "scatter with plan programs": (lambda: scatter_rows(x, out, view, rest=rest), want),
            "scatter": (lambda: scatter_rows(x, out, view), want),
        }
        for seg in (seg_len // 2, seg_len, 2 * seg_len):
            if seg < 1:
                continue
            for warps in (1, 2, 4):
                for ahead in (False, True):
                    block_h = triton.next_power_of_2(hidden) if ahead else min(triton.next_power_of_2(hidden), 2048)
                    if ahead and block_h > 32 * warps * 64:  # at most 64 elements a thread
                        continue

                    def run(seg=seg, warps=warps, ahead=ahead, block_h=block_h) -> None:
                        _segment_copy_kernel[(triton.cdiv(n_tokens, seg),)](
                            x, out, rows, n_tokens, seg, hidden, K=k, BLOCK_H=block_h, AHEAD=ahead, CACHE=cache,
                            num_warps=warps,
                        )  # fmt: skip

                    variants[f"segment copy {seg} tokens, {warps} warps{', ahead' if ahead else ''}"] = (run, want)
        moved = (n_tokens + n_rows) * hidden * 2
        shape = [n_tokens, n_experts, k, hidden]
        for name, (fn, expect) in variants.items():
            if expect is not None:
                out.fill_(float("nan"))
                fn()
                assert torch.equal(out, expect), f"segcopy variant {name} differs at {shape}"
            row, times = _timed(fn, kind="segcopy", shape=shape, variant=name, seg_len=seg_len)
            results.append(row)
            print(f"segcopy {shape!s:24s} {name:42s} {times} {moved / row['us'] / 1e3:7.0f} GB/s", flush=True)


def write_roof_experiments(results, shapes) -> None:
    """Writes against the copy (NOTES, session 12: fill_ ran at 79% of copy, the bare scatter loop
    at 87%, which caps a top-8 permute near 90%). At each (source rows, k, hidden): torch's fill_
    of the k x rows output, then the scatter's pattern (each source row read once, written to k
    rows: in order, or to a random permutation of the rows) with plain stores, streaming stores
    (.cs) and TMA stores of [1, 256] boxes; GB/s of bytes read + written, and % of the copy."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    copy = sweep_copy_gbs()
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for n_src, k, hidden in shapes:
        src = torch.randn(n_src, hidden, device=DEVICE, dtype=torch.bfloat16, generator=g)
        dst = torch.empty(n_src * k, hidden, device=DEVICE, dtype=torch.bfloat16)
        block_h = triton.next_power_of_2(hidden)
        box = min(256, block_h)
        orders = {
            "in order": torch.arange(n_src * k, device=DEVICE).view(k, n_src).t().contiguous().view(-1),
            "permuted": torch.randperm(n_src * k, device=DEVICE, generator=g),
        }
        write_bytes = dst.numel() * 2
        variants = {"fill_": (lambda: dst.fill_(1.0), write_bytes)}
        for order, rows in orders.items():
            grid = (n_src,)
            args = (src, dst, rows, hidden)
            for cache in ("", ".cs"):
                variants[f"stores{cache} {order}"] = (
                    lambda args=args, cache=cache: _write_rows_kernel[grid](
                        *args, K=k, BLOCK_H=block_h, CACHE=cache, num_warps=4
                    ),
                    write_bytes + src.numel() * 2,
                )
            desc = None if DRY else TensorDescriptor.from_tensor(dst, block_shape=[1, box])
            if desc is not None:
                variants[f"tma {order}"] = (
                    lambda desc=desc, rows=rows: _write_rows_tma_kernel[grid](
                        src, desc, rows, hidden, K=k, BLOCK_H=block_h, BOX=box, num_warps=4
                    ),
                    write_bytes + src.numel() * 2,
                )
        for name, (fn, nbytes) in variants.items():
            us = bench(fn)
            gbs = nbytes / us / 1e3
            results.append(dict(kind="writeroof", shape=[n_src, k, hidden], variant=name, us=us, gbs=gbs, copy=copy))
            pct = 100 * gbs / copy
            print(f"{[n_src, k, hidden]!s:22s} {name:22s} {us:9.1f} us {gbs:7.0f} GB/s {pct:5.1f}% of copy", flush=True)


def _drop_and_pad_ops(shape, g) -> dict:
    """permute's forward and unpermute's backward (the scatter-dot) with drop_and_pad at shape =
    (tokens, experts, k, hidden): capacity 1.25 x the mean rows an expert (each expert keeps its
    first tokens), so that about a fifth of the rows are padding the padding programs zero."""
    from sweep import routing_map

    import moe_utils
    from moe_utils.unpermutation import _launch_unpermute_backward

    n_tokens, n_experts, k, hidden = shape
    capacity = max(1, n_tokens * k * 5 // (4 * n_experts))
    m = routing_map(n_tokens, n_experts, k, g)
    m &= m.cumsum(0) <= capacity  # each expert keeps its first capacity tokens
    p = torch.softmax(torch.rand(n_tokens, n_experts, device=DEVICE, generator=g), -1) * m
    x = torch.randn(n_tokens, hidden, device=DEVICE, dtype=torch.bfloat16, generator=g)
    g_out = torch.randn_like(x)
    n_out = capacity * n_experts
    rows, _, plan = moe_utils.permute(x, m, p, num_out_tokens=n_out, fused=True, drop_and_pad=True)
    # Since session 25 unpermute's backward takes drop_and_pad (a package before it does not).
    flag = (True,) if "drop_and_pad" in inspect.signature(_launch_unpermute_backward).parameters else ()
    return {
        "permute_fwd": lambda: moe_utils.permute(x, m, p, num_out_tokens=n_out, fused=True, drop_and_pad=True),
        "unpermute_bwd": lambda: _launch_unpermute_backward(g_out, rows, plan, p, True, *flag),
    }


def pad_rows_experiments(results, shapes) -> None:
    """The padding programs of permute's scatter and of unpermute's backward (the scatter-dot) with
    16, 64 or 256 rows each, and as shipped since session 24 (``permutation._PAD_ROWS``, 64; 16 in
    permute with drop_and_pad, ``_DROP_AND_PAD_PAD_ROWS``, and since session 25 in unpermute's
    backward with drop_and_pad too; 16 everywhere before): with
    num_out_tokens given (the plan's padding marker) both launches carry N / PAD_ROWS such programs
    after the tokens' (2T at top-8 with 16 rows), which mostly find no padding and exit; the same
    with drop_and_pad and a fifth of the rows padding. Then unpermute's backward on a plan without
    the marker (no padding programs at all): what they cost at most. Session 24 call 3: 64 rows
    3.3-3.6% faster than 16 in unpermute's backward at top-8, as fast as no padding programs.
    Since session 34 (plan layout 3, no marker) unpermute takes every plan as padded: the second
    part then times the padding programs on a plan with and without padding rows."""
    from sweep import routing_map

    import moe_utils
    from moe_utils import permutation
    from moe_utils.unpermutation import _launch_unpermute_backward

    names = ("_PAD_ROWS", "_DROP_AND_PAD_PAD_ROWS")
    # unpermutation._PAD_ROWS: its own binding in a package before session 25 (set both there).
    saved = tuple(getattr(permutation, n, None) for n in names), getattr(unpermutation, "_PAD_ROWS", None)

    def use(form) -> None:
        permutation._PAD_ROWS = form[0]
        if saved[1] is not None:
            unpermutation._PAD_ROWS = form[0]
        permutation._DROP_AND_PAD_PAD_ROWS = form[1]  # (a package before session 24 does not read it)

    forms = {"16 rows a padding program": (16, 16), "64 rows": (64, 64), "256 rows": (256, 256)}
    forms["shipped rule"] = saved[0]
    kinds = ("permute_fwd", "unpermute_bwd")
    try:
        _forms_experiment(results, shapes, kinds, forms, use)
        _forms_experiment(results, shapes, kinds, forms, use, ops_for=_drop_and_pad_ops, tag="drop_and_pad")
    finally:
        for n, v in zip(names, saved[0], strict=True):
            setattr(permutation, n, v)
        if saved[1] is not None:
            unpermutation._PAD_ROWS = saved[1]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    with torch.no_grad():
        for shape in shapes:
            n_tokens, n_experts, k, hidden = shape
            x = torch.randn(n_tokens, hidden, device=DEVICE, dtype=torch.bfloat16, generator=g)
            m = routing_map(n_tokens, n_experts, k, g)
            p = torch.softmax(torch.rand(n_tokens, n_experts, device=DEVICE, generator=g), -1) * m
            rows, _, marked = moe_utils.permute(x, m, p, num_out_tokens=n_tokens * k, fused=True)
            _, _, plain = moe_utils.permute(x, m, p, fused=True)  # no padding rows (layout 2: no programs)
            g_out = torch.randn_like(x)
            want = None
            for name, plan in (("marked plan", marked), ("plan without the marker", plain)):
                with _rt.poisoned_outputs():
                    got = _launch_unpermute_backward(g_out, rows, plan, p, True)
                want = got if want is None else want
                assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), f"{name} differs at {shape}"
                us = bench(lambda plan=plan: _launch_unpermute_backward(g_out, rows, plan, p, True))
                results.append(dict(kind="unpermute_bwd", shape=list(shape), variant=name, us=us))
                print(f"unpermute_bwd  {list(shape)!s:24s} {name:24s} {us:8.1f} us", flush=True)


def ops_experiments(results, route_shapes, act_shapes, interleaved: bool = False, bias: bool = False) -> None:
    """The shipped ops as bench.py calls them (ours only, no baselines): the routing plan alone,
    permute forward (with probs) and backward, unpermute forward (with probs) and backward (with
    the probs gradient), and the weighted activations forward and backward with and without the
    fp8 copy (interleaved: in the interleaved layout, their kinds ending in _il; bias: with a bf16
    bias of 2H shared by every row, their kinds ending in _b). To time a change
    on one machine, ab.py runs it in processes alternating with an older copy of the package; the
    first line says which package was loaded."""
    from bench import activation_params

    import moe_utils

    print("package:", moe_utils.__file__, flush=True)
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def record(kind, shape, fn):
        row, times = _timed(fn, kind=kind, shape=list(shape), variant=moe_utils.__file__)
        results.append(row)
        print(f"{kind:24s} {list(shape)!s:28s} {times}", flush=True)

    with torch.no_grad():
        for shape in route_shapes:
            for kind, fn in _routing_ops(shape, g).items():
                record(kind, shape, fn)
        for name, n_rows, h in act_shapes:
            module, params, clamp = activation_params(name)  # bench.py's (Quick-GEGLU: offset and clamp)
            impl = importlib.import_module(f"moe_utils.generated.{module}")._IMPL
            x = torch.randn(n_rows, 2 * h, device=DEVICE, dtype=torch.bfloat16, generator=g)
            w = torch.rand(n_rows, 1, device=DEVICE, generator=g)
            grad = torch.randn(n_rows, h, device=DEVICE, dtype=torch.bfloat16, generator=g)
            il = interleaved
            b = torch.randn(2 * h, device=DEVICE, dtype=torch.bfloat16, generator=g) if bias else None
            x8 = impl.launch_forward(x, b, w, True, clamp, il, *params)[1].view(torch.float8_e4m3fn)
            tag = ("_il" if il else "") + ("_b" if bias else "")
            for fp8 in (False, True):
                record(
                    f"{name}_fwd{'_fp8' if fp8 else ''}{tag}", (n_rows, h),
                    lambda fp8=fp8: impl.launch_forward(x, b, w, fp8, clamp, il, *params),
                )  # fmt: skip
                src = x8 if fp8 else x
                record(
                    f"{name}_bwd{'_fp8' if fp8 else ''}{tag}", (n_rows, h),
                    lambda src=src: impl.launch_backward(grad, src, b, w, clamp, il, x.dtype, *params),
                )  # fmt: skip


_DRY = [(5, 4, 2, 96), (300, 64, 3, 40)]
#: The --only kinds that time forms of the routing ops: (experiment, dry-run shapes, shapes
#: (T, E, k, hidden), which --forms-shapes replaces).
_FORMS_KINDS = {
    "pdl": (pdl_experiments, [(5, 4, 2, 96), (9, 6, 3, 40)], [
        (4096, 256, 2, 2048), (4096, 8, 2, 2048), (4096, 64, 8, 2048), (16384, 64, 2, 2048), (16384, 256, 2, 2048),
        (16384, 64, 8, 2048), (65536, 256, 2, 2048), (8192, 128, 8, 7168),
    ]),
    "prefetch": (prefetch_experiments, _DRY, [
        (4096, 8, 2, 2048), (4096, 256, 2, 2048), (16384, 64, 8, 2048), (16384, 256, 2, 2048), (65536, 8, 8, 2048),
        (65536, 64, 2, 2048), (65536, 256, 2, 2048), (16384, 1024, 8, 2048),
    ]),
    "tiles": (tiles_experiments, [(5, 4, 2, 96), (9, 6, 3, 40)], [
        (4096, 64, 2, 2048), (4096, 256, 2, 2048), (4096, 256, 8, 2048), (16384, 64, 2, 2048), (65536, 64, 2, 2048),
        (65536, 8, 2, 2048),
        (65536, 64, 2, 4096), (16384, 64, 2, 7168), (16384, 64, 8, 2048), (8192, 128, 8, 7168), (4096, 128, 8, 7168),
        (8192, 64, 4, 2048), (16384, 64, 4, 4096), (2048, 64, 8, 4096), (65536, 8, 8, 2048),
    ]),
    "rowstore": (row_store_experiments, [(5, 4, 2, 96), (9, 6, 3, 40), (7, 300, 8, 1500)], [
        (4096, 8, 2, 2048), (4096, 64, 2, 2048), (4096, 128, 2, 2048), (4096, 256, 2, 2048), (4096, 256, 8, 2048),
        (4096, 1024, 8, 2048), (16384, 64, 2, 2048), (16384, 256, 8, 2048), (65536, 256, 2, 2048),
        (4096, 128, 2, 7168),
    ]),
    "group": (group_experiments, _DRY, [
        (4096, 8, 2, 2048), (16384, 8, 2, 2048), (65536, 8, 8, 2048), (4096, 64, 2, 2048), (65536, 64, 2, 2048),
        (65536, 256, 2, 2048),
    ]),
    "segments": (segments_experiments, _DRY, [
        (4096, 64, 2, 2048), (4096, 64, 8, 2048), (4096, 128, 2, 2048), (4096, 128, 8, 2048),
        (4096, 256, 2, 2048), (4096, 256, 8, 2048), (8192, 64, 2, 2048), (8192, 128, 8, 2048),
        (2048, 64, 8, 2048), (16384, 64, 8, 2048), (4096, 1024, 8, 2048), (16384, 1024, 8, 2048),
    ]),
    "early": (early_experiments, [(5, 4, 2, 96), (9, 6, 3, 40)], [
        (4096, 8, 2, 2048), (4096, 256, 2, 2048), (4096, 64, 8, 2048), (4096, 8, 2, 7168), (16384, 64, 2, 2048),
        (16384, 256, 2, 2048), (16384, 64, 8, 2048), (65536, 256, 2, 2048), (8192, 128, 8, 7168),
        (65536, 8, 2, 2048),
    ]),
    "segwarps": (segment_warps_experiments, _DRY, [
        (4096, 64, 2, 2048), (4096, 128, 2, 2048), (4096, 256, 2, 2048), (4096, 64, 8, 2048), (4096, 256, 8, 2048),
        (4096, 256, 2, 4096), (8192, 128, 8, 2048), (8192, 256, 2, 2048),
    ]),
    "scanmap": (scan_in_map_experiments, [(300, 8, 2, 40), (70, 64, 3, 24)], [
        (4096, 8, 2, 2048), (4096, 8, 2, 7168), (16384, 8, 2, 2048), (16384, 8, 8, 4096), (65536, 8, 2, 2048),
        (65536, 8, 8, 2048),
    ]),
    "segscan": (segment_scan_experiments, [(300, 64, 3, 40), (70, 256, 2, 24)], [
        (4096, 64, 2, 2048), (4096, 128, 2, 2048), (4096, 256, 2, 2048), (4096, 64, 8, 2048), (4096, 256, 8, 2048),
        (16384, 64, 2, 2048),
    ]),
    "worder": (write_order_experiments, [(5, 4, 2, 96), (40, 6, 3, 40)], [
        (65536, 256, 2, 2048), (16384, 256, 2, 2048), (65536, 64, 2, 4096), (16384, 64, 2, 7168),
        (16384, 64, 8, 2048), (65536, 256, 8, 2048), (4096, 256, 2, 2048),
    ]),
    "segcopy": (segment_copy_experiments, [(5, 4, 2, 96), (40, 6, 3, 40), (70, 256, 2, 24)], [
        (65536, 256, 2, 2048), (16384, 256, 2, 2048), (16384, 64, 2, 2048), (65536, 64, 2, 4096),
        (16384, 64, 8, 2048), (65536, 256, 8, 2048), (4096, 256, 2, 2048), (16384, 64, 2, 7168),
    ]),
    "wordpairs": (word_pairs_experiments, [(70, 256, 2, 24), (300, 256, 2, 40)], [
        (16384, 256, 2, 2048), (32768, 256, 2, 2048), (65536, 256, 2, 2048), (16384, 256, 2, 4096),
        (65536, 256, 2, 4096), (65536, 256, 2, 7168), (4096, 256, 2, 2048),
    ]),
    "writeroof": (write_roof_experiments, [(5, 2, 96), (3, 8, 40)], [
        (65536, 8, 2048), (65536, 2, 2048), (16384, 8, 7168),
    ]),
    "stores": (store_experiments, _DRY, [
        (4096, 64, 8, 2048), (4096, 256, 8, 2048), (2048, 64, 8, 4096), (8192, 64, 8, 2048), (16384, 64, 8, 2048),
        (4096, 8, 2, 7168), (65536, 256, 2, 2048), (16384, 64, 2, 7168), (65536, 64, 2, 4096),
    ]),
    "realloc": (realloc_experiments, [(5, 4, 2, 96)], [(4096, 8, 2, 2048), (4096, 256, 2, 2048)]),
    "padrows": (pad_rows_experiments, [(5, 4, 2, 96), (9, 6, 3, 40), (40, 12, 3, 24)], [
        (4096, 8, 2, 2048), (4096, 64, 2, 2048), (4096, 128, 2, 2048), (4096, 256, 2, 2048), (4096, 256, 8, 2048),
        (4096, 64, 2, 7168), (16384, 64, 2, 2048), (65536, 64, 2, 2048), (16384, 64, 8, 2048),
    ]),
    "words": (words_experiments, [(70, 256, 2, 24), (300, 512, 3, 40)], [
        (4096, 256, 2, 2048), (4096, 256, 8, 2048), (16384, 256, 2, 2048), (16384, 256, 8, 2048),
        (65536, 256, 2, 2048), (65536, 256, 8, 2048), (8192, 512, 8, 2048), (16384, 1024, 8, 2048),
    ]),
    "counts": (counts_experiments, _DRY, [
        (8192, 1024, 8, 2048), (16384, 1024, 8, 2048), (16384, 1024, 2, 2048), (32768, 1024, 8, 2048),
        (65536, 1024, 8, 2048), (16384, 512, 8, 2048),
    ]),
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="appended to the output file's name")
    ap.add_argument("--warmup-s", type=float, default=0.0, help="seconds of 1 GiB copies before any timing")
    ap.add_argument(
        "--scatter-basic", action="store_true",
        help="--only scatter: the shipped launcher with and without the plan's programs and the bare rows only",
    )  # fmt: skip
    ap.add_argument(
        "--realloc-captured-once", action="store_true",
        help="--only realloc: capture every graph before timing, then replay (no allocation between timings)",
    )  # fmt: skip
    kinds = ("act", "scatter", "plan", "inplace", "liger", "order", "ops", "gather", "wonly", *_FORMS_KINDS)
    ap.add_argument("--only", nargs="*", choices=kinds, default=kinds[:3])
    ap.add_argument(
        "--act-names", nargs="*", default=("swiglu", "quick_geglu"),
        help="activations of --only ops (bench.activation_params: quick_geglu_noclamp too)",
    )  # fmt: skip
    ap.add_argument("--act-shapes", nargs="*", type=dims, default=None, help="TxH shapes of --only ops' activations")
    ap.add_argument("--no-routing", action="store_true", help="--only ops without its routing ops")
    ap.add_argument("--act-interleaved", action="store_true", help="--only ops' activations in the interleaved layout")
    ap.add_argument("--act-bias", action="store_true", help="--only ops' activations with a shared bias")
    ap.add_argument("--plan-shapes", nargs="*", type=dims, default=None, help="TxExK shapes of --only plan")
    ap.add_argument(
        "--forms-shapes",
        nargs="*",
        type=dims,
        default=None,
        help="TxExKxH shapes of --only gather, ops and the forms kinds",
    )
    ap.add_argument("--cold", action="store_true", help="--only ops and the forms kinds: also time with L2 cold")
    args = ap.parse_args()
    COLD[0] = args.cold
    card = "dry" if DRY else torch.cuda.get_device_name()
    warm_up(args.warmup_s)
    results = []
    forms_shapes = None
    if args.forms_shapes and not DRY:
        forms_shapes = args.forms_shapes
    if "scatter" in args.only:
        shapes = [(5, 4, 2, 96), (9, 6, 3, 40)] if DRY else [
            (16384, 64, 8, 2048), (8192, 128, 8, 7168), (65536, 8, 2, 2048), (65536, 256, 2, 2048), (4096, 64, 2, 2048),
            (16384, 64, 2, 7168), (65536, 64, 2, 4096),
        ]  # fmt: skip
        scatter_experiments(results, forms_shapes or shapes, args.scatter_basic)
    if "plan" in args.only:
        shapes = [(9, 8, 2), (300, 64, 3), (70, 256, 2)] if DRY else [
            (4096, 8, 2), (4096, 256, 2), (4096, 64, 8), (16384, 64, 8), (16384, 256, 2), (65536, 8, 8),
            (65536, 64, 2), (65536, 256, 2), (65536, 256, 8), (16384, 1024, 8),
        ]  # fmt: skip
        if args.plan_shapes and not DRY:
            shapes = args.plan_shapes
        plan_experiments(results, shapes)
    if "order" in args.only:
        shapes = [(5, 24), (3, 80)] if DRY else [
            (65536, 7168), (65536, 2880), (65536, 2048), (65536, 1408), (16384, 7168), (16384, 768), (4096, 768)
        ]  # fmt: skip
        order_experiments(results, shapes)
    if "liger" in args.only:
        liger_experiments(results, [(4, 24)] if DRY else [(65536, 7168), (65536, 2048), (16384, 7168)])
    if "ops" in args.only:
        route = [(5, 4, 2, 96), (9, 6, 3, 40)] if DRY else [
            (16384, 64, 8, 2048), (8192, 128, 8, 7168), (4096, 256, 2, 2048), (4096, 8, 2, 2048), (65536, 256, 2, 2048),
            (65536, 64, 2, 4096), (16384, 64, 2, 7168), (65536, 8, 8, 4096), (16384, 128, 8, 4096),
        ]  # fmt: skip
        route = forms_shapes or route
        sizes = ((65536, 1408), (65536, 768), (65536, 2880), (65536, 7168), (16384, 768), (4096, 768), (262144, 1408))
        if args.act_shapes:
            sizes = tuple(args.act_shapes)
        if DRY:
            sizes = ((4, 24), (3, 40))
        act = [(name, t, h) for name in args.act_names for t, h in sizes]
        ops_experiments(results, [] if args.no_routing else route, act, args.act_interleaved, args.act_bias)
    if "gather" in args.only:
        gather_experiments(results, [(5, 4, 2, 96), (9, 6, 3, 40)] if DRY else forms_shapes or [
            (4096, 64, 2, 4096), (4096, 256, 2, 4096), (4096, 8, 2, 7168), (4096, 256, 2, 2048), (8192, 64, 2, 2048),
            (16384, 64, 2, 2048), (16384, 256, 2, 2048), (8192, 64, 2, 4096), (16384, 64, 2, 4096), (65536, 8, 2, 2048),
            (4096, 64, 8, 4096), (4096, 128, 8, 7168), (4096, 256, 8, 2048), (2048, 64, 8, 4096), (2048, 64, 4, 4096),
            (4096, 64, 4, 4096), (8192, 64, 8, 2048),
        ])  # fmt: skip
    for kind, (run, dry_shapes, shapes) in _FORMS_KINDS.items():
        if kind in args.only:
            extra = {"captured_once": args.realloc_captured_once} if kind == "realloc" else {}
            run(results, dry_shapes if DRY else forms_shapes or shapes, **extra)
    if "wonly" in args.only:
        copy = sweep_copy_gbs()
        print(f"copy {copy:.0f} GB/s", flush=True)
        weights_only_experiments(results, [(4, 24), (3, 300)] if DRY else args.act_shapes or [
            (16384, 768), (16384, 2048), (65536, 1408), (65536, 2880), (65536, 7168), (262144, 2048),
        ], copy)  # fmt: skip
    if "inplace" in args.only:
        inplace_experiments(results, [(4, 24), (3, 40)] if DRY else [(65536, 2048), (65536, 7168), (16384, 7168)])
    if "act" not in args.only:
        fwd_shapes = bwd_shapes = []
    else:
        fwd_shapes = [(4, 24), (3, 40)] if DRY else [(16384, 768), (65536, 2048), (65536, 7168)]
        if args.act_shapes and not DRY:
            fwd_shapes = args.act_shapes
        bwd_shapes = [(5, 24)] if DRY else [] if args.act_shapes else [(65536, 2048), (65536, 7168)]
    for n_rows, h in fwd_shapes:
        x = torch.randn(n_rows, 2 * h, device=DEVICE, dtype=torch.bfloat16)
        w = torch.rand(n_rows, device=DEVICE)
        want, _ = gen._launch_forward(x, None, w, False, None, False)
        cfg = _rt.forward_config(n_rows, h)
        grid = (triton.cdiv(n_rows, cfg.block_r), triton.cdiv(h, cfg.block_h))
        out = torch.empty_like(want)
        variants = {"shipped": lambda: gen._launch_forward(x, None, w, False, None, False)}
        # The shipped launch shape and eviction policy (session 12 run 1: evict_first, flat tiles of
        # 2048 or 4096 elements and the unordered 2-D grid were all slower at these sizes).
        policy = "evict_first" if cfg.evict_first else ""
        tiles = dict(BLOCK_R=cfg.block_r, BLOCK_H=cfg.block_h, num_warps=cfg.num_warps)
        n_tiles = (grid[0] * grid[1],)
        variants["2d ordered"] = lambda: _fwd_2d[n_tiles](
            x, w, out, n_rows, h, x.stride(0), POLICY=policy, ORDERED=True, **tiles
        )
        variants["const_h ordered"] = lambda: _fwd_2d_const[n_tiles](
            x, w, out, n_rows, h, x.stride(0), POLICY=policy, ORDERED=True, **tiles
        )
        # The generated kernel under other tiles and load policies, on its own grid in memory order
        # (session 31: Inductor 0.3-1.5% ahead at six mid-size shapes side by side).
        for tile, warps, gen_policy in GEN_FWD_TILES:
            block_h = min(cfg.block_h, tile)
            launch = forward_launch(x, w, out, out, (max(1, tile // block_h), block_h, warps), False, gen_policy)
            variants[f"gen {tile}/{warps} {gen_policy or 'plain'}"] = launch
        if n_rows % cfg.block_r == 0 and h % cfg.block_h == 0:
            for wide in (True, False):
                variants[f"even {'int64' if wide else 'int32'}"] = lambda wide=wide: _fwd_even[n_tiles](
                    x, w, out, h, x.stride(0), WIDE=wide, **tiles
                )
        for block, warps in ((1024, 4), (512, 8)):
            if (n_rows * h) % block == 0:
                variants[f"flat_even {block}/{warps}"] = lambda block=block, warps=warps: _fwd_flat_even[
                    (n_rows * h // block,)
                ](x, w, out, h, BLOCK=block, num_warps=warps)
        flat = (triton.cdiv(n_rows * h, 1024),)
        variants["flat 1024/4"] = lambda: _fwd_flat[flat](
            x, w, out, n_rows * h, h, x.stride(0), POLICY=policy, BLOCK=1024, num_warps=4
        )
        variants["flat_const 1024/4"] = lambda: _fwd_flat_const[flat](
            x, w, out, n_rows * h, h, x.stride(0), POLICY=policy, BLOCK=1024, num_warps=4
        )
        # The reference's weighted SwiGLU as Inductor compiles it for this one shape (a fresh compile
        # state: static width and rows), writing into out like the variants.
        torch._dynamo.reset()
        inductor = torch.compile(lambda: out.copy_(baselines.make_weighted(baselines.swiglu, None)[0](x, w[:, None])))
        variants["inductor (copy into out)"] = inductor
        variants["inductor"] = torch.compile(lambda: baselines.make_weighted(baselines.swiglu, None)[0](x, w[:, None]))
        if COLD[0]:
            # The forward followed by the next expert GEMM (out @ w2), as in a training step: does
            # x kept in L2 (evict-last) cost the GEMM the room its input wants?
            w2 = torch.randn(h, 2048, device=DEVICE, dtype=torch.bfloat16) / h**0.5
            y = torch.empty(n_rows, 2048, device=DEVICE, dtype=torch.bfloat16)
            shipped_tile = (cfg.block_r, cfg.block_h, cfg.num_warps)
            for pair_policy in ("", "evict_last"):
                launch = forward_launch(x, w, out, out, shipped_tile, False, pair_policy)
                variants[f"pair {pair_policy or 'plain'} + gemm"] = lambda launch=launch: (
                    launch(),
                    torch.mm(out, w2, out=y),
                )
        for name, fn in variants.items():
            out.fill_(float("nan"))
            got = fn()
            if name == "inductor":  # returns its own tensor
                out.copy_(got)
            if name != "shipped":  # the same math, maybe in another order of fp32 operations
                torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)
            row, times = _timed(fn, kind="fwd", shape=[n_rows, h], variant=name)
            results.append(row)
            print(f"fwd {n_rows}x{h} {name:28s} {times}", flush=True)
    for n_rows, h in bwd_shapes:
        x = torch.randn(n_rows, 2 * h, device=DEVICE, dtype=torch.bfloat16)
        w = torch.rand(n_rows, device=DEVICE)
        g = torch.randn(n_rows, h, device=DEVICE, dtype=torch.bfloat16)
        want_dx, want_dw, _ = gen._launch_backward(g, x, None, w, None, False, x.dtype)
        cfg = _rt.backward_config(n_rows, h, True)
        dx, dw = torch.empty_like(want_dx), torch.empty_like(want_dw)
        variants = {"shipped": lambda: gen._launch_backward(g, x, None, w, None, False, x.dtype)}
        for evict in (False, True):
            variants[f"const_h evict={evict}"] = lambda e=evict: _bwd[(triton.cdiv(n_rows, cfg.block_r),)](
                g, x, w, dx, dw, n_rows, h, x.stride(0), POLICY="evict_first" if e else "",
                BLOCK_R=cfg.block_r, BLOCK_H=cfg.block_h, num_warps=cfg.num_warps,
            )  # fmt: skip
        for name, fn in variants.items():
            fn()
            if name != "shipped":  # the same math in another order of operations: close, not equal
                torch.testing.assert_close(dx.float(), want_dx.float(), rtol=2e-2, atol=2e-2)
                torch.testing.assert_close(dw, want_dw, rtol=1e-3, atol=1e-3)
            us = bench(fn)
            results.append(dict(kind="bwd", shape=[n_rows, h], variant=name, us=us))
            print(f"bwd {n_rows}x{h} {name:28s} {us:8.1f} us", flush=True)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"experiments-{card.replace(' ', '_')}{args.tag}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
