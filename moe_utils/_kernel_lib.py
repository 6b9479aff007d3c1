"""Triton helpers shared by every generated activation kernel (and, ``grid_tile``, by the routing kernels).

``grid_tile`` decodes a program's (row block, column block) from a grid in memory order.
``erf`` is the error function of the generated kernels (``tl.erf``'s results, fewer instructions).
``pdl_start`` opens a kernel launched with programmatic dependent launch (the routing kernels).

``load_halves`` / ``store_halves`` read and write the gate and up tiles of a row block in either
layout: split (gate = row[:H], up = row[H:], the default) or interleaved (gate at even positions,
up at odd ones); ``half_columns`` gives the column indices of the tiles that meet them.
``gated_inputs`` applies the optional clamp and bias to the two halves.
``column_sums`` adds up the rows of a matrix of partial sums (the backward's bias_sum).

float8_e4m3fn encode/decode, exact on the GPU and in Triton's interpreter:

The saved copy of ``fp8_input_store`` is written and read through a ``uint8`` view. On the GPU
(``NATIVE=True``) the hardware conversions do the work. Triton's interpreter (triton 3.6) rounds
fp32 -> e4m3 wrongly near powers of two and turns NaN into 384 (and decodes NaN as 480), so under the
interpreter the same conversion is done with integer arithmetic: round to nearest even, saturate to
+-448, NaN stays NaN. Both paths give the bits of ``torch.clamp(x, -448, 448).to(float8_e4m3fn)``.
"""

from __future__ import annotations

import re

import torch
import triton
import triton.language as tl

try:  # programmatic dependent launch: Triton 3.4 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    HAS_PDL = True
except ImportError:  # pragma: no cover - older Triton; _runtime.pdl_args then keeps PDL at 0
    HAS_PDL = False

    @triton.jit
    def gdc_wait():  # never reached: pdl_start's branches compile only with PDL >= 1
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


def interpreter_reads_masks_as_bool() -> None:
    """Make Triton's interpreter (TRITON_INTERPRET=1) hand its loads and stores bool masks, as
    Triton 3.6-3.8's took any integer mask; _runtime calls it once under the interpreter.

    Every Triton's interpreter types a comparison like its operands (``pid < n`` of int32 is an
    int32-typed value holding bools), so a scalar condition broadcast into a tile arrives at a load
    as int32 zeros and ones. From Triton 3.9 the interpreter's load and store refuse such a mask
    ("mask has unsupported dtype"), which failed every fused permute and unpermute on the CPU (the
    kernels combine a tile's column mask with a scalar condition on the program). Only the
    interpreter's reading of a mask changes: the compiler types comparisons as int1, and the
    kernels are the same on every version."""
    import numpy as np
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or getattr(builder, "_moe_utils_bool_masks", False):
        return
    load, store = builder.create_masked_load, builder.create_masked_store

    def as_bool(mask):
        if mask.data.dtype == np.bool_:
            return mask
        return interpreter.TensorHandle(mask.data.astype(np.bool_), tl.int1)

    builder.create_masked_load = lambda self, ptrs, mask, *rest: load(self, ptrs, as_bool(mask), *rest)
    builder.create_masked_store = lambda self, ptrs, value, mask, *rest: store(self, ptrs, value, as_bool(mask), *rest)
    builder._moe_utils_bool_masks = True


