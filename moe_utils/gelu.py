"""quick_gelu: the sigmoid approximation of GELU, a plain (ungated) helper of the seed API."""

from __future__ import annotations

import torch

__all__ = ["quick_gelu"]


def quick_gelu(y: torch.Tensor, alpha: float = 1.702) -> torch.Tensor:
    """y * sigmoid(alpha * y), computed in fp32 (fp64 for fp64 input) and returned in y.dtype.

    Differentiable through torch autograd. The gated form with its fused kernels is quick_geglu.
    """
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"quick_gelu: y must be a floating-point tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    acc = y.to(torch.float64 if y.dtype == torch.float64 else torch.float32)
    return (acc * torch.sigmoid(alpha * acc)).to(y.dtype)
