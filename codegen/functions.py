"""Symbolic building blocks that specs may use beyond sympy's own functions.

Each one carries its derivative rule, so that ``sympy.diff`` handles it like a built-in, and the
printers in :mod:`moe_utils.codegen.printers` know how to lower it. Nothing here is specific to one
activation.
"""

from __future__ import annotations

import sympy

__all__ = ["sigmoid", "silu", "gelu_tanh", "gelu_erf", "relu", "clamp", "GATE", "UP"]

#: The two shared input symbols of every gated activation: the first and second half of the row.
GATE = sympy.Symbol("gate", real=True)
UP = sympy.Symbol("up", real=True)


class sigmoid(sympy.Function):  # noqa: N801 - lower case, like sympy's own functions
    """The logistic function 1 / (1 + exp(-x)), kept opaque so that it prints as one call."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        if argindex != 1:
            raise sympy.ArgumentIndexError(self, argindex)
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, arg: sympy.Expr) -> sympy.Expr | None:
        if arg.is_zero:
            return sympy.Rational(1, 2)
        return None

    def _eval_rewrite_as_exp(self, arg: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return 1 / (1 + sympy.exp(-arg))

    def _eval_evalf(self, prec: int) -> sympy.Expr | None:
        if not self.args[0].is_number:
            return None  # stay symbolic, so that the printers see one sigmoid call
        return (1 / (1 + sympy.exp(-self.args[0]))).evalf(prec)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


def silu(x: sympy.Expr) -> sympy.Expr:
    """x * sigmoid(x)."""
    return x * sigmoid(x)


def gelu_tanh(x: sympy.Expr) -> sympy.Expr:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the tanh approximation of GELU."""
    inner = sympy.sqrt(2 / sympy.pi) * (x + sympy.Float("0.044715") * x**3)
    return sympy.Rational(1, 2) * x * (1 + sympy.tanh(inner))


def gelu_erf(x: sympy.Expr) -> sympy.Expr:
    """0.5 x (1 + erf(x / sqrt(2))), the exact GELU."""
    return sympy.Rational(1, 2) * x * (1 + sympy.erf(x / sympy.sqrt(2)))


def relu(x: sympy.Expr) -> sympy.Expr:
    """max(x, 0), written so that its derivative is 0 at x = 0, as torch.relu's is."""
    return sympy.Piecewise((x, x > 0), (0, True))


def clamp(x: sympy.Expr, lo: sympy.Expr | None = None, hi: sympy.Expr | None = None) -> sympy.Expr:
    """min(max(x, lo), hi), written so that its derivative is 1 on the closed interval [lo, hi] and
    0 outside, as torch.clamp's is; NaN passes through. Either bound may be a parameter's symbol."""
    pieces: list[tuple[sympy.Expr, sympy.Basic]] = []
    if hi is not None:
        pieces.append((hi, x > hi))
    if lo is not None:
        pieces.append((lo, x < lo))
    return sympy.Piecewise(*pieces, (x, True))
