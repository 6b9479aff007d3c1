"""The routing plan of the fused permute: a deterministic counting sort on the device, fused with
the copy of the token rows.

From a routing map ``[T, E]`` (token t goes to expert e where it is nonzero) two small kernels and
the copy kernel build it, with no atomics and no host synchronisation. Tokens are cut into blocks
of ``block_t`` tokens (the copy kernel's programs):

1. ``_count_kernel``: tokens of each block per expert, and (column E) routed pairs per block, into
   a ``[n_blk, E + 1]`` int64 table.
2. ``_scan_kernel`` (one program per few columns, parallel over experts): an exclusive prefix sum
   down each column, in place: the table then holds, per block, the rows of each expert in earlier
   blocks and (column E) the block's first token-major entry; ``totals[e]`` is expert e's count
   and ``totals[E]`` the number of routed pairs.
3. ``_permute_rows_kernel`` (``moe_utils.permutation``): one program per (block, column range)
   recomputes the block's ranks from the table (first row of each expert from a prefix sum of the
   totals, plus a cumulative sum over the block's tokens), writes its part of the plan and copies
   its tokens to their rows. Extra programs zero the padding rows, found from the totals.

The plan is one int64 tensor, returned by ``permute(..., fused=True)`` in place of
``sorted_indices``::

    src_token    [N]      source token of each permuted row (the reference's sorted_indices);
                          -1 for padding rows
    token_ptr    [T + 1]  token t owns entries token_ptr[t] .. token_ptr[t + 1] - 1
    entry_row    [N]      permuted row of each entry (token-major, ascending expert); -1 if dropped
    entry_expert [N]      expert of each entry
    (marker)     [0 or 1] present when rows may be padding (num_out_tokens was given)

N is the number of permuted rows. The layout is private to this package: pass the tensor to
``unpermute(..., fused=True)`` and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["MAX_EXPERTS", "Plan", "RouteCounts", "check_routing_map", "count_routes", "plan_view"]

#: Largest expert count of the fused path: the kernels keep a whole row of experts in one tile.
MAX_EXPERTS = 1024
#: Elements of the count kernel's tile of the routing map.
_COUNT_TILE = 8192
#: Elements of the scan kernel's tile of the count table.
_SCAN_TILE = 4096


@triton.jit
def _count_kernel(
    map_ptr,  # [T, E] routing map, bool or integer 0/1
    map_stride_t,  # elements between tokens of the map
    map_stride_e,  # elements between experts of the map
    table_ptr,  # [n_blk, E + 1] int64 out: routed tokens per (block, expert); column E: per block
    T,  # tokens
    E,  # experts
    n_blk,  # blocks of BLOCK_T tokens
    BLOCK_B: tl.constexpr,  # blocks per program
    BLOCK_T: tl.constexpr,  # tokens per block
    BLOCK_E: tl.constexpr,  # experts per tile (>= E)
):
    # One [BLOCK_B * BLOCK_T, BLOCK_E] tile of the map, summed over the tokens of each block.
    blocks = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    tokens = blocks[:, None] * BLOCK_T + tl.arange(0, BLOCK_T)[None, :]  # [BLOCK_B, BLOCK_T]
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < E
    offs = tokens[:, :, None] * map_stride_t + experts[None, None, :] * map_stride_e
    m = tl.load(map_ptr + offs, mask=(tokens < T)[:, :, None] & e_ok[None, None, :], other=0)
    counts = tl.sum((m != 0).to(tl.int64), axis=1)  # [BLOCK_B, BLOCK_E]
    b_ok = blocks < n_blk
    row = table_ptr + blocks * (E + 1)
    tl.store(row[:, None] + experts[None, :], counts, mask=b_ok[:, None] & e_ok[None, :])
    tl.store(row + E, tl.sum(counts, axis=1), mask=b_ok)


@triton.jit
def _scan_kernel(
    table_ptr,  # [n_blk, E + 1] int64, in place: counts in, exclusive prefix sums down each column out
    totals_ptr,  # [E + 1] int64 out: column sums (expert counts; routed pairs at E)
    n_blk,  # rows of the table
    n_cols,  # E + 1
    BLOCK_S: tl.constexpr,  # rows per step
    BLOCK_C: tl.constexpr,  # columns per program
):
    # Columns are independent: one program per BLOCK_C columns walks the rows in steps, carrying
    # the running sum. Each step reads a tile before writing it back, so in place is safe.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < n_cols
    carry = tl.zeros([BLOCK_C], dtype=tl.int64)
    for start in range(0, n_blk, BLOCK_S):
        rows = start + tl.arange(0, BLOCK_S).to(tl.int64)
        offs = rows[:, None] * n_cols + cols[None, :]
        ok = (rows < n_blk)[:, None] & c_ok[None, :]
        c = tl.load(table_ptr + offs, mask=ok, other=0)
        tl.store(table_ptr + offs, carry[None, :] + tl.cumsum(c, axis=0) - c, mask=ok)
        carry += tl.sum(c, axis=0)
    tl.store(totals_ptr + cols, carry, mask=c_ok)


@dataclass(frozen=True)
class Plan:
    """Views into a plan tensor (see the module docstring)."""

    src_token: torch.Tensor  # [N]
    token_ptr: torch.Tensor  # [T + 1]
    entry_row: torch.Tensor  # [N]
    entry_expert: torch.Tensor  # [N]
    padded: bool  # some rows may be padding (no token maps to them)


def plan_numel(n_tokens: int, n_rows: int, padded: bool) -> int:
    """Length of the plan tensor."""
    return 3 * n_rows + n_tokens + 1 + int(padded)


def plan_view(fn: str, plan: torch.Tensor, n_tokens: int, n_rows: int) -> Plan:
    """Slice a plan made by permute(..., fused=True); anything else is a clear error."""
    if not isinstance(plan, torch.Tensor) or plan.dtype != torch.int64 or plan.dim() != 1:
        raise ValueError(
            f"{fn}: with fused=True, sorted_indices must be the third output of permute(..., fused=True) "
            f"(a 1-D int64 routing plan), got {type(plan).__name__} "
            f"{getattr(plan, 'dtype', '')} {tuple(getattr(plan, 'shape', ()))}"
        )
    sizes = {plan_numel(n_tokens, n_rows, False): False, plan_numel(n_tokens, n_rows, True): True}
    if plan.numel() not in sizes:
        raise ValueError(
            f"{fn}: sorted_indices has {plan.numel()} elements, which is not a routing plan for "
            f"{n_tokens} tokens (restore_shape) and {n_rows} permuted rows (permuted_tokens); pass the "
            "third output of permute(..., fused=True) from the same routing"
        )
    n, t = n_rows, n_tokens
    return Plan(
        src_token=plan[:n],
        token_ptr=plan[n : n + t + 1],
        entry_row=plan[n + t + 1 : 2 * n + t + 1],
        entry_expert=plan[2 * n + t + 1 : 3 * n + t + 1],
        padded=sizes[plan.numel()],
    )


def check_routing_map(fn: str, routing_map: torch.Tensor, n_tokens: int, device: torch.device) -> int:
    """routing_map is [T, E], bool or integer, on the tokens' device. Returns E."""
    if not isinstance(routing_map, torch.Tensor):
        raise TypeError(f"{fn}: routing_map must be a torch.Tensor, got {type(routing_map).__name__}")
    if routing_map.dtype.is_floating_point or routing_map.dtype.is_complex:
        raise TypeError(f"{fn}: routing_map has dtype {routing_map.dtype}; expected bool or an integer dtype of 0/1")
    if routing_map.dim() != 2 or routing_map.shape[0] != n_tokens:
        raise ValueError(
            f"{fn}: routing_map has shape {tuple(routing_map.shape)}; expected [num_tokens={n_tokens}, num_experts]"
        )
    if routing_map.device != device:
        raise ValueError(f"{fn}: routing_map is on {routing_map.device} but the tokens are on {device}")
    return routing_map.shape[1]


