"""The routing plan of the fused permute/unpermute: a deterministic counting sort on the device.

From a routing map ``[T, E]`` (token t goes to expert e where it is nonzero) three small kernels
build it, with no atomics and no host synchronisation:

1. ``_count_kernel``: tokens per (segment of tokens, expert), one program per segment.
2. ``_scan_experts_kernel`` (one program per block of experts): an exclusive prefix sum over the
   segments gives each (segment, expert) the rows of that expert in earlier segments, and the
   total per expert.
3. ``_map_kernel``: one program per segment. It recomputes the first row of each expert (a prefix
   sum over at most MAX_EXPERTS counts) and its segment's first token-major entry (the sum of its
   row of the scan: every routed pair of an earlier segment is an earlier entry), then a
   cumulative sum over the segment's tokens gives every routed (token, expert) its permuted row
   (expert-major, ascending token order within an expert, exactly the order of the reference) and
   its place in the token-major list. The last program's walk ends at the total: it writes it,
   and whether the routing fits (on the GPU it also asserts it there; with drop_and_pad program 0
   checks the counts instead). At top-2 of 129-256 experts in segments of 16 tokens or more it
   walks the map as uint64 words, two tokens a step (``_map_words_walk``).

With ``num_out_tokens`` given and a small count table (``_SCAN_IN_MAP``) the map kernel takes the
scan's place: each of its programs sums the whole table, and program 0 writes the totals.

The map kernel writes only the token-major half of the plan. The expert-major half (``src_token``
and the permuted probabilities) is written by permute's scatter, which visits every entry anyway:
in the map kernel those stores (and the gather of probs) ran for every (token, expert) of its
dense tiles, routed or not, and cost 30% of the plan at 65536 x 256 on the H100.

The plan is one int64 tensor, returned by ``permute(..., fused=True)`` in place of
``sorted_indices``::

    src_token    [N]      source token of each permuted row (the reference's sorted_indices);
                          -1 for padding rows
    token_ptr    [T + 1]  token t owns entries token_ptr[t] .. token_ptr[t + 1] - 1
    entry        [N]      each entry (token-major, ascending expert): (row << 10) | expert, with
                          row its permuted row, -1 if dropped (entry < 0 then); rows fit in the
                          53 bits left (N < 2^53, far past any tensor that fits in memory)

Its length, 2N + T + 1, gives T for a known N: a plan passed with another restore_shape is an
error. (Until session 34 (layout 2) a padded plan carried one more element, a marker, so that a
padded plan for T tokens had the length of an unpadded one for T + 1 and was misread, silently.)
Whether rows may be padding is not in the layout: permute's own scatter knows (num_out_tokens
was given), and a plan given back to unpermute is taken as padded: its backward runs the padding
programs, which find no padding rows in an unpadded plan (as fast as none, session 24 call 3).

N is the number of permuted rows. The layout is private to this package: pass the tensor to
``unpermute(..., fused=True)`` and nowhere else. ``build_plan`` returns it with ``src_token`` not
yet written; ``permutation.scatter_rows(..., rest=...)`` completes it: the routed rows' source
tokens, and -1 in the padding rows (with the permuted probabilities: theirs, and 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _runtime as _rt
from ._kernel_lib import pdl_start, triton_version

__all__ = [
    "EXPERT_BITS",
    "MAX_EXPERTS",
    "PLAN_LAYOUT",
    "Plan",
    "PlanRest",
    "build_plan",
    "check_routing_map",
    "compute_dtype",
    "plan_view",
]

#: Largest expert count of the fused path: the map kernel keeps a whole row of experts in one tile,
#: and an entry of the plan holds its expert in the low EXPERT_BITS bits.
EXPERT_BITS = 10
MAX_EXPERTS = 1 << EXPERT_BITS
_EXPERT_BITS = tl.constexpr(EXPERT_BITS)  # the same, for the kernels
_EXPERT_MASK = tl.constexpr(MAX_EXPERTS - 1)


#: The map kernel's entry stores scatter its tiles to data-dependent addresses, so Triton's
#: coalescing pass picks their layout from the tile's shape alone. Each thread holds a group of
#: GROUP experts along the tile's last axis. Triton 3.6 lays the store out with that axis inside a
#: thread too; from 3.7 it spreads the threads over it, a conversion through shared memory in every
#: step (49 shared-memory instructions, +35% instructions a step at E = 256 on 3.7-3.9). Stored
#: with that axis first (a permute, free in registers), 3.7-3.9 keep it in the thread and 3.6 does
#: not: so the order follows the version (tests/test_sm90_compile.py checks the step's SASS).
_GROUP_AXIS_FIRST = tl.constexpr(triton_version() >= (3, 7))


#: The plan layout's number, part of the name of every custom op that takes or returns a plan
#: (``moe_utils::permute_fwd_plan3``, ...). Inductor's on-disk cache keys a compiled graph by its
#: code, which names the ops, not by their fake kernels: a graph compiled against another layout
#: (another plan length) would be replayed. Bump it with every change of the layout.
PLAN_LAYOUT = 3
#: Segments of tokens (programs of the count and map kernels). At most _MAX_SEGMENTS, so that the
#: scan stays one tile tall, except where the map kernel runs one warp per program and twice as
#: many segments would still be _LONG_SEGMENT steps and _LONG_SEGMENT_TOKENS tokens long: there
#: 2 * _MAX_SEGMENTS. Such walks are latency-bound (1.9 active warps per scheduler at 65536 x 256
#: with 1024 segments, Nsight Compute, session 6), and more programs gain more than the taller scan
#: loses: build_plan at 65536 x 256 x 2 66.3 -> 62.1 µs, 65536 x 64 x 2 32.2 -> 29.2 (H100,
#: session 7). Shorter or wider walks lost 2-40% with 2048: 16384 x 64 (4 steps a segment),
#: 65536 x 8 (2 steps), 16384 x 1024 (4 warps a program), and 16384 x 256 (8 one-token steps:
#: 24.3 -> 25.9 µs, session 8). Tokens per segment is the ratio of the map's work to the scan's
#: (T x E entries against n_seg x E counts).
_MAX_SEGMENTS = 1024
_LONG_SEGMENT = 8
_LONG_SEGMENT_TOKENS = 32
#: Where the map kernel runs several warps per program (E > 256), segments of at least
#: _MIN_SEGMENT_TOKENS tokens: there each program's fixed work (its experts' counts, offsets and
#: row bases, summed across warps through shared memory) outweighs a walk of a few one-token steps.
#: H200 (experiments.py --only segments, session 15): permute fwd at 4096 x 1024 x 8 66.8 -> 60.7
#: µs (build_plan 21.6 -> 16.2) with 512 segments of 8 tokens against 1024 of 4. With one warp
#: per program it was mixed: 4096 x 64 x 2 -2.2%, 4096 x 128 -0.8% / +0.1%, 4096 x 256 +1.6% /
#: +1.2% (k = 2 / 8), though build_plan alone was 5-11% faster at E = 64 and 128.
_MIN_SEGMENT_TOKENS = 8
_MIN_SEGMENT_WARPS = 2  # the map kernel's warps from which the rule holds
#: At most _MOST_COUNTS counts in the scan (segments x BLOCK_E), unless that makes walks of more
#: than _LONGEST_WALK steps: at E = 1024, 512 segments instead of 1024 up to 32768 tokens. H200
#: (sweep.py --only plan, session 15): build_plan at 16384 x 1024 x 8 37.9 against 42.3 µs with
#: 512 segments of 32 steps (sessions 8 and 14 the same), but at 65536 x 1024 (128 steps with 512)
#: 1024 segments were ahead, 132.2 against 144.1 µs. At E <= 512 the bound is not reached.
_MOST_COUNTS = 1 << 19
_LONGEST_WALK = 64
#: Routing-map entries ([tokens, experts] tile) per step of the count and map kernels (a tile is
#: at least one token wide: up to 1024 entries), and the map kernel's warps: 8 entries per thread.
#: The map kernel's two cumulative sums (down the tokens, across the experts) move its tiles
#: through shared memory (about 800 instructions per step at [4, 256] with 4 warps, 228 of them
#: shared-memory loads, stores and barriers); one warp per program on small tiles has no barrier.
#: Measured on the H100 (sweep.py --only plan): 65536 tokens x 256 experts 291 µs at 1024-entry
#: tiles with 4 warps, 130 µs at 256 entries with one warp; never slower at the 8 shapes swept.
_PLAN_TILE = 256
_MAP_ENTRIES_PER_THREAD = 8
#: Elements per program of the expert scan ([segments, experts] tile), and per thread. On the
#: H100 (sweep.py --only plan, session 6): 4096 was the fastest at 7 of 8 shapes, 1-3 µs ahead of
#: 1024 and 8192 (8192 at 1024 segments takes 250 registers).
_SCAN_TILE = 4096
_SCAN_ENTRIES_PER_THREAD = 32
#: With num_out_tokens given (no host sync on the counts) and a count table of at most this many
#: entries (its tile, segments x experts, each rounded up to a power of two), no scan kernel runs:
#: each map program sums the whole table itself, one launch fewer in the plan's chain. Only E = 8
#: at up to 16384 tokens fits (4096 x 8: 128 segments; 16384 x 8: 512 segments). H200
#: (experiments.py --only scanmap, session 17 call 5, two runs, the table summed in one tile):
#: build_plan 4.8 -> 3.9 µs at 4096 x 8, 6.4 -> 5.7 at 16384 x 8; permute fwd 8192 x 8 x 2 33.2 ->
#: 31.4 µs, 16384 x 8 x 2 59.4 -> 57.5, 4096 x 8 x 2 x 7168 51.3 -> 49.7; a bound of 1024 left
#: 8192 and 16384 tokens level. 0: always the scan kernel.
_SCAN_IN_MAP = 4096
#: Counts each map program sums at a time there ([segments, BLOCK_E] tiles; 32 a thread at one
#: warp): at 16384 x 8 one 4096-count tile took 255 registers and spilled on sm_90.
_SCAN_IN_MAP_TILE = 1024
#: The map kernel loads each step's routing-map tile during the step before (software pipelining
#: by hand, one step deep). H200 (experiments.py --only prefetch, session 14): build_plan 0.2-1.3
#: µs faster at 6 of 8 shapes (16384 x 256 x 2 21.0 -> 19.7 µs, 65536 x 256 x 2 53.9 -> 53.2),
#: 0.2 / 0.4 µs slower at E = 8 (4096 x 8 x 2, 65536 x 8 x 8); the permute forward 0.1-1.9%
#: faster at 7 of 8, level at the eighth. Small: the step is bound by its own instructions, not
#: by its load. The same change in the count kernel made the permute 2-7% slower (65536 x 256 x 2
#: 269.7 -> 278.1 µs), so it is not there.
_MAP_PREFETCH = True
#: The map kernel's one-token steps over uint64 words of the map (_map_words_walk, _map_words):
#: where the map's rows are whole aligned words, at E = 129-256 (one warp), in segments of at least
#: _WORDS_MIN_SEGMENT tokens and at most _WORDS_MOST_K entries a token on average. H200
#: (experiments.py --only words, session 25 call 6, two processes within 1 µs), tile walk -> word
#: walk: 65536 x 256 x 2 x 2048 build_plan 36.0 -> 28.2 µs, permute fwd 250.7 -> 243.5 / 242.3
#: (cold 256.1 -> 248.1 / 248.6); 16384 x 256 x 2 (16-token segments) 68.5 -> 67.4 / 67.8. Slower
#: at 4096 x 256 x 2 (4-token segments: the per-segment row table and its barrier; 21.3 -> 22.1),
#: at top-8 (about half the tokens have two routed experts in a group and take the per-expert
#: step: 16384 x 256 x 8 plan 13.5 -> 16.3, 65536 x 256 x 8 36.1 -> 40.3), and at 512 and 1024
#: experts at top-8 (8192 x 512 x 8 plan 15.3 -> 20.1).
_MAP_WORDS = True
_WORDS_MIN_SEGMENT = 16
_WORDS_MOST_K = 2
#: The word walk takes two tokens a step (_map_words_walk's PAIRS): its one-token step is a chain of
#: warp shuffles (the groups' scan, the token's sum) with little to overlap it at one warp a
#: program; two tokens' counts packed in one int32 share them. H200 (experiments.py --only
#: wordpairs, session 26 call 8, two processes): permute fwd 0.2-1.9% faster at all six word-walk
#: shapes (32768 x 256 x 2 x 2048 129.6 / 128.4 -> 127.2 / 127.1 µs, 65536 x 256 x 2 244.9 / 245.0
#: -> 243.7 / 244.3); 633 SASS a step against 2 x 321, 120 registers against 96.
_WORDS_PAIRS = True


@triton.jit
def entry_row(entry):
    """Permuted row of plan entries (-1 where not placed)."""
    return entry >> _EXPERT_BITS


@triton.jit
def entry_expert(entry):
    """Expert of plan entries."""
    return entry & _EXPERT_MASK


@triton.jit
def _count_kernel(
    map_ptr,  # [T, E] routing map, bool or integer 0/1
    map_stride_t,  # elements between tokens of the map
    map_stride_e,  # elements between experts of the map
    counts_ptr,  # [n_seg, E] int32 out: routed tokens per segment and expert
    T,  # tokens
    E,  # experts
    seg_len,  # tokens per segment, a multiple of BLOCK_T
    BLOCK_T: tl.constexpr,  # tokens per step
    BLOCK_E: tl.constexpr,  # experts per tile (>= E)
    PDL: tl.constexpr,  # programmatic dependent launch (_runtime.pdl_args)
):
    pdl_start(PDL)
    seg = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < E
    # Counted elementwise, summed over tokens once at the end: a reduction per step costs more
    # than the load it follows (shuffles and a barrier per step).
    acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    first = seg.to(tl.int64) * seg_len
    for off in range(0, seg_len, BLOCK_T):
        tokens = first + off + tl.arange(0, BLOCK_T)
        ok = (tokens < T)[:, None] & e_ok[None, :]
        m = tl.load(map_ptr + tokens[:, None] * map_stride_t + experts[None, :] * map_stride_e, mask=ok, other=0)
        acc += (m != 0).to(tl.int32)
    tl.store(counts_ptr + seg * E + experts, tl.sum(acc, axis=0), mask=e_ok)


@triton.jit
def _scan_experts_kernel(
    counts_ptr,  # [n_seg, E] int32 routed tokens per segment and expert
    seg_expert_off_ptr,  # [n_seg, E] int32 out: rows of the same expert in earlier segments
    expert_count_ptr,  # [E] int64 out: routed tokens per expert
    n_seg,  # segments
    E,  # experts
    BLOCK_S: tl.constexpr,  # >= n_seg
    BLOCK_E: tl.constexpr,  # experts per program
    PDL: tl.constexpr,  # programmatic dependent launch (_runtime.pdl_args)
):
    # Experts are independent here: one program per block of experts, all segments in one tile.
    # The tile's rows are BLOCK_E consecutive counts: one expert per program made every load and
    # store its own 32-byte sector (9.4 µs at 1024 segments x 256 experts on the H100).
    # Sums of one expert's counts are at most T < 2^31 tokens (build_plan checks T): int32, which
    # halves the writes here and the map kernel's reads against int64 offsets.
    pdl_start(PDL)
    segs = tl.arange(0, BLOCK_S)
    experts = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    ok = (segs < n_seg)[:, None] & (experts < E)[None, :]
    offs = segs[:, None] * E + experts[None, :]
    c = tl.load(counts_ptr + offs, mask=ok, other=0)
    tl.store(seg_expert_off_ptr + offs, tl.cumsum(c, axis=0) - c, mask=ok)
    tl.store(expert_count_ptr + experts, tl.sum(c, axis=0).to(tl.int64), mask=experts < E)
    # No token-major prefix over segments here: the map kernel sums its row of these offsets. As a
    # second scan in program 0 it made that program the launch's slowest (the scan took 10 µs at
    # 2048 segments x 256 experts on the H100, session 7).


@triton.jit
def _word_entry(w, seg_rows_ptr, groups, g_ok, GROUP: tl.constexpr):
    """A token's map words w ([groups] uint64, one byte an expert) for _map_words_walk: 0x01 in
    each byte whose map entry is nonzero ((b & 0x7F) + 0x7F carries into its own high bit only),
    their prefix sums (byte i: the group's routed experts up to i, so the top byte all of them),
    the group's one routed expert j where it has one (prefix's bytes j .. 7 are 1, summing to
    8 - j), and that expert's first row in the segment, gathered from seg_rows."""
    ones = tl.full([], 0x0101010101010101, tl.uint64)
    low7 = ones * 0x7F
    m_word = ((((w & low7) + low7) | w) & (ones << 7)) >> 7
    prefix = m_word * ones
    j = tl.minimum(GROUP - ((prefix * ones) >> 56).to(tl.int32), GROUP - 1)
    row = tl.load(seg_rows_ptr + groups * GROUP + j, mask=g_ok & ((prefix >> 56) == 1), other=0)
    return m_word, prefix, j, row


