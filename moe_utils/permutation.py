"""permute: group tokens by expert, as Megatron-Core's ``moe_utils.permute``.

``fused=False`` is the reference algorithm in plain PyTorch. ``fused=True`` builds a routing plan on
the device (``moe_utils.routing``) and copies each source row once to each of its experts' rows with
``_scatter_rows_kernel``, which in the same launch completes the plan (each permuted row's source
token and probability) and zeroes the padding rows. Its backward gathers the rows back
(``moe_utils.unpermute``'s kernel): no atomics anywhere, so results are bit-identical from run to run.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any

import torch
import triton
import triton.language as tl

from . import _runtime as _rt
from ._kernel_lib import grid_tile, pdl_start
from .routing import (  # block_k: unpermutation imports it from here too
    PLAN_LAYOUT,
    Plan,
    PlanRest,
    block_k,
    build_plan,
    check_routing_map,
    compute_dtype,
    entry_expert,
    entry_row,
    plan_numel,
    plan_view,
    refuse_transforms,
)

__all__ = ["permute", "scatter_rows"]


@triton.jit
def _padding(
    rows,  # [BLOCK] int64 permuted rows
    src_token_ptr,  # [N] int64 plan (not FROM_COUNTS): -1 marks a padding row
    expert_count_ptr,  # [E] int64 (FROM_COUNTS): routed tokens per expert
    total_ptr,  # [1] int64 (FROM_COUNTS): routed pairs in all
    n_rows,  # N
    n_experts,  # E (FROM_COUNTS and DROP_AND_PAD)
    capacity,  # rows per expert (FROM_COUNTS and DROP_AND_PAD)
    FROM_COUNTS: tl.constexpr,
    DROP_AND_PAD: tl.constexpr,
):
    """Which of rows (< N) no token maps to."""
    in_range = rows < n_rows
    if FROM_COUNTS:
        if DROP_AND_PAD:
            # Expert e owns rows e * capacity .. (e + 1) * capacity - 1 and fills the first
            # count[e] of them; rows past E * capacity belong to nobody.
            expert = rows // tl.maximum(capacity, 1)
            owned = in_range & (expert < n_experts)
            count = tl.load(expert_count_ptr + expert, mask=owned, other=0)
            pad = in_range & ((~owned) | (rows - expert * capacity >= tl.minimum(count, capacity)))
        else:
            pad = in_range & (rows >= tl.load(total_ptr))  # rows are filled from 0 up
    else:
        pad = tl.load(src_token_ptr + rows, mask=in_range, other=0) < 0
    return pad


#: Elements of the padding programs' zero tiles (_zero_padding).
_PAD_ZERO_TILE = tl.constexpr(2048)


@triton.jit
def _zero_padding(
    dst_ptr,  # [N, hidden] permuted rows, contiguous
    rows,  # [PAD_ROWS] int64 the rows this program checks
    pad,  # [PAD_ROWS] which of them are padding (_padding)
    col_first,  # first column to zero
    col_steps,  # column blocks of BLOCK_H to zero from there (up to the row width)
    hidden,  # row width
    PAD_ROWS: tl.constexpr,  # a power of two, at most _PAD_ZERO_TILE
    BLOCK_H: tl.constexpr,  # columns per block (col_steps)
):
    """Zero the padding rows among rows in col_steps blocks of BLOCK_H columns from col_first: the
    scatter's padding programs (its one column block) and the scatter-dot's (whole rows). All
    PAD_ROWS rows at once, in column chunks: the mask is known before the first store, so the
    stores go out back to back. (Session 24: in row steps of BLOCK_K, each step loading its rows'
    padding flags, a program of 64 rows spent 16 dependent loads on it, and permute's forward with
    drop_and_pad ran up to 59% slower than with 16 rows.)"""
    # [PAD_ROWS, ZERO_H] tiles of _PAD_ZERO_TILE elements: small beside the copy's tiles, so that
    # this branch does not raise the kernel's registers (the most of any branch, in every program).
    ZERO_H: tl.constexpr = max(1, min(BLOCK_H, _PAD_ZERO_TILE // PAD_ROWS))
    zeros = tl.zeros([PAD_ROWS, ZERO_H], dtype=dst_ptr.dtype.element_ty)
    for step in range(col_steps * (BLOCK_H // ZERO_H)):
        cols = col_first + step * ZERO_H + tl.arange(0, ZERO_H)
        ok = pad[:, None] & (cols < hidden)[None, :]
        tl.store(dst_ptr + rows[:, None] * hidden + cols[None, :], zeros, mask=ok)


@triton.jit
def _plan_rows(
    first_token,  # first token of this program
    probs_ptr,  # [T, E] routing probabilities (HAS_PROBS)
    probs_stride_t,  # elements between tokens of probs
    probs_stride_e,  # elements between experts of probs
    token_ptr_ptr,  # [T + 1] int64 plan
    entry_ptr,  # [N] int64 plan: (row << EXPERT_BITS) | expert of each entry
    src_token_ptr,  # [N] int64 plan out: source token of each routed row
    perm_probs_ptr,  # [N] out (HAS_PROBS): probability of each routed row
    n_tokens,  # T
    n_rows,  # N
    HAS_PROBS: tl.constexpr,
    BLOCK_T: tl.constexpr,  # tokens of this program
    BLOCK_K: tl.constexpr,  # entries per token and step
):
    """src_token[row] = t and perm_probs[row] = probs[t, e] for the entries (t, e) of BLOCK_T tokens."""
    tokens = first_token + tl.arange(0, BLOCK_T)
    t_ok = tokens < n_tokens
    first = tl.load(token_ptr_ptr + tokens, mask=t_ok, other=0)
    count = tl.minimum(tl.load(token_ptr_ptr + tokens + 1, mask=t_ok, other=0), n_rows) - first
    for step in range(0, tl.max(count, axis=0), BLOCK_K):
        j = step + tl.arange(0, BLOCK_K)
        entries = first[:, None] + j[None, :]
        entry = tl.load(entry_ptr + entries, mask=j[None, :] < count[:, None], other=-1)
        rows = entry_row(entry)
        placed = rows >= 0
        tl.store(src_token_ptr + rows, tl.broadcast_to(tokens[:, None], (BLOCK_T, BLOCK_K)), mask=placed)
        if HAS_PROBS:
            expert = entry_expert(entry)
            p = tl.load(probs_ptr + tokens[:, None] * probs_stride_t + expert * probs_stride_e, mask=placed)
            tl.store(perm_probs_ptr + rows, p, mask=placed)


@triton.jit
def _scatter_rows_kernel(
    src_ptr,  # [T, hidden] source rows: tokens, or the gradient of unpermute's output
    src_row_stride,  # elements between source rows
    dst_ptr,  # [N, hidden] permuted rows, contiguous
    probs_ptr,  # [T, E] routing probabilities (SCALE, or WRITE_PLAN with HAS_PROBS)
    probs_stride_t,  # elements between tokens of probs
    probs_stride_e,  # elements between experts of probs
    token_ptr_ptr,  # [T + 1] int64 plan: token t owns entries token_ptr[t] .. token_ptr[t + 1] - 1
    entry_ptr,  # [N] int64 plan: (row << EXPERT_BITS) | expert of each entry (row -1: not placed)
    src_token_ptr,  # [N] int64 plan: source token of each row, -1 for padding; written with WRITE_PLAN
    perm_probs_ptr,  # [N] out (WRITE_PLAN and HAS_PROBS): probability of each permuted row
    expert_count_ptr,  # [E] int64 (WRITE_PLAN): routed tokens per expert
    total_ptr,  # [1] int64 (WRITE_PLAN): routed pairs in all
    n_tokens,  # T: programs past it zero padding rows (PAD)
    n_rows,  # N; entries past it exist only for a routing map that broke its contract
    hidden,  # row width
    n_plan,  # WRITE_PLAN: programs 0 .. n_plan - 1 write the plan, PLAN_TOKENS tokens each
    n_experts,  # E (WRITE_PLAN and DROP_AND_PAD)
    capacity,  # rows per expert (WRITE_PLAN and DROP_AND_PAD)
    SCALE: tl.constexpr,  # multiply each copy by its probability, in fp32
    PAD: tl.constexpr,  # the plan has padding rows: zero them in the same launch
    WRITE_PLAN: tl.constexpr,  # permute: also write src_token (and the permuted probs) of each row
    HAS_PROBS: tl.constexpr,  # WRITE_PLAN: permute probabilities too
    DROP_AND_PAD: tl.constexpr,  # WRITE_PLAN: rows are laid out capacity per expert
    PAD_ROWS: tl.constexpr,  # rows checked by each padding program (pad_rows_per_program)
    PLAN_TOKENS: tl.constexpr,  # WRITE_PLAN: tokens per plan program
    BLOCK_K: tl.constexpr,  # entries (destination rows) written per step
    BLOCK_H: tl.constexpr,  # columns per program
    EARLY_SRC: tl.constexpr,  # load the source row before waiting (_runtime.PDL_EARLY_SOURCE)
    STORE_CACHE: tl.constexpr,  # cache modifier of the copies' stores: "" or ".cs" (_streaming_stores)
    ACC: tl.constexpr,  # SCALE: compute dtype (routing.compute_dtype): fp32, or fp64 for fp64 data
    PDL: tl.constexpr,  # programmatic dependent launch (_runtime.pdl_args)
):
    # dst[row of entry j] = src[t] (* probs[t, expert of entry j]) for every entry j of token t.
    # One program per (token, column block): the source block is read once and written to
    # BLOCK_K destination rows per step, so the k stores of a token are in flight together.
    # With PAD, programs T, T + 1, ... each own PAD_ROWS rows and zero those no token maps to:
    # with WRITE_PLAN src_token is being written by this launch, so they go by the counts, and
    # they write the plan's side of those rows too (src_token -1, probability 0).
    # With WRITE_PLAN, n_plan programs come first and write the plan's expert-major half; in the
    # copy programs those dependent loads (entry, expert, probs) would hold each copy's slot for
    # two more memory latencies (the H100 ran the scatter 2-4% slower that way).
    # A 1-D grid in memory order: program blocks outer, column blocks inner, so a wide row's column
    # blocks are copied by consecutive programs (H200: 0.9-1.2% faster at hidden 4096 and 7168 than
    # a 2-D grid with tokens on the fast axis; experiments.py --only scatter, session 9).
    program_block, col_block = grid_tile(hidden, BLOCK_H, True)
    pid = program_block - n_plan
    cols = col_block * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    # EARLY_SRC (permute, _runtime.PDL_EARLY_SOURCE): src is the op's input, complete before the
    # plan's first kernel passed its wait, so the copy programs read their row before they wait
    # for the map kernel; the plan and padding programs' lanes are masked off. (With no experts no
    # plan kernel runs: the rows read then are stored nowhere, since no token has an entry.)
    if EARLY_SRC:
        copy = (pid >= 0) & (pid < n_tokens)
        x_early = tl.load(src_ptr + pid * src_row_stride + cols, mask=col_ok & copy)
    pdl_start(PDL)
    if WRITE_PLAN and pid < 0:
        if col_block == 0:
            plan_args = (token_ptr_ptr, entry_ptr, src_token_ptr, perm_probs_ptr)
            _plan_rows(
                (pid + n_plan) * PLAN_TOKENS, probs_ptr, probs_stride_t, probs_stride_e, *plan_args, n_tokens,
                n_rows, HAS_PROBS, PLAN_TOKENS, BLOCK_K,
            )  # fmt: skip
    elif PAD and pid >= n_tokens:
        first_row = (pid - n_tokens) * PAD_ROWS
        block = first_row + tl.arange(0, PAD_ROWS)
        args = (src_token_ptr, expert_count_ptr, total_ptr, n_rows, n_experts, capacity, WRITE_PLAN, DROP_AND_PAD)
        pad_block = _padding(block, *args)
        if tl.max(pad_block.to(tl.int32), axis=0) > 0:  # most blocks hold no padding: skip them
            if WRITE_PLAN and col_block == 0:  # the plan's padding marker, and probability 0
                tl.store(src_token_ptr + block, tl.full([PAD_ROWS], -1, tl.int64), mask=pad_block)
                if HAS_PROBS:
                    no_prob = tl.zeros([PAD_ROWS], perm_probs_ptr.dtype.element_ty)
                    tl.store(perm_probs_ptr + block, no_prob, mask=pad_block)
            _zero_padding(dst_ptr, block, pad_block, col_block * BLOCK_H, 1, hidden, PAD_ROWS, BLOCK_H)
    else:
        token = pid
        if EARLY_SRC:
            x = x_early
        else:
            x = tl.load(src_ptr + token * src_row_stride + cols, mask=col_ok)
        first = tl.load(token_ptr_ptr + token)
        last = tl.minimum(tl.load(token_ptr_ptr + token + 1), n_rows)
        for start in range(first, last, BLOCK_K):
            entries = start + tl.arange(0, BLOCK_K)
            entry = tl.load(entry_ptr + entries, mask=entries < last, other=-1)
            rows = entry_row(entry)
            ok = (rows >= 0)[:, None] & col_ok[None, :]
            if SCALE:
                experts = entry_expert(entry)
                p = tl.load(probs_ptr + token * probs_stride_t + experts * probs_stride_e, mask=rows >= 0, other=0.0)
                value = (x.to(ACC)[None, :] * p.to(ACC)[:, None]).to(dst_ptr.dtype.element_ty)
            else:
                value = tl.broadcast_to(x[None, :], (BLOCK_K, BLOCK_H))
            tl.store(dst_ptr + rows[:, None] * hidden + cols[None, :], value, mask=ok, cache_modifier=STORE_CACHE)


#: Rows each padding program checks (a power of two), in permute's scatter and in
#: unpermute's backward (pad_rows_per_program): with num_out_tokens given, N / _PAD_ROWS
#: such programs follow the tokens' in the launch, most finding no padding. H200
#: (experiments.py --only padrows, session 24 call 3, two processes within 0.3 µs), 16 -> 64 rows:
#: unpermute bwd at top-8 (with 16 rows 2T padding programs, each holding a slot sized for the
#: kernel's largest branch) 4096 x 256 x 8 x 2048 79.8 -> 76.9 µs, 16384 x 64 x 8 300.9 / 299.7 ->
#: 291.0 / 291.3, as fast as with no padding programs at all (76.7, 290.8); permute fwd 16384 x 64
#: x 8 173.4 -> 170.5 / 170.8, 65536 x 64 x 2 229.7 / 229.9 -> 227.8 / 227.0; the 4096-token top-2
#: shapes level (within 0.1 µs) in both. 256 rows: level with 64 (permute fwd 4096 x 64 x 2 x 7168
#: 52.6 -> 52.1, 16384 x 64 x 8 169.4 / 171.2). Routing grid (call 7, with _zero_padding's column
#: chunks) against session 23's: unpermute bwd at top-8 and 2048 columns -1.9% to -6.0%, permute
#: fwd -2.4% (geometric mean over 69 shapes).
_PAD_ROWS = 64
#: Except with drop_and_pad, where padding rows are everywhere (each expert's rows past its count):
#: there more programs zero them in parallel. H200 (--only padrows, session 24 call 7, capacity
#: 1.25 x the mean: about a fifth of the rows padding), 16 -> 64 rows: permute fwd 4096 x 64 x 2 x
#: 2048 24.0 -> 25.5 µs, 4096 x 256 x 8 62.5 -> 64.8, 16384 x 64 x 8 203.3 -> 215.7, 65536 x 64 x 2
#: 261.9 -> 274.4; unpermute's backward (the scatter-dot) 28.2 -> 29.8 (4096 x 64 x 2), 321.9 ->
#: 328.0 (16384 x 64 x 8). unpermute takes drop_and_pad through its ops for this (session 25).
_DROP_AND_PAD_PAD_ROWS = 16
#: Tokens whose plan rows one program of permute's scatter writes. A kernel holds the registers of
#: its largest branch in every program: at 64 tokens (k = 8) the plan branch needs 72 registers
#: per thread, which leaves the copy programs 7 programs of 4 warps per SM as without it; 128
#: tokens took 139 (3 per SM), and the H100 ran k = 8 permutes 1-2% slower.
_PLAN_TOKENS = 64


#: The scatter's copies use streaming stores (st.global.cs: evict first) where each source row goes
#: to at least _STREAM_STORE_K rows and the output is at least _STREAM_STORE_BYTES, 2.5 times the
#: L2 (50 MiB on the H200 and the H100): there most of the output leaves L2 before the next op (the
#: expert GEMM, from the first rows) reads it anyway, and evict-first lines still stay in L2 until
#: something needs the room. H200, permute forward (experiments.py --only stores, session 21 call
#: 4, two runs each): plain -> streaming stores at 4096 x 64 x 8 x 2048 (128 MiB out) 47.8 / 47.9
#: -> 45.7 / 45.7 µs, 4096 x 256 x 8 52.0 / 52.1 -> 50.1 / 50.2, 2048 x 64 x 8 x 4096 46.9 /
#: 47.2 -> 44.5 / 45.0, 8192 x 64 x 8 90.3 / 90.6 -> 89.5 / 89.6, 16384 x 64 x 8 175.6 / 175.8 ->
#: 172.8 / 173.3 (call 3, against the package before: 1.1-1.3% at six shapes of 256 MiB to 8.6
#: GB); at top-2 level or up to 0.8% slower at every size (65536 x 64 x 2 x 4096 437.3 / 438.0
#: -> 440.3 / 441.7), as the bare pattern was (--only writeroof, call 2: top-8 +0.6-1.3 points of
#: copy, top-2 -0.4 to -0.5). Below that size the output stays in L2 for the next op: session 3
#: (H100) had evict-first stores 26% faster at (4096, 64, 2, 2048), 16 MiB out, in isolation, and
#: left them out for that reason. Unpermute's backward without the probs gradient runs this kernel
#: too (its anchors in session 21's routing grid: 168.4 -> 166.6 and 294.1 -> 290.9 µs); with the
#: gradient (the scatter-dot, which reads rows as it writes them) streaming stores lost 0.3-0.6%
#: at seven top-8 shapes (call 5), so it has none.
_STREAM_STORE_K = 4
_STREAM_STORE_BYTES = 128 << 20


def _streaming_stores(k: int, n_rows: int, hidden: int, element_size: int) -> bool:
    """Whether the scatter's copies stream their stores past L2 (_STREAM_STORE_K, _STREAM_STORE_BYTES)."""
    return k >= _STREAM_STORE_K and n_rows * hidden * element_size >= _STREAM_STORE_BYTES