def map_pointer(routing_map: torch.Tensor) -> torch.Tensor:
    """The map as the kernels read it (bool is read as uint8)."""
    return routing_map.view(torch.uint8) if routing_map.dtype == torch.bool else routing_map


def block_tokens(n_tokens: int, n_experts: int) -> int:
    """Tokens per block (per program of the copy kernel).

    At least 16, more for long inputs so that the scan stays about 1024 rows (one step); at most a
    16384-element [block, experts] tile. Measured on the H100: benchmarks/sweep.py, "permute".
    """
    block_e = triton.next_power_of_2(max(n_experts, 1))
    by_length = triton.next_power_of_2(max(1, -(-n_tokens // 1024)))
    return max(1, min(max(16, by_length), 64, 16384 // block_e))


@dataclass(frozen=True)
class RouteCounts:
    """Output of count_routes: what the copy kernel reads."""

    table: torch.Tensor  # [n_blk, E + 1] int64: rows of each expert in earlier blocks; column E: first entry
    totals: torch.Tensor  # [E + 1] int64: tokens per expert; routed pairs at E
    block_t: int  # tokens per block
    n_blk: int  # blocks


def count_routes(routing_map: torch.Tensor, block_t: int) -> RouteCounts:
    """Run the count and scan kernels (no host synchronisation) over blocks of block_t tokens (a
    power of two). routing_map [T, E], T, E >= 1."""
    n_tokens, n_experts = routing_map.shape
    device = routing_map.device
    block_e = triton.next_power_of_2(n_experts)
    n_blk = triton.cdiv(n_tokens, block_t)
    m = map_pointer(routing_map)
    table = torch.empty((n_blk, n_experts + 1), dtype=torch.int64, device=device)
    totals = torch.empty((n_experts + 1,), dtype=torch.int64, device=device)
    blocks_per_program = max(1, min(triton.next_power_of_2(n_blk), _COUNT_TILE // (block_t * block_e)))
    _count_kernel[(triton.cdiv(n_blk, blocks_per_program),)](
        m,
        m.stride(0),
        m.stride(1),
        table,
        n_tokens,
        n_experts,
        n_blk,
        BLOCK_B=blocks_per_program,
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        num_warps=8 if blocks_per_program * block_t * block_e >= 8192 else 4,
    )
    block_s = min(triton.next_power_of_2(n_blk), 1024)
    block_c = max(1, min(triton.next_power_of_2(n_experts + 1), _SCAN_TILE // block_s))
    _scan_kernel[(triton.cdiv(n_experts + 1, block_c),)](
        table, totals, n_blk, n_experts + 1, BLOCK_S=block_s, BLOCK_C=block_c
    )
    return RouteCounts(table=table, totals=totals, block_t=block_t, n_blk=n_blk)


def empty_plan(
    n_tokens: int, probs: torch.Tensor | None, num_out_tokens: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Nothing is routed: every row (if num_out_tokens asks for any) is padding. No kernel runs."""
    n_rows = num_out_tokens or 0
    padded = num_out_tokens is not None
    plan = torch.zeros((plan_numel(n_tokens, n_rows, padded),), dtype=torch.int64, device=device)
    plan[:n_rows] = -1
    perm_probs = None if probs is None else torch.zeros((n_rows,), dtype=probs.dtype, device=device)
    return plan, perm_probs, n_rows


def check_fits(fn, fits, totals, n_rows, capacity, drop_and_pad) -> None:
    """Raise (CPU) or assert on the device (GPU, no sync) that every routed pair got a row."""
    if drop_and_pad:
        msg = (
            f"{fn}: drop_and_pad=True needs at most capacity = num_out_tokens // num_experts = {capacity} "
            "tokens per expert in routing_map (exactly capacity when the dispatcher pads)"
        )
    else:
        msg = f"{fn}: routing_map routes more (token, expert) pairs than num_out_tokens = {n_rows}"
    if totals.device.type == "cpu":
        if not bool(fits[0]):
            got = f"per-expert counts {totals[:-1].tolist()}" if drop_and_pad else f"{int(totals[-1])} routed"
            raise ValueError(f"{msg}; got {got}")
    else:
        torch._assert_async(fits, msg)  # one element, nonzero when the routing fits