@triton.jit
def _segment_word(word_ptr, word_stride_t, token, ahead, off, seg_len, T, g_ok):
    """The map words ([groups] uint64) of token + ahead, the segment's token off + ahead; zero past
    the segment or the tokens."""
    ok = g_ok & (off + ahead < seg_len) & (token + ahead < T)
    return tl.load(word_ptr + (token + ahead) * word_stride_t, mask=ok, other=0)


@triton.jit
def _word_token(
    m_word, prefix, j, row, in_group, group_first, used_word, room_word, entry_at, limit, entry_ptr, groups, shifts,
    room, entry_base, unplaced, GROUP: tl.constexpr,
):  # fmt: skip
    """One token's entries in _map_words_walk (its word's _word_entry, its groups' counts and
    first places, the rows its experts took before it in the segment as bytes of used_word): one
    entry a thread where no group holds two routed experts, else per expert."""
    if tl.max(in_group, axis=0) <= 1:
        shift = (j * 8).to(tl.uint64)
        rank = ((used_word >> shift) & 0xFF).to(tl.int32)
        one = in_group == 1
        fits = rank < ((room_word >> shift) & 0xFF).to(tl.int32)
        expert = (groups * GROUP + j).to(tl.int64)
        placed = ((row + rank) << _EXPERT_BITS) | expert
        entry = tl.where(fits, placed, (tl.full([], -1, tl.int64) << _EXPERT_BITS) | expert)
        tl.store(entry_ptr + entry_at + group_first, entry, mask=one & (group_first < limit))
    else:
        m_all = ((m_word[:, None] >> shifts[None, :]) & 1).to(tl.int32)
        ranks = ((used_word[:, None] >> shifts[None, :]) & 0xFF).to(tl.int32)
        place = tl.cumsum(m_all, axis=1) - m_all + group_first[:, None]
        entries = tl.where(ranks < room, entry_base + (ranks.to(tl.int64) << _EXPERT_BITS), unplaced)
        if _GROUP_AXIS_FIRST:  # the same store, laid out to stay in registers (see there)
            ptrs = tl.permute(entry_ptr + entry_at + place, (1, 0))
            keep = tl.permute((m_all != 0) & (place < limit), (1, 0))
            tl.store(ptrs, tl.permute(entries, (1, 0)), mask=keep)
        else:
            tl.store(entry_ptr + entry_at + place, entries, mask=(m_all != 0) & (place < limit))


