"""unpermute: bring permuted rows back to their tokens, as Megatron-Core's ``moe_utils.unpermute``.

``fused=False`` is the reference algorithm (multiply by probs, zero-filled buffer, scatter_add with
atomics). ``fused=True`` is a gather: each token reads its rows through the routing plan, multiplies
them by their probabilities in fp32, sums in fp32 and writes once. No atomics, no zero fill, so
the result is bit-identical from run to run. The backward scatters the gradient to the rows and, when
probs need a gradient, takes the row dot products in the same pass.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import triton
import triton.language as tl

from . import _runtime as _rt
from ._kernel_lib import grid_tile, pdl_start
from .permutation import (
    _block_h,
    _padding,
    _zero_padding,
    block_k,
    check_probs,
    pad_rows_per_program,
    scatter_rows,
)
from .routing import (
    MAX_EXPERTS,
    PLAN_LAYOUT,
    Plan,
    check_routing_map,
    compute_dtype,
    entry_expert,
    entry_row,
    plan_layout,
    plan_view,
    refuse_transforms,
    require_triton_device,
)

__all__ = ["gather_rows", "unpermute"]


@triton.jit
def _zero_d_probs_row(d_probs_ptr, token, E, write, BLOCK_E: tl.constexpr):
    """Zero row `token` of d_probs [T, E] (where `write`), then a barrier: the entries' gradients,
    stored after it by any thread of the program, land over the zeros. This replaces a zero-filled
    allocation, a launch of its own (permute / unpermute backward at T = 4096 ran at 74-81% of
    the copy rate on the H100, session 7)."""
    if write:
        experts = tl.arange(0, BLOCK_E)
        zeros = tl.zeros([BLOCK_E], dtype=d_probs_ptr.dtype.element_ty)
        tl.store(d_probs_ptr + token * E + experts, zeros, mask=experts < E)
    tl.debug_barrier()


@triton.jit
def _gather_entry(
    acc,  # [BLOCK_H] fp32 sum so far
    d_row,  # [BLOCK_E] fp32 the token's row of d_probs so far (PROBS_GRAD and ROW_STORE)
    e_range,  # [BLOCK_E] 0 .. BLOCK_E - 1
    entry,  # the entry's plan word: (row << EXPERT_BITS) | expert; row < 0: not placed, adds 0
    token,
    cols,
    col_ok,
    first_block,  # this program holds the first column block: it writes the probs' gradient
    src_ptr,
    src_row_stride,
    probs_ptr,
    probs_stride_t,
    probs_stride_e,
    row_grad_ptr,
    d_probs_ptr,
    E,
    SCALE: tl.constexpr,
    PROBS_GRAD: tl.constexpr,
    ROW_STORE: tl.constexpr,
    CHECK_EXPERTS: tl.constexpr,
    ACC: tl.constexpr,
):
    """One entry of _gather_rows_kernel: (acc + its row (times its probability), d_row), and with
    PROBS_GRAD the entry's probability gradient (row_grad of its row) into d_probs, or with
    ROW_STORE into d_row at its expert."""
    row = entry_row(entry)
    placed = row >= 0
    if CHECK_EXPERTS:
        tl.device_assert(~placed | (entry_expert(entry) < E), "unpermute: probs has fewer experts than the plan")
    x = tl.load(src_ptr + row * src_row_stride + cols, mask=col_ok & placed, other=0.0).to(ACC)
    if SCALE:
        p = tl.load(probs_ptr + token * probs_stride_t + entry_expert(entry) * probs_stride_e, mask=placed, other=0.0)
        x = x * p.to(ACC)
    if PROBS_GRAD:
        if ROW_STORE:
            grad = tl.load(row_grad_ptr + row, mask=first_block & placed, other=0.0)
            d_row = tl.where((e_range == entry_expert(entry)) & placed, grad.to(ACC), d_row)
        else:
            if first_block & placed:
                grad = tl.load(row_grad_ptr + row)
                tl.store(d_probs_ptr + token * E + entry_expert(entry), grad.to(d_probs_ptr.dtype.element_ty))
    return acc + x, d_row


@triton.jit
def _gather_rows_kernel(
    src_ptr,  # [N, hidden] permuted rows (or the gradient of permute's output)
    src_row_stride,  # elements between permuted rows
    out_ptr,  # [T, hidden] out, contiguous
    probs_ptr,  # [T, E] routing probabilities (SCALE)
    probs_stride_t,  # elements between tokens of probs
    probs_stride_e,  # elements between experts of probs
    row_grad_ptr,  # [N] gradient of permute's permuted probs (PROBS_GRAD)
    d_probs_ptr,  # [T, E] out, contiguous (PROBS_GRAD): every element is written here
    token_ptr_ptr,  # [T + 1] int64 plan: token t owns entries token_ptr[t] .. token_ptr[t + 1] - 1
    entry_ptr,  # [N] int64 plan: (row << EXPERT_BITS) | expert of each entry (row -1: not placed)
    n_rows,  # N
    hidden,  # row width
    E,  # experts: of d_probs (PROBS_GRAD), of probs (CHECK_EXPERTS)
    SCALE: tl.constexpr,  # multiply each row by its probability
    PROBS_GRAD: tl.constexpr,  # also scatter row_grad into d_probs (permute's backward)
    CHECK_EXPERTS: tl.constexpr,  # SCALE: assert that each entry's expert is a column of probs (debug=True)
    ORDERED: tl.constexpr,  # the grid in memory order (1-D), else 2-D with tokens on the fast axis
    BLOCK_H: tl.constexpr,  # columns per program
    BLOCK_E: tl.constexpr,  # >= E (PROBS_GRAD)
    BLOCK_K: tl.constexpr,  # entries of each token unrolled (the average top-k, rounded up)
    ROW_STORE: tl.constexpr,  # PROBS_GRAD: d_probs's row built in registers, stored once (d_probs_row_store)
    ACC: tl.constexpr,  # compute dtype (routing.compute_dtype): fp32, or fp64 for fp64 data
    PDL: tl.constexpr,  # programmatic dependent launch (_runtime.pdl_args)
):
    # out[t] = sum_j src[row of entry j] (* probs[t, expert of entry j]), in ACC, written once, in
    # entry order: deterministic, no atomics. One row per step: a [BLOCK_K, BLOCK_H] tile summed
    # over its first axis went through shared memory and ran at half the copy rate on the H100.
    pdl_start(PDL)
    token, col_block = grid_tile(hidden, BLOCK_H, ORDERED)
    cols = col_block * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    acc = tl.zeros([BLOCK_H], dtype=ACC)
    first = tl.load(token_ptr_ptr + token)
    last = tl.minimum(tl.load(token_ptr_ptr + token + 1), n_rows)
    e_range = tl.arange(0, BLOCK_E)
    d_row = tl.zeros([BLOCK_E], dtype=ACC)
    if PROBS_GRAD:
        if not ROW_STORE:
            _zero_d_probs_row(d_probs_ptr, token, E, col_block == 0, BLOCK_E)
    args = (src_ptr, src_row_stride, probs_ptr, probs_stride_t, probs_stride_e, row_grad_ptr, d_probs_ptr, E)
    flags = (SCALE, PROBS_GRAD, ROW_STORE, CHECK_EXPERTS)  # ACC on its own: a dtype in a tuple fails to compile
    # The first BLOCK_K entries unrolled: their loads depend only on `first`, so all their rows are
    # in flight at once; a loop walks entry -> row -> next entry with one row in flight per
    # program. H200 (session 13; results/history/experiments-gather-unrolled-pdl-s13-call1-*):
    # unpermute forward at top-2 7-8% faster (65536 x 64 x 2 x 2048 218.5 -> 200.9 µs), permute
    # backward 2-4%; at top-8 level (-2.3% to +0.8%). Entries past `last` load as -1: not placed,
    # they add 0.
    for i in tl.static_range(BLOCK_K):
        entry = tl.load(entry_ptr + first + i, mask=first + i < last, other=-1)
        acc, d_row = _gather_entry(acc, d_row, e_range, entry, token, cols, col_ok, col_block == 0, *args, *flags, ACC)
    for j in range(first + BLOCK_K, last):  # tokens with more than BLOCK_K entries
        entry = tl.load(entry_ptr + j)
        acc, d_row = _gather_entry(acc, d_row, e_range, entry, token, cols, col_ok, col_block == 0, *args, *flags, ACC)
    tl.store(out_ptr + token * hidden + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)
    if PROBS_GRAD:
        if ROW_STORE:
            if col_block == 0:
                tl.store(d_probs_ptr + token * E + e_range, d_row.to(d_probs_ptr.dtype.element_ty), mask=e_range < E)


@triton.jit
def _scatter_dot_kernel(
    grad_ptr,  # [T, hidden] gradient of unpermute's output
    grad_row_stride,  # elements between its rows
    perm_ptr,  # [N, hidden] permuted tokens (unpermute's input)
    perm_row_stride,  # elements between its rows
    d_perm_ptr,  # [N, hidden] out, contiguous: gradient w.r.t. the permuted tokens
    probs_ptr,  # [T, E] routing probabilities
    probs_stride_t,  # elements between tokens of probs
    probs_stride_e,  # elements between experts of probs
    d_probs_ptr,  # [T, E] out, contiguous: gradient w.r.t. probs (every element is written here)
    token_ptr_ptr,  # [T + 1] int64 plan
    entry_ptr,  # [N] int64 plan: (row << EXPERT_BITS) | expert of each entry
    src_token_ptr,  # [N] int64 plan (PAD): -1 marks a padding row
    n_tokens,  # T
    n_rows,  # N
    hidden,  # row width
    E,  # experts
    PAD: tl.constexpr,  # programs T, T + 1, ... zero the padding rows of d_perm, PAD_ROWS each
    PAD_ROWS: tl.constexpr,  # rows checked by each padding program (permutation.pad_rows_per_program)
    BLOCK_K: tl.constexpr,  # entries handled together
    BLOCK_H: tl.constexpr,  # columns per step
    BLOCK_E: tl.constexpr,  # >= E
    ACC: tl.constexpr,  # compute dtype (routing.compute_dtype): fp32, or fp64 for fp64 data
    PDL: tl.constexpr,  # programmatic dependent launch (_runtime.pdl_args)
):
    # d_perm[row] = grad[t] * p and d_probs[t, e] = sum_h grad[t, h] * perm[row, h], with
    # (row, e) the entries of token t. One program per token walks whole rows, so the dot products
    # stay in fp32 registers: deterministic, no atomics. The padding rows' zeros come from programs
    # of this launch, not from a launch of their own: one launch fewer where launches weigh (at
    # T = 4096 this backward ran at 74-81% of the copy rate on the H100, session 7).
    pdl_start(PDL)
    token = tl.program_id(0).to(tl.int64)
    if PAD and token >= n_tokens:
        first_row = (token - n_tokens) * PAD_ROWS
        block = first_row + tl.arange(0, PAD_ROWS)
        # Padding rows are marked in src_token (-1): the counts' arguments (0) are not read. (Spelled
        # out: a tuple of these literals does not compile for the GPU, the interpreter takes it.)
        pad_block = _padding(block, src_token_ptr, 0, 0, n_rows, 0, 0, False, False)
        if tl.max(pad_block.to(tl.int32), axis=0) > 0:  # most blocks hold no padding: skip them
            _zero_padding(d_perm_ptr, block, pad_block, 0, tl.cdiv(hidden, BLOCK_H), hidden, PAD_ROWS, BLOCK_H)
    else:
        first = tl.load(token_ptr_ptr + token)
        last = tl.minimum(tl.load(token_ptr_ptr + token + 1), n_rows)
        # d_probs's row zeroed first, then each entry's dot product (a row built in registers and
        # stored once, as the gather does, was 1-8% slower here at 8 of 10 shapes: session 23).
        _zero_d_probs_row(d_probs_ptr, token, E, True, BLOCK_E)
        for start in range(first, last, BLOCK_K):
            entries = start + tl.arange(0, BLOCK_K)
            entry = tl.load(entry_ptr + entries, mask=entries < last, other=-1)
            rows = entry_row(entry)
            placed = rows >= 0
            experts = entry_expert(entry)
            p = tl.load(probs_ptr + token * probs_stride_t + experts * probs_stride_e, mask=placed, other=0.0)
            p = p.to(ACC)
            dot = tl.zeros([BLOCK_K], dtype=ACC)
            for col_start in range(0, hidden, BLOCK_H):
                cols = col_start + tl.arange(0, BLOCK_H)
                col_ok = cols < hidden
                ok = placed[:, None] & col_ok[None, :]
                g = tl.load(grad_ptr + token * grad_row_stride + cols, mask=col_ok, other=0.0).to(ACC)
                x = tl.load(perm_ptr + rows[:, None] * perm_row_stride + cols[None, :], mask=ok, other=0.0)
                d_rows = (g[None, :] * p[:, None]).to(d_perm_ptr.dtype.element_ty)
                tl.store(d_perm_ptr + rows[:, None] * hidden + cols[None, :], d_rows, mask=ok)
                dot += tl.sum(g[None, :] * x.to(ACC), axis=1)
            tl.store(d_probs_ptr + token * E + experts, dot.to(d_probs_ptr.dtype.element_ty), mask=placed)


#: The gather's columns per program (at most): on the 2-D grid, and on the grid in memory order
#: (_ORDERED_GATHER_ABOVE). H200 (experiments.py --only tiles, session 22 calls 1-2, two processes
#: each, 4 warps): in memory order 2048 columns were 2-6.5% faster than 1024 at 12 of 14 shapes
#: (unpermute fwd 65536 x 64 x 2 x 2048 201.6 -> 190.4 µs, 65536 x 64 x 2 x 4096 401.6 -> 376.1,
#: 16384 x 64 x 2 x 7168 177.7 -> 168.2; permute bwd 65536 x 8 x 8 x 2048 584.7 -> 558.7, 8192 x
#: 128 x 8 x 7168 248.5 -> 243.1), level at 4096 x 256 x 8 x 2048 and 16384 x 64 x 4 x 4096 (fwd),
#: 1.8% slower only at 8192 x 64 x 4 x 2048's permute bwd (44.4 -> 45.2). On the 2-D grid (at most
#: 16384 source rows) 1024 stays: 2048 lost 1-8% at 4096 x 2048 top-2 (permute bwd 13.7 -> 14.7,
#: 4096 x 256 x 2 14.9 -> 15.9) and at 2048 x 64 x 8 x 4096 (38.0 -> 39.6). 512 columns lost
#: nearly everywhere (65536 x 64 x 2 x 2048: 269 µs), 8 warps at 2048 columns everywhere (call 1).
_GATHER_BLOCK_H = 1024
_ORDERED_GATHER_BLOCK_H = 2048
#: Except in unpermute's forward (no probs gradient) at top-8 and more, up to _NARROW_GATHER_MAX
#: columns and tokens: there 512-column blocks (more programs for few tokens). H200 (session 22
#: calls 2 and 6): 4096 x 8 x 8 x 2048 40.0 -> 37.8 µs, 4096 x 128 x 8 40.6 -> 39.0, 4096 x 256 x 8
#: 40.8 -> 38.9, 2048 x 64 x 8 x 2048 22.8 -> 20.0, 8192 x 64 x 8 75.1 -> 74.6; at 16384 x 64 x 8 x
#: 2048 2% slower than 2048 columns, level at 4096 x 64 x 8 x 4096, 3% slower at 4096 x 256 x 8 x
#: 7168. permute's backward (zeroing its d_probs row behind a barrier in every program) lost
#: 14-35% with 512 columns at every shape.
_NARROW_GATHER_BLOCK_H = 512
_NARROW_GATHER_MIN_K = 8
_NARROW_GATHER_MAX = (2048, 8192)  # columns, tokens
#: The scatter-dot's column step up to 2048 columns: _DOT_TOP4_BLOCK_H where each token has 3-4
#: rows (BLOCK_K 4), else _DOT_BLOCK_H. H200 (session 22 calls 2 and 6): at top-2 1024 best (one
#: 2048-column step 4-7% slower: 65536 x 8 x 2 x 2048 320.3 -> 344.3 µs, 4096 x 64 x 2 23.5 ->
#: 24.4), at top-8 level (4096 x 256 x 8 80.0 / 79.5, 4096 x 8 x 8 74.4 / 76.1, 16384 x 64 x 8
#: 302.1 / 303.7), at top-4 2048 faster: 8192 x 64 x 4 x 2048 82.6 -> 79.8, 16384 x 64 x 4 162.5
#: -> 155.4, 65536 x 64 x 4 643.0 -> 617.5, 4096 x 64 x 4 42.3 -> 42.0. 512 slower everywhere.
_DOT_BLOCK_H = 1024
_DOT_TOP4_BLOCK_H = 2048
#: permute's backward (the gather with the probs gradient) builds each token's row of d_probs in
#: registers (zeros, each entry's gradient put in at its expert) and stores it once, up to
#: _ROW_STORE_MOST_E experts, and at top-8 (BLOCK_K _ROW_STORE_MANY_K) only at that many (BLOCK_E
#: 256); elsewhere it stores the row's zeros, waits at a barrier and stores each entry's gradient
#: (_zero_d_probs_row). H200 (experiments.py --only rowstore, session 23 calls 3 and 5, two
#: processes each, within 0.3 µs of each other), the row store against the zeros:
#:   top-2: 16384 x 8 x 2 x 2048 54.4 -> 49.0 µs (-10%), 65536 x 256 x 2 223.5 -> 206.6 (-7.5%),
#:     4096 x 256 x 2 15.0 -> 14.2, 4096 x 8 x 2 13.5 -> 13.1; 4096 x 64 x 2 x 7168 +0.6%;
#:   top-4: 16384 x 64 x 4 x 2048 85.2 -> 81.1, 65536 x 64 x 4 x 4096 623.5 -> 610.0, 4096 x 64 x 4
#:     level (22.9);
#:   top-8 at 256 experts: 16384 x 256 x 8 x 2048 148.5 -> 143.2, 4096 x 256 x 8 x 4096 73.7 ->
#:     72.9; at 8-128 experts slower at 4096 tokens and past 2048 columns (4096 x 8 x 8 x 4096
#:     71.9 -> 74.1, 4096 x 64 x 8 x 2048 40.2 -> 40.8, 16384 x 128 x 8 x 4096 276.8 -> 278.9),
#:     faster only at 2048 columns from 16384 tokens (65536 x 64 x 8 557.3 -> 551.1): not taken;
#:   1024 experts: 2.8% slower (4096 x 1024 x 8 x 2048 44.6 -> 45.9: a 1024-wide row is 8 registers
#:     a thread and a select per entry each); 512 not measured.
#: The scatter-dot (unpermute's backward) keeps the zeros and the barrier: the row store, built
#: there from its [BLOCK_K] dot products, was 1-8% slower at 8 of 10 shapes (commit 5ff0ff0).
_ROW_STORE_MOST_E = 256
_ROW_STORE_MANY_K = 8
#: Gathers from more than this many source rows (routed rows, N) run on a grid in memory order.
_ORDERED_GATHER_ABOVE = 16384


def gather_block_h(hidden: int, ordered: bool, k: int, n_tokens: int, probs_grad: bool) -> int:
    """The gather's columns per program (at most; narrower rows in one block): _NARROW_GATHER_BLOCK_H
    for unpermute's forward of few tokens at top-8 (BLOCK_K k), else _ORDERED_GATHER_BLOCK_H on the
    grid in memory order and _GATHER_BLOCK_H on the 2-D grid."""
    most_h, most_t = _NARROW_GATHER_MAX
    if not probs_grad and k >= _NARROW_GATHER_MIN_K and hidden <= most_h and n_tokens <= most_t:
        return _block_h(hidden, _NARROW_GATHER_BLOCK_H)
    return _block_h(hidden, _ORDERED_GATHER_BLOCK_H if ordered else _GATHER_BLOCK_H)


def dot_block_h(hidden: int, k: int) -> int:
    """The scatter-dot's column step (BLOCK_K k): 2048 past 2048 columns, else by k."""
    if hidden > 2048:
        return 2048
    return _block_h(hidden, _DOT_TOP4_BLOCK_H if k == 4 else _DOT_BLOCK_H)


