"""End to end: a user's spec in their own module -> regenerate-kernels -> an importable package whose
kernels, autograd Functions and functional forms match the float64 reference, like the built-ins."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import DEVICE, assert_close_to_ref, make_generator
from reference import SpecReference

USER_MODULE = '''
"""A user's activations: every function the printers lower, in two specs."""
import sympy
from moe_utils.codegen import GATE, UP, ActivationSpec, Param, clamp, sigmoid

BETA = Param("beta", 0.75, "slope of the negative side")
LIMIT = Param("limit", 3.0, "bound of the up half")

# exp, log, tanh (mish(gate) * up)
MISH_GLU = ActivationSpec(
    name="mish_glu",
    expr=GATE * sympy.tanh(sympy.log(1 + sympy.exp(GATE))) * UP,
    doc="Mish-gated linear unit: gate * tanh(softplus(gate)) * up.",
    class_stem="MishGLU",
)

# sigmoid, erf, sqrt, abs, max/min, piecewise, integer and rational powers, two parameters
KITCHEN_SINK = ActivationSpec(
    name="kitchen_sink",
    expr=(
        sympy.Piecewise((GATE, GATE > 0), (BETA.symbol * GATE, True)) * clamp(UP, lo=-LIMIT.symbol, hi=LIMIT.symbol)
        + sympy.sqrt(sympy.Abs(GATE) + 1) * sympy.erf(UP) / (1 + GATE**2)
        + sympy.Max(GATE, UP) * sympy.Min(GATE, 0) * sigmoid(UP)
        + (GATE**2 + 1) ** sympy.Rational(1, 3) * UP**3 / 8
    ),
    doc="Exercises every lowering the printers offer.",
    class_stem="KitchenSink",
    params=(BETA, LIMIT),
)

# Reads the gate alone: df/dup is the constant 0 (the eager path's torch.cat refused it until session 35)
GATE_SILU = ActivationSpec(
    name="gate_silu", expr=GATE * sigmoid(GATE), doc="silu(gate); up unused.", class_stem="GateSilu"
)

SPECS = [MISH_GLU, KITCHEN_SINK, GATE_SILU]

