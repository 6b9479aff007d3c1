"""Pure symbolic derivation: spec -> forward, input gradients and routing-weight gradient.

The weighted forms are derived, not assembled by hand: with a row weight ``weight`` and the incoming
gradient ``grad_out`` of ``out = weight * f(gate, up)``, the scalar ``L = grad_out * weight * f`` gives
``d_gate = dL/dgate``, ``d_up = dL/dup`` and the per-element ``d_weight = dL/dweight`` that the kernel
sums over the row. Unweighted forms are the same programs with ``weight = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .functions import GATE, UP
from .spec import ActivationSpec, SpecError

__all__ = ["GRAD_OUT", "WEIGHT", "DerivedActivation", "Program", "cse_program", "derive"]

#: Row weight (routing probability) of the weighted forms; 1 for the unweighted ones.
WEIGHT = sympy.Symbol("weight", real=True)
#: Incoming gradient of one output element.
GRAD_OUT = sympy.Symbol("grad_out", real=True)


@dataclass(frozen=True)
class Program:
    """Straight-line code over gate, up, weight, grad_out and the parameters."""

    temps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # (tmpN, value) in evaluation order
    outputs: tuple[tuple[str, sympy.Expr], ...]  # (name, value) over the inputs and temps


@dataclass(frozen=True)
class DerivedActivation:
    """Everything the printers need for one spec. Built by derive(); never mutated."""

    spec: ActivationSpec  # the source spec, unchanged
    act: sympy.Expr  # f(gate, up)
    d_gate: sympy.Expr  # df/dgate
    d_up: sympy.Expr  # df/dup
    forward: tuple[tuple[str, sympy.Expr], ...]  # (name, value): out = weight * f
    backward: tuple[tuple[str, sympy.Expr], ...]  # d_gate, d_up, d_weight (per element; summed per row)


def cse_program(named: tuple[tuple[str, sympy.Expr], ...]) -> Program:
    """Common-subexpression elimination that gives the same temporaries on every machine.

    The printers call it after their rewrites, so that rewritten forms share subexpressions and
    simplify (0.5 * (1 + tanh(u)) becomes sigmoid(2u) before any temporary is cut out).
    """
    # Numeric subexpressions (sqrt(2/pi), 1/2, ...) become floats first, so that constants fold
    # into one literal instead of becoming temporaries.
    temps, reduced = sympy.cse(
        [expr.evalf(30) for _, expr in named],
        symbols=sympy.numbered_symbols("tmp", real=True),
        order="canonical",
    )
    return Program(
        temps=tuple((sym, expr) for sym, expr in temps),
        outputs=tuple((name, expr) for (name, _), expr in zip(named, reduced, strict=True)),
    )


def _check_derivative(spec: ActivationSpec, what: str, expr: sympy.Expr) -> sympy.Expr:
    if expr.has(sympy.Derivative, sympy.Subs):
        raise SpecError(
            f"while deriving {spec.name}: {what} = {expr} keeps an unevaluated derivative; "
            "sympy cannot differentiate this form (use functions with known derivatives, "
            "e.g. from codegen.functions, or a Piecewise)"
        )
    if expr.has(sympy.DiracDelta):
        raise SpecError(
            f"while deriving {spec.name}: {what} contains a DiracDelta; the spec is not "
            "differentiable in the ordinary sense"
        )
    return expr


def derive(spec: ActivationSpec) -> DerivedActivation:
    """Differentiate ``spec`` and return the forward and backward programs."""
    spec.validate()
    act = spec.expr
    d_gate = _check_derivative(spec, "df/dgate", sympy.diff(act, GATE))
    d_up = _check_derivative(spec, "df/dup", sympy.diff(act, UP))
    loss = GRAD_OUT * WEIGHT * act
    backward = [
        ("d_gate", _check_derivative(spec, "dL/dgate", sympy.diff(loss, GATE))),
        ("d_up", _check_derivative(spec, "dL/dup", sympy.diff(loss, UP))),
        ("d_weight", _check_derivative(spec, "dL/dweight", sympy.diff(loss, WEIGHT))),
    ]
    return DerivedActivation(
        spec=spec,
        act=act,
        d_gate=d_gate,
        d_up=d_up,
        forward=(("out", WEIGHT * act),),
        backward=tuple(backward),
    )
