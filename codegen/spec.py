"""The declarative description of a gated activation: the only thing written by hand per activation."""

from __future__ import annotations

import keyword
from collections.abc import Iterable
from dataclasses import dataclass, field

import sympy

from .functions import GATE, UP

__all__ = ["ActivationSpec", "Param", "SpecError", "make_registry"]


class SpecError(ValueError):
    """A spec that cannot be derived or printed; the message names the spec and the problem."""


@dataclass(frozen=True)
class Param:
    """A named scalar parameter of an activation, passed to the kernels as a float32 argument."""

    name: str  # Python identifier used in every signature and kernel argument list
    default: float  # default value in every public signature
    doc: str  # one line for the docstrings
    # Smallest value the public API accepts (a ValueError names the argument below it); None: any.
    # NaN is refused for every parameter.
    minimum: float | None = None

    @property
    def symbol(self) -> sympy.Symbol:
        """The sympy symbol that stands for this parameter in the spec's expression."""
        return sympy.Symbol(self.name, real=True)


@dataclass(frozen=True)
class ActivationSpec:
    """One gated activation f(gate, up; params), written once as a sympy expression.

    Everything else (forward and backward kernels, eager path, autograd Functions and the functional
    API) is derived from this object by ``regenerate-kernels``.
    """

    name: str  # snake_case; module name, function stem and op name, e.g. "quick_geglu"
    expr: sympy.Expr  # f over the symbols gate and up (codegen.functions.GATE, UP) and the params
    doc: str  # one paragraph for the generated module's docstring
    class_stem: str  # CamelCase stem of the autograd Function names, e.g. "QuickGeGLU"
    params: tuple[Param, ...] = ()  # scalar parameters in signature order
    clamp: bool = False  # *_impl takes clamp_value: gate <= c and -c <= up <= c before the bias
    impl_bias: bool = True  # weighted_bias_<name>_impl takes a bias argument after input
    # Keyword arguments of weighted_bias_<name>_impl after fp8_input_store, in order; names are
    # params or "clamp_value". Empty means: the params in order, then clamp_value when clamp is set.
    impl_keywords: tuple[str, ...] = field(default=())

    @property
    def constant_name(self) -> str:
        """The spec's name as a module-level constant in codegen/specs.py, e.g. QUICK_GEGLU."""
        return self.name.upper()

    def public_names(self) -> list[str]:
        """Names the generated module exports, sorted."""
        n, s = self.name, self.class_stem
        return sorted(
            [
                n,
                f"{n}_back",
                f"weighted_{n}",
                f"weighted_{n}_back",
                f"weighted_bias_{n}",
                f"weighted_bias_{n}_back",
                f"weighted_bias_{n}_impl",
                f"Weighted{s}Function",
                f"WeightedBias{s}Function",
            ]
        )

    def impl_keyword_order(self) -> tuple[str, ...]:
        """The keyword arguments of the *_impl entry point, in signature order."""
        if self.impl_keywords:
            return self.impl_keywords
        names = tuple(p.name for p in self.params)
        return names + (("clamp_value",) if self.clamp else ())

    def validate(self) -> None:
        """Raise SpecError naming this spec if it is malformed."""
        where = f"spec {self.name!r}"
        if not self.name.isidentifier() or keyword.iskeyword(self.name) or self.name != self.name.lower():
            raise SpecError(f"{where}: name must be a lower-case Python identifier")
        if not self.class_stem.isidentifier():
            raise SpecError(f"{where}: class_stem {self.class_stem!r} is not an identifier")
        if not isinstance(self.expr, sympy.Expr):
            raise SpecError(f"{where}: expr must be a sympy expression, got {type(self.expr).__name__}")
        reserved = {"gate", "up", "weight", "grad_out", "x", "bias", "clamp_value", "input", "weights"}
        names = [p.name for p in self.params]
        for p in self.params:
            if not p.name.isidentifier() or keyword.iskeyword(p.name) or p.name in reserved or p.name.startswith("tmp"):
                raise SpecError(f"{where}: parameter name {p.name!r} is reserved or not an identifier")
        for p in self.params:
            if not isinstance(p.doc, str) or "\n" in p.doc or "\r" in p.doc:
                raise SpecError(f"{where}: parameter {p.name!r}: doc must be one line (it is a comment), got {p.doc!r}")
        for p in self.params:
            if p.minimum is not None and not p.default >= p.minimum:
                raise SpecError(f"{where}: parameter {p.name!r}: default {p.default} is below its minimum {p.minimum}")
        if not isinstance(self.doc, str):
            raise SpecError(f"{where}: doc must be a str, got {type(self.doc).__name__}")
        if len(set(names)) != len(names):
            raise SpecError(f"{where}: duplicate parameter names {names}")
        allowed = {GATE, UP} | {p.symbol for p in self.params}
        free = self.expr.free_symbols
        extra = sorted(str(s) for s in free - allowed)
        if extra:
            raise SpecError(
                f"{where}: free symbols {extra} are neither gate, up nor declared parameters "
                f"{names}; declare them as Param or use codegen.functions.GATE/UP (real symbols)"
            )
        if self.expr.has(sympy.I, sympy.zoo):
            raise SpecError(
                f"{where}: expression has a complex constant (I or zoo); the kernels compute in real floats"
            )
        if GATE not in free and UP not in free:
            raise SpecError(f"{where}: expression depends on neither gate nor up")
        if self.impl_keywords:
            known = set(names) | {"clamp_value"}
            wanted = set(names) | ({"clamp_value"} if self.clamp else set())
            if set(self.impl_keywords) != wanted or not set(self.impl_keywords) <= known:
                raise SpecError(f"{where}: impl_keywords {self.impl_keywords} must list exactly {sorted(wanted)}")


def make_registry(specs: Iterable[ActivationSpec]) -> tuple[ActivationSpec, ...]:
    """Validate specs and return them sorted by name; duplicate names or class stems are errors, and
    so is a public name of two specs (a spec named ``weighted_act`` beside one named ``act``: the
    package would export one ``weighted_act`` and silently drop the other)."""
    ordered = tuple(sorted(specs, key=lambda s: s.name))
    seen: dict[str, str] = {}
    exported: dict[str, str] = {}
    for spec in ordered:
        spec.validate()
        for key in (spec.name, spec.class_stem):
            if key in seen:
                raise SpecError(f"spec {spec.name!r}: {key!r} is already used by spec {seen[key]!r}")
            seen[key] = spec.name
        for public in spec.public_names():
            if public in exported:
                raise SpecError(
                    f"spec {spec.name!r}: its public name {public!r} is also a name of spec {exported[public]!r}; "
                    "rename one of them"
                )
            exported[public] = spec.name
    return ordered