def d_probs_row_store(n_experts: int, k: int) -> bool:
    """Whether permute's backward stores each row of d_probs [T, n_experts] once (BLOCK_K k): up to
    _ROW_STORE_MOST_E experts, and at _ROW_STORE_MANY_K entries a token only at that many."""
    block_e = _rt.next_pow2(max(n_experts, 1))
    return block_e <= _ROW_STORE_MOST_E and (k < _ROW_STORE_MANY_K or block_e == _ROW_STORE_MOST_E)


def gather_rows(
    src: torch.Tensor,
    out: torch.Tensor,
    plan: Plan,
    probs: torch.Tensor | None = None,
    row_grad: torch.Tensor | None = None,
    d_probs: torch.Tensor | None = None,
    check_experts: bool = False,
) -> None:
    """out[t] = sum over t's rows of src[row] (* probs[t, e]); optionally d_probs[t, e] = row_grad[row]
    and 0 where t has no row for e (every element of d_probs is written).

    check_experts (with probs): fail if an entry's expert is not a column of probs, where nothing
    else checked that probs has the plan's experts (unpermute without routing_map): a ValueError on
    the CPU, a device-side assertion on the GPU (no read past a row of probs either way)."""
    n_tokens, hidden = out.shape
    if n_tokens == 0:
        return
    check_experts = check_experts and probs is not None
    if check_experts and out.device.type != "cuda":  # the CPU: the host reads the plan for free
        placed = plan.entry >= 0
        most = int((plan.entry[placed] & (MAX_EXPERTS - 1)).max()) + 1 if bool(placed.any()) else 0
        if most > probs.shape[1]:
            raise ValueError(
                f"unpermute: probs has {probs.shape[1]} experts but the plan routes tokens to expert {most - 1}; "
                "pass the probs given to permute (and routing_map, which checks it without reading the plan)"
            )
        check_experts = False
    ordered = src.shape[0] > _ORDERED_GATHER_ABOVE
    probs_grad = row_grad is not None
    k = block_k(src.shape[0], n_tokens)
    block_h = gather_block_h(hidden, ordered, k, n_tokens, probs_grad)
    n_col_blocks = _rt.cdiv(max(hidden, 1), block_h)
    # H200 (experiments.py --only gather; unpermute fwd and permute bwd alike), by source rows N:
    # below 16384 the 2-D grid is faster, 4-12% (session 11: (4096, 256, 2, 2048) 13.9 vs 15.5 µs,
    # (4096, 8, 2, 7168) 45.9 vs 48.9, (2048, 64, 4, 4096) 23.1 vs 24.1); at 16384 level or the 2-D
    # grid up to 1.7% ahead ((2048, 64, 8, 4096) 39.3 vs 40.0); from 32768 the grid in memory order
    # 0.5-3% ahead whatever the tokens ((4096, 128, 8, 7168) 128.3 vs 132.3, (16384, 64, 2, 4096)
    # 109.6 vs 112.3, (65536, 8, 2, 2048) 212.8 vs 216.4). Session 10's rule on tokens (>= 8192) put
    # top-8 gathers at 4096 tokens on the 2-D grid, 0.6-3.5% slower in that routing grid.
    _gather_rows_kernel[(n_tokens * n_col_blocks,) if ordered else (n_tokens, n_col_blocks)](
        src,
        src.stride(0),
        out,
        probs if probs is not None else src,
        probs.stride(0) if probs is not None else 0,
        probs.stride(1) if probs is not None else 0,
        row_grad if probs_grad else src,
        d_probs if probs_grad else src,
        plan.token_ptr,
        plan.entry,
        src.shape[0],
        hidden,
        d_probs.shape[1] if probs_grad else probs.shape[1] if check_experts else 0,
        SCALE=probs is not None,
        PROBS_GRAD=probs_grad,
        CHECK_EXPERTS=check_experts,
        ORDERED=ordered,
        BLOCK_H=block_h,
        BLOCK_E=_rt.next_pow2(max(d_probs.shape[1], 1)) if probs_grad else 1,
        BLOCK_K=k,
        ROW_STORE=probs_grad and d_probs_row_store(d_probs.shape[1], k),
        ACC=compute_dtype(src, probs, row_grad),
        num_warps=4,
        # the assertion needs debug=True (without Triton's int32 overflow checks, which debug would add)
        **({"debug": True, "sanitize_overflow": False} if check_experts else {}),
        **_rt.COMPILE_OPTIONS,
        **_rt.pdl_args(src.device, "gather"),
    )