def _block_h(hidden: int, cap: int = 1024) -> int:
    return min(_rt.next_pow2(max(hidden, 1)), cap)


def pad_rows_per_program(drop_and_pad: bool) -> int:
    """Rows each padding program of permute's scatter and unpermute's backward checks (_PAD_ROWS,
    _DROP_AND_PAD_PAD_ROWS)."""
    return _DROP_AND_PAD_PAD_ROWS if drop_and_pad else _PAD_ROWS


def scatter_rows(
    src: torch.Tensor,
    dst: torch.Tensor,
    plan: Plan,
    probs: torch.Tensor | None = None,
    rest: PlanRest | None = None,
    drop_and_pad: bool = False,
) -> None:
    """dst[row of (t, e)] = src[t] (* probs[t, e]) for every routed (t, e), and zero in padding rows;
    src [T, hidden]. With rest (from build_plan, for permute) it also completes the plan: src_token
    and rest.perm_probs of every routed row. drop_and_pad: the plan is permute's drop_and_pad
    routing (padding rows inside every expert's rows; with rest, rest's flag counts too), which
    sets the rows of each padding program (pad_rows_per_program)."""
    drop_and_pad = drop_and_pad or (rest is not None and rest.drop_and_pad)
    _launch_scatter(src, src.shape[0], dst, plan, probs, rest, drop_and_pad)