def interpreter_patches_once_a_launch() -> None:
    """Make Triton's interpreter (TRITON_INTERPRET=1) patch ``triton.language`` once a launch, not
    again at every call of a ``@triton.jit`` helper inside it; _runtime calls it once under the
    interpreter.

    The interpreter runs a kernel's Python with ``triton.language``'s builtins swapped for its own
    (``_patch_lang``, undone when the launch ends). Triton 3.6-3.9 also call ``_patch_lang`` at
    every device-function call (``InterpretedFunction.__call__``), which walks the language
    modules' members (``inspect.getmembers``) four times to patch what is already patched: a
    third of the interpreter's time in the routing kernels, whose walks call helpers at every step.
    Here a device call patches only where its module sees a language module (``tl``,
    ``tl.core``) that this launch has not patched yet, which is when the original patches
    anything new: a repeat finds no builtin left to swap, and swaps the few plain attributes it
    sets for equal ones. The kernels run the same operations either way. Where the interpreter's
    internals differ from these Tritons' (no ``_patch_lang``, ``_LangPatchScope`` or
    ``GridExecutor``) it leaves them alone."""
    from triton.runtime import interpreter

    patch_lang = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    empty_scope = getattr(interpreter, "_LangPatchScope", None)
    if patch_lang is None or executor is None or empty_scope is None:
        return
    if getattr(executor, "_moe_utils_patch_once", False):
        return
    launches: list[frozenset[int]] = []  # one entry per launch in progress: the modules it patched

    def langs(fn) -> frozenset[int]:
        return frozenset(id(value) for value in fn.__globals__.values() if value is tl or value is tl.core)

    def patch_once(fn):
        seen = langs(fn)
        if launches and seen and seen <= launches[-1]:
            return empty_scope()
        scope = patch_lang(fn)
        if launches:
            launches[-1] |= seen
        return scope

    launch = executor.__call__

    def launch_once(self, *args, **kwargs):
        launches.append(frozenset())
        try:
            return launch(self, *args, **kwargs)
        finally:
            launches.pop()

    interpreter._patch_lang = patch_once
    executor.__call__ = launch_once
    executor._moe_utils_patch_once = True


__all__ = [
    "ERF_CUDA13",
    "FP8_MAX",
    "HAS_PDL",
    "erf",
    "fp8_decode",
    "fp8_encode",
    "gated_inputs",
    "grid_tile",
    "half_columns",
    "interpreter_patches_once_a_launch",
    "interpreter_reads_masks_as_bool",
    "load_halves",
    "pdl_start",
    "store_halves",
    "to_fp8_saturated",
    "triton_version",
]

#: Largest finite float8_e4m3fn value; everything beyond saturates to it.
FP8_MAX = 448.0


