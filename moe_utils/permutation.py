"""permute: group tokens by expert, as Megatron-Core's ``moe_utils.permute``.

``fused=False`` is the reference algorithm in plain PyTorch. ``fused=True`` counts the routes
(``moe_utils.routing``), then ``_permute_rows_kernel`` ranks each block of tokens, writes the
routing plan and copies each source row once to each of its experts' rows in the same program. Its
backward gathers the rows back (``moe_utils.unpermute``'s kernel); ``_scatter_rows_kernel`` is the
backward of unpermute. No atomics anywhere, so results are bit-identical from run to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from . import _runtime as _rt
from .routing import (
    MAX_EXPERTS,
    Plan,
    block_tokens,
    check_fits,
    check_routing_map,
    count_routes,
    empty_plan,
    map_pointer,
    plan_numel,
    plan_view,
)

__all__ = ["permute", "scatter_rows", "zero_padding_rows"]


@triton.jit
def _permute_rows_kernel(
    src_ptr,  # [T, hidden] tokens
    src_row_stride,  # elements between token rows
    dst_ptr,  # [N, hidden] out, contiguous: permuted rows
    map_ptr,  # [T, E] routing map, bool or integer 0/1
    map_stride_t,  # elements between tokens of the map
    map_stride_e,  # elements between experts of the map
    probs_ptr,  # [T, E] routing probabilities (HAS_PROBS)
    probs_stride_t,  # elements between tokens of probs
    probs_stride_e,  # elements between experts of probs
    table_ptr,  # [n_blk, E + 1] int64: rows of each expert in earlier blocks; column E: first entry
    totals_ptr,  # [E + 1] int64: tokens per expert; routed pairs at E
    fits_ptr,  # [1] int32 out: 1 when every routed pair got a row (program (0, 0) writes it)
    marker_ptr,  # [1] int64 out (PADDED): set to 1, the plan's "rows may be padding" marker
    src_token_ptr,  # [N] int64 plan out: source token of each row, -1 for padding
    perm_probs_ptr,  # [N] out (HAS_PROBS): probability of each row, 0 for padding
    token_ptr_ptr,  # [T + 1] int64 plan out: first entry of each token, and the total at T
    entry_row_ptr,  # [N] int64 plan out: permuted row of each entry, -1 when it would not fit
    entry_expert_ptr,  # [N] int64 plan out: expert of each entry
    T,  # tokens
    E,  # experts
    N,  # permuted rows
    hidden,  # row width
    capacity,  # DROP_AND_PAD: rows per expert
    n_blk,  # blocks of BLOCK_T tokens; programs past them zero padding rows (PADDED)
    HAS_PROBS: tl.constexpr,
    DROP_AND_PAD: tl.constexpr,
    PADDED: tl.constexpr,  # rows may be padding (num_out_tokens was given)
    BLOCK_T: tl.constexpr,  # tokens per block
    BLOCK_E: tl.constexpr,  # experts per tile (>= E)
    BLOCK_H: tl.constexpr,  # columns per step
    PAD_ROWS: tl.constexpr,  # rows per padding program
):
    # Program (b, s): block b of tokens, column blocks s, s + n_split, ... of their rows.
    # Row of (t, e) = first row of expert e + rows of e in earlier blocks (the scanned table) +
    # tokens of e before t in this block (a cumulative sum down the block's map tile). Every split
    # of a block computes the same ranks; split 0 writes the plan, every split writes entry_row
    # (the same values) and reads it back after a barrier to copy its tokens' columns.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_split = tl.num_programs(1)
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < E
    count = tl.load(totals_ptr + experts, mask=e_ok, other=0)
    total = tl.load(totals_ptr + E)
    if PADDED and pid >= n_blk:
        # Padding rows are the rows no routed pair reaches: past the total, or with drop_and_pad
        # the tail of each expert's capacity. Most programs find none and stop here.
        pad_rows = (pid - n_blk).to(tl.int64) * PAD_ROWS + tl.arange(0, PAD_ROWS)
        in_range = pad_rows < N
        if DROP_AND_PAD:
            pad_expert = pad_rows // capacity
            filled = tl.load(totals_ptr + pad_expert, mask=in_range, other=0)
            pad = in_range & (pad_rows - pad_expert * capacity >= filled)
        else:
            pad = in_range & (pad_rows >= total)
        if tl.max(pad.to(tl.int32), axis=0) > 0:
            if split == 0:
                tl.store(src_token_ptr + pad_rows, tl.full([PAD_ROWS], -1, tl.int64), mask=pad)
                if HAS_PROBS:
                    zero_p = tl.zeros([PAD_ROWS], dtype=perm_probs_ptr.dtype.element_ty)
                    tl.store(perm_probs_ptr + pad_rows, zero_p, mask=pad)
            zeros = tl.zeros([PAD_ROWS, BLOCK_H], dtype=dst_ptr.dtype.element_ty)
            for pad_start in range(split * BLOCK_H, hidden, n_split * BLOCK_H):
                pad_cols = pad_start + tl.arange(0, BLOCK_H)
                pad_ok = pad[:, None] & (pad_cols < hidden)[None, :]
                tl.store(dst_ptr + pad_rows[:, None] * hidden + pad_cols[None, :], zeros, mask=pad_ok)
    else:
        blk = pid.to(tl.int64)
        if DROP_AND_PAD:
            expert_first = experts.to(tl.int64) * capacity
            row_end = expert_first + capacity  # rows of expert e end here
        else:
            expert_first = tl.cumsum(count, axis=0) - count
            row_end = tl.full([BLOCK_E], 0, tl.int64) + N
        if (pid == 0) & (split == 0):
            tl.store(token_ptr_ptr + T, total)
            if DROP_AND_PAD:
                fits = tl.max((count > capacity).to(tl.int32), axis=0) == 0
            else:
                fits = total <= N
            tl.store(fits_ptr, fits.to(tl.int32))
            if PADDED:
                tl.store(marker_ptr, tl.full([], 1, tl.int64))
        base = tl.load(table_ptr + blk * (E + 1) + experts, mask=e_ok, other=0) + expert_first
        entry_base = tl.load(table_ptr + blk * (E + 1) + E)
        tokens = blk * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = tokens < T
        m_ok = t_ok[:, None] & e_ok[None, :]
        m = tl.load(map_ptr + tokens[:, None] * map_stride_t + experts[None, :] * map_stride_e, mask=m_ok, other=0)
        m = (m != 0).to(tl.int32)  # counts within a block fit in int32; the bases are int64
        # Rank of the token among this expert's tokens: exclusive cumsum down the token axis.
        rows = base[None, :] + (tl.cumsum(m, axis=0) - m).to(tl.int64)
        routed = (m != 0) & (rows < row_end[None, :])
        # Token-major list: each token's entries in ascending expert order.
        per_token = tl.sum(m, axis=1)
        token_first = entry_base + (tl.cumsum(per_token, axis=0) - per_token).to(tl.int64)
        entries = token_first[:, None] + (tl.cumsum(m, axis=1) - m).to(tl.int64)
        listed = (m != 0) & (entries < N)
        tl.store(entry_row_ptr + entries, tl.where(routed, rows, -1), mask=listed)
        if split == 0:
            tl.store(src_token_ptr + rows, tl.broadcast_to(tokens[:, None], (BLOCK_T, BLOCK_E)), mask=routed)
            if HAS_PROBS:
                p_offs = tokens[:, None] * probs_stride_t + experts[None, :] * probs_stride_e
                p = tl.load(probs_ptr + p_offs, mask=routed, other=0.0)
                tl.store(perm_probs_ptr + rows, p, mask=routed)
            tl.store(token_ptr_ptr + tokens, token_first, mask=t_ok)
            tl.store(entry_expert_ptr + entries, tl.broadcast_to(experts[None, :], (BLOCK_T, BLOCK_E)), mask=listed)
        # The copy reads this block's entry rows back: the barrier makes the stores above visible
        # to every thread of the program (they come back from L1/L2, not DRAM).
        tl.debug_barrier()
        n_slots = tl.max(per_token, axis=0)
        last = tl.minimum(token_first + per_token, N)
        for start in range(split * BLOCK_H, hidden, n_split * BLOCK_H):
            cols = start + tl.arange(0, BLOCK_H)
            col_ok = cols < hidden
            x_offs = tokens[:, None] * src_row_stride + cols[None, :]
            x = tl.load(src_ptr + x_offs, mask=t_ok[:, None] & col_ok[None, :])
            for j in range(0, n_slots):
                entry = token_first + j
                dst_row = tl.load(entry_row_ptr + entry, mask=t_ok & (entry < last), other=-1)
                row_ok = (dst_row >= 0)[:, None] & col_ok[None, :]
                tl.store(dst_ptr + dst_row[:, None] * hidden + cols[None, :], x, mask=row_ok)


@triton.jit
def _scatter_rows_kernel(
    src_ptr,  # [T, hidden] source rows: the gradient of unpermute's output
    src_row_stride,  # elements between source rows
    dst_ptr,  # [N, hidden] permuted rows, contiguous
    probs_ptr,  # [T, E] routing probabilities (SCALE)
    probs_stride_t,  # elements between tokens of probs
    probs_stride_e,  # elements between experts of probs
    token_ptr_ptr,  # [T + 1] int64 plan: token t owns entries token_ptr[t] .. token_ptr[t + 1] - 1
    entry_row_ptr,  # [N] int64 plan: permuted row of each entry (-1: not placed)
    entry_expert_ptr,  # [N] int64 plan: expert of each entry
    src_token_ptr,  # [N] int64 plan: source token of each row, -1 for padding (PAD)
    n_tokens,  # T: programs past it zero padding rows (PAD)
    n_rows,  # N; entries past it exist only for a routing map that broke its contract
    hidden,  # row width
    SCALE: tl.constexpr,  # multiply each copy by its probability, in fp32
    PAD: tl.constexpr,  # the plan has padding rows: zero them in the same launch
    PAD_ROWS: tl.constexpr,  # rows checked by each padding program, a multiple of BLOCK_K
    BLOCK_K: tl.constexpr,  # entries (destination rows) written per step
    BLOCK_H: tl.constexpr,  # columns per program
):
    # dst[entry_row[j]] = src[t] (* probs[t, entry_expert[j]]) for every entry j of token t.
    # One program per (token, column block): the source block is read once and written to
    # BLOCK_K destination rows per step, so the k stores of a token are in flight together.
    # With PAD, programs T, T + 1, ... each own PAD_ROWS rows and zero those no token maps to.
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    if PAD and pid >= n_tokens:
        block = (pid - n_tokens) * PAD_ROWS + tl.arange(0, PAD_ROWS)
        src = tl.load(src_token_ptr + block, mask=block < n_rows, other=0)
        if tl.min(src, axis=0) < 0:  # most blocks hold no padding: skip them
            zeros = tl.zeros([BLOCK_K, BLOCK_H], dtype=dst_ptr.dtype.element_ty)
            for start in range(0, PAD_ROWS, BLOCK_K):
                rows = (pid - n_tokens) * PAD_ROWS + start + tl.arange(0, BLOCK_K)
                pad = tl.load(src_token_ptr + rows, mask=rows < n_rows, other=0) < 0
                tl.store(dst_ptr + rows[:, None] * hidden + cols[None, :], zeros, mask=pad[:, None] & col_ok[None, :])
    else:
        token = pid
        x = tl.load(src_ptr + token * src_row_stride + cols, mask=col_ok)
        first = tl.load(token_ptr_ptr + token)
        last = tl.minimum(tl.load(token_ptr_ptr + token + 1), n_rows)
        for start in range(first, last, BLOCK_K):
            entries = start + tl.arange(0, BLOCK_K)
            rows = tl.load(entry_row_ptr + entries, mask=entries < last, other=-1)
            ok = (rows >= 0)[:, None] & col_ok[None, :]
            if SCALE:
                experts = tl.load(entry_expert_ptr + entries, mask=rows >= 0, other=0)
                p = tl.load(probs_ptr + token * probs_stride_t + experts * probs_stride_e, mask=rows >= 0, other=0.0)
                value = (x.to(tl.float32)[None, :] * p.to(tl.float32)[:, None]).to(dst_ptr.dtype.element_ty)
            else:
                value = tl.broadcast_to(x[None, :], (BLOCK_K, BLOCK_H))
            tl.store(dst_ptr + rows[:, None] * hidden + cols[None, :], value, mask=ok)


@triton.jit
def _zero_padding_rows_kernel(
    dst_ptr,  # [N, hidden] permuted rows, contiguous
    src_token_ptr,  # [N] int64 plan: source token of each row, -1 for padding
    n_rows,  # N
    hidden,  # row width
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_H: tl.constexpr,  # columns per step
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    src = tl.load(src_token_ptr + rows, mask=rows < n_rows, other=0)
    pad = (src < 0) & (rows < n_rows)
    if tl.max(pad.to(tl.int32), axis=0) > 0:  # most blocks hold no padding: skip them
        for start in range(0, hidden, BLOCK_H):
            cols = start + tl.arange(0, BLOCK_H)
            zeros = tl.zeros([BLOCK_R, BLOCK_H], dtype=dst_ptr.dtype.element_ty)
            tl.store(
                dst_ptr + rows[:, None] * hidden + cols[None, :], zeros, mask=pad[:, None] & (cols < hidden)[None, :]
            )


#: Rows each padding program of the scatter checks (a multiple of every BLOCK_K).
_PAD_ROWS = 16


def _block_h(hidden: int, cap: int = 1024) -> int:
    return min(triton.next_power_of_2(max(hidden, 1)), cap)


def block_k(n_rows: int, n_tokens: int) -> int:
    """Entries handled together: the average top-k rounded up to a power of two, at most 8."""
    return min(8, triton.next_power_of_2(max(1, -(-n_rows // max(n_tokens, 1)))))


def scatter_rows(src: torch.Tensor, dst: torch.Tensor, plan: Plan, probs: torch.Tensor | None = None) -> None:
    """dst[row of (t, e)] = src[t] (* probs[t, e]) for every routed (t, e), and zero in padding rows;
    src [T, hidden]."""
    n_tokens, hidden = src.shape
    n_rows = dst.shape[0]
    if hidden == 0 or n_rows == 0:
        return
    if n_tokens == 0:
        zero_padding_rows(dst, plan)
        return
    k = block_k(n_rows, n_tokens)
    # Measured on the H100 (benchmarks/sweep.py): 2048-column blocks are best at every k.
    block_h = _block_h(hidden, 2048)
    pad_programs = triton.cdiv(n_rows, _PAD_ROWS) if plan.padded else 0
    _scatter_rows_kernel[(n_tokens + pad_programs, triton.cdiv(hidden, block_h))](
        src,
        src.stride(0),
        dst,
        probs if probs is not None else src,
        probs.stride(0) if probs is not None else 0,
        probs.stride(1) if probs is not None else 0,
        plan.token_ptr,
        plan.entry_row,
        plan.entry_expert,
        plan.src_token,
        n_tokens,
        n_rows,
        hidden,
        SCALE=probs is not None,
        PAD=plan.padded,
        PAD_ROWS=_PAD_ROWS,
        BLOCK_K=k,
        BLOCK_H=block_h,
        num_warps=4,
    )


def zero_padding_rows(dst: torch.Tensor, plan: Plan) -> None:
    """Zero the rows of dst that no token maps to (only plans built with num_out_tokens have them)."""
    n_rows, hidden = dst.shape
    if not plan.padded or n_rows == 0 or hidden == 0:
        return
    block_r = 16
    _zero_padding_rows_kernel[(triton.cdiv(n_rows, block_r),)](
        dst, plan.src_token, n_rows, hidden, BLOCK_R=block_r, BLOCK_H=min(_block_h(hidden), 256)
    )


# -- the fused op ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PermuteConfig:
    """Launch shape of _permute_rows_kernel."""

    block_t: int  # tokens per block (a power of two)
    block_h: int  # columns per step
    n_split: int  # programs per block of tokens, each a share of the column blocks
    num_warps: int


def permute_config(n_tokens: int, n_experts: int, hidden: int) -> PermuteConfig:
    """A copy tile of about 8192 elements, and enough programs (about 1024) to fill the GPU.

    Measured on the H100: benchmarks/sweep.py, "permute".
    """
    block_t = block_tokens(n_tokens, n_experts)
    block_h = max(16, min(_block_h(hidden, 2048), 8192 // block_t))
    n_blk = triton.cdiv(n_tokens, block_t)
    n_split = max(1, min(triton.cdiv(hidden, block_h), triton.cdiv(1024, max(n_blk, 1))))
    return PermuteConfig(block_t=block_t, block_h=block_h, n_split=n_split, num_warps=4)


def _launch_permute(
    tokens: torch.Tensor,
    routing_map: torch.Tensor,
    probs: torch.Tensor | None,
    num_out_tokens: int,
    drop_and_pad: bool,
    config: PermuteConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(permuted tokens [N, hidden], permuted probs [N] (empty without probs), plan).

    With num_out_tokens >= 0: three launches (count, scan, copy) and, on the GPU, a device-side
    check that the routing fits; no host synchronisation. Else N is the routed count (one sync,
    as in the reference).
    """
    tokens = _rt.unit_column_stride(tokens)
    n_tokens, hidden = tokens.shape
    n_experts = routing_map.shape[1]
    device = tokens.device
    if not _rt.triton_device(tokens):
        raise RuntimeError(
            f"permute: fused=True runs Triton kernels and needs a CUDA device (or TRITON_INTERPRET=1 on the CPU); "
            f"got tensors on {device}. Use fused=False there."
        )
    if n_experts > MAX_EXPERTS:
        raise ValueError(
            f"permute: fused=True supports at most {MAX_EXPERTS} experts, got {n_experts}; use fused=False"
        )
    padded = num_out_tokens >= 0
    if n_tokens == 0 or n_experts == 0:  # nothing routed: every row is padding
        plan, perm_probs, n_rows = empty_plan(n_tokens, probs, num_out_tokens if padded else None, device)
        out = torch.zeros((n_rows, hidden), dtype=tokens.dtype, device=device)
    else:
        cfg = config or permute_config(n_tokens, n_experts, hidden)
        counts = count_routes(routing_map, cfg.block_t)
        n_rows = num_out_tokens if padded else int(counts.totals[n_experts].item())
        capacity = n_rows // n_experts if drop_and_pad else 0
        plan = _rt.empty((plan_numel(n_tokens, n_rows, padded),), torch.int64, device)
        perm_probs = None if probs is None else _rt.empty((n_rows,), probs.dtype, device)
        out = _rt.empty((n_rows, hidden), tokens.dtype, device)
        view = plan_view("permute", plan, n_tokens, n_rows)
        fits = torch.empty((1,), dtype=torch.int32, device=device)
        m = map_pointer(routing_map)
        pad_programs = triton.cdiv(n_rows, _PAD_ROWS) if padded else 0
        _permute_rows_kernel[(counts.n_blk + pad_programs, cfg.n_split)](
            tokens,
            tokens.stride(0),
            out,
            m,
            m.stride(0),
            m.stride(1),
            probs if probs is not None else m,
            probs.stride(0) if probs is not None else 0,
            probs.stride(1) if probs is not None else 0,
            counts.table,
            counts.totals,
            fits,
            plan[-1:],
            view.src_token,
            perm_probs if perm_probs is not None else view.src_token,
            view.token_ptr,
            view.entry_row,
            view.entry_expert,
            n_tokens,
            n_experts,
            n_rows,
            hidden,
            capacity,
            counts.n_blk,
            HAS_PROBS=probs is not None,
            DROP_AND_PAD=drop_and_pad,
            PADDED=padded,
            BLOCK_T=counts.block_t,
            BLOCK_E=triton.next_power_of_2(n_experts),
            BLOCK_H=cfg.block_h,
            PAD_ROWS=_PAD_ROWS,
            num_warps=cfg.num_warps,
        )
        if padded:
            check_fits("permute", fits, counts.totals, n_rows, capacity, drop_and_pad)
    if perm_probs is None:
        perm_probs = torch.empty((0,), dtype=torch.float32, device=device)
    return out, perm_probs, plan


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
        d_probs = torch.zeros((n_tokens, n_experts), dtype=probs_dtype, device=grad_out.device)
    gather_rows(grad_out, d_tokens, view, row_grad=grad_perm_probs if d_probs.numel() else None, d_probs=d_probs)
    return d_tokens, d_probs


