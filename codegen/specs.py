"""The built-in gated activations. Adding one is adding one spec to REGISTRY; nothing else."""

from __future__ import annotations

from .functions import GATE, UP, clamp, gelu_erf, gelu_tanh, relu, sigmoid, silu
from .spec import ActivationSpec, Param, make_registry

__all__ = [
    "CLAMPED_SWIGLU",
    "EXACT_GEGLU",
    "GEGLU",
    "QUICK_GEGLU",
    "REGISTRY",
    "REGLU",
    "SQUARED_REGLU",
    "SWIGLU",
]

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

# -- beyond the seed API: gated activations of current MoE models -----------------------------

REGLU = ActivationSpec(
    name="reglu",
    expr=relu(GATE) * UP,
    doc="ReGLU: relu(gate) * up; the gradient of relu is 0 at 0, as torch.relu's.",
    class_stem="ReGLU",
)

EXACT_GEGLU = ActivationSpec(
    name="exact_geglu",
    expr=gelu_erf(GATE) * UP,
    doc="GEGLU with the exact, erf-based GELU: gelu(gate) * up, gelu(x) = 0.5 x (1 + erf(x / sqrt(2))).",
    class_stem="ExactGEGLU",
)

_LIMIT = Param("limit", 7.0, "gate is clamped to <= limit and up to [-limit, limit]", minimum=0.0)

CLAMPED_SWIGLU = ActivationSpec(
    name="clamped_swiglu",
    expr=silu(clamp(GATE, hi=_LIMIT.symbol)) * clamp(UP, lo=-_LIMIT.symbol, hi=_LIMIT.symbol),
    doc=(
        "SwiGLU with clamped inputs: silu(min(gate, limit)) * clamp(up, -limit, limit); the gradient "
        "is zero where a value was clamped (as torch.clamp's)."
    ),
    class_stem="ClampedSwiGLU",
    params=(_LIMIT,),
)

SQUARED_REGLU = ActivationSpec(
    name="squared_reglu",
    expr=relu(GATE) ** 2 * UP,
    doc="Squared-ReLU gating: relu(gate)^2 * up.",
    class_stem="SquaredReGLU",
)

REGISTRY: tuple[ActivationSpec, ...] = make_registry(
    [SWIGLU, GEGLU, QUICK_GEGLU, REGLU, EXACT_GEGLU, CLAMPED_SWIGLU, SQUARED_REGLU]
)