def to_fp8_saturated(x: torch.Tensor) -> torch.Tensor:
    """Eager twin of fp8_encode: clamp to +-448 (NaN stays NaN), then cast.

    A plain ``.to(torch.float8_e4m3fn)`` on the GPU turns |x| >= 480 into NaN; clamping first
    saturates instead, on every device.
    """
    return torch.clamp(x, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


@triton.jit
def fp8_encode(x, NATIVE: tl.constexpr):
    """fp32 values -> uint8 bit patterns of float8_e4m3fn, saturating at +-448."""
    # NaN stays NaN (propagate_nan). sm_90 does the clamp in one min/max a value (FMNMX.NAN.XORSIGN);
    # the two-sided tl.where it replaced (session 46) took 40 more SASS instructions in SwiGLU's
    # forward at [32, 128] x 8 warps on Triton 3.6, and 104 more with 16 more registers on 3.8-3.9.
    x = tl.clamp(x, -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)
    if NATIVE:
        code = x.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    else:
        bits = x.to(tl.int32, bitcast=True)
        sign = ((bits >> 31) & 1) << 7
        mag = tl.abs(x)
        mag_bits = mag.to(tl.int32, bitcast=True)
        # Normal range (mag >= 2**-6): keep 3 mantissa bits with round-to-nearest-even; a carry out
        # of the mantissa correctly bumps the exponent. Then move the exponent bias from 127 to 7.
        rounded = (mag_bits + 0x7FFFF + ((mag_bits >> 20) & 1)) >> 20
        normal = rounded - (120 << 3)
        # Subnormal range: multiples of 2**-9, rounded to nearest even by hand (exact in fp32).
        scaled = tl.where(mag < 0.015625, mag, 0.0) * 512.0  # no int cast of NaN or large values
        whole = scaled.to(tl.int32)
        frac = scaled - whole.to(tl.float32)
        round_up = (frac > 0.5) | ((frac == 0.5) & ((whole & 1) == 1))
        subnormal = whole + round_up.to(tl.int32)
        code = tl.where(mag < 0.015625, subnormal, normal)
        code = tl.where(x != x, 0x7F, code) | sign
        code = code.to(tl.uint8)
    return code


@triton.jit
def fp8_decode(code, NATIVE: tl.constexpr):
    """uint8 bit patterns of float8_e4m3fn -> fp32 values (NaN stays NaN)."""
    if NATIVE:
        value = code.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        c = code.to(tl.int32)
        exponent = (c >> 3) & 0xF
        mantissa = c & 7
        normal = (((exponent + 120) << 23) | (mantissa << 20)).to(tl.float32, bitcast=True)
        subnormal = mantissa.to(tl.float32) * 0.001953125  # 2**-9
        value = tl.where(exponent == 0, subnormal, normal)
        nan = tl.full(value.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)
        value = tl.where((exponent == 15) & (mantissa == 7), nan, value)
        value = tl.where((c >> 7) == 1, -value, value)
    return value


@triton.jit
def grid_tile(width, BLOCK_H: tl.constexpr, ORDERED: tl.constexpr):
    """(row block as int64, column block) of this program.

    ORDERED: a 1-D grid in memory order, row blocks outer and column blocks inner, so that a row's
    column blocks run on consecutive programs (a 2-D grid runs its first axis fastest: every row's
    first column block would come before any second one). A zero-width row counts as one column
    block, so a launch of n_row_blocks * max(1, cdiv(width, BLOCK_H)) programs decodes. Else a 2-D
    grid, row blocks on axis 0 (the fast one), column blocks on axis 1.
    """
    if ORDERED:
        n_col_blocks = tl.maximum(tl.cdiv(width, BLOCK_H), 1)
        return (tl.program_id(0) // n_col_blocks).to(tl.int64), tl.program_id(0) % n_col_blocks
    return tl.program_id(0).to(tl.int64), tl.program_id(1)


def triton_version() -> tuple[int, int]:
    """(major, minor) of the installed Triton, for choices that follow its compiler or libraries."""
    match = re.match(r"(\d+)\.(\d+)", triton.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


#: The libdevice that this Triton links is CUDA 13's (Triton 3.9 and later; 3.6-3.8 ship CUDA
#: 12's): its erff keeps the near branch and takes other coefficients in the far one, so ``erf``
#: takes them too.
ERF_CUDA13 = tl.constexpr(triton_version() >= (3, 9))


@triton.jit
def erf(x):
    """erf of fp32 x, with the bits of ``tl.erf`` (libdevice's erff, which Inductor's kernels call)
    in fewer instructions: the same two polynomials, the same operations in the same order.

    erff evaluates one degree-6 polynomial whose seven coefficients depend on the branch, |x| below
    or from 1.00296 (coefficients read off the PTX of ``tl.erf``): below, erf = x + x * p(x * x);
    from there, erf = sign(x) * (1 - 2**(-t - t * q(t))) with t = |x|. Compiled branch-free, it
    picks each coefficient per element, a move and a predicated move, and costs about 33 sm_90
    instructions an element in a load-erf-store kernel. Here both polynomials are evaluated (an
    FMA a coefficient, the constants shared by every element) and the branch picks a result: about
    25.5 instructions, and exact GEGLU's forward 5-12% faster on the H200 (benchmarks/NOTES.md,
    session 28). q's coefficients are those of the libdevice that Triton links (``ERF_CUDA13``:
    CUDA 13's from Triton 3.9, CUDA 12's before).

    On the H200, over all 2**32 inputs (tests/test_gpu.py): the bits of ``tl.erf`` at every input
    but a subnormal one, which ``tl.erf`` flushes to 0 and this erf, like ``torch.erf``, does not;
    within 1 ulp of ``torch.erf`` everywhere (CUDA 12's erff rounds differently at 0.17% of inputs,
    1.003 <= |x| <= 3.92). Under the interpreter the FMAs round twice (a product, then a sum):
    within a few ulp.
    """
    t = tl.abs(x)
    s = x * x
    p = tl.fma(8.483494457323104e-05, s, -0.0008213091641664505)
    p = tl.fma(p, s, 0.005213488824665546)
    p = tl.fma(p, s, -0.026868773624300957)
    p = tl.fma(p, s, 0.11284004896879196)
    p = tl.fma(p, s, -0.37612664699554443)
    p = tl.fma(p, s, 0.12837915122509003)
    below = tl.fma(p, x, x)
    if ERF_CUDA13:
        q = tl.fma(0.00011219871521461755, t, -0.0013275252422317863)
        q = tl.fma(q, t, 0.00839653518050909)
        q = tl.fma(q, t, -0.04024658352136612)
        q = tl.fma(q, t, 0.15950430929660797)
        q = tl.fma(q, t, 0.9129176735877991)
        q = tl.fma(q, t, 0.6290600299835205)
    else:
        q = tl.fma(1.6425845387857407e-05, t, -0.0004680210549850017)
        q = tl.fma(q, t, 0.0052647641859948635)
        q = tl.fma(q, t, -0.034303076565265656)
        q = tl.fma(q, t, 0.1532936990261078)
        q = tl.fma(q, t, 0.9163130521774292)
        q = tl.fma(q, t, 0.6282998323440552)
    above = 1.0 - tl.exp2(tl.fma(q, -t, -t))
    above = tl.where(x < 0.0, -above, above)
    return tl.where(t >= 1.002959966659546, above, below)


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """First statement of a kernel launched by ``_runtime.pdl_args``. Programmatic dependent
    launch (Hopper and later) lets this grid launch and start while the grid before it in the
    stream finishes, which hides a launch gap between back-to-back kernels. PDL: 0 off (no
    instruction: the interpreter and GPUs before sm_90); 1 wait for the grid before this one
    (griddepcontrol.wait: all its writes are visible after it) before anything else is read; 2
    also let the grid after this one launch now (it waits in its own pdl_start)."""
    if PDL >= 1:
        gdc_wait()
    if PDL == 2:
        gdc_launch_dependents()


@triton.jit
def load_halves(
    ptr,  # base pointer of rows of width 2H
    row_offs,  # [BLOCK_R] int64 offsets of the rows
    col0,  # first column (of each half) of the tile
    H,  # width of one half
    row_ok,  # [BLOCK_R] valid rows
    INTERLEAVED: tl.constexpr,  # gate at even positions, up at odd ones
    POLICY: tl.constexpr,  # eviction policy of the loads: "" (default) or "evict_first" (streaming)
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """(gate, up) tiles [BLOCK_R, BLOCK_H] at columns col0 .. col0 + BLOCK_H - 1; masked elements are 0.

    Interleaved rows are read as one contiguous [BLOCK_R, 2 BLOCK_H] tile and split in registers,
    so both layouts issue the same wide loads.
    """
    if INTERLEAVED:
        pos = 2 * col0 + tl.arange(0, 2 * BLOCK_H)
        mask = row_ok[:, None] & (pos < 2 * H)[None, :]
        pair = tl.load(ptr + row_offs[:, None] + pos[None, :], mask=mask, other=0, eviction_policy=POLICY)
        gate, up = tl.split(tl.reshape(pair, [BLOCK_R, BLOCK_H, 2]))
    else:
        cols = col0 + tl.arange(0, BLOCK_H)
        mask = row_ok[:, None] & (cols < H)[None, :]
        offs = row_offs[:, None] + cols[None, :]
        gate = tl.load(ptr + offs, mask=mask, other=0, eviction_policy=POLICY)
        up = tl.load(ptr + offs + H, mask=mask, other=0, eviction_policy=POLICY)
    return gate, up


@triton.jit
def half_columns(col0, x_ptr, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr):
    """Columns col0 .. col0 + BLOCK_H - 1 of one half, for the tiles that meet load_halves' gate
    and up tiles (the backward's grad_out loads, the forward's output stores).

    Interleaved, load_halves reads a [BLOCK_R, 2 BLOCK_H] tile of x in 16-byte vectors and splits
    it in registers, so a thread holds half a vector of gate (and of up): 8 bytes of x's type.
    Declared contiguous in runs of that length, these columns give the other tiles the same layout.
    Without that, Triton gives them 16-byte vectors, and converting between the two layouts goes
    through shared memory: in the weighted backward's loop, sm_90 SASS at [1, 1024] x 4 warps, 8
    shared loads, 8 shared stores and 9 barriers against the split layout's 2, 2 and 3 (528
    instructions against 368; with this, 376).
    """
    cols = col0 + tl.arange(0, BLOCK_H)
    if INTERLEAVED:
        cols = tl.max_contiguous(cols, 64 // x_ptr.dtype.element_ty.primitive_bitwidth)
    return cols


@triton.jit
def store_halves(
    ptr,  # base pointer of rows of width 2H
    row_offs,  # [BLOCK_R] int64 offsets of the rows
    col0,  # first column (of each half) of the tile
    H,  # width of one half
    row_ok,  # [BLOCK_R] valid rows
    gate,  # [BLOCK_R, BLOCK_H] values of the gate half, already in the element type of ptr
    up,  # [BLOCK_R, BLOCK_H] values of the up half
    INTERLEAVED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Write (gate, up) tiles in the layout load_halves reads."""
    if INTERLEAVED:
        pos = 2 * col0 + tl.arange(0, 2 * BLOCK_H)
        mask = row_ok[:, None] & (pos < 2 * H)[None, :]
        pair = tl.reshape(tl.join(gate, up), [BLOCK_R, 2 * BLOCK_H])
        tl.store(ptr + row_offs[:, None] + pos[None, :], pair, mask=mask)
    else:
        cols = col0 + tl.arange(0, BLOCK_H)
        mask = row_ok[:, None] & (cols < H)[None, :]
        offs = row_offs[:, None] + cols[None, :]
        tl.store(ptr + offs, gate, mask=mask)
        tl.store(ptr + offs + H, up, mask=mask)


@triton.jit
def gated_inputs(
    gate_in,  # [BLOCK_R, BLOCK_H] fp32 gate tile, as stored
    up_in,  # [BLOCK_R, BLOCK_H] fp32 up tile
    bias_ptr,  # bias base pointer (HAS_BIAS), rows of width 2H in the layout of the input
    bias_row_offs,  # [BLOCK_R] int64 offsets of the bias rows (0 for one shared row)
    col0,  # first column of the tile
    H,  # width of one half
    row_ok,  # [BLOCK_R] valid rows
    clamp_value,  # CLAMP bound
    HAS_BIAS: tl.constexpr,
    CLAMP: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """gate = min(gate_in, c) + bias_gate, up = clamp(up_in, -c, c) + bias_up (clamp before bias).

    Comparisons are written so that NaN passes through, as torch.clamp lets it.
    """
    gate = gate_in
    up = up_in
    if CLAMP:
        # min.NaN / max.NaN: one FMNMX each, and NaN passes through
        gate = tl.minimum(gate, clamp_value, propagate_nan=tl.PropagateNan.ALL)
        up = tl.maximum(up, -clamp_value, propagate_nan=tl.PropagateNan.ALL)
        up = tl.minimum(up, clamp_value, propagate_nan=tl.PropagateNan.ALL)
    if HAS_BIAS:
        bias_gate, bias_up = load_halves(bias_ptr, bias_row_offs, col0, H, row_ok, INTERLEAVED, "", BLOCK_R, BLOCK_H)
        gate = gate + bias_gate.to(tl.float32)
        up = up + bias_up.to(tl.float32)
    return gate, up


@triton.jit
def column_sums(
    src_ptr,  # fp32 [n_parts, n_cols], contiguous: the partial sums
    dst_ptr,  # [splits, n_cols], contiguous: row s of it sums src's rows of split s
    n_parts,  # rows of src
    n_cols,  # columns of src and dst
    parts_per_split,  # rows of src a program sums (split s: rows s * parts_per_split onwards)
    BLOCK_P: tl.constexpr,  # rows a step
    BLOCK_C: tl.constexpr,  # columns a program
    STAGES: tl.constexpr = 1,  # >1: the next STAGES - 1 steps loaded ahead (cp.async into shared memory)
):
    """dst[s, c] = sum of src[p, c] over the rows p of split s (program (c, s)); one split: dst[c] =
    the sum of every row. Each program takes its rows in the same order, so the result is
    deterministic. Offsets are int64: src may pass 2**31 elements."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < n_cols
    split = tl.program_id(1).to(tl.int64)
    first = split * parts_per_split
    end = tl.minimum(first + parts_per_split, n_parts)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    # int32 loop bounds, the last split masked by `end`: over int64 bounds (cdiv(end - first,
    # BLOCK_P)) ptxas waited for each of a step's loads before the next, and [1024, 1536] took 7.6 µs
    # in place of 4.7 (H200, session 43 call 2). STAGES > 1 loads the next steps ahead (tl.range).
    for step in tl.range(0, parts_per_split, BLOCK_P, num_stages=STAGES):
        parts = first + step + tl.arange(0, BLOCK_P).to(tl.int64)
        mask = (parts < end)[:, None] & col_ok[None, :]
        acc += tl.load(src_ptr + parts[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    tl.store(dst_ptr + split * n_cols + cols, tl.sum(acc, axis=0).to(dst_ptr.dtype.element_ty), mask=col_ok)
