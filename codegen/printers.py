"""Strict, table-driven printers from sympy to Triton and to eager PyTorch.

Each printer first applies its rewrite table (sympy -> sympy, each rewrite an identity that the
tests check numerically), then prints with ``_print_<ClassName>`` methods looked up along the
expression's class hierarchy. Anything without a method is an error naming the function: a printer
never emits half-translated code.

The Triton printer emits only operations that run both on the GPU and in Triton's interpreter:
no ``libdevice`` (tanh becomes 2*sigmoid(2x) - 1), integer powers become products, other powers
become exp(r * log(x)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import sympy
from sympy.printing.precedence import PRECEDENCE, precedence

from .derive import Program, cse_program
from .functions import sigmoid
from .spec import SpecError

__all__ = ["COMMON_REWRITES", "TRITON_REWRITES", "TorchPrinter", "TritonPrinter", "apply_rewrites"]

Rewrite = tuple[type, Callable[..., sympy.Expr]]

_HALF = sympy.Rational(1, 2)

#: Rewrites applied for every target: functions whose value at a point is a choice (sign and
#: Heaviside at 0) become an explicit Piecewise so that both targets agree.
COMMON_REWRITES: tuple[Rewrite, ...] = (
    (sympy.sign, lambda x: sympy.Piecewise((1, x > 0), (-1, x < 0), (0, True))),
    (sympy.Heaviside, lambda x, h0=None: sympy.Piecewise((1, x > 0), (0, x < 0), (_HALF if h0 is None else h0, True))),
)

#: Rewrites for Triton only: functions that exist there only through libdevice.
TRITON_REWRITES: tuple[Rewrite, ...] = ((sympy.tanh, lambda x: 2 * sigmoid(2 * x) - 1),)

_PREC_MUL = PRECEDENCE["Mul"]
_PREC_ADD = PRECEDENCE["Add"]
_PREC_ATOM = PRECEDENCE["Atom"]


def apply_rewrites(expr: sympy.Expr, rewrites: tuple[Rewrite, ...]) -> sympy.Expr:
    """Replace every function of the table by its rewrite, innermost first, until none is left."""
    for func, rule in rewrites:
        expr = expr.replace(func, rule)
    return expr


def float_literal(value: float) -> str:
    """Python source for a float, in generated code and its kernels alike: repr, but inf and nan as
    float("inf") / float("nan"), which Python, Triton's compiler and its interpreter read (repr's
    bare inf and nan are undefined names: until session 35 such a module failed at import or at
    its first launch)."""
    value = float(value)
    return repr(value) if math.isfinite(value) else f'float("{value!r}")'


class _Printer:
    """Shared machinery: dispatch, precedence, numbers, arithmetic."""

    target: ClassVar[str] = ""  # name of the target, for error messages
    module: ClassVar[str] = ""  # prefix of function calls, "tl" or "torch"
    rewrites: ClassVar[tuple[Rewrite, ...]] = COMMON_REWRITES
    functions: ClassVar[dict[str, str]] = {}  # sympy class name -> call template over {0}, {1}, ...

    def __init__(self, context: str) -> None:
        self.context = context  # e.g. "quick_geglu backward", for error messages

    # -- entry points -----------------------------------------------------------------------
    def doprint(self, expr: sympy.Expr) -> str:
        """Print one expression after the rewrites."""
        return self._print(apply_rewrites(sympy.sympify(expr), self.rewrites))

    def program(self, named: tuple[tuple[str, sympy.Expr], ...]) -> tuple[list[str], dict[str, str]]:
        """Rewrite, then CSE, then print: assignment lines for the temps, expressions for the outputs."""
        program = self._cse(named)
        lines = [f"{sym} = {self._print(expr)}" for sym, expr in program.temps]
        outputs = {name: self._print(expr) for name, expr in program.outputs}
        return lines, outputs

    def op_count(self, named: tuple[tuple[str, sympy.Expr], ...]) -> int:
        """Operations of the printed program (sympy.count_ops over its temps and outputs): a
        machine-independent measure of the arithmetic per element, for launch heuristics."""
        program = self._cse(named)
        return sum(int(sympy.count_ops(expr)) for _, expr in (*program.temps, *program.outputs))

    def calls(self, named: tuple[tuple[str, sympy.Expr], ...], functions: tuple[type, ...]) -> bool:
        """Whether the printed program calls any of ``functions`` (sympy function classes)."""
        program = self._cse(named)
        return any(expr.has(*functions) for _, expr in (*program.temps, *program.outputs))

    def _cse(self, named: tuple[tuple[str, sympy.Expr], ...]) -> Program:
        rewritten = tuple((name, apply_rewrites(sympy.sympify(expr), self.rewrites)) for name, expr in named)
        return cse_program(rewritten)

    # -- dispatch ---------------------------------------------------------------------------
    def _fail(self, expr: sympy.Basic, why: str) -> SpecError:
        return SpecError(
            f"while printing {self.context} for {self.target}: {why} in {expr}; add it to the "
            f"printer table in codegen/printers.py or rewrite the spec"
        )

    def _print(self, expr: sympy.Basic) -> str:
        if isinstance(expr, sympy.Expr) and expr.is_number:
            return self._print_number(expr)
        for cls in type(expr).__mro__:
            method = getattr(self, f"_print_{cls.__name__}", None)
            if method is not None:
                return method(expr)
            template = self.functions.get(cls.__name__)
            if template is not None:
                return template.format(*(self._print(a) for a in expr.args))
        raise self._fail(expr, f"{type(expr).__name__} has no {self.target} mapping")

    def _paren(self, expr: sympy.Basic, level: int) -> str:
        text = self._print(expr)
        return f"({text})" if self._precedence(expr) <= level else text

    def _precedence(self, expr: sympy.Basic) -> int:
        if isinstance(expr, sympy.Expr) and expr.is_number:
            # is_extended_negative, not float(expr) < 0: a complex constant reaches _print_number's
            # error (float() raised a TypeError), and -oo is negative.
            return _PREC_ADD if expr.is_extended_negative else _PREC_ATOM
        if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and expr.exp > 1:
            return _PREC_MUL  # printed as a product
        if isinstance(expr, sympy.Pow) and expr.exp.is_number and expr.exp < 0:
            return _PREC_MUL  # printed as a division
        if isinstance(expr, sympy.Mul) and expr.could_extract_minus_sign():
            return _PREC_ADD  # printed with a leading minus
        return precedence(expr)

    # -- atoms ------------------------------------------------------------------------------
    def _print_number(self, expr: sympy.Expr) -> str:
        if expr is sympy.nan:
            return float_literal(math.nan)
        value = complex(expr.evalf(30))
        if value.imag != 0 or expr.has(sympy.zoo):
            raise self._fail(expr, "a complex constant")
        return float_literal(value.real)

    def _print_Symbol(self, expr: sympy.Symbol) -> str:
        return expr.name

    # -- arithmetic -------------------------------------------------------------------------
    def _print_Add(self, expr: sympy.Add) -> str:
        out = ""
        for i, term in enumerate(expr.as_ordered_terms()):
            negative = term.could_extract_minus_sign()
            body = self._paren(-term if negative else term, _PREC_ADD)
            if i == 0:
                out = f"-{self._paren(-term, _PREC_MUL)}" if negative else body
            else:
                out += f" - {body}" if negative else f" + {body}"
        return out

    def _print_Mul(self, expr: sympy.Mul) -> str:
        if expr.could_extract_minus_sign():
            return f"-{self._paren(-expr, _PREC_MUL)}"
        coeff = sympy.Float(1)
        numer: list[sympy.Expr] = []
        denom: list[sympy.Expr] = []
        for factor in expr.as_ordered_factors():
            if factor.is_number:
                coeff *= factor  # every numeric factor folds into one leading literal
            elif isinstance(factor, sympy.Pow) and factor.exp.is_number and factor.exp < 0:
                denom.append(sympy.Pow(factor.base, -factor.exp))
            else:
                numer.append(factor)
        if float(coeff) != 1.0:
            numer.insert(0, coeff)
        text = " * ".join(self._paren(f, _PREC_MUL) for f in numer) if numer else "1.0"
        if denom:
            if len(denom) == 1:
                text += f" / {self._paren(denom[0], _PREC_MUL)}"
            else:
                text += " / (" + " * ".join(self._paren(f, _PREC_MUL) for f in denom) + ")"
        return text

    def _print_Pow(self, expr: sympy.Pow) -> str:
        base, exp = expr.base, expr.exp
        if exp.is_Integer:
            n = int(exp)
            if n == 0:
                return "1.0"
            product = " * ".join([self._paren(base, _PREC_MUL)] * abs(n))
            if n > 0:
                return product
            return f"1.0 / ({product})" if abs(n) > 1 else f"1.0 / {self._paren(base, _PREC_MUL)}"
        if exp.is_number and float(exp) == 0.5:
            return self._call("sqrt", self._print(base))
        if exp.is_number and float(exp) == -0.5:
            return "1.0 / " + self._call("sqrt", self._print(base))
        return self._general_power(base, exp)

    def _general_power(self, base: sympy.Expr, exp: sympy.Expr) -> str:
        raise NotImplementedError

    def _call(self, name: str, *args: str) -> str:
        return f"{self.module}.{name}({', '.join(args)})"

    # -- comparisons and selection ----------------------------------------------------------
    def _relational(self, op: str) -> Callable[[sympy.Basic], str]:
        def print_rel(expr: sympy.Basic) -> str:
            return f"{self._paren(expr.lhs, _PREC_ADD - 1)} {op} {self._paren(expr.rhs, _PREC_ADD - 1)}"

        return print_rel

    def _print_StrictGreaterThan(self, expr: sympy.Basic) -> str:
        return self._relational(">")(expr)

    def _print_GreaterThan(self, expr: sympy.Basic) -> str:
        return self._relational(">=")(expr)

    def _print_StrictLessThan(self, expr: sympy.Basic) -> str:
        return self._relational("<")(expr)

    def _print_LessThan(self, expr: sympy.Basic) -> str:
        return self._relational("<=")(expr)

    def _print_Equality(self, expr: sympy.Basic) -> str:
        return self._relational("==")(expr)

    def _print_Unequality(self, expr: sympy.Basic) -> str:
        return self._relational("!=")(expr)

    def _print_And(self, expr: sympy.Basic) -> str:
        return " & ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Or(self, expr: sympy.Basic) -> str:
        return " | ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        pieces = list(expr.args)
        last_value, last_cond = pieces[-1]
        if last_cond != sympy.true:
            raise self._fail(expr, "a Piecewise without an otherwise (True) branch")
        text = self._print(last_value)
        for value, cond in reversed(pieces[:-1]):
            text = self._call("where", self._print(cond), self._print(value), text)
        return text

    def _minmax(self, expr: sympy.Basic, name: str) -> str:
        # Canonical order, numeric bounds last (the torch printer turns them into torch.clamp).
        args = sorted(expr.args, key=lambda a: (a.is_number, sympy.default_sort_key(a)))
        text = self._print(args[0])
        for arg in args[1:]:
            text = self._binary_minmax(name, text, arg)
        return text

    def _binary_minmax(self, name: str, left: str, right: sympy.Expr) -> str:
        raise NotImplementedError

    def _print_Max(self, expr: sympy.Basic) -> str:
        return self._minmax(expr, "maximum")

    def _print_Min(self, expr: sympy.Basic) -> str:
        return self._minmax(expr, "minimum")


class TritonPrinter(_Printer):
    """sympy -> Triton expressions over fp32 values; portable (GPU and interpreter)."""

    target = "Triton"
    module = "tl"
    rewrites = COMMON_REWRITES + TRITON_REWRITES
    functions: ClassVar[dict[str, str]] = {
        "sigmoid": "tl.sigmoid({0})",
        "exp": "tl.exp({0})",
        "log": "tl.log({0})",
        "erf": "erf({0})",
        "Abs": "tl.abs({0})",
    }
    #: Functions printed as calls to helpers of moe_utils._kernel_lib, which the generated file
    #: imports: sympy function -> helper name. erf: tl.erf's results in fewer instructions.
    kernel_lib: ClassVar[dict[type, str]] = {sympy.erf: "erf"}

    def kernel_lib_calls(self, named: tuple[tuple[str, sympy.Expr], ...]) -> list[str]:
        """Names of the moe_utils._kernel_lib helpers that the printed program calls, sorted."""
        return sorted(name for function, name in self.kernel_lib.items() if self.calls(named, (function,)))

    def _general_power(self, base: sympy.Expr, exp: sympy.Expr) -> str:
        # x**r = exp(r * log(x)); defined for x > 0 like any real power with a fractional exponent.
        if base.is_number:
            return f"tl.exp({self._paren(exp, _PREC_MUL)} * {float(sympy.log(base))!r})"
        return f"tl.exp({self._paren(exp, _PREC_MUL)} * tl.log({self._print(base)}))"

    def _binary_minmax(self, name: str, left: str, right: sympy.Expr) -> str:
        # NaN in either argument gives NaN, as torch.maximum / torch.minimum do.
        return f"tl.{name}({left}, {self._print(right)}, propagate_nan=tl.PropagateNan.ALL)"


class TorchPrinter(_Printer):
    """sympy -> eager PyTorch expressions over tensors of the compute dtype (fp32 or fp64)."""

    target = "torch"
    module = "torch"
    rewrites = COMMON_REWRITES + TRITON_REWRITES
    functions: ClassVar[dict[str, str]] = {
        "sigmoid": "torch.sigmoid({0})",
        "exp": "torch.exp({0})",
        "log": "torch.log({0})",
        "erf": "torch.erf({0})",
        "tanh": "torch.tanh({0})",
        "Abs": "torch.abs({0})",
    }

    def _general_power(self, base: sympy.Expr, exp: sympy.Expr) -> str:
        return f"torch.pow({self._print(base)}, {self._print(exp)})"

    def _binary_minmax(self, name: str, left: str, right: sympy.Expr) -> str:
        if right.is_number:
            bound = "max" if name == "minimum" else "min"
            return f"torch.clamp({left}, {bound}={self._print(right)})"
        return f"torch.{name}({left}, {self._print(right)})"
