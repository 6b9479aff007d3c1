"""The built-in gated activations. Adding one is adding one spec to REGISTRY; nothing else."""

from __future__ import annotations

from .functions import GATE, UP, gelu_tanh, sigmoid, silu
from .spec import ActivationSpec, Param, make_registry

__all__ = ["GEGLU", "QUICK_GEGLU", "REGISTRY", "SWIGLU"]

SWIGLU = ActivationSpec(
    name="swiglu",
    expr=silu(GATE) * UP,
    doc="SwiGLU: silu(gate) * up, with silu(x) = x * sigmoid(x).",
    class_stem="SwiGLU",
    impl_bias=False,
)

GEGLU = ActivationSpec(
    name="geglu",
    expr=gelu_tanh(GATE) * UP,
    doc=(
        "GEGLU with the tanh approximation of GELU: gelu_tanh(gate) * up, "
        "gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."
    ),
    class_stem="GEGLU",
    impl_bias=False,
)

_LINEAR_OFFSET = Param("linear_offset", 0.0, "added to the up half before gating")
_ALPHA = Param("alpha", 1.702, "slope of the sigmoid in quick_gelu(x) = x * sigmoid(alpha * x)")

QUICK_GEGLU = ActivationSpec(
    name="quick_geglu",
    expr=GATE * sigmoid(_ALPHA.symbol * GATE) * (UP + _LINEAR_OFFSET.symbol),
    doc=("Quick-GEGLU: quick_gelu(gate) * (up + linear_offset), quick_gelu(x) = x * sigmoid(alpha * x)."),
    class_stem="QuickGeGLU",
    params=(_LINEAR_OFFSET, _ALPHA),
    clamp=True,
    impl_bias=True,
    impl_keywords=("linear_offset", "clamp_value", "alpha"),
)

REGISTRY: tuple[ActivationSpec, ...] = make_registry([SWIGLU, GEGLU, QUICK_GEGLU])