def _launch_scatter(
    src: torch.Tensor,
    n_tokens: int,
    dst: torch.Tensor,
    plan: Plan,
    probs: torch.Tensor | None,
    rest: PlanRest | None,
    drop_and_pad: bool,
) -> None:
    n_rows, hidden = dst.shape
    pad_rows = pad_rows_per_program(drop_and_pad)
    pad_programs = _rt.cdiv(n_rows, pad_rows) if plan.padded else 0
    # Without rows there is nothing to write; without columns only the plan (rest) is.
    if n_rows == 0 or n_tokens + pad_programs == 0 or (hidden == 0 and rest is None):
        return
    k = block_k(n_rows, n_tokens)
    # Measured on the H100 (benchmarks/sweep.py): 2048-column blocks are best at every k.
    block_h = _block_h(hidden, 2048)
    # probs is read to scale the copies (unpermute's backward) or, with rest, to permute them.
    plan_probs = rest is not None and rest.probs is not None and rest.perm_probs is not None
    scale = probs is not None and rest is None
    table = rest.probs if plan_probs else probs if scale else None
    n_plan = _rt.cdiv(n_tokens, _PLAN_TOKENS) if rest is not None else 0
    _scatter_rows_kernel[((n_plan + n_tokens + pad_programs) * _rt.cdiv(max(hidden, 1), block_h),)](
        src,
        src.stride(0),
        dst,
        table if table is not None else src,
        table.stride(0) if table is not None else 0,
        table.stride(1) if table is not None else 0,
        plan.token_ptr,
        plan.entry,
        plan.src_token,
        rest.perm_probs if plan_probs else plan.src_token,
        rest.expert_count if rest is not None else plan.src_token,
        rest.total if rest is not None else plan.src_token,
        n_tokens,
        n_rows,
        hidden,
        n_plan,
        rest.expert_count.shape[0] if rest is not None else 0,
        rest.capacity if rest is not None else 0,
        SCALE=scale,
        PAD=plan.padded,
        WRITE_PLAN=rest is not None,
        HAS_PROBS=plan_probs,
        DROP_AND_PAD=rest is not None and rest.drop_and_pad,
        PAD_ROWS=pad_rows,
        PLAN_TOKENS=_PLAN_TOKENS,
        BLOCK_K=k,
        BLOCK_H=block_h,
        EARLY_SRC=rest is not None and _rt.PDL_EARLY_SOURCE,
        STORE_CACHE=".cs" if _streaming_stores(k, n_rows, hidden, dst.element_size()) else "",
        ACC=compute_dtype(src, table),
        num_warps=4,
        **_rt.COMPILE_OPTIONS,
        **_rt.pdl_args(dst.device, "scatter"),
    )