@torch.library.custom_op("moe_utils::permute_fwd", mutates_args=())
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
    plan = tokens.new_empty((plan_numel(n_tokens, n_rows, padded),), dtype=torch.int64)
    return out, perm_probs, plan


@torch.library.custom_op("moe_utils::permute_bwd", mutates_args=())
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
    ctx.save_for_backward(output[2])
    ctx.meta = (tokens.shape[0], routing_map.shape[1], None if probs is None else probs.dtype)


def _permute_op_backward(ctx: Any, grad_out, grad_perm_probs, _grad_plan):
    (plan,) = ctx.saved_tensors
    n_tokens, n_experts, probs_dtype = ctx.meta
    d_tokens, d_probs = _permute_backward_op(grad_out, grad_perm_probs, plan, n_tokens, n_experts, probs_dtype)
    return d_tokens, None, (d_probs if probs_dtype is not None else None), None, None


_permute_op.register_autograd(_permute_op_backward, setup_context=_permute_setup)


class _FusedPermute(torch.autograd.Function):
    """Eager fast path around the same launchers; under torch.compile it calls the ops instead."""

    @staticmethod
    def forward(ctx, tokens, routing_map, probs, num_out_tokens, drop_and_pad):
        args = (tokens, routing_map, probs, num_out_tokens, drop_and_pad)
        out, perm_probs, plan = _rt.call(_permute_op, _launch_permute, *args)
        ctx.mark_non_differentiable(plan)
        ctx.save_for_backward(plan)
        ctx.meta = (tokens.shape[0], routing_map.shape[1], None if probs is None else probs.dtype, out.shape)
        ctx.tokens_dtype = tokens.dtype
        return out, (perm_probs if probs is not None else None), plan

    @staticmethod
    def backward(ctx, grad_out, grad_perm_probs, _grad_plan):
        (plan,) = ctx.saved_tensors
        n_tokens, n_experts, probs_dtype, out_shape = ctx.meta
        if grad_out is None:  # only the permuted probs were used
            grad_out = torch.zeros(out_shape, dtype=ctx.tokens_dtype, device=plan.device)
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


def check_probs(fn: str, probs: torch.Tensor, n_tokens: int, n_experts: int, device: torch.device) -> None:
    """probs is a float [T, E] tensor on the tokens' device."""
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise TypeError(f"{fn}: probs must be a floating-point tensor, got {getattr(probs, 'dtype', type(probs))}")
    if tuple(probs.shape) != (n_tokens, n_experts):
        raise ValueError(
            f"{fn}: probs has shape {tuple(probs.shape)}; expected [num_tokens, num_experts] = {[n_tokens, n_experts]}"
        )
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
            path can be captured in a CUDA graph.

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
        if not isinstance(num_out_tokens, int) or num_out_tokens < 0:
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
    return _FusedPermute.apply(
        tokens, routing_map, probs, -1 if num_out_tokens is None else num_out_tokens, drop_and_pad
    )
