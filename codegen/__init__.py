"""Symbolic code generation for gated activations: spec -> derivation -> printers -> templates.

A user-defined activation is one ``ActivationSpec``::

    from moe_utils.codegen import ActivationSpec, GATE, UP, Param, sigmoid

    MY_GLU = ActivationSpec(
        name="my_glu",
        expr=GATE * sigmoid(GATE) * (UP + 1),
        doc="...",
        class_stem="MyGLU",
    )

and ``regenerate-kernels --spec my_module:MY_GLU --out my_pkg/generated --namespace my_pkg``.
"""

from .derive import GRAD_OUT, WEIGHT, DerivedActivation, Program, derive
from .functions import GATE, UP, clamp, gelu_erf, gelu_tanh, relu, sigmoid, silu
from .spec import ActivationSpec, Param, SpecError, make_registry

__all__ = [
    "GATE",
    "GRAD_OUT",
    "UP",
    "WEIGHT",
    "ActivationSpec",
    "DerivedActivation",
    "Param",
    "Program",
    "SpecError",
    "clamp",
    "derive",
    "gelu_erf",
    "gelu_tanh",
    "make_registry",
    "relu",
    "sigmoid",
    "silu",
]