# -- the fused op ----------------------------------------------------------------------------------


@_rt.on_input_device
def _launch_permute(
    tokens: torch.Tensor,
    routing_map: torch.Tensor,
    probs: torch.Tensor | None,
    num_out_tokens: int,
    drop_and_pad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(permuted tokens [N, hidden], permuted probs [N] (empty without probs), plan)."""
    tokens = _rt.unit_column_stride(tokens)
    hidden = tokens.shape[1]
    plan, rest, n_rows = build_plan(
        "permute", routing_map, probs, None if num_out_tokens < 0 else num_out_tokens, drop_and_pad
    )
    out = _rt.empty((n_rows, hidden), tokens.dtype, tokens.device)
    scatter_rows(tokens, out, rest.view, rest=rest)  # padding rows, src_token and the permuted probs too
    perm_probs = rest.perm_probs
    if perm_probs is None:
        perm_probs = torch.empty((0,), dtype=torch.float32, device=tokens.device)
    return out, perm_probs, plan


@_rt.on_input_device
def _launch_permute_backward(
    grad_out: torch.Tensor,
    grad_perm_probs: torch.Tensor | None,
    plan: torch.Tensor,
    n_tokens: int,
    n_experts: int,
    probs_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_tokens [T, hidden], d_probs [T, E] or empty): a gather, and a scatter of the probs grad."""
    from .unpermutation import gather_rows  # the backward of permute is unpermute's kernel

    grad_out = _rt.unit_column_stride(grad_out)
    grad_perm_probs = None if grad_perm_probs is None else grad_perm_probs.contiguous()
    n_rows, hidden = grad_out.shape
    view = plan_view("permute backward", plan, n_tokens, n_rows)
    d_tokens = _rt.empty((n_tokens, hidden), grad_out.dtype, grad_out.device)
    d_probs = torch.empty((0,), dtype=torch.float32, device=grad_out.device)
    if probs_dtype is not None and grad_perm_probs is not None:
        d_probs = _rt.empty((n_tokens, n_experts), probs_dtype, grad_out.device)  # gather_rows zeroes each row
    gather_rows(grad_out, d_tokens, view, row_grad=grad_perm_probs if d_probs.numel() else None, d_probs=d_probs)
    return d_tokens, d_probs


@torch.library.custom_op(f"moe_utils::permute_fwd_plan{PLAN_LAYOUT}", mutates_args=())
def _permute_op(
    tokens: torch.Tensor,
    routing_map: torch.Tensor,
    probs: torch.Tensor | None,
    num_out_tokens: int,
    drop_and_pad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_permute(tokens, routing_map, probs, num_out_tokens, drop_and_pad)


@_permute_op.register_fake
def _(tokens, routing_map, probs, num_out_tokens, drop_and_pad):
    n_tokens, hidden = tokens.shape
    padded = num_out_tokens >= 0
    n_rows = num_out_tokens if padded else torch.library.get_ctx().new_dynamic_size()
    out = tokens.new_empty((n_rows, hidden))
    perm_probs = probs.new_empty((n_rows,)) if probs is not None else tokens.new_empty((0,), dtype=torch.float32)
    plan = tokens.new_empty((plan_numel(n_tokens, n_rows),), dtype=torch.int64)
    return out, perm_probs, plan


@torch.library.custom_op(f"moe_utils::permute_bwd_plan{PLAN_LAYOUT}", mutates_args=())
def _permute_backward_op(
    grad_out: torch.Tensor,
    grad_perm_probs: torch.Tensor | None,
    plan: torch.Tensor,
    n_tokens: int,
    n_experts: int,
    probs_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_permute_backward(grad_out, grad_perm_probs, plan, n_tokens, n_experts, probs_dtype)


@_permute_backward_op.register_fake
def _(grad_out, grad_perm_probs, plan, n_tokens, n_experts, probs_dtype):
    d_tokens = grad_out.new_empty((n_tokens, grad_out.shape[1]))
    if probs_dtype is not None and grad_perm_probs is not None:
        return d_tokens, grad_out.new_empty((n_tokens, n_experts), dtype=probs_dtype)
    return d_tokens, grad_out.new_empty((0,), dtype=torch.float32)


def _permute_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    tokens, routing_map, probs, _, _ = inputs
    ctx.set_materialize_grads(False)  # no zeros of the plan's size for the plan (_FusedPermute's note)
    ctx.save_for_backward(output[2])
    ctx.meta = (tokens.shape[0], routing_map.shape[1], None if probs is None else probs.dtype, output[0].shape)
    ctx.tokens_dtype = tokens.dtype


def _permute_op_backward(ctx: Any, grad_out, grad_perm_probs, _grad_plan):
    # Linear in the incoming gradients: a graph is needed only where they carry one.
    _rt.first_order_only("permute", (grad_out, grad_perm_probs), reads_inputs=False, hint=_rt.FUSED_ONLY_HINT)
    (plan,) = ctx.saved_tensors
    n_tokens, n_experts, probs_dtype, _ = ctx.meta
    grad_out, grad_perm_probs = _incoming_gradients(ctx, grad_out, grad_perm_probs, plan.device)
    d_tokens, d_probs = _permute_backward_op(grad_out, grad_perm_probs, plan, n_tokens, n_experts, probs_dtype)
    return d_tokens, None, (d_probs if probs_dtype is not None and d_probs.numel() else None), None, None


def _incoming_gradients(ctx: Any, grad_out, grad_perm_probs, device: torch.device):
    """permute's incoming gradients without materialized zeros (set_materialize_grads(False)):
    zeros for the rows where only the permuted probs were used; for the probs, none where their
    gradient is not wanted, zeros where only the rows were used."""
    _, _, probs_dtype, out_shape = ctx.meta
    if grad_out is None:
        grad_out = torch.zeros(out_shape, dtype=ctx.tokens_dtype, device=device)
    if not ctx.needs_input_grad[2]:
        grad_perm_probs = None
    elif grad_perm_probs is None:
        grad_perm_probs = torch.zeros(out_shape[:1], dtype=probs_dtype, device=device)
    return grad_out, grad_perm_probs


_permute_op.register_autograd(_permute_op_backward, setup_context=_permute_setup)


class _FusedPermute(torch.autograd.Function):
    """Eager fast path around the same launchers; under torch.compile it calls the ops instead."""

    @staticmethod
    def forward(ctx, tokens, routing_map, probs, num_out_tokens, drop_and_pad):
        tokens, routing_map = _rt.plain("permute", "tokens", tokens), _rt.plain("permute", "routing_map", routing_map)
        probs = _rt.plain("permute", "probs", probs)
        args = (tokens, routing_map, probs, num_out_tokens, drop_and_pad)
        out, perm_probs, plan = _rt.call(_permute_op, _launch_permute, *args)
        ctx.mark_non_differentiable(plan)
        # Autograd would otherwise hand backward a zero-filled tensor of the plan's size for the plan
        # (non-differentiable outputs get zeros): a fill launch and an allocation every backward
        # (session 45: 1.0-1.6 µs of GPU time at the layer's shapes, and its launch on the host).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(plan)
        ctx.meta = (tokens.shape[0], routing_map.shape[1], None if probs is None else probs.dtype, out.shape)
        ctx.tokens_dtype = tokens.dtype
        return out, (perm_probs if probs is not None else None), plan

    @staticmethod
    def backward(ctx, grad_out, grad_perm_probs, _grad_plan):
        _rt.first_order_only("permute", (grad_out, grad_perm_probs), reads_inputs=False, hint=_rt.FUSED_ONLY_HINT)
        (plan,) = ctx.saved_tensors
        n_tokens, n_experts, probs_dtype, _ = ctx.meta
        grad_out, grad_perm_probs = _incoming_gradients(ctx, grad_out, grad_perm_probs, plan.device)
        grad_out = _rt.plain("permute", "the incoming gradient", grad_out)
        grad_perm_probs = _rt.plain("permute", "the incoming probs gradient", grad_perm_probs)
        args = (grad_out, grad_perm_probs, plan, n_tokens, n_experts, probs_dtype)
        d_tokens, d_probs = _rt.call(_permute_backward_op, _launch_permute_backward, *args)
        return d_tokens, None, (d_probs if probs_dtype is not None and d_probs.numel() else None), None, None


# -- reference path and the public function ----------------------------------------------------------


def _permute_reference(tokens, routing_map, probs, num_out_tokens, drop_and_pad):
    """Megatron-Core's algorithm, plain PyTorch (differentiable by autograd)."""
    num_tokens, _ = tokens.shape
    num_experts = routing_map.shape[1]
    permuted_probs = None
    if drop_and_pad and num_out_tokens is not None:
        capacity = num_out_tokens // num_experts
        routing_map = routing_map.to(dtype=torch.int8).T.contiguous()
        # Stable descending argsort puts each expert's tokens first, in ascending token order.
        sorted_indices = routing_map.argsort(dim=-1, descending=True, stable=True)[:, :capacity].contiguous()
        sorted_indices = sorted_indices.view(-1)
        if probs is not None:
            probs_t_1d = probs.T.contiguous().view(-1)
            indices_dim0 = torch.arange(num_experts, device=routing_map.device).unsqueeze(-1)
            indices_dim1 = sorted_indices.view(num_experts, capacity)
            indices_1d = (indices_dim0 * num_tokens + indices_dim1).view(-1)
            permuted_probs = probs_t_1d.index_select(0, indices_1d)
    else:
        routing_map = routing_map.bool().T.contiguous()
        token_indices = torch.arange(num_tokens, device=routing_map.device).unsqueeze(0).expand(num_experts, -1)
        sorted_indices = token_indices.masked_select(routing_map)
        if probs is not None:
            permuted_probs = probs.T.contiguous().masked_select(routing_map)
    permuted_input = tokens.index_select(0, sorted_indices)
    return permuted_input, permuted_probs, sorted_indices


def _check_tokens(fn: str, tokens: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{fn}: tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if not tokens.is_floating_point():
        raise TypeError(f"{fn}: tokens has dtype {tokens.dtype}; expected a floating-point dtype")
    if tokens.dim() != 2:
        raise ValueError(f"{fn}: tokens has shape {tuple(tokens.shape)}; expected [num_tokens, hidden]")


def check_probs(fn: str, probs: torch.Tensor, n_tokens: int, n_experts: int | None, device: torch.device) -> None:
    """probs is a float [T, E] tensor on the tokens' device (any E where n_experts is None)."""
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"{fn}: probs must be a floating-point tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"{fn}: probs must be a floating-point tensor, got {probs.dtype}")
    if n_experts is None and probs.dim() == 2:
        n_experts = probs.shape[1]
    if probs.dim() != 2 or _rt.shapes_differ(probs.shape, (n_tokens, n_experts)):
        shown = f"[{n_tokens}, {'E' if n_experts is None else n_experts}]"
        raise ValueError(f"{fn}: probs has shape {tuple(probs.shape)}; expected [num_tokens, num_experts] = {shown}")
    if probs.device != device:
        raise ValueError(f"{fn}: probs is on {probs.device} but the tokens are on {device}")


def permute(
    tokens: torch.Tensor,
    routing_map: torch.Tensor,
    probs: torch.Tensor | None = None,
    num_out_tokens: int | None = None,
    fused: bool = False,
    drop_and_pad: bool = False,
):
    """Group tokens by expert: expert 0's tokens first, ascending token order within an expert.

    Args:
        tokens: [num_tokens, hidden] float tensor.
        routing_map: [num_tokens, num_experts] bool (or integer 0/1): token t goes to expert e.
        probs: optional [num_tokens, num_experts] routing probabilities.
        num_out_tokens: rows to allocate. With fused=True and a value given, no host
            synchronisation happens; rows beyond the routed count are zero padding. A routing map
            that routes more pairs than this is an error.
        fused: run the Triton kernels (deterministic, no atomics).
        drop_and_pad: every expert column of routing_map holds exactly capacity = num_out_tokens //
            num_experts ones; rows are [num_experts, capacity]. No data-dependent shapes: the fused
            path can be captured in a CUDA graph. An expert with fewer tokens: fused=True fills the
            rest of its rows with zeros (probs 0), fused=False (the reference's algorithm) with the
            first tokens not routed to it, carrying their probs[t, e].

    Returns:
        (permuted_tokens [N, hidden], permuted_probs [N] or None, sorted_indices). With fused=False,
        sorted_indices [N] holds the source token of each row; with fused=True it is a routing plan
        (int64) to pass to ``unpermute(..., fused=True)``; its first N entries are the same source
        tokens.
    """
    _check_tokens("permute", tokens)
    n_tokens = tokens.shape[0]
    n_experts = check_routing_map("permute", routing_map, n_tokens, tokens.device)
    if probs is not None:
        check_probs("permute", probs, n_tokens, n_experts, tokens.device)
    if num_out_tokens is not None:
        if isinstance(num_out_tokens, torch.Tensor):
            num_out_tokens = int(num_out_tokens.item())  # host sync; pass an int to avoid it
        elif not isinstance(num_out_tokens, (int, torch.SymInt)):
            # A numpy integer (capacity computed with numpy), or a 0-d integer array: what a numpy
            # number made inside a torch.compile'd function arrives as after dynamo's graph break
            # (session 48; int() there gave our ValueError, "got array(6)"). Floats stay refused.
            with contextlib.suppress(TypeError):
                num_out_tokens = operator.index(num_out_tokens)
        if not isinstance(num_out_tokens, (int, torch.SymInt)) or num_out_tokens < 0:
            raise ValueError(f"permute: num_out_tokens must be a non-negative int or None, got {num_out_tokens!r}")
        if drop_and_pad and (n_experts == 0 or num_out_tokens % n_experts != 0):
            raise ValueError(
                f"permute: drop_and_pad=True needs num_out_tokens = capacity * num_experts; got "
                f"num_out_tokens={num_out_tokens} with {n_experts} experts"
            )
    drop_and_pad = bool(drop_and_pad) and num_out_tokens is not None
    if not fused:
        if num_out_tokens is not None and not drop_and_pad:
            routed = int(routing_map.count_nonzero())
            if routed > num_out_tokens:
                raise ValueError(
                    f"permute: routing_map routes {routed} (token, expert) pairs but num_out_tokens = {num_out_tokens}"
                )
        return _permute_reference(tokens, routing_map, probs, num_out_tokens, drop_and_pad)
    refuse_transforms("permute")
    return _FusedPermute.apply(
        tokens, routing_map, probs, -1 if num_out_tokens is None else num_out_tokens, drop_and_pad
    )
