"""Triton helpers shared by every generated activation kernel.

``gated_inputs`` applies the optional clamp and bias to the two halves of a row block.

float8_e4m3fn encode/decode, exact on the GPU and in Triton's interpreter:

The saved copy of ``fp8_input_store`` is written and read through a ``uint8`` view. On the GPU
(``NATIVE=True``) the hardware conversions do the work. Triton's interpreter (triton 3.6) rounds
fp32 -> e4m3 wrongly near powers of two and turns NaN into 384 (and decodes NaN as 480), so under the
interpreter the same conversion is done with integer arithmetic: round to nearest even, saturate to
+-448, NaN stays NaN. Both paths give the bits of ``torch.clamp(x, -448, 448).to(float8_e4m3fn)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["FP8_MAX", "fp8_decode", "fp8_encode", "gated_inputs", "to_fp8_saturated"]

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
    x = tl.where(x > 448.0, 448.0, tl.where(x < -448.0, -448.0, x))  # NaN compares false: kept
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
def gated_inputs(
    gate_in,  # [BLOCK_R, BLOCK_H] fp32 first half of the rows, as stored
    up_in,  # [BLOCK_R, BLOCK_H] fp32 second half
    bias_ptr,  # bias base pointer (HAS_BIAS)
    bias_offs,  # [BLOCK_R, BLOCK_H] int64 offsets of the gate half's bias elements
    H,  # width of one half: the up half's bias is H elements further
    mask,  # [BLOCK_R, BLOCK_H] valid elements
    clamp_value,  # CLAMP bound
    HAS_BIAS: tl.constexpr,
    CLAMP: tl.constexpr,
):
    """gate = min(gate_in, c) + bias_gate, up = clamp(up_in, -c, c) + bias_up (clamp before bias).

    Comparisons are written so that NaN passes through, as torch.clamp lets it.
    """
    gate = gate_in
    up = up_in
    if CLAMP:
        gate = tl.where(gate > clamp_value, clamp_value, gate)
        up = tl.where(up > clamp_value, clamp_value, tl.where(up < -clamp_value, -clamp_value, up))
    if HAS_BIAS:
        gate = gate + tl.load(bias_ptr + bias_offs, mask=mask, other=0.0).to(tl.float32)
        up = up + tl.load(bias_ptr + bias_offs + H, mask=mask, other=0.0).to(tl.float32)
    return gate, up