@triton.jit
def _map_words_walk(
    map_ptr,  # [T, E] routing map, one byte an entry
    word_stride_t,  # uint64 words between tokens of the map
    seg_rows_ptr,  # [E] int64 scratch: this segment's first row of each expert
    token_ptr_ptr,
    entry_ptr,
    T,
    N,
    seg_len,  # < 256
    first,  # the segment's first token (int64)
    next_entry,  # its first token-major entry (int64)
    experts,  # [groups, GROUP] expert of each tile element
    e_ok,  # [groups, GROUP] experts < E
    first_row,  # [groups, GROUP] int64: each expert's first row in the segment
    entry_base,  # [groups, GROUP] int64: (first_row << EXPERT_BITS) | expert
    unplaced,  # [groups, GROUP] int64: (-1 << EXPERT_BITS) | expert
    room,  # [groups, GROUP] int32: rows left to each expert, at most seg_len
    BLOCK_E: tl.constexpr,
    GROUP: tl.constexpr,  # 8: a group's experts are one uint64 word of the map
    PAIRS: tl.constexpr,  # two tokens a step (_WORDS_PAIRS)
):
    """_map_kernel's walk in one- or two-token steps, each group's GROUP map bytes one uint64 word: its
    nonzero bytes, the group's count and the experts' places in it come from word arithmetic
    (byte sums by multiplying with 0x0101010101010101) instead of sums and cumulative sums over
    the experts, and the rows each expert took in the segment, and its room, are bytes of a word.
    Where every group of the token has at most one routed expert (k = 2 of 256: 97% of tokens)
    each thread places its group's one entry, its first row gathered from seg_rows (written here
    first), its word and its row loaded a step ahead; else the step runs per expert. With PAIRS
    a step takes two tokens: their groups' counts packed in one int32 (16 bits each), so that one
    scan and one sum across the warp serve both. Returns the next token-major entry after the
    segment."""
    groups = tl.arange(0, BLOCK_E // GROUP)
    shifts = (tl.arange(0, GROUP) * 8).to(tl.uint64)
    room_word = tl.sum(room.to(tl.uint64) << shifts[None, :], axis=1)
    tl.store(seg_rows_ptr + experts, first_row, mask=e_ok)
    tl.debug_barrier()  # the rows' gathers below read other threads' stores
    g_ok = tl.max(e_ok.to(tl.int32), axis=1) > 0
    word_ptr = map_ptr.to(tl.pointer_type(tl.uint64)) + groups
    used_word = tl.zeros([BLOCK_E // GROUP], dtype=tl.uint64)
    tile = (room, entry_base, unplaced)
    if PAIRS:
        # Tokens first + off and first + off + 1 a step (the second only while off + 1 < seg_len);
        # words two steps ahead, rows one, as below. A second token past the segment reads a zero
        # word: its entries would land on the next segment's first token's, which that segment's
        # program writes at the same time on the GPU (the interpreter, running programs in order,
        # could not tell).
        wa = _segment_word(word_ptr, word_stride_t, first, 0, 0, seg_len, T, g_ok)
        wb = _segment_word(word_ptr, word_stride_t, first, 1, 0, seg_len, T, g_ok)
        wa_next = _segment_word(word_ptr, word_stride_t, first, 2, 0, seg_len, T, g_ok)
        wb_next = _segment_word(word_ptr, word_stride_t, first, 3, 0, seg_len, T, g_ok)
        m_a, prefix_a, j_a, row_a = _word_entry(wa, seg_rows_ptr, groups, g_ok, GROUP)
        m_b, prefix_b, j_b, row_b = _word_entry(wb, seg_rows_ptr, groups, g_ok, GROUP)
        for off in range(0, seg_len, 2):
            token = first + off
            wa_after = _segment_word(word_ptr, word_stride_t, token, 4, off, seg_len, T, g_ok)
            wb_after = _segment_word(word_ptr, word_stride_t, token, 5, off, seg_len, T, g_ok)
            m_a_next, prefix_a_next, j_a_next, row_a_next = _word_entry(wa_next, seg_rows_ptr, groups, g_ok, GROUP)
            m_b_next, prefix_b_next, j_b_next, row_b_next = _word_entry(wb_next, seg_rows_ptr, groups, g_ok, GROUP)
            in_a = (prefix_a >> 56).to(tl.int32)
            in_b = (prefix_b >> 56).to(tl.int32)
            packed = in_a | (in_b << 16)
            before = tl.cumsum(packed, axis=0) - packed
            total = tl.sum(packed, axis=0)
            per_a = total & 0xFFFF
            tl.store(token_ptr_ptr + token, next_entry, mask=token < T)
            tl.store(token_ptr_ptr + token + 1, next_entry + per_a, mask=(off + 1 < seg_len) & (token + 1 < T))
            limit = tl.minimum(N - next_entry, BLOCK_E).to(tl.int32)
            _word_token(
                m_a, prefix_a, j_a, row_a, in_a, before & 0xFFFF, used_word, room_word, next_entry, limit, entry_ptr,
                groups, shifts, *tile, GROUP,
            )  # fmt: skip
            entry_b = next_entry + per_a
            limit = tl.minimum(N - entry_b, BLOCK_E).to(tl.int32)
            _word_token(
                m_b, prefix_b, j_b, row_b, in_b, before >> 16, used_word + m_a, room_word, entry_b, limit, entry_ptr,
                groups, shifts, *tile, GROUP,
            )  # fmt: skip
            used_word += m_a + m_b
            next_entry += per_a + (total >> 16)
            m_a, prefix_a, j_a, row_a, wa_next = m_a_next, prefix_a_next, j_a_next, row_a_next, wa_after
            m_b, prefix_b, j_b, row_b, wb_next = m_b_next, prefix_b_next, j_b_next, row_b_next, wb_after
    else:
        # Each step's word and row are loaded a step ahead, its word two: the row's gather needs the word.
        w = tl.load(word_ptr + first * word_stride_t, mask=g_ok & (first < T), other=0)
        w_next = tl.load(word_ptr + (first + 1) * word_stride_t, mask=g_ok & (first + 1 < T), other=0)
        m_word, prefix, j, row = _word_entry(w, seg_rows_ptr, groups, g_ok, GROUP)
        for off in range(0, seg_len):
            token = first + off
            w_after = tl.load(word_ptr + (token + 2) * word_stride_t, mask=g_ok & (token + 2 < T), other=0)
            m_next, prefix_next, j_next, row_next = _word_entry(w_next, seg_rows_ptr, groups, g_ok, GROUP)
            in_group = (prefix >> 56).to(tl.int32)
            group_first = tl.cumsum(in_group, axis=0) - in_group  # place of the group's first entry
            per_token = tl.sum(in_group, axis=0)
            tl.store(token_ptr_ptr + token, next_entry, mask=token < T)
            limit = tl.minimum(N - next_entry, BLOCK_E).to(tl.int32)
            _word_token(
                m_word, prefix, j, row, in_group, group_first, used_word, room_word, next_entry, limit, entry_ptr,
                groups, shifts, *tile, GROUP,
            )  # fmt: skip
            used_word += m_word
            next_entry += per_token
            m_word, prefix, j, row, w_next = m_next, prefix_next, j_next, row_next, w_after
    return next_entry


@triton.jit
def _map_kernel(
    map_ptr,  # [T, E] routing map, bool or integer 0/1
    map_stride_t,  # elements between tokens of the map
    map_stride_e,  # elements between experts of the map
    seg_expert_off_ptr,  # [n_seg, E] int32 rows of each expert in earlier segments
    expert_count_ptr,  # [E] int64 routed tokens per expert
    fits_ptr,  # [1] int32 out: 1 when every routed pair got a row (program 0 or the last)
    token_ptr_ptr,  # [T + 1] int64 out: first entry of each token, and the total at T
    entry_ptr,  # [N] int64 out: (row << EXPERT_BITS) | expert of each entry; row -1 when it would not fit
    T,  # tokens
    E,  # experts
    N,  # permuted rows allocated
    seg_len,  # tokens per segment, a multiple of BLOCK_T
    capacity,  # DROP_AND_PAD: rows per expert
    n_seg,  # segments (SCAN)
    DROP_AND_PAD: tl.constexpr,
    CHECK: tl.constexpr,  # assert on the device that the routing fits (compiled with debug=True)
    BLOCK_T: tl.constexpr,  # tokens per step
    BLOCK_E: tl.constexpr,  # experts per tile (>= E)
    GROUP: tl.constexpr,  # experts per group (_map_group): a thread's consecutive experts
    PREFETCH: tl.constexpr,  # load each step's map tile one step ahead (_MAP_PREFETCH)
    SCAN: tl.constexpr,  # no scan kernel ran: seg_expert_off holds the counts (_scan_in_map)
    BLOCK_S: tl.constexpr,  # SCAN: segments summed at a time
    WORDS: tl.constexpr,  # one-token steps over the map's uint64 words (_map_words, _map_words_walk)
    word_stride_t,  # WORDS: words between tokens of the map
    rows_ptr,  # WORDS: [n_seg, E] int64 scratch: each expert's first row in each segment
    WORDS_PAIRS: tl.constexpr,  # WORDS: two tokens a step (_WORDS_PAIRS)
    PDL: tl.constexpr,  # programmatic dependent launch (_runtime.pdl_args)
):
    # Experts as a [groups, GROUP] tile, expert g * GROUP + j, and the map's tiles [tokens,
    # groups, GROUP]. The map's load gives each thread one group (consecutive bytes); the entries'
    # store, whose addresses are data-dependent, gets one element per thread from Triton's
    # coalescing pass, spread over the leading dimensions first: over the groups, with a thread's
    # elements wrapping along GROUP. Both are the same assignment of elements to threads, so the
    # store's operands stay in registers. On a flat [tokens, experts] tile the store's layout
    # spread threads over the experts (thread t: experts t, t + 32, ...) and its pointers, values
    # and mask crossed shared memory every step. With that and the int32 offsets below, a
    # one-token step at E = 256 went from 345 SASS instructions to 201 (benchmarks/sass_loop.py
    # --map) and the map kernel from 42 to 26 µs at (65536, 256, 2) (H200, session 15).
    pdl_start(PDL)
    seg = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E // GROUP)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    e_ok = experts < E
    # The first row of each expert, an exclusive prefix sum over at most MAX_EXPERTS counts in
    # expert order (within groups, then over them), recomputed by every program (cheaper than a
    # launch). With SCAN the scan's two results come from the whole count table, which every
    # program reads (small: _scan_in_map): each expert's total, which program 0 writes, and the
    # rows of each expert in earlier segments.
    if SCAN:  # BLOCK_S segments at a time
        count = tl.zeros([BLOCK_E // GROUP, GROUP], dtype=tl.int64)
        earlier = tl.zeros([BLOCK_E // GROUP, GROUP], dtype=tl.int64)
        for seg0 in range(0, n_seg, BLOCK_S):
            segs = seg0 + tl.arange(0, BLOCK_S)[:, None, None]
            counts = tl.load(seg_expert_off_ptr + segs * E + experts[None, :, :],
                             mask=(segs < n_seg) & e_ok[None, :, :], other=0)  # fmt: skip
            count += tl.sum(counts, axis=0).to(tl.int64)
            earlier += tl.sum(tl.where(segs < seg, counts, 0), axis=0).to(tl.int64)
        if seg == 0:
            tl.store(expert_count_ptr + experts, count, mask=e_ok)
    else:
        count = tl.load(expert_count_ptr + experts, mask=e_ok, other=0)
    if DROP_AND_PAD:
        expert_first = experts.to(tl.int64) * capacity
        row_end = expert_first + capacity  # rows of expert e end here
    else:
        group_count = tl.sum(count, axis=1)
        expert_first = tl.cumsum(count, axis=1) - count + (tl.cumsum(group_count, axis=0) - group_count)[:, None]
        row_end = N
    # The fit check without a host sync: a device assertion costs nothing here, where a launch of
    # torch._assert_async cost 2.2 µs on the H100. The messages are literals; the host says more on
    # the CPU, where it reads fits. With drop_and_pad program 0 checks the counts now; otherwise
    # the last program checks the total once its walk has reached it (below).
    if seg == 0:
        if DROP_AND_PAD:
            fits = tl.max((count > capacity).to(tl.int32)) == 0
            tl.store(fits_ptr, fits.to(tl.int32))
            if CHECK:
                tl.device_assert(fits, "permute: drop_and_pad=True allows at most capacity tokens per expert")
    # Next free token-major entry, carried across steps: the segment's first is the routed pairs
    # of earlier segments, over all experts.
    if not SCAN:
        earlier = tl.load(seg_expert_off_ptr + seg * E + experts, mask=e_ok, other=0).to(tl.int64)
    next_entry = tl.sum(earlier)
    # Each expert's rows, as int64 bases fixed for the segment and int32 offsets from them (at
    # most seg_len): the step's arithmetic per entry is then 32-bit, its entry one shift-and-add
    # (entry_base + (rank << EXPERT_BITS), an LEA pair in SASS). entry_base is the segment's
    # first entry of expert e, (row << EXPERT_BITS) | e; unplaced its entry with no row (row -1).
    first_row = earlier + expert_first
    entry_base = (first_row << _EXPERT_BITS) | experts.to(tl.int64)
    unplaced = (tl.full([BLOCK_E // GROUP, GROUP], -1, tl.int64) << _EXPERT_BITS) | experts.to(tl.int64)
    room = tl.minimum(tl.maximum(row_end - first_row, 0), seg_len).to(tl.int32)  # rows left to each expert
    first = seg.to(tl.int64) * seg_len
    if WORDS:
        next_entry = _map_words_walk(
            map_ptr, word_stride_t, rows_ptr + seg * E, token_ptr_ptr, entry_ptr, T, N, seg_len, first, next_entry,
            experts, e_ok, first_row, entry_base, unplaced, room, BLOCK_E, GROUP, WORDS_PAIRS,
        )  # fmt: skip
    else:
        used = tl.zeros([BLOCK_E // GROUP, GROUP], dtype=tl.int32)  # rows taken in this segment so far
        e_offs = experts[None, :, :] * map_stride_e
        tokens = first + tl.arange(0, BLOCK_T)
        ok = (tokens < T)[:, None, None] & e_ok[None, :, :]
        m_next = tl.load(map_ptr + tokens[:, None, None] * map_stride_t + e_offs, mask=ok, other=0)
        for off in range(0, seg_len, BLOCK_T):
            tokens = first + off + tl.arange(0, BLOCK_T)
            t_ok = tokens < T
            if PREFETCH:
                # This step's tile was loaded during the last step; the next one is loaded now, before
                # this step's stores: the compiler cannot move a load above a store it may alias, so
                # without this each step waits for its own load (past the segment's end the next
                # segment's first tokens are read and unused).
                m = m_next
                ahead = tokens + BLOCK_T
                ok = (ahead < T)[:, None, None] & e_ok[None, :, :]
                m_next = tl.load(map_ptr + ahead[:, None, None] * map_stride_t + e_offs, mask=ok, other=0)
            else:
                ok = t_ok[:, None, None] & e_ok[None, :, :]
                m = tl.load(map_ptr + tokens[:, None, None] * map_stride_t + e_offs, mask=ok, other=0)
            m = (m != 0).to(tl.int32)
            # Row of each entry from its expert's first row in the segment: the rows taken in earlier
            # steps plus its rank among this step's tokens of the expert (exclusive cumsum down).
            rank = used[None, :, :] + tl.cumsum(m, axis=0) - m
            routed = (m != 0) & (rank < room[None, :, :])
            # Token-major list: each token's entries in ascending expert order (place: exclusive
            # cumsum over the experts, within groups, then over them). Counts within one step fit in
            # int32; the token's first entry is an int64 base plus one.
            in_group = tl.sum(m, axis=2)
            per_token = tl.sum(in_group, axis=1)
            token_first = next_entry + (tl.cumsum(per_token, axis=0) - per_token).to(tl.int64)
            tl.store(token_ptr_ptr + tokens, token_first, mask=t_ok)
            place = tl.cumsum(m, axis=2) - m + (tl.cumsum(in_group, axis=1) - in_group)[:, :, None]
            listed = (m != 0) & (place < tl.minimum(N - token_first, BLOCK_E).to(tl.int32)[:, None, None])
            # One store per entry: its row and expert packed. Two (row, then expert) made the stores
            # the map kernel's limit: L1/TEX 75% busy at 2048 segments (Nsight Compute, session 6).
            entry = tl.where(routed, entry_base[None, :, :] + (rank.to(tl.int64) << _EXPERT_BITS), unplaced[None, :, :])
            if _GROUP_AXIS_FIRST:  # the same store, laid out to stay in registers (see there)
                ptrs = tl.permute((entry_ptr + token_first)[:, None, None] + place, (2, 0, 1))
                tl.store(ptrs, tl.permute(entry, (2, 0, 1)), mask=tl.permute(listed, (2, 0, 1)))
            else:
                tl.store((entry_ptr + token_first)[:, None, None] + place, entry, mask=listed)
            used += tl.sum(m, axis=0)
            next_entry += tl.sum(per_token, axis=0).to(tl.int64)
    # The last segment's walk ends at the total number of routed pairs. (Summed over the expert
    # counts in program 0 instead, it took the kernel from 64 to 110 registers per thread when
    # compiled with debug=True for the assertion, and the map kernel 5 µs longer at 65536 x 256.)
    if seg == tl.num_programs(0) - 1:
        tl.store(token_ptr_ptr + T, next_entry)
        if not DROP_AND_PAD:
            fits = next_entry <= N
            tl.store(fits_ptr, fits.to(tl.int32))
            if CHECK:
                tl.device_assert(fits, "permute: routing_map routes more (token, expert) pairs than num_out_tokens")


@dataclass(frozen=True)
class Plan:
    """Views into a plan tensor (see the module docstring)."""

    src_token: torch.Tensor  # [N]
    token_ptr: torch.Tensor  # [T + 1]
    entry: torch.Tensor  # [N] (row << EXPERT_BITS) | expert; row -1 (entry < 0) when not placed
    padded: bool  # some rows may be padding (no token maps to them); True for a plan given back


@dataclass(frozen=True)
class PlanRest:
    """What permute's scatter needs to complete a plan from build_plan: it writes src_token and
    the permuted probabilities of every routed row, and finds the padding rows from the counts
    (src_token is being written in the same launch)."""

    probs: torch.Tensor | None  # [T, E] routing probabilities, or None
    perm_probs: torch.Tensor | None  # [N] out: probability of each permuted row (with probs)
    expert_count: torch.Tensor  # [E] int64: routed tokens per expert
    total: torch.Tensor  # [1] int64: routed (token, expert) pairs in all
    capacity: int  # rows per expert with drop_and_pad, else 0
    drop_and_pad: bool  # rows are laid out capacity per expert
    view: Plan  # the plan's views (plan_view), for the scatter


def plan_numel(n_tokens: int, n_rows: int) -> int:
    """Length of the plan tensor."""
    return 2 * n_rows + n_tokens + 1


def plan_layout(fn: str, plan: torch.Tensor, n_tokens: int, n_rows: int) -> None:
    """Check that plan is a plan made by permute(..., fused=True) for these sizes (anything else is
    a clear error). Cheaper than plan_view: no views are made."""
    if not isinstance(plan, torch.Tensor) or plan.dtype != torch.int64 or plan.dim() != 1:
        raise ValueError(
            f"{fn}: with fused=True, sorted_indices must be the third output of permute(..., fused=True) "
            f"(a 1-D int64 routing plan), got {type(plan).__name__} "
            f"{getattr(plan, 'dtype', '')} {tuple(getattr(plan, 'shape', ()))}"
        )
    # Compared, not hashed: under torch.compile the sizes are symbolic, and hashing one
    # specialises the graph to that token count.
    if plan.numel() != plan_numel(n_tokens, n_rows):
        raise ValueError(
            f"{fn}: sorted_indices has {plan.numel()} elements, which is not a routing plan for "
            f"{n_tokens} tokens (restore_shape) and {n_rows} permuted rows (permuted_tokens); pass the "
            "third output of permute(..., fused=True) from the same routing"
        )


def plan_view(fn: str, plan: torch.Tensor, n_tokens: int, n_rows: int, padded: bool = True) -> Plan:
    """Slice a plan made by permute(..., fused=True) (checked by plan_layout). One split_with_sizes
    (3.0 µs on the 2-CPU machine) instead of three slices (4.4 µs): the launchers call it eagerly.
    padded: rows may be padding; only build_plan knows otherwise (see the module docstring)."""
    plan_layout(fn, plan, n_tokens, n_rows)
    src_token, token_ptr, entry = plan.split_with_sizes((n_rows, n_tokens + 1, n_rows))
    return Plan(src_token=src_token, token_ptr=token_ptr, entry=entry, padded=padded)


def check_routing_map(fn: str, routing_map: torch.Tensor, n_tokens: int, device: torch.device) -> int:
    """routing_map is [T, E], bool or integer, on the tokens' device. Returns E."""
    if not isinstance(routing_map, torch.Tensor):
        raise TypeError(f"{fn}: routing_map must be a torch.Tensor, got {type(routing_map).__name__}")
    if routing_map.dtype.is_floating_point or routing_map.dtype.is_complex:
        raise TypeError(f"{fn}: routing_map has dtype {routing_map.dtype}; expected bool or an integer dtype of 0/1")
    if routing_map.dim() != 2 or _rt.shapes_differ(routing_map.shape[:1], (n_tokens,)):
        raise ValueError(
            f"{fn}: routing_map has shape {tuple(routing_map.shape)}; expected [num_tokens={n_tokens}, num_experts]"
        )
    if routing_map.device != device:
        raise ValueError(f"{fn}: routing_map is on {routing_map.device} but the tokens are on {device}")
    return routing_map.shape[1]


def _map_pointer(routing_map: torch.Tensor) -> torch.Tensor:
    return routing_map.view(torch.uint8) if routing_map.dtype == torch.bool else routing_map


def _map_warps(block_t: int, block_e: int) -> int:
    """Warps of the count and map kernels: _MAP_ENTRIES_PER_THREAD entries per thread, at most 4."""
    return min(4, max(1, block_t * block_e // (32 * _MAP_ENTRIES_PER_THREAD)))


def _map_group(block_e: int) -> int:
    """Experts per group of the map kernel's tiles: _MAP_ENTRIES_PER_THREAD, or the whole tile."""
    return min(_MAP_ENTRIES_PER_THREAD, block_e)


def _segments(n_tokens: int, n_experts: int) -> tuple[int, int, int, int]:
    block_e = _rt.next_pow2(max(n_experts, 1))
    block_t = max(1, min(256, _PLAN_TILE // block_e))
    n_steps = _rt.cdiv(n_tokens, block_t)
    warps = _map_warps(block_t, block_e)
    most = _MAX_SEGMENTS
    long_walks = n_steps >= 2 * _MAX_SEGMENTS * _LONG_SEGMENT and n_tokens >= 2 * _MAX_SEGMENTS * _LONG_SEGMENT_TOKENS
    if warps == 1 and long_walks:
        most = 2 * _MAX_SEGMENTS
    if warps >= _MIN_SEGMENT_WARPS:
        most = max(1, min(most, n_tokens // _MIN_SEGMENT_TOKENS))
    fewer = max(1, _MOST_COUNTS // block_e)
    if fewer < most and _rt.cdiv(n_steps, fewer) <= _LONGEST_WALK:
        most = fewer
    steps_per_seg = _rt.cdiv(n_steps, most)
    seg_len = steps_per_seg * block_t
    n_seg = _rt.cdiv(n_tokens, seg_len)
    return seg_len, n_seg, block_t, block_e


def require_triton_device(fn: str, t: torch.Tensor) -> None:
    """fused=True needs tensors the Triton kernels can run on: CUDA, or the CPU under the interpreter."""
    if not _rt.triton_device(t):
        raise RuntimeError(
            f"{fn}: fused=True runs Triton kernels and needs a CUDA device (or TRITON_INTERPRET=1 on the CPU); "
            f"got tensors on {t.device}. Use fused=False there."
        )


def refuse_transforms(fn: str) -> None:
    """fused=True's autograd Functions launch kernels that read memory, which PyTorch refuses under
    torch.func transforms and forward-mode AD (as it refuses the reference's fused ops, themselves
    autograd Functions); the message names the way out."""
    if _rt.transforms_active():
        raise RuntimeError(
            f"{fn}: fused=True runs Triton kernels from an autograd Function, which no torch.func transform "
            "(grad, vjp, jvp, vmap, ...) and no forward-mode AD can run; got a call under one. Expected "
            "fused=False there (plain PyTorch, which they differentiate)."
        )


def compute_dtype(*tensors: torch.Tensor | None) -> tl.dtype:
    """What the routing kernels multiply and sum in: fp64 where the data (rows, probs, their
    gradients) are fp64 and fp32 only, as the reference computes (float64 gradcheck needs it: in
    fp32 the fused unpermute was 3e-8 off, session 34); else fp32. A 16-bit tensor among them
    keeps fp32: its rounding dwarfs fp32's, and Triton's interpreter converts bf16 to and from fp64
    wrongly (numpy has no bf16). Called at every routing launch: a list and early exit, 0.55 µs on
    the 2-CPU machine against 1.1 with a set."""
    dtypes = [t.dtype for t in tensors if t is not None]
    if torch.float64 not in dtypes or torch.float16 in dtypes or torch.bfloat16 in dtypes:
        return tl.float32
    return tl.float64


def block_k(n_rows: int, n_tokens: int) -> int:
    """Entries handled together: the average top-k rounded up to a power of two, at most 8."""
    return min(8, _rt.next_pow2(max(1, -(-n_rows // max(n_tokens, 1)))))


def _map_words(m: torch.Tensor, seg_len: int, block_t: int, block_e: int, k: int) -> bool:
    """Whether the map kernel walks the map m [T, E] as uint64 words (_map_words_walk), at k
    entries a token (block_k): where it can, one-token steps over a byte map whose rows are whole
    aligned words (E and the token stride multiples of 8, the experts contiguous) in segments
    short enough that the rows an expert takes in one fit a byte (seg_len < 256); and where it
    was faster (_MAP_WORDS): one warp (E = 129-256), segments of at least _WORDS_MIN_SEGMENT
    tokens, at most _WORDS_MOST_K entries a token."""
    words = m.stride(1) == 1 and m.stride(0) % 8 == 0 and m.shape[1] % 8 == 0 and m.data_ptr() % 8 == 0
    can = m.element_size() == 1 and words and block_t == 1 and _map_group(block_e) == 8 and seg_len < 256
    faster = block_e == 256 and seg_len >= _WORDS_MIN_SEGMENT and k <= _WORDS_MOST_K
    return _MAP_WORDS and can and faster


def _scan_in_map(block_s: int, block_e: int) -> bool:
    """Whether the map kernel takes the scan's place (every program reads the whole count table):
    where the table's tile (BLOCK_S x BLOCK_E) has at most _SCAN_IN_MAP entries."""
    return block_s * block_e <= _SCAN_IN_MAP


def _count_and_scan(
    m: torch.Tensor, seg_len: int, n_seg: int, block_t: int, block_e: int, scan_in_map: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan's first two launches on the map m [T, E] (_map_pointer's view): the count kernel,
    then the scan unless the map kernel scans (scan_in_map). Returns the [n_seg, E] table (the
    rows of each expert in earlier segments, or with scan_in_map still the counts) and each
    expert's count (written by the scan, or with scan_in_map by the map kernel)."""
    n_tokens, n_experts = m.shape
    device = m.device
    block_s = _rt.next_pow2(n_seg)
    # The counts, then the offsets: the scan writes them over the counts (each program reads its
    # whole tile before it writes it); where the map kernel scans (_scan_in_map) they stay counts.
    counts = _rt.empty((n_seg, n_experts), torch.int32, device)
    _count_kernel[(n_seg,)](
        m,
        m.stride(0),
        m.stride(1),
        counts,
        n_tokens,
        n_experts,
        seg_len,
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        # The map kernel's warps: with Triton's default of 4 the count kernel was 4 µs slower at
        # 65536 x 256 (one step is one token there: 2 entries per thread), and no faster in wider
        # steps (H100).
        num_warps=_map_warps(block_t, block_e),
        **_rt.COMPILE_OPTIONS,
        **_rt.pdl_args(device, "count"),
    )
    expert_count = _rt.empty((n_experts,), torch.int64, device)
    if not scan_in_map:  # else the map kernel scans
        experts_per_program = max(1, min(_rt.next_pow2(n_experts), _SCAN_TILE // block_s))
        scan_warps = max(1, min(8, block_s * experts_per_program // (32 * _SCAN_ENTRIES_PER_THREAD)))
        _scan_experts_kernel[(_rt.cdiv(n_experts, experts_per_program),)](
            counts,
            counts,
            expert_count,
            n_seg,
            n_experts,
            BLOCK_S=block_s,
            BLOCK_E=experts_per_program,
            num_warps=scan_warps,
            **_rt.COMPILE_OPTIONS,
            **_rt.pdl_args(device, "scan", _rt.scan_triggers(n_tokens, n_experts)),
        )
    return counts, expert_count


def build_plan(
    fn: str,
    routing_map: torch.Tensor,
    probs: torch.Tensor | None,
    num_out_tokens: int | None,
    drop_and_pad: bool,
) -> tuple[torch.Tensor, PlanRest, int]:
    """Build the plan on the device. Returns (plan, rest, N): pass rest to permutation.scatter_rows,
    which completes the plan (src_token) and the permuted probabilities (rest.perm_probs).

    N is num_out_tokens when given (no host synchronisation; three launches), else the routed
    count (one sync, as in the reference). More routed (token, expert) pairs than N rows, or with
    drop_and_pad more than capacity tokens for one expert, is an error: raised on the CPU, a
    device-side assertion in the map kernel on the GPU; either way no kernel writes out of bounds.
    """
    n_tokens, n_experts = routing_map.shape
    device = routing_map.device
    require_triton_device(fn, routing_map)
    if n_experts > MAX_EXPERTS:
        raise ValueError(f"{fn}: fused=True supports at most {MAX_EXPERTS} experts, got {n_experts}; use fused=False")
    if n_tokens >= 2**31:
        raise ValueError(
            f"{fn}: fused=True supports fewer than 2^31 tokens (its per-expert counts are int32), got "
            f"routing_map with {n_tokens} tokens; use fused=False"
        )
    if n_tokens == 0 or n_experts == 0:
        return _empty_plan(n_tokens, n_experts, probs, num_out_tokens, device)
    seg_len, n_seg, block_t, block_e = _segments(n_tokens, n_experts)
    warps = _map_warps(block_t, block_e)
    block_s = _rt.next_pow2(n_seg)
    capacity = num_out_tokens // n_experts if drop_and_pad else 0
    padded = num_out_tokens is not None
    m = _map_pointer(routing_map)
    scan_in_map = padded and _scan_in_map(block_s, block_e)
    seg_expert_off, expert_count = _count_and_scan(m, seg_len, n_seg, block_t, block_e, scan_in_map)
    if padded:  # the size is known
        n_rows = num_out_tokens
    else:  # data-dependent, as in the reference: one host sync
        n_rows = int(expert_count.sum().item())
    plan = _rt.empty((plan_numel(n_tokens, n_rows),), torch.int64, device)
    perm_probs = None if probs is None else _rt.empty((n_rows,), probs.dtype, device)
    view = plan_view(fn, plan, n_tokens, n_rows, padded)
    fits = torch.empty((1,), dtype=torch.int32, device=device)
    # On the GPU the map kernel asserts the fit itself (compiled with debug=True for its
    # device_assert, without Triton's int32 overflow checks that debug would also add).
    check = padded and device.type == "cuda"
    words = _map_words(m, seg_len, block_t, block_e, block_k(n_rows, n_tokens))
    seg_rows = _rt.empty((n_seg, n_experts), torch.int64, device) if words else expert_count
    _map_kernel[(n_seg,)](
        m,
        m.stride(0),
        m.stride(1),
        seg_expert_off,
        expert_count,
        fits,
        view.token_ptr,
        view.entry,
        n_tokens,
        n_experts,
        n_rows,
        seg_len,
        capacity,
        n_seg,
        DROP_AND_PAD=drop_and_pad,
        CHECK=check,
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        GROUP=_map_group(block_e),
        PREFETCH=_MAP_PREFETCH,
        SCAN=scan_in_map,
        BLOCK_S=min(block_s, max(1, _SCAN_IN_MAP_TILE // block_e)) if scan_in_map else 1,
        WORDS=words,
        word_stride_t=m.stride(0) // 8,
        rows_ptr=seg_rows,
        WORDS_PAIRS=_WORDS_PAIRS,
        num_warps=warps,
        **({"debug": True, "sanitize_overflow": False} if check else {}),
        **_rt.COMPILE_OPTIONS,
        **_rt.pdl_args(device, "map"),
    )
    total = view.token_ptr[n_tokens:]  # the map kernel's last program writes it
    if padded and not check:
        _check_fits(fn, fits, total, expert_count, n_rows, capacity, drop_and_pad)
    return plan, PlanRest(probs, perm_probs, expert_count, total, capacity, drop_and_pad, view), n_rows


def _empty_plan(
    n_tokens: int, n_experts: int, probs: torch.Tensor | None, num_out_tokens: int | None, device: torch.device
) -> tuple[torch.Tensor, PlanRest, int]:
    """Nothing is routed: every row (if num_out_tokens asks for any) is padding. The plan is
    complete; the scatter only zeroes the padding rows (all rows at or past the total, 0)."""
    n_rows = num_out_tokens or 0
    padded = num_out_tokens is not None
    plan = torch.zeros((plan_numel(n_tokens, n_rows),), dtype=torch.int64, device=device)
    plan[:n_rows] = -1
    perm_probs = None if probs is None else torch.zeros((n_rows,), dtype=probs.dtype, device=device)
    counts = torch.zeros((n_experts + 1,), dtype=torch.int64, device=device)
    view = plan_view("permute", plan, n_tokens, n_rows, padded)
    return plan, PlanRest(None, perm_probs, counts[:n_experts], counts[n_experts:], 0, False, view), n_rows


def _check_fits(fn, fits, total, expert_count, n_rows, capacity, drop_and_pad) -> None:
    """Raise if a routed pair got no row (on the CPU; the map kernel asserts it on the GPU)."""
    if bool(fits[0]):
        return
    if drop_and_pad:
        msg = (
            f"{fn}: drop_and_pad=True needs at most capacity = num_out_tokens // num_experts = {capacity} "
            "tokens per expert in routing_map (exactly capacity when the dispatcher pads)"
        )
        got = f"per-expert counts {expert_count.tolist()}"
    else:
        msg = f"{fn}: routing_map routes more (token, expert) pairs than num_out_tokens = {n_rows}"
        got = f"{int(total[0])} routed"
    raise ValueError(f"{msg}; got {got}")
