"""Layer 1: the symbolic derivation and the printers, against numerics."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sympy
import torch
from moe_utils.codegen import GATE, UP, ActivationSpec, Param, SpecError, derive, sigmoid
from moe_utils.codegen.printers import COMMON_REWRITES, TRITON_REWRITES, TorchPrinter, TritonPrinter, apply_rewrites
from moe_utils.codegen.specs import REGISTRY
from reference import SpecReference

SPECS = {s.name: s for s in REGISTRY}


def _params(spec: ActivationSpec, rng: np.random.Generator) -> tuple[float, ...]:
    # Non-default values, so that a parameter that is ignored somewhere shows.
    return tuple(p.default + 0.3 + rng.uniform(0, 0.5) for p in spec.params)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_derivatives_match_finite_differences(name):
    spec = SPECS[name]
    ref = SpecReference(spec)
    rng = np.random.default_rng(0)
    gate = rng.normal(0, 2, 200)
    up = rng.normal(0, 2, 200)
    params = _params(spec, rng)
    h = 1e-6
    fd_gate = (ref._call(ref.f, gate + h, up, params) - ref._call(ref.f, gate - h, up, params)) / (2 * h)
    fd_up = (ref._call(ref.f, gate, up + h, params) - ref._call(ref.f, gate, up - h, params)) / (2 * h)
    np.testing.assert_allclose(ref._call(ref.d_gate, gate, up, params), fd_gate, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ref._call(ref.d_up, gate, up, params), fd_up, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_derivatives_match_autograd_of_printed_forward(name):
    """torch.autograd through the torch-printed forward equals the sympy derivatives (float64)."""
    spec = SPECS[name]
    module = __import__(f"moe_utils.generated.{name}", fromlist=["_"])
    fwd = getattr(module, f"_{name}_fwd_eager")
    bwd = getattr(module, f"_{name}_bwd_eager")
    ref = SpecReference(spec)
    rng = np.random.default_rng(1)
    params = _params(spec, rng)
    gate = torch.tensor(rng.normal(0, 2, (7, 33)), dtype=torch.float64, requires_grad=True)
    up = torch.tensor(rng.normal(0, 2, (7, 33)), dtype=torch.float64, requires_grad=True)
    weight = torch.tensor(rng.uniform(0.1, 1, (7, 1)), dtype=torch.float64, requires_grad=True)
    grad_out = torch.tensor(rng.normal(0, 1, (7, 33)), dtype=torch.float64)
    out = fwd(gate, up, weight, *params)
    np.testing.assert_allclose(
        out.detach().numpy(),
        weight.detach().numpy() * ref._call(ref.f, gate.detach().numpy(), up.detach().numpy(), params),
        rtol=1e-12,
        atol=1e-12,
    )
    d_gate, d_up, d_weight = torch.autograd.grad(out, (gate, up, weight), grad_out)
    p_gate, p_up, p_weight_elem = bwd(gate.detach(), up.detach(), grad_out, weight.detach(), *params)
    torch.testing.assert_close(p_gate, d_gate, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p_up, d_up, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p_weight_elem.sum(-1, keepdim=True), d_weight, rtol=1e-12, atol=1e-12)


_X = sympy.Symbol("x", real=True)


@pytest.mark.parametrize(
    "func, rule", list(COMMON_REWRITES + TRITON_REWRITES), ids=lambda v: getattr(v, "__name__", "rule")
)
def test_printer_rewrites_are_identities(func, rule):
    """Every rewrite the printers apply equals the original function at many points."""
    rewritten = rule(_X)
    for value in [-30, -3.5, -1, -0.25, 0.0, 1e-3, 0.5, 2, 7.25, 40]:
        want = complex(func(sympy.Float(value)).evalf(30))
        got = complex(rewritten.subs(_X, sympy.Float(value)).evalf(30))
        assert abs(want - got) <= 1e-14 * max(1.0, abs(want)), (func, value, want, got)


def test_triton_printer_emits_only_portable_calls():
    """No libdevice, no tanh, no ** in the Triton output of any spec."""
    for spec in REGISTRY:
        d = derive(spec)
        for named in (d.forward, d.backward):
            lines, outs = TritonPrinter(spec.name).program(named)
            text = "\n".join([*lines, *outs.values()])
            assert "libdevice" not in text and "tanh" not in text and "**" not in text, text
            calls = {tok.split("(")[0] for tok in text.replace(" ", "").split("tl.")[1:]}
            assert calls <= {"sigmoid", "exp", "log", "erf", "abs", "sqrt", "where", "maximum", "minimum"}, calls


def test_printers_translate_powers_and_piecewise():
    expr = _X**3 + 1 / _X**2 + sympy.sqrt(_X) + sympy.Piecewise((_X, _X > 0), (0, True)) + sympy.Max(_X, 0)
    tri = TritonPrinter("test").doprint(expr)
    tor = TorchPrinter("test").doprint(expr)
    assert "x * x * x" in tri and "1.0 / (x * x)" in tri and "tl.sqrt(x)" in tri and "tl.where(x > 0.0" in tri
    assert "torch.where(x > 0.0" in tor and "torch.clamp(x, min=0.0)" in tor
    # Evaluate the torch printout and compare with sympy.
    x = torch.tensor([0.3, 1.7, 4.0], dtype=torch.float64)
    got = eval(tor, {"torch": torch, "x": x})
    want = [float(expr.subs(_X, float(v))) for v in x]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_printers_write_non_finite_constants_as_floats():
    """oo, -oo and nan print as float("inf") / float("-inf") / float("nan"), which Python, Triton's
    interpreter and its sm_90 compiler read (checked by hand in session 35); a bare inf was an
    undefined name. Complex constants are refused when the spec is validated."""
    expr = sympy.Piecewise((sympy.oo, _X > 2), (-sympy.oo, _X < -2), (sympy.nan, sympy.Eq(_X, 0)), (_X, True))
    tri = TritonPrinter("test").doprint(expr)
    tor = TorchPrinter("test").doprint(expr)
    assert 'float("inf")' in tri and 'float("-inf")' in tri and 'float("nan")' in tri, tri
    x = torch.tensor([3.0, -3.0, 0.0, 0.5], dtype=torch.float64)
    got = eval(tor, {"torch": torch, "x": x})
    assert got[0] == float("inf") and got[1] == float("-inf") and got[2].isnan() and got[3] == 0.5
    for constant in (sympy.I, sympy.zoo):
        spec = ActivationSpec(name="cplx", expr=GATE * UP * (1 + constant), doc="", class_stem="Cplx")
        with pytest.raises(SpecError, match=r"spec 'cplx': expression has a complex constant"):
            spec.validate()


def test_rewrite_sign_and_heaviside_are_explicit():
    expr = apply_rewrites(sympy.sign(_X) + sympy.Heaviside(_X), COMMON_REWRITES)
    assert not expr.has(sympy.sign) and not expr.has(sympy.Heaviside)
    assert expr.subs(_X, 0) == sympy.Rational(1, 2)


def test_strict_printer_names_the_unknown_function():
    with pytest.raises(SpecError, match="gamma"):
        TritonPrinter("my_act forward").doprint(sympy.gamma(_X))
    with pytest.raises(SpecError, match="gamma"):
        TorchPrinter("my_act forward").doprint(sympy.gamma(_X))


def test_spec_errors_name_the_spec_and_the_problem():
    stray = sympy.Symbol("beta", real=True)
    bad = ActivationSpec(name="bad_act", expr=GATE * UP * stray, doc="", class_stem="BadAct")
    with pytest.raises(SpecError, match=r"bad_act.*beta"):
        derive(bad)
    undiff = ActivationSpec(name="opaque", expr=sympy.Function("h")(GATE) * UP, doc="", class_stem="Opaque")
    with pytest.raises(SpecError, match=r"deriving opaque.*unevaluated derivative"):
        derive(undiff)
    with pytest.raises(SpecError, match="reserved"):
        ActivationSpec(name="p", expr=GATE * UP, doc="", class_stem="P", params=(Param("weight", 1.0, ""),)).validate()
    below = Param("limit", -1.0, "", minimum=0.0)
    with pytest.raises(SpecError, match=r"'limit': default -1.0 is below its minimum 0.0"):
        ActivationSpec(name="p", expr=GATE * UP * below.symbol, doc="", class_stem="P", params=(below,)).validate()


def test_derive_is_pure():
    spec = SPECS["quick_geglu"]
    before = (spec.expr, spec.params)
    d1, d2 = derive(spec), derive(spec)
    assert (spec.expr, spec.params) == before
    assert d1 == d2


def test_sigmoid_derivative_rule():
    assert sympy.simplify(sympy.diff(sigmoid(_X), _X) - sigmoid(_X) * (1 - sigmoid(_X))) == 0


def test_render_is_identical_under_any_hash_seed(tmp_path):
    """Same specs, same bytes, whatever PYTHONHASHSEED is."""
    script = (
        "import hashlib\n"
        "from moe_utils.codegen.render import render_package\n"
        "from moe_utils.codegen.specs import REGISTRY\n"
        "print(hashlib.sha256(''.join(f.name + f.text for f in render_package(REGISTRY)).encode()).hexdigest())\n"
    )
    digests = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_docs_render_as_written_or_fail_at_generation():
    """A spec's doc is the generated module's docstring, shown as written (backslashes and triple
    quotes escaped); a parameter's doc is a comment, so it must be one line. Before session 35 both
    wrote a module that failed only at import (a SyntaxError); every rendered module is parsed now."""
    import ast

    from moe_utils.codegen.render import render_package

    beta = Param("beta", 1.0, 'slope, "quoted"')
    for doc in ('Uses """triple quotes""" and "quotes"', "LaTeX \\sigma, \\u and a trailing \\", 'ends "quoted"'):
        spec = ActivationSpec(
            name="doc_act", expr=GATE * sigmoid(beta.symbol * GATE) * UP, doc=doc, class_stem="DocAct", params=(beta,)
        )
        module = render_package([spec])[0]
        assert ast.get_docstring(ast.parse(module.text), clean=False).startswith(doc + "\n")
    two_lines = Param("beta", 1.0, "slope of\nthe gate")
    spec = ActivationSpec(
        name="doc_act",
        expr=GATE * sigmoid(two_lines.symbol * GATE) * UP,
        doc="",
        class_stem="DocAct",
        params=(two_lines,),
    )
    with pytest.raises(SpecError, match=r"spec 'doc_act': parameter 'beta': doc must be one line"):
        render_package([spec])


def test_public_names_of_two_specs_and_non_finite_defaults():
    """A spec named weighted_act beside one named act would both export weighted_act (the package
    kept one and silently dropped the other): an error at generation. A default of inf or nan
    rendered as a bare name (a NameError at import): now float("inf") / float("nan")."""
    import ast
    import math

    from moe_utils.codegen import make_registry
    from moe_utils.codegen.render import render_package

    act = ActivationSpec(name="act", expr=GATE * sigmoid(GATE) * UP, doc="", class_stem="Act")
    clash = ActivationSpec(name="weighted_act", expr=GATE * UP, doc="", class_stem="WeightedPlain")
    for build in (make_registry, render_package):
        with pytest.raises(
            SpecError, match=r"spec 'weighted_act': its public name 'weighted_act' is also a name of spec 'act'"
        ):
            build([act, clash])
    # A spec named like a module its code uses would hide it (def tl(...) and every kernel broke).
    for name in ("tl", "torch"):
        hides = ActivationSpec(name=name, expr=GATE * sigmoid(GATE) * UP, doc="", class_stem="Hides")
        with pytest.raises(SpecError, match=rf"spec '{name}': the names \['{name}'\] made from its name are used"):
            render_package([hides])
    for default in (float("inf"), float("-inf"), float("nan")):
        limit = Param("limit", default, "bound")
        spec = ActivationSpec(
            name="lim", expr=GATE * sigmoid(GATE) * UP * limit.symbol, doc="", class_stem="Lim", params=(limit,)
        )
        tree = ast.parse(render_package([spec])[0].text)
        plain = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "lim")
        value = eval(compile(ast.Expression(plain.args.defaults[0]), "<default>", "eval"), {})
        assert math.isnan(value) if math.isnan(default) else value == default