@_rt.on_input_device
def _launch_unpermute(
    permuted: torch.Tensor,
    plan: torch.Tensor,
    probs: torch.Tensor | None,
    n_tokens: int,
    drop_and_pad: bool = False,
    check_experts: bool = False,
) -> torch.Tensor:
    # drop_and_pad is not read here: it is in the signature of the op (for its backward), which this mirrors.
    # check_experts: nothing checked that probs has the plan's experts (gather_rows). The backward
    # needs no check: it runs only after this forward, on the same plan and probs.
    permuted = _rt.unit_column_stride(permuted)
    n_rows, hidden = permuted.shape
    view = plan_view("unpermute", plan, n_tokens, n_rows)
    out = _rt.empty((n_tokens, hidden), permuted.dtype, permuted.device)
    if hidden > 0:
        gather_rows(permuted, out, view, probs=probs, check_experts=check_experts)
    return out


@_rt.on_input_device
def _launch_unpermute_backward(
    grad: torch.Tensor,
    permuted: torch.Tensor,
    plan: torch.Tensor,
    probs: torch.Tensor | None,
    need_d_probs: bool,
    drop_and_pad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    # drop_and_pad (the plan's routing, as given to unpermute) sets the rows of each padding program.
    grad = _rt.unit_column_stride(grad)
    permuted = _rt.unit_column_stride(permuted) if need_d_probs else permuted
    n_tokens, hidden = grad.shape
    n_rows = permuted.shape[0]
    view = plan_view("unpermute backward", plan, n_tokens, n_rows)
    d_perm = _rt.empty((n_rows, hidden), permuted.dtype, permuted.device)
    d_probs = torch.empty((0,), dtype=torch.float32, device=grad.device)
    if probs is not None and need_d_probs:
        d_probs = _rt.empty(probs.shape, probs.dtype, grad.device)  # the kernel zeroes each row
        k = block_k(n_rows, n_tokens)
        # Column steps of 1024 up to 2048 columns (2048 at top-4) and of 2048 beyond (dot_block_h),
        # with 4 warps at every k (no spills: 139 registers per thread at [8, 2048], ptxas for
        # sm_90). H200, routing grid (bench.py): top-8 past 2048 columns, [8, 2048] with 4 warps
        # 3.4-7.2% faster than the H100's [8, 128] with 8 (4096 x 8 x 8 x 4096: 154.3 -> 143.2 µs;
        # 16384 x 64 x 8 x 7168: 1047.4 -> 1002.3), top-2 there level (-1.2% to +0.3%); at 2048
        # columns one 2048-column step was 2.4-7.4% slower at top-2 than two of 1024 (65536 x 8 x
        # 2: 321.0 -> 344.6 µs), though sweep.py's graph replays had it level (session 14 calls 1
        # and 2). Top-8 at 2048 columns: [8, 1024] 6-9% faster than [8, 128] (session 13).
        block_h = dot_block_h(hidden, k)
        pad_rows = pad_rows_per_program(drop_and_pad)
        pad_programs = _rt.cdiv(n_rows, pad_rows) if view.padded else 0
        if n_tokens + pad_programs > 0:
            _scatter_dot_kernel[(n_tokens + pad_programs,)](
                grad,
                grad.stride(0),
                permuted,
                permuted.stride(0),
                d_perm,
                probs,
                probs.stride(0),
                probs.stride(1),
                d_probs,
                view.token_ptr,
                view.entry,
                view.src_token,
                n_tokens,
                n_rows,
                hidden,
                probs.shape[1],
                PAD=view.padded,
                PAD_ROWS=pad_rows,
                BLOCK_K=k,
                BLOCK_H=block_h,
                BLOCK_E=_rt.next_pow2(max(probs.shape[1], 1)),
                ACC=compute_dtype(grad, permuted, probs),
                num_warps=4,
                **_rt.COMPILE_OPTIONS,
                **_rt.pdl_args(grad.device, "scatter_dot"),
            )
    else:
        scatter_rows(grad, d_perm, view, probs=probs, drop_and_pad=drop_and_pad)  # padding rows too
    return d_perm, d_probs


@torch.library.custom_op(f"moe_utils::unpermute_fwd_plan{PLAN_LAYOUT}", mutates_args=())
def _unpermute_op(
    permuted: torch.Tensor,
    plan: torch.Tensor,
    probs: torch.Tensor | None,
    n_tokens: int,
    drop_and_pad: bool,
    check_experts: bool,
) -> torch.Tensor:
    # drop_and_pad is for the backward only (setup_context reads it from the inputs).
    return _launch_unpermute(permuted, plan, probs, n_tokens, drop_and_pad, check_experts)


@_unpermute_op.register_fake
def _(permuted, plan, probs, n_tokens, drop_and_pad, check_experts):
    return permuted.new_empty((n_tokens, permuted.shape[1]))


@torch.library.custom_op(f"moe_utils::unpermute_bwd_plan{PLAN_LAYOUT}", mutates_args=())
def _unpermute_backward_op(
    grad: torch.Tensor,
    permuted: torch.Tensor,
    plan: torch.Tensor,
    probs: torch.Tensor | None,
    need_d_probs: bool,
    drop_and_pad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_unpermute_backward(grad, permuted, plan, probs, need_d_probs, drop_and_pad)


@_unpermute_backward_op.register_fake
def _(grad, permuted, plan, probs, need_d_probs, drop_and_pad):
    d_perm = permuted.new_empty(permuted.shape)
    if probs is not None and need_d_probs:
        return d_perm, probs.new_empty(probs.shape)
    return d_perm, grad.new_empty((0,), dtype=torch.float32)


def _unpermute_setup(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    permuted, plan, probs, _, drop_and_pad, _ = inputs
    ctx.save_for_backward(permuted, plan, probs)
    ctx.drop_and_pad = drop_and_pad


def _unpermute_op_backward(ctx: Any, grad):
    permuted, plan, probs = ctx.saved_tensors
    need = probs is not None and ctx.needs_input_grad[2]
    # With probs that require grad, d_permuted reads probs and d_probs the rows; else linear in grad.
    _rt.first_order_only("unpermute", (grad,), reads_inputs=need, hint=_rt.FUSED_ONLY_HINT)
    d_perm, d_probs = _unpermute_backward_op(grad, permuted, plan, probs, need, ctx.drop_and_pad)
    return d_perm, None, (d_probs if need else None), None, None, None


_unpermute_op.register_autograd(_unpermute_op_backward, setup_context=_unpermute_setup)


class _FusedUnpermute(torch.autograd.Function):
    """Eager fast path around the same launchers; under torch.compile it calls the ops instead."""

    @staticmethod
    def forward(ctx, permuted, plan, probs, n_tokens, drop_and_pad, check_experts):
        permuted, probs = _rt.plain("unpermute", "permuted_tokens", permuted), _rt.plain("unpermute", "probs", probs)
        plan = _rt.plain("unpermute", "sorted_indices", plan)
        args = (permuted, plan, probs, n_tokens, drop_and_pad, check_experts)
        out = _rt.call(_unpermute_op, _launch_unpermute, *args)
        # permuted is needed only for the probs gradient.
        keep = permuted if probs is not None and probs.requires_grad else None
        ctx.save_for_backward(keep, plan, probs)
        ctx.perm_meta = (permuted.shape, permuted.dtype, permuted.device)
        ctx.drop_and_pad = drop_and_pad
        return out

    @staticmethod
    def backward(ctx, grad):
        kept, plan, probs = ctx.saved_tensors
        grad = _rt.plain("unpermute", "the incoming gradient", grad)
        need = probs is not None and ctx.needs_input_grad[2]
        _rt.first_order_only("unpermute", (grad,), reads_inputs=need, hint=_rt.FUSED_ONLY_HINT)
        shape, dtype, device = ctx.perm_meta
        # Without a probs gradient the rows' values are not read: a zero-stride stand-in carries the shape.
        permuted = kept if kept is not None else torch.empty((1, 1), dtype=dtype, device=device).expand(shape)
        args = (grad, permuted, plan, probs, need, ctx.drop_and_pad)
        d_perm, d_probs = _rt.call(_unpermute_backward_op, _launch_unpermute_backward, *args)
        return d_perm, None, (d_probs if need else None), None, None, None


def _unpermute_reference(permuted_tokens, sorted_indices, restore_shape, probs, routing_map, drop_and_pad):
    """Megatron-Core's algorithm, plain PyTorch (differentiable by autograd)."""
    _, hidden = restore_shape
    input_dtype = permuted_tokens.dtype
    if probs is not None:
        if drop_and_pad:
            num_experts = routing_map.size(1)
            num_permuted_tokens = sorted_indices.size(0)
            capacity = num_permuted_tokens // num_experts
            num_unpermuted_tokens = probs.size(0)
            probs_t_1d = probs.T.contiguous().view(-1)
            indices_dim0 = torch.arange(num_experts, device=routing_map.device).unsqueeze(-1)
            indices_dim1 = sorted_indices.view(num_experts, capacity)
            indices_1d = (indices_dim0 * num_unpermuted_tokens + indices_dim1).view(-1)
            permuted_probs = probs_t_1d.index_select(0, indices_1d)
        else:
            permuted_probs = probs.T.contiguous().masked_select(routing_map.bool().T.contiguous())
        # Promotes bf16 rows to the probs' dtype (usually fp32), as the reference does.
        permuted_tokens = permuted_tokens * permuted_probs.unsqueeze(-1)
    output_tokens = torch.zeros(restore_shape, dtype=permuted_tokens.dtype, device=permuted_tokens.device)
    output_tokens.scatter_add_(0, sorted_indices.unsqueeze(1).expand(-1, hidden), permuted_tokens)
    return output_tokens.to(dtype=input_dtype)


def _check_sorted_indices(fn: str, sorted_indices, permuted_tokens: torch.Tensor, fused: bool) -> None:
    """sorted_indices is on permuted_tokens' device; with fused=False (the reference's row
    indices) also 1-D, integer, one per permuted row: the reference's scatter_add_ would drop the
    rows past a shorter index without an error. (With fused=True plan_layout checks the plan's layout.)"""
    if not isinstance(sorted_indices, torch.Tensor):
        if fused:
            return  # plan_layout's error names what a plan is
        raise TypeError(
            f"{fn}: sorted_indices must be the second output of permute(..., fused=False) (a torch.Tensor), "
            f"got {type(sorted_indices).__name__}"
        )
    if sorted_indices.device != permuted_tokens.device:
        raise ValueError(
            f"{fn}: sorted_indices is on {sorted_indices.device} but permuted_tokens is on "
            f"{permuted_tokens.device}; pass permute's output on the device of the rows"
        )
    if fused:
        return
    if sorted_indices.dtype not in (torch.int32, torch.int64) or sorted_indices.dim() != 1:
        raise ValueError(
            f"{fn}: with fused=False, sorted_indices must be a 1-D int64 (or int32) tensor of row indices, got "
            f"{sorted_indices.dtype} {tuple(sorted_indices.shape)}"
        )
    if _rt.shapes_differ(sorted_indices.shape, permuted_tokens.shape[:1]):
        raise ValueError(
            f"{fn}: sorted_indices has {sorted_indices.shape[0]} entries but permuted_tokens has "
            f"{permuted_tokens.shape[0]} rows; expected one index per row (permute's output for these rows)"
        )


def _check_restore_shape(fn: str, restore_shape: Any) -> tuple[Any, Any]:
    """restore_shape as (num_tokens, hidden): two non-negative integers (Python, numpy or one-element
    integer tensors). Floats are refused, as torch.zeros refuses them (int() truncated 6.5 until
    session 39). Under torch.compile the sizes are taken as before the check, symbolic ones kept."""
    expected = "[num_tokens, hidden] (a torch.Size or a sequence of two non-negative ints)"
    try:
        dims = tuple(restore_shape)
    except TypeError:
        raise TypeError(f"{fn}: restore_shape must be {expected}, got {type(restore_shape).__name__}") from None
    if len(dims) != 2:
        raise ValueError(f"{fn}: restore_shape must be {expected}, got {len(dims)} sizes {dims}")
    if torch.compiler.is_compiling():
        # As before session 39: operator.index and the sign check specialised the compiled graph to
        # one token count (test_compiled_moe_block_serves_every_token_count). Eager calls check.
        return tuple(d if isinstance(d, torch.SymInt) else int(d) for d in dims)
    out = []
    for d in dims:
        try:
            d = operator.index(d)
        except TypeError:
            raise TypeError(f"{fn}: restore_shape must be {expected}, got {dims}") from None
        if d < 0:
            raise ValueError(f"{fn}: restore_shape must be {expected}, got {dims}")
        out.append(d)
    return out[0], out[1]


def unpermute(
    permuted_tokens: torch.Tensor,
    sorted_indices: torch.Tensor,
    restore_shape: torch.Size,
    probs: torch.Tensor | None = None,
    routing_map: torch.Tensor | None = None,
    fused: bool = False,
    drop_and_pad: bool = False,
) -> torch.Tensor:
    """Sum each token's permuted rows back into it, weighted by its routing probs when given.

    Args:
        permuted_tokens: [N, hidden] rows from ``permute`` (after the experts).
        sorted_indices: third output of ``permute`` with the same ``fused`` setting.
        restore_shape: [num_tokens, hidden] of the output (authoritative).
        probs: optional [num_tokens, num_experts] routing probabilities.
        routing_map: [num_tokens, num_experts]; required with probs when fused=False.
        fused: gather kernel (deterministic, fp32 accumulation, no atomics).
        drop_and_pad: the routing of ``permute(..., drop_and_pad=True)``. With fused=True it
            only sets how the backward zeroes the padding rows (the speed, never the numbers).

    Returns:
        [num_tokens, hidden] in permuted_tokens.dtype; tokens routed nowhere get zeros.
    """
    fn = "unpermute"
    if not isinstance(permuted_tokens, torch.Tensor) or not permuted_tokens.is_floating_point():
        raise TypeError(f"{fn}: permuted_tokens must be a floating-point tensor")
    if permuted_tokens.dim() != 2:
        raise ValueError(f"{fn}: permuted_tokens has shape {tuple(permuted_tokens.shape)}; expected [N, hidden]")
    restore_shape = _check_restore_shape(fn, restore_shape)
    n_tokens, hidden = restore_shape
    if _rt.shapes_differ(permuted_tokens.shape[1:], (hidden,)):
        raise ValueError(
            f"{fn}: permuted_tokens has hidden size {permuted_tokens.shape[1]} but restore_shape is {restore_shape}"
        )
    if probs is not None:
        check_probs(fn, probs, n_tokens, None, permuted_tokens.device)
    if routing_map is not None:
        n_experts = check_routing_map(fn, routing_map, n_tokens, permuted_tokens.device)
        if probs is not None and _rt.shapes_differ(probs.shape[1:], (n_experts,)):
            raise ValueError(f"{fn}: probs has {probs.shape[1]} experts but routing_map has {n_experts}")
    _check_sorted_indices(fn, sorted_indices, permuted_tokens, fused)
    if not fused:
        if probs is not None and routing_map is None:
            raise ValueError(f"{fn}: routing_map is required with probs (to select each row's prob)")
        return _unpermute_reference(
            permuted_tokens, sorted_indices, torch.Size(restore_shape), probs, routing_map, drop_and_pad
        )
    # A plan made on the GPU and moved to the CPU: Triton's own error there is "0 active drivers".
    require_triton_device(fn, permuted_tokens)
    refuse_transforms(fn)
    plan_layout(fn, sorted_indices, n_tokens, permuted_tokens.shape[0])
    # Without routing_map nothing has checked probs' experts against the plan's: the gather does.
    check_experts = probs is not None and routing_map is None
    return _FusedUnpermute.apply(permuted_tokens, sorted_indices, probs, n_tokens, bool(drop_and_pad), check_experts)