BAD_FREE_SYMBOL = ActivationSpec(
    name="bad_free", expr=GATE * sympy.Symbol("theta") * UP, doc="", class_stem="BadFree"
)
BAD_FUNCTION = ActivationSpec(name="bad_func", expr=sympy.sin(GATE) * UP, doc="", class_stem="BadFunc")
BAD_DERIVATIVE = ActivationSpec(
    name="bad_deriv", expr=sympy.Function("opaque")(GATE) * UP, doc="", class_stem="BadDeriv"
)
# Names the generated code uses: a kernel local (start: silently wrong numbers until session 35),
# a kernel argument (H: a duplicate argument at import), a module (tl); shift is free.
START, WIDTH, TL, SHIFT = (Param(n, 0.5, "") for n in ("start", "H", "tl", "shift"))
BAD_PARAM_NAMES = ActivationSpec(
    name="bad_names",
    expr=GATE * sigmoid(GATE) * (UP + START.symbol + WIDTH.symbol * TL.symbol + SHIFT.symbol),
    doc="",
    class_stem="BadNames",
    params=(START, WIDTH, TL, SHIFT),
)
'''


def _cli() -> list[str]:
    exe = shutil.which("regenerate-kernels")
    return [exe] if exe else [sys.executable, "-m", "moe_utils.codegen.cli"]


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([*_cli(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def user_package(tmp_path_factory):
    """Generate the user's specs into <tmp>/userpkg/generated and import it."""
    root = tmp_path_factory.mktemp("user")
    (root / "user_acts.py").write_text(textwrap.dedent(USER_MODULE))
    (root / "userpkg").mkdir()
    (root / "userpkg" / "__init__.py").write_text("")
    namespace = f"userpkg_{os.getpid()}"  # torch.library namespaces are process-global
    done = _run(["--spec", "user_acts:SPECS", "--out", "userpkg/generated", "--namespace", namespace], root)
    assert done.returncode == 0, done.stderr
    assert "mish_glu.py (created)" in done.stdout and "kitchen_sink.py (created)" in done.stdout
    sys.path.insert(0, str(root))
    try:
        user_acts = importlib.import_module("user_acts")
        generated = importlib.import_module("userpkg.generated")
    finally:
        sys.path.remove(str(root))
    return root, user_acts, generated, namespace


def test_generated_files_are_marked_and_in_step(user_package):
    root, _, generated, namespace = user_package
    assert set(generated.ACTIVATIONS) == {"gate_silu", "kitchen_sink", "mish_glu"}
    for name in ("mish_glu.py", "kitchen_sink.py", "gate_silu.py", "__init__.py"):
        assert "DO NOT EDIT" in (root / "userpkg" / "generated" / name).read_text().splitlines()[0]
    check = _run(["--check", "--spec", "user_acts:SPECS", "--out", "userpkg/generated", "--namespace", namespace], root)
    assert check.returncode == 0, check.stdout + check.stderr
    # A file path works as well as a module name: the same code, only the header names the source.
    done = _run(["--spec", "user_acts.py:SPECS", "--out", "bypath", "--namespace", namespace], root)
    assert done.returncode == 0, done.stderr
    for name in ("mish_glu.py", "kitchen_sink.py"):
        by_name = (root / "userpkg" / "generated" / name).read_text().splitlines()[1:]
        assert (root / "bypath" / name).read_text().splitlines()[1:] == by_name
    assert hasattr(torch.ops, namespace) and hasattr(getattr(torch.ops, namespace), "mish_glu_fwd")


def test_user_spec_launch_heuristics(user_package):
    # A user's spec gets the launch heuristics' inputs too: the kitchen sink's forward calls erf
    # (heavy: 2048-element forward tiles), mish_glu's only exp, log and tanh.
    _, _, generated, _ = user_package
    sink, mish = (importlib.import_module(f"{generated.__name__}.{name}") for name in ("kitchen_sink", "mish_glu"))
    assert sink._HEAVY_FORWARD is True and mish._HEAVY_FORWARD is False
    assert sink._BACKWARD_OPS > mish._BACKWARD_OPS > 0


@pytest.mark.parametrize("which", ["MISH_GLU", "KITCHEN_SINK", "GATE_SILU"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["split", "interleaved"])
def test_user_activation_matches_float64(backend, user_package, which, dtype, interleaved):
    _, user_acts, generated, _ = user_package
    spec = getattr(user_acts, which)
    gen = make_generator(29)
    y = (torch.randn(13, 2 * 24, generator=gen) * 1.5).to(dtype).to(DEVICE).requires_grad_(True)
    bias = torch.randn(48, generator=gen).to(dtype).to(DEVICE).requires_grad_(True)
    w = torch.rand(13, 1, generator=gen).add_(0.1).to(DEVICE).requires_grad_(True)
    g = torch.randn(13, 24, generator=gen).to(dtype).to(DEVICE)
    params = tuple(p.default + 0.25 for p in spec.params)
    fn = getattr(generated, f"weighted_bias_{spec.name}")
    out = fn(y, bias, w, *params, interleaved=interleaved)
    d_y, d_b, d_w = torch.autograd.grad(out, (y, bias, w), g)
    reference = SpecReference(spec)
    ref = reference.forward_backward(y, bias, w, g, params, interleaved=interleaved)
    for got, want, what in zip((out, d_y, d_b), ref, ("out", "d_y", "d_bias"), strict=False):
        assert_close_to_ref(got, want, dtype, f"{spec.name} {what}")
    assert_close_to_ref(d_w, ref[3], dtype, f"{spec.name} d_weights", bound=reference.d_w_bound)
    # The Function class and the fp8 store come with it.
    cls = getattr(generated, f"Weighted{spec.class_stem}Function")
    yy = y.detach().clone().requires_grad_(True)
    out8 = cls.apply(yy, w.detach(), True, *params, interleaved)
    (d_y8,) = torch.autograd.grad(out8, (yy,), g)
    y8 = torch.clamp(y.detach().float(), -448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    assert_close_to_ref(out8, reference.forward_backward(y, None, w, None, params, interleaved=interleaved)[0], dtype)
    ref8 = reference.forward_backward(y8, None, w, g, params, interleaved=interleaved)
    assert_close_to_ref(d_y8, ref8[1], dtype, f"{spec.name} fp8 d_y")


def test_user_ops_compile_without_graph_breaks(user_package):
    _, _, generated, _ = user_package
    y = torch.randn(8, 32).to(DEVICE)
    w = torch.rand(8, 1).to(DEVICE)
    fn = torch.compile(generated.weighted_mish_glu, fullgraph=True, backend="eager")
    assert torch.equal(fn(y, w), generated.weighted_mish_glu(y, w))


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("BAD_FREE_SYMBOL", r"spec 'bad_free': free symbols \['theta'\]"),
        ("BAD_FUNCTION", r"bad_func.*sin has no Triton mapping"),
        ("BAD_DERIVATIVE", r"while deriving bad_deriv.*unevaluated derivative"),
        ("BAD_PARAM_NAMES", r"spec 'bad_names': parameter name\(s\) \['start', 'H', 'tl'\] are used by the generated"),
    ],
)
def test_bad_user_specs_fail_at_generation_time(user_package, attr, message):
    root = user_package[0]
    done = _run(["--spec", f"user_acts:{attr}", "--out", "bad/generated", "--namespace", "bad"], root)
    assert done.returncode == 2
    assert re.search(message, done.stderr), done.stderr
    assert not (root / "bad" / "generated").exists()  # nothing half-written


def test_cli_reports_missing_modules_and_names(tmp_path):
    done = _run(["--spec", "no_such_module:X", "--out", "o", "--namespace", "n"], tmp_path)
    assert done.returncode != 0 and "cannot import 'no_such_module'" in done.stderr
    (tmp_path / "acts.py").write_text("X = 1\n")
    done = _run(["--spec", "acts:Y", "--out", "o", "--namespace", "n"], tmp_path)
    assert done.returncode != 0 and "has no attribute 'Y'" in done.stderr
    done = _run(["--spec", "acts:X", "--out", "o", "--namespace", "n"], tmp_path)
    assert done.returncode != 0 and "not a moe_utils.codegen.ActivationSpec" in done.stderr


@pytest.mark.parametrize("namespace", ["my-pkg", "a.b", "", "class"])
def test_cli_refuses_a_namespace_that_is_not_an_identifier(user_package, namespace):
    """The modules call their ops torch.ops.<namespace>.<op>: "my-pkg" rendered a module that failed
    at import, "a.b" one that named another object, and "" fell back to moe_utils' own namespace."""
    root = user_package[0]
    done = _run(["--spec", "user_acts:MISH_GLU", "--out", "ns/generated", "--namespace", namespace], root)
    assert done.returncode == 2
    assert f"the op namespace must be a Python identifier (--namespace), got {namespace!r}" in done.stderr
    assert not (root / "ns" / "generated").exists()


def test_cli_writes_nothing_beside_a_hand_written_file(user_package):
    """--out pointing at the user's own package: its __init__.py (written last) has no header. Every
    target is checked before any file is written, so the modules are not left half-generated."""
    root = user_package[0]
    own = root / "own_pkg"
    own.mkdir()
    (own / "__init__.py").write_text("VERSION = 1\n")
    done = _run(["--spec", "user_acts:MISH_GLU", "--out", "own_pkg", "--namespace", "own"], root)
    assert done.returncode == 2 and "own_pkg/__init__.py was not generated" in done.stderr
    assert sorted(p.name for p in own.iterdir()) == ["__init__.py"]
    assert (own / "__init__.py").read_text() == "VERSION = 1\n"
