"""Layer 2 and 3: generated kernels (Triton, eager) against float64 references, in every dtype."""

from __future__ import annotations

import importlib
import inspect
import zlib

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE, TRITON, assert_close_to_ref, make_generator, misaligned
from moe_utils.codegen.specs import REGISTRY
from reference import SpecReference

import moe_utils
from moe_utils import _kernel_lib
from moe_utils import _runtime as rt

SPECS = {s.name: s for s in REGISTRY}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _module(name):
    return importlib.import_module(f"moe_utils.generated.{name}")


def _params(spec, gen):
    return tuple(p.default + 0.25 + 0.5 * torch.rand((), generator=gen).item() for p in spec.params)


def _inputs(n_rows, h, dtype, gen, lead=None):
    shape = (*(lead or (n_rows,)), 2 * h)
    y = (torch.randn(shape, generator=gen) * 2).to(dtype).to(DEVICE)
    w = torch.rand((n_rows, 1), generator=gen).add_(0.1).to(DEVICE)
    g = torch.randn((*shape[:-1], h), generator=gen).to(dtype).to(DEVICE)
    return y, w, g


def _run(fn, args, grads_of, g):
    out = fn(*args)
    grads = torch.autograd.grad(out, grads_of, g)
    return out, grads


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_rows", [0, 1, 37])
@pytest.mark.parametrize("h", [1, 96, 1000])
def test_weighted_impl_matches_float64(backend, name, dtype, n_rows, h):
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(zlib.crc32(f"{name}{dtype}{n_rows}{h}".encode()))
    y, w, g = _inputs(n_rows, h, dtype, gen)
    params = _params(spec, gen)
    y.requires_grad_(True)
    w.requires_grad_(True)
    impl = getattr(mod, f"weighted_bias_{name}_impl")
    kwargs = dict(zip([p.name for p in spec.params], params, strict=True))
    if spec.impl_bias:
        out = impl(y, None, w, False, **kwargs)
    else:
        out = impl(y, w, False, **kwargs)
    assert out.dtype == dtype and out.shape == (n_rows, h)
    d_y, d_w = torch.autograd.grad(out, (y, w), g)
    ref = SpecReference(spec)
    ref_out, ref_dy, _, ref_dw = ref.forward_backward(y, None, w, g, params)
    assert_close_to_ref(out, ref_out, dtype, "out")
    assert_close_to_ref(d_y, ref_dy, dtype, "d_y")
    assert d_w.dtype == w.dtype
    assert_close_to_ref(d_w, ref_dw, dtype, "d_weights", bound=ref.d_w_bound)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 2 * 96), (3, 5, 2 * 24), (2 * 40,)], ids=["2d", "3d", "1d"])
def test_bias_forms_match_float64(backend, name, dtype, shape):
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(7)
    y = (torch.randn(shape, generator=gen) * 2).to(dtype).to(DEVICE).requires_grad_(True)
    bias = torch.randn(shape[-1], generator=gen).to(dtype).to(DEVICE).requires_grad_(True)
    lead = shape[:-1]
    w = torch.rand((*lead, 1) if lead else (1, 1), generator=gen).add_(0.1).to(DEVICE).requires_grad_(True)
    g = torch.randn((*lead, shape[-1] // 2), generator=gen).to(dtype).to(DEVICE)
    params = _params(spec, gen)
    out = getattr(mod, f"weighted_bias_{name}")(y, bias, w, *params)
    d_y, d_b, d_w = torch.autograd.grad(out, (y, bias, w), g)
    reference = SpecReference(spec)
    ref = reference.forward_backward(y, bias, w, g, params)
    for got, want, what in zip((out, d_y, d_b), ref, ("out", "d_y", "d_bias"), strict=False):
        assert_close_to_ref(got, want, dtype, what)
    assert_close_to_ref(d_w, ref[3], dtype, "d_weights", bound=reference.d_w_bound)
    # The *_back helper gives the same gradients without autograd.
    back = getattr(mod, f"weighted_bias_{name}_back")(g, y.detach(), bias.detach(), w.detach(), *params)
    for got, want, what in zip(back[:2], ref[1:3], ("d_y", "d_bias"), strict=True):
        assert_close_to_ref(got, want, dtype, f"back {what}")
    assert_close_to_ref(back[2], ref[3], dtype, "back d_weights", bound=reference.d_w_bound)


#: Every non-empty subset of (input, bias, weights) requiring grad, as flags.
GRAD_SUBSETS = [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True) if a or b or c]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("needs", GRAD_SUBSETS, ids=lambda n: "-".join(k for k, f in zip("ybw", n, strict=True) if f))
def test_every_subset_of_inputs_requiring_grad(backend, monkeypatch, name, needs):
    """Whichever of input, bias and weights require grad get their gradients, whatever the others
    do (a frozen input with a trained bias, the router trained alone), through the functional form,
    the seed class (with fp8_input_store too) and the torch.library op alike. Until session 36 the
    functional form read the bias's flag at the input's position (its Function takes the op's name
    first): a bias trained on a frozen input got no gradient, silently. The backward writes d_x
    only where the input's gradient reads it (its argument store_dx), and sums the shared bias's
    gradient itself where that is trained (bias_sum, its last; from rt.BIAS_SUM_MIN_ROWS rows, here 0)."""
    spec = SPECS[name]
    mod = _module(name)
    monkeypatch.setattr(rt, "BIAS_SUM_MIN_ROWS", 0)
    store_dx = []
    call = rt.call

    def spy(op, launcher, *args):  # the backward's arguments end (..., store_dx, clamped_dx, bias_sum)
        if op is mod._IMPL.backward_op:
            store_dx.append((args[-3], args[-1]))
        return call(op, launcher, *args)

    def spy_launch(*args):  # the op's body (the op path)
        store_dx.append((args[-3], args[-1]))
        return launch(*args)

    launch = mod._launch_backward
    monkeypatch.setattr(rt, "call", spy)
    monkeypatch.setattr(mod, "_launch_backward", spy_launch)
    gen = make_generator(zlib.crc32(f"{name}{needs}".encode()))
    y, w, g = _inputs(7, 24, torch.float32, gen)
    bias = torch.randn(48, generator=gen).to(DEVICE)
    params = _params(spec, gen)
    reference = SpecReference(spec)
    refs = {False: reference.forward_backward(y, bias, w, g, params)}
    # With fp8_input_store the gradients are those of the input rounded to fp8 (saturated).
    refs[True] = reference.forward_backward(rt.to_fp8_saturated(y).to(y.dtype), bias, w, g, params)
    forms = [("functional", getattr(mod, f"weighted_bias_{name}"), lambda yy, bb, ww: (yy, bb, ww, *params))]
    cls = getattr(mod, f"WeightedBias{spec.class_stem}Function")
    forms.append(("class", cls.apply, lambda yy, bb, ww: (yy, bb, ww, False, *params)))
    forms.append(("class fp8", cls.apply, lambda yy, bb, ww: (yy, bb, ww, True, *params)))
    # The op alone (its own autograd registration): weights [T], a [T, H] output first.
    forms.append(
        ("op", lambda *a: mod._forward_op(*a)[0], lambda yy, bb, ww: (yy, bb, ww, False, None, False, *params))
    )
    for form, fn, args in forms:
        leaves = [t.clone().requires_grad_(f) for t, f in zip((y, bias, w), needs, strict=True)]
        if form == "op":
            leaves[2] = w.view(-1).clone().requires_grad_(needs[2])
        store_dx.clear()
        out = fn(*args(*leaves))
        wanted = [t for t in leaves if t.requires_grad]
        got = torch.autograd.grad(out, wanted, g)
        assert store_dx == [(needs[0], needs[1])], (form, store_dx)
        want = [r for r, f in zip(refs[form.endswith("fp8")][1:], needs, strict=True) if f]
        for what, a, b in zip(
            [k for k, f in zip(("d_y", "d_bias", "d_w"), needs, strict=True) if f], got, want, strict=True
        ):
            bound = reference.d_w_bound if what == "d_w" else None
            assert_close_to_ref(a.view(b.shape), b, torch.float32, f"{form} {what}", bound=bound)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("h", [48, 4100])  # 4100: two column blocks forward, two steps backward
def test_unweighted_and_back_helpers(backend, name, dtype, h):
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(11)
    y, w, g = _inputs(19, h, dtype, gen)
    params = _params(spec, gen)
    ref_out, ref_dy, _, _ = SpecReference(spec).forward_backward(y, None, None, g, params)
    assert_close_to_ref(getattr(mod, name)(y, *params), ref_out, dtype, "plain")
    assert_close_to_ref(getattr(mod, f"{name}_back")(g, y, *params), ref_dy, dtype, "plain back")
    reference = SpecReference(spec)
    ref = reference.forward_backward(y, None, w, g, params)
    assert_close_to_ref(getattr(mod, f"weighted_{name}")(y, w, *params), ref[0], dtype, "weighted")
    d_y, d_w = getattr(mod, f"weighted_{name}_back")(g, y, w, *params)
    assert_close_to_ref(d_y, ref[1], dtype, "weighted back d_y")
    assert_close_to_ref(d_w, ref[3], dtype, "weighted back d_w", bound=reference.d_w_bound)
    assert d_w.shape == w.shape and d_w.dtype == w.dtype


@pytest.mark.parametrize("name", sorted(SPECS))
def test_seed_function_classes(backend, name):
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(3)
    y, w, g = _inputs(9, 40, torch.bfloat16, gen)
    bias = torch.randn(80, generator=gen).to(torch.bfloat16).to(DEVICE)
    params = _params(spec, gen)
    for cls_name, with_bias in (
        (f"Weighted{spec.class_stem}Function", False),
        (f"WeightedBias{spec.class_stem}Function", True),
    ):
        yy = y.clone().requires_grad_(True)
        ww = w.clone().requires_grad_(True)
        bb = bias.clone().requires_grad_(True)
        cls = getattr(mod, cls_name)
        args = (yy, bb, ww, False, *params) if with_bias else (yy, ww, False, *params)
        out = cls.apply(*args)
        grads = torch.autograd.grad(out, (yy, bb, ww) if with_bias else (yy, ww), g)
        reference = SpecReference(spec)
        ref = reference.forward_backward(y, bias if with_bias else None, w, g, params)
        assert_close_to_ref(out, ref[0], torch.bfloat16, cls_name)
        assert_close_to_ref(grads[0], ref[1], torch.bfloat16, f"{cls_name} d_input")
        assert_close_to_ref(grads[-1], ref[3], torch.bfloat16, f"{cls_name} d_weights", bound=reference.d_w_bound)
        if with_bias:
            assert_close_to_ref(grads[1], ref[2], torch.bfloat16, f"{cls_name} d_bias")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_impl_3d_and_1d_inputs(backend, name):
    spec = SPECS[name]
    impl = getattr(_module(name), f"weighted_bias_{name}_impl")
    gen = make_generator(5)
    y3 = torch.randn(4, 3, 64, generator=gen).to(DEVICE).requires_grad_(True)
    w = torch.rand(12, 1, generator=gen).to(DEVICE).requires_grad_(True)
    args = (y3, None, w) if spec.impl_bias else (y3, w)
    out = impl(*args)
    assert out.shape == (4, 3, 32)
    ref = SpecReference(spec).forward_backward(y3.reshape(12, 64), None, w, None, tuple(p.default for p in spec.params))
    assert_close_to_ref(out.reshape(12, 32), ref[0], torch.float32, "3-D")
    out.sum().backward()
    assert y3.grad.shape == y3.shape and w.grad.shape == w.shape
    # 1-D input: [2H] with [1, 1] weights -> [H]; with [0, 1] weights -> [0, H] and zero gradients.
    y1 = torch.randn(64, generator=gen).to(DEVICE).requires_grad_(True)
    one = impl(*((y1, None, w[:1]) if spec.impl_bias else (y1, w[:1])))
    assert one.shape == (32,)
    w0 = torch.rand(0, 1).to(DEVICE).requires_grad_(True)
    empty = impl(*((y1, None, w0) if spec.impl_bias else (y1, w0)))
    assert empty.shape == (0, 32)
    empty.sum().backward()
    assert torch.equal(y1.grad, torch.zeros_like(y1)) and w0.grad.shape == (0, 1)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradcheck_float64_eager(name):
    """Users gradcheck these Functions in float64: the eager path keeps float64 throughout."""
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(13)
    y = torch.randn(5, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(12, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    params = _params(spec, gen)
    fn = getattr(mod, f"weighted_bias_{name}")
    assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, c, *params), (y, bias, w))
    assert torch.autograd.gradcheck(lambda a: getattr(mod, name)(a, *params), (y,))


def test_quick_geglu_alpha_and_offset_are_honoured(backend):
    from moe_utils import weighted_bias_quick_geglu_impl

    gen = make_generator(17)
    y, w, g = _inputs(21, 64, torch.float32, gen)
    y.requires_grad_(True)
    ref = SpecReference(SPECS["quick_geglu"])
    outs = {}
    for alpha, offset in ((1.702, 0.0), (1.0, 0.0), (1.702, 1.0)):
        out = weighted_bias_quick_geglu_impl(y, None, w, linear_offset=offset, alpha=alpha)
        (d_y,) = torch.autograd.grad(out, (y,), g)
        r = ref.forward_backward(y, None, w, g, (offset, alpha))
        assert_close_to_ref(out, r[0], torch.float32, f"alpha={alpha} offset={offset}")
        assert_close_to_ref(d_y, r[1], torch.float32, f"d_y alpha={alpha} offset={offset}")
        outs[(alpha, offset)] = (out.detach(), d_y)
    assert not torch.allclose(outs[(1.702, 0.0)][1], outs[(1.0, 0.0)][1])  # alpha reaches the backward
    assert not torch.allclose(outs[(1.702, 0.0)][0], outs[(1.702, 1.0)][0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grads", ["input+bias", "bias", "input"])
@pytest.mark.parametrize("bias_shape", ["row", "full"])
def test_quick_geglu_clamp_with_bias(backend, dtype, grads, bias_shape):
    """The clamp comes before the bias: the input's gradient is zero where a value was clamped, the
    bias's is not (until session 40 it summed the input's, which gradcheck refuses)."""
    from moe_utils import weighted_bias_quick_geglu_impl

    gen = make_generator(19)
    y, w, g = _inputs(33, 96, dtype, gen)
    y = (y * 4).detach().requires_grad_("input" in grads)  # many values beyond the clamp
    bias = torch.randn(192 if bias_shape == "row" else (33, 192), generator=gen).to(dtype).to(DEVICE)
    bias.requires_grad_("bias" in grads)
    clamp = 3.0
    out = weighted_bias_quick_geglu_impl(y, bias, w, False, 0.5, clamp, 1.5)
    wanted = [t for t in (y, bias) if t.requires_grad]
    got = dict(zip([id(t) for t in wanted], torch.autograd.grad(out, wanted, g), strict=True))
    r = SpecReference(SPECS["quick_geglu"]).forward_backward(y, bias, w, g, (0.5, 1.5), clamp_value=clamp)
    assert_close_to_ref(out, r[0], dtype, "clamped out")
    gate, up = y.detach().chunk(2, -1)
    assert (gate > clamp).any() and (up.abs() > clamp).any()
    if bias.requires_grad:
        assert_close_to_ref(got[id(bias)], r[2], dtype, "clamped d_bias")
        # the clamped elements count: the masked sum is far off
        masked = r[1].sum_to_size(bias.shape)
        assert (masked - r[2]).norm() > 0.1 * r[2].norm()
    if y.requires_grad:
        d_y = got[id(y)]
        assert_close_to_ref(d_y, r[1], dtype, "clamped d_y")
        d_gate, d_up = d_y.chunk(2, -1)
        assert torch.all(d_gate[gate > clamp] == 0) and torch.all(d_up[up.abs() > clamp] == 0)
        assert torch.any(d_gate[gate <= clamp] != 0)


@pytest.mark.parametrize("interleaved", [False, True], ids=["split", "interleaved"])
def test_quick_geglu_clamp_with_bias_gradcheck(interleaved):
    """float64 gradcheck of input and bias through the clamp (the eager path: float64 runs eagerly),
    and the fp8 copy's bias gradient against the reference at the copy (the kernels' path)."""
    from moe_utils import weighted_bias_quick_geglu_impl

    gen = make_generator(23)
    y = (torch.randn(6, 8, generator=gen, dtype=torch.float64) * 3).to(DEVICE).requires_grad_(True)
    bias = torch.randn(8, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    w = torch.rand(6, 1, generator=gen, dtype=torch.float64).to(DEVICE)

    def f(y, bias):
        return weighted_bias_quick_geglu_impl(y, bias, w, False, 0.5, 1.0, 1.5, interleaved=interleaved)

    assert torch.autograd.gradcheck(f, (y, bias))
    # the clamp mattered: some values beyond it
    assert (y.detach().abs() > 1.0).sum() > 10
    y16 = (y.detach() * 40).to(torch.bfloat16).requires_grad_(True)  # past the fp8 range too
    b16 = bias.detach().to(torch.bfloat16).requires_grad_(True)
    out = weighted_bias_quick_geglu_impl(y16, b16, w.float(), True, 0.5, 20.0, 1.5, interleaved=interleaved)
    g = torch.randn(out.shape, generator=gen).to(out)
    d_y, d_b = torch.autograd.grad(out, (y16, b16), g)
    copy = rt.to_fp8_saturated(y16.detach()).to(torch.float64)
    ref = SpecReference(SPECS["quick_geglu"]).forward_backward(
        copy, b16, w, g, (0.5, 1.5), clamp_value=20.0, interleaved=interleaved
    )
    assert_close_to_ref(d_y, ref[1], torch.bfloat16, "d_y from the fp8 copy")
    assert_close_to_ref(d_b, ref[2], torch.bfloat16, "d_bias from the fp8 copy")


def test_op_autograd_clamp_with_bias():
    """The torch.library op differentiated alone (register_op_autograd) gives the same bias gradient."""
    from moe_utils import weighted_bias_quick_geglu_impl

    gen = make_generator(29)
    y, w, g = _inputs(9, 16, torch.float32, gen)
    y = (y * 3).requires_grad_(True)
    bias = torch.randn(32, generator=gen).to(DEVICE).requires_grad_(True)
    op = _module("quick_geglu")._forward_op
    out = op(y, bias, w.reshape(-1), False, 1.0, False, 0.5, 1.5)[0]
    d_y, d_b = torch.autograd.grad(out, (y, bias), g)
    expected = torch.autograd.grad(weighted_bias_quick_geglu_impl(y, bias, w, False, 0.5, 1.0, 1.5), (y, bias), g)
    torch.testing.assert_close(d_y, expected[0])
    torch.testing.assert_close(d_b, expected[1])
    r = SpecReference(SPECS["quick_geglu"]).forward_backward(y, bias, w, g, (0.5, 1.5), clamp_value=1.0)
    assert_close_to_ref(d_b, r[2], torch.float32, "op d_bias")


@pytest.mark.parametrize("rows_per_program", [1, 2, 8, 32])
@pytest.mark.parametrize("interleaved", [False, True], ids=["split", "interleaved"])
@pytest.mark.parametrize("fp8", [False, True], ids=["x", "fp8"])
def test_bias_gradient_summed_in_the_kernel(backend, monkeypatch, rows_per_program, interleaved, fp8):
    """A shared [2H] bias's gradient leaves the backward summed (bias_sum, session 41): each program
    sums its rows' gradient, without the clamp's zeros, in fp32 registers over ROW_STEPS blocks of
    rows, and the launcher sums the programs' rows. For each grouping (1 to 32 rows a program; 45
    rows leave the last program short; 1100 columns take two column steps), with the bias trained
    alone (no d_x written) and with the input: d_bias, d_y and d_weights against float64, and the
    same bits run to run."""
    from moe_utils import weighted_bias_quick_geglu_impl

    monkeypatch.setattr(rt, "bias_sum_rows", lambda n_rows, heavy: rows_per_program)
    monkeypatch.setattr(rt, "BIAS_SUM_MIN_ROWS", 0)
    gen = make_generator(31 + rows_per_program)
    y, w, g = _inputs(45, 1100, torch.bfloat16, gen)
    y = y * 3  # values beyond the clamp
    bias = torch.randn(2200, generator=gen).to(torch.bfloat16).to(DEVICE)
    clamp, params = 4.0, (0.5, 1.5)
    saved = rt.to_fp8_saturated(y).to(y.dtype) if fp8 else y
    ref = SpecReference(SPECS["quick_geglu"])
    r = ref.forward_backward(saved, bias, w, g, params, clamp_value=clamp, interleaved=interleaved)
    for trained in ("bias", "input+bias"):
        results = []
        for _ in range(2):
            yy, bb, ww = y.clone().requires_grad_("input" in trained), bias.clone().requires_grad_(), w.clone()
            ww.requires_grad_()
            out = weighted_bias_quick_geglu_impl(yy, bb, ww, fp8, params[0], clamp, params[1], interleaved=interleaved)
            leaves = [t for t in (yy, bb, ww) if t.requires_grad]
            results.append(torch.autograd.grad(out, leaves, g))
        assert all(torch.equal(a, b) for a, b in zip(*results, strict=True)), f"{trained}: not deterministic"
        *d_y, d_b, d_w = results[0]
        assert d_b.dtype == bias.dtype and d_b.shape == bias.shape
        assert_close_to_ref(d_b, r[2], torch.bfloat16, f"{trained} d_bias", bound=ref.d_bias_bound)
        assert_close_to_ref(d_w, r[3], torch.bfloat16, f"{trained} d_weights", bound=ref.d_w_bound)
        if d_y:
            assert_close_to_ref(d_y[0], r[1], torch.bfloat16, f"{trained} d_y")


@pytest.mark.skipif(not TRITON, reason="no GPU and TRITON_INTERPRET is not 1")
@pytest.mark.parametrize("shape", [(1, 5), (3, 16), (130, 40), (150, 8200), (200, 40), (257, 40), (513, 24)])
def test_sum_partials_adds_every_row(shape, monkeypatch):
    """rt.sum_partials (the backward's partial sums of the bias's gradient, added by
    _kernel_lib.column_sums in rt.column_sums_plan's shape: 16- or 32-column programs, one pass up
    to rt.COLUMN_SUMS_ONE_PASS rows, here 200, and past it two, here 64 rows a program of the
    first): against the float64 sum of every row, at one row, part-filled row steps, splits and
    column blocks, a last split of one row, both column widths; the output poisoned first, the same
    bits run to run; with rt.COLUMN_SUMS off, torch.sum's, within the same bound."""
    launches = []
    kernel = rt.column_sums

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(rt, "column_sums", Spy())
    monkeypatch.setattr(rt, "COLUMN_SUMS_ONE_PASS", 200)
    monkeypatch.setattr(rt, "COLUMN_SUMS_SPLIT", 64)
    gen = make_generator(43 + shape[0])
    partials = (torch.randn(shape, generator=gen) * 10).to(DEVICE)
    want = partials.double().sum(0)
    got = []
    for _ in range(2):
        out = torch.full((shape[1],), float("nan"), device=DEVICE)
        rt.sum_partials(partials, out)
        got.append(out)
    assert torch.equal(got[0], got[1])
    grid_c = -(-shape[1] // (16 if shape[1] < 8192 else 32))
    passes = [(grid_c, -(-shape[0] // 64))] if shape[0] > 200 else []
    assert launches == [*passes, (grid_c, 1)] * 2
    # fp32 summation: error within n_parts rounding steps of the absolute values' sum
    bound = shape[0] * 2**-23 * partials.double().abs().sum(0) + 1e-30
    assert ((got[0].double() - want).abs() <= bound).all(), (got[0] - want).abs().max()
    monkeypatch.setattr(rt, "COLUMN_SUMS", False)
    plain = torch.empty(shape[1], device=DEVICE)
    rt.sum_partials(partials, plain)
    assert ((plain.double() - want).abs() <= bound).all()
    assert len(launches) == 2 * (len(passes) + 1)


@pytest.mark.parametrize("least", [8, 9])
def test_bias_sum_from_its_row_count(backend, monkeypatch, least):
    """Below rt.BIAS_SUM_MIN_ROWS rows the shared bias's gradient is summed from d_x in PyTorch
    (session 40's path: a program would sum one or two rows, partial sums as large as d_x); from
    there in the kernel. The gradients agree either way."""
    from moe_utils import weighted_bias_quick_geglu_impl

    mod = _module("quick_geglu")
    calls = []
    call = rt.call

    def spy(op, launcher, *args):  # the backward's arguments end (..., store_dx, clamped_dx, bias_sum)
        if op is mod._IMPL.backward_op:
            calls.append(args[-3:])
        return call(op, launcher, *args)

    monkeypatch.setattr(rt, "call", spy)
    monkeypatch.setattr(rt, "BIAS_SUM_MIN_ROWS", least)
    gen = make_generator(41)
    y, w, g = _inputs(8, 24, torch.float32, gen)
    y = (y * 3).requires_grad_(True)
    bias = torch.randn(48, generator=gen).to(DEVICE).requires_grad_(True)
    out = weighted_bias_quick_geglu_impl(y, bias, w, False, 0.5, 2.0, 1.5)
    d_y, d_b = torch.autograd.grad(out, (y, bias), g)
    summed = least <= 8
    assert calls == [(True, "zero" if summed else "both", summed)]
    r = SpecReference(SPECS["quick_geglu"]).forward_backward(y, bias, w, g, (0.5, 1.5), clamp_value=2.0)
    assert_close_to_ref(d_y, r[1], torch.float32, "d_y")
    assert_close_to_ref(d_b, r[2], torch.float32, "d_bias")


def test_bias_sum_refuses_what_it_cannot_sum():
    """The backward's bias_sum (a direct op call) names what it got where it cannot sum the bias."""
    mod = _module("swiglu")
    gen = make_generator(37)
    g, x = torch.randn(3, 4, generator=gen), torch.randn(3, 8, generator=gen)
    launch = mod._launch_backward
    with pytest.raises(ValueError, match=r"bias_sum=True needs a shared bias of shape \[2H\], got no bias"):
        launch(g, x, None, None, None, False, torch.float32, True, "zero", True)
    with pytest.raises(ValueError, match=r"got a bias of shape \(3, 8\)"):
        launch(g, x, torch.randn(3, 8, generator=gen), None, None, False, torch.float32, True, "zero", True)
    with pytest.raises(ValueError, match=r'bias_sum=True takes clamped_dx="zero".*got \'both\''):
        launch(g, x, torch.randn(8, generator=gen), None, 1.0, False, torch.float32, True, "both", True)


def test_clamp_lets_nan_through_and_saturates_inf(backend):
    # torch.clamp passes NaN through and its gradient is 0 where the clamp bound a value (inf
    # included) and where the input was NaN; the kernels' clamp must agree value for value.
    from moe_utils import weighted_bias_quick_geglu_impl

    gen = make_generator(20)
    y = (torch.randn(6, 48, generator=gen) * 4).to(DEVICE)
    y[0, 0] = y[1, 24 + 3] = float("nan")  # a gate and an up
    y[2, 1], y[3, 24 + 2], y[4, 24 + 5] = float("inf"), float("-inf"), float("inf")
    w = torch.rand(6, 1, generator=gen).to(DEVICE)
    g = torch.randn(6, 24, generator=gen).to(DEVICE)
    clamp, offset, alpha = 3.0, 0.5, 1.5
    yy, ww = y.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = weighted_bias_quick_geglu_impl(yy, None, ww, False, offset, clamp, alpha)
    d_y, d_w = torch.autograd.grad(out, (yy, ww), g)
    ry, rw = y.double().requires_grad_(True), w.double().requires_grad_(True)
    gate, up = ry.clamp(max=clamp)[:, :24], ry.clamp(-clamp, clamp)[:, 24:]
    ref = gate * torch.sigmoid(alpha * gate) * (up + offset) * rw
    rd_y, rd_w = torch.autograd.grad(ref, (ry, rw), g.double())
    for name, ours, theirs in (("out", out, ref), ("d_y", d_y, rd_y), ("d_w", d_w, rd_w)):
        assert torch.equal(ours.isnan(), theirs.isnan()), name
        assert not ours.isinf().any(), name
        ok = ~theirs.isnan()
        torch.testing.assert_close(ours[ok].double(), theirs[ok], rtol=1e-5, atol=1e-5, msg=name)
    assert out.isnan().any() and (d_y[2:5] == 0).any()  # the NaN reached the output; inf was clamped


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["split", "interleaved"])
def test_fp8_copy_bits_at_the_edges(backend, dtype, interleaved):
    """The fp8 copy holds the bits of torch.clamp(x, -448, 448).to(float8_e4m3fn) at the values
    where a saturating cast can go wrong: NaN stays NaN, +-inf and everything past +-448 saturate
    (the GPU's plain cast makes |x| >= 480 a NaN), -0.0 keeps its sign, 448 itself, the largest
    values that round down to it, fp8's smallest subnormal and values that round to zero."""
    edges = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 448.0, -448.0, 449.0, -460.0, 464.0]
    edges += [-479.0, 480.0, -1e4, 2.0**-9, -(2.0**-9), 2.0**-11, -(2.0**-10) * 1.5, 3e-3, 65504.0]
    gen = make_generator(41)
    y, w, _ = _inputs(6, 24, dtype, gen)
    values = torch.tensor(edges, dtype=torch.float32).to(dtype)
    y.view(-1)[: len(edges)] = values.to(DEVICE)
    y.view(-1)[-len(edges) :] = values.flip(0).to(DEVICE)  # the last row's up half (or odd columns)
    yy = y.clone().requires_grad_(True)
    out = moe_utils.weighted_bias_swiglu_impl(yy, w.requires_grad_(True), True, interleaved=interleaved)
    copy = next(t for t in out.grad_fn.saved_tensors if t is not None and t.dtype == torch.float8_e4m3fn)
    want = torch.clamp(y.float(), -448, 448).to(torch.float8_e4m3fn)
    nan = want.float().isnan()
    assert torch.equal(copy.float().isnan().cpu(), nan.cpu()), "NaN positions of the fp8 copy"
    got_bits, want_bits = copy.view(torch.uint8)[~nan], want.view(torch.uint8)[~nan]
    assert torch.equal(got_bits.cpu(), want_bits.cpu()), f"fp8 copy bits {got_bits.tolist()} != {want_bits.tolist()}"


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("h", [72, 300])  # 300: 512-column steps, 2 warps with the fp8 copy and light math
def test_fp8_input_store(backend, name, dtype, h):
    spec = SPECS[name]
    impl = getattr(_module(name), f"weighted_bias_{name}_impl")
    gen = make_generator(23)
    y, w, g = _inputs(29, h, dtype, gen)
    y[0, :4] = torch.tensor([1000.0, -1000.0, 500.0, -470.0], dtype=dtype)  # beyond fp8's range: saturate
    g[0] *= 1e-2  # keeps d_up = g * w * relu(448)^2 of squared_reglu inside float16's range
    outs = []
    for fp8 in (False, True):
        yy = y.clone().requires_grad_(True)
        ww = w.clone().requires_grad_(True)
        out = impl(yy, None, ww, fp8) if spec.impl_bias else impl(yy, ww, fp8)
        saved = [t for t in out.grad_fn.saved_tensors if t is not None]
        if fp8:  # only the fp8 copy and the weights are kept
            assert {t.dtype for t in saved} == {torch.float8_e4m3fn, w.dtype}
            copy = next(t for t in saved if t.dtype == torch.float8_e4m3fn)
            want = torch.clamp(y.float(), -448, 448).to(torch.float8_e4m3fn)
            assert torch.equal(copy.view(torch.uint8).cpu(), want.view(torch.uint8).cpu())
        outs.append((out, torch.autograd.grad(out, (yy, ww), g)))
    (out0, _), (out1, (dy1, dw1)) = outs
    assert torch.equal(out0, out1)  # the forward never sees the fp8 copy
    assert torch.isfinite(dy1).all() and torch.isfinite(dw1).all()
    # The backward is exactly the float64 backward of the fp8-rounded input.
    y8 = torch.clamp(y.float(), -448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    reference = SpecReference(spec)
    r8 = reference.forward_backward(y8, None, w, g, tuple(p.default for p in spec.params))
    assert_close_to_ref(dy1, r8[1], dtype, "fp8 d_y")
    assert_close_to_ref(dw1, r8[3], dtype, "fp8 d_weights", bound=reference.d_w_bound)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(23, 2 * 40), (3, 4, 2 * 7)], ids=["2d", "3d"])
def test_interleaved_layout_matches_float64(backend, name, dtype, shape):
    """gate at even positions, up at odd ones: every form, with bias, clamp and the fp8 store."""
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(zlib.crc32(f"interleaved{name}{dtype}{shape}".encode()))
    lead = shape[:-1]
    y = (torch.randn(shape, generator=gen) * 3).to(dtype).to(DEVICE).requires_grad_(True)
    bias = torch.randn(shape[-1], generator=gen).to(dtype).to(DEVICE).requires_grad_(True)
    w = torch.rand((*lead, 1), generator=gen).add_(0.1).to(DEVICE).requires_grad_(True)
    g = torch.randn((*lead, shape[-1] // 2), generator=gen).to(dtype).to(DEVICE)
    params = _params(spec, gen)
    clamp = 2.5 if spec.clamp else None
    reference = SpecReference(spec)
    out = getattr(mod, f"_{spec.class_stem}Function").apply("t", y, bias, w, False, clamp, True, *params)
    d_y, d_b, d_w = torch.autograd.grad(out, (y, bias, w), g)
    ref = reference.forward_backward(y, bias, w, g, params, clamp_value=clamp, interleaved=True)
    for got, want, what in zip((out, d_y, d_b), ref, ("out", "d_y", "d_bias"), strict=False):
        assert_close_to_ref(got, want, dtype, f"interleaved {what}")
    assert_close_to_ref(d_w, ref[3], dtype, "interleaved d_weights", bound=reference.d_w_bound)
    # The split layout gives different numbers on the same tensor (the option is not ignored) ...
    split = reference.forward_backward(y, bias, w, None, params, clamp_value=clamp)[0]
    assert not torch.allclose(out.double().cpu(), split, rtol=0.1, atol=0.1)
    # ... and the same numbers on the de-interleaved tensor.
    y_split = torch.cat([y.detach()[..., 0::2], y.detach()[..., 1::2]], -1)
    plain = getattr(mod, name)(y_split, *params)
    assert_close_to_ref(getattr(mod, name)(y.detach(), *params, interleaved=True), plain.double().cpu(), dtype, "plain")
    # The *_back helpers and the Function classes take the option too.
    back = getattr(mod, f"weighted_bias_{name}_back")(
        g, y.detach(), bias.detach(), w.detach(), *params, interleaved=True
    )
    ref_nc = reference.forward_backward(y, bias, w, g, params, interleaved=True)
    assert_close_to_ref(back[0], ref_nc[1], dtype, "back d_y")
    out_cls = getattr(mod, f"WeightedBias{spec.class_stem}Function").apply(y, bias, w, False, *params, True)
    assert_close_to_ref(out_cls, ref_nc[0], dtype, "Function class")
    # fp8 store keeps the interleaved layout; the backward is that of the fp8-rounded input.
    yy = y.detach().clone().requires_grad_(True)
    impl = getattr(mod, f"weighted_bias_{name}_impl")
    args = (yy, None, w.detach(), True) if spec.impl_bias else (yy, w.detach(), True)
    out8 = impl(*args, interleaved=True)
    (d_y8,) = torch.autograd.grad(out8, (yy,), g)
    y8 = torch.clamp(y.detach().float(), -448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    r8 = reference.forward_backward(y8, None, w, g, tuple(p.default for p in spec.params), interleaved=True)
    assert_close_to_ref(d_y8, r8[1], dtype, "fp8 d_y")


def test_interleaved_must_be_a_bool():
    from moe_utils import weighted_swiglu, weighted_swiglu_back

    y = torch.randn(6, 16).to(DEVICE)
    w = torch.rand(6, 1).to(DEVICE)
    with pytest.raises(TypeError, match=r"interleaved must be a bool, got str"):
        weighted_swiglu(y, w, interleaved="yes")
    with pytest.raises(TypeError, match=r"interleaved must be a bool, got int"):
        weighted_swiglu_back(torch.randn(6, 8).to(DEVICE), y, w, interleaved=1)


_VIEWS = {
    # name -> (make a view of a fresh tensor of shape [T, 2H]); each is not contiguous
    "row_slice": lambda x: torch.cat([x, x[:, :8]], 1)[:, : x.shape[1]],  # row stride 2H + 8
    "column_step": lambda x: torch.stack([x, x], -1).flatten(-2)[:, ::2],  # stride 2 along the row
    "transposed": lambda x: x.t().contiguous().t(),  # column-major
    "expanded_rows": lambda x: x[:1].expand(x.shape),  # row stride 0 (one row seen T times)
}


@pytest.mark.parametrize("view", sorted(_VIEWS))
@pytest.mark.parametrize("name", ["swiglu", "quick_geglu"])
def test_non_contiguous_inputs_give_the_contiguous_results(backend, view, name):
    """Slices, strides, transposed and expanded views (of input, weights, bias and grad) either work
    or raise; here they all work and give bit-identical results to contiguous copies."""
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(31)
    x = (torch.randn(21, 2 * 40, generator=gen) * 2).to(torch.bfloat16).to(DEVICE)
    y = _VIEWS[view](x)
    assert not y.is_contiguous() and torch.equal(y, y.contiguous())
    w = torch.rand(21, 2, generator=gen).to(DEVICE)[:, :1]  # column of a wider tensor
    b = torch.randn(160, generator=gen).to(torch.bfloat16).to(DEVICE)[::2]  # stride 2
    g = torch.randn(40, 21, generator=gen).to(torch.bfloat16).to(DEVICE).t()  # transposed
    params = _params(spec, gen)
    fn = getattr(mod, f"weighted_bias_{name}")
    results = []
    for args in ((y, b, w, g), tuple(t.contiguous() for t in (y, b, w, g))):
        yy, bb, ww, gg = (t.detach().clone() if t.is_contiguous() else t.detach() for t in args)
        yy, bb, ww = (t.requires_grad_(True) for t in (yy, bb, ww))
        out = fn(yy, bb, ww, *params)
        results.append((out, *torch.autograd.grad(out, (yy, bb, ww), gg)))
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)
    ref = SpecReference(spec).forward_backward(y, b, w, g, params)
    assert_close_to_ref(results[0][0], ref[0], torch.bfloat16, f"{view} out")
    assert_close_to_ref(results[0][1], ref[1], torch.bfloat16, f"{view} d_y")


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("name", ["swiglu", "quick_geglu"])
def test_misaligned_inputs_give_the_aligned_results(name, fp8):
    """Input, bias, weights and incoming gradient each one element into their storage: the same
    bits as aligned copies, forward and backward, with and without the fp8 copy (on the GPU these
    compile without 16-byte pointer alignment), but for the weight gradient's row sums. Their
    order follows the layout Triton picks from the pointers' alignment: on the H200 Quick-GEGLU's
    differed in the last bits (session 35), so those are compared to fp32 rounding."""
    if not TRITON:
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(41)
    y = (torch.randn(19, 2 * 56, generator=gen) * 2).to(torch.bfloat16).to(DEVICE)
    b = torch.randn(2 * 56, generator=gen).to(torch.bfloat16).to(DEVICE)
    w = torch.rand(19, 1, generator=gen).to(DEVICE)
    g = torch.randn(19, 56, generator=gen).to(torch.bfloat16).to(DEVICE)
    params = _params(spec, gen)
    impl = getattr(mod, f"weighted_bias_{name}_impl")
    results = []
    for args in ((y, b, w, g), tuple(misaligned(t) for t in (y, b, w, g))):
        yy, bb, ww = (t.detach().requires_grad_(True) for t in args[:3])
        out = impl(yy, bb, ww, fp8, *params) if spec.impl_bias else impl(yy + bb, ww, fp8)
        results.append((out, *torch.autograd.grad(out, (yy, bb, ww), args[3])))
    (out, d_y, d_b, d_w), (out_a, d_y_a, d_b_a, d_w_a) = results[1], results[0]
    assert torch.equal(out, out_a) and torch.equal(d_y, d_y_a) and torch.equal(d_b, d_b_a)
    torch.testing.assert_close(d_w, d_w_a, rtol=2e-6, atol=2e-6 * d_w_a.abs().max().item())


def test_transposed_3d_input(backend):
    """[B, S, 2H] viewed as [S, B, 2H] (transpose(0, 1)) with [S, B, 1] weights."""
    gen = make_generator(37)
    base = torch.randn(3, 5, 2 * 24, generator=gen).to(DEVICE)
    y = base.transpose(0, 1)
    w = torch.rand(3, 5, 1, generator=gen).to(DEVICE).transpose(0, 1)
    out = moe_utils.weighted_swiglu(y, w)
    assert out.shape == (5, 3, 24)
    ref = SpecReference(SPECS["swiglu"]).forward_backward(y.reshape(15, 48), None, w.reshape(15, 1))[0]
    assert_close_to_ref(out.reshape(15, 24), ref, torch.float32, "transposed 3-D")


def test_nan_and_inf_propagate(backend):
    from moe_utils import weighted_swiglu

    y = torch.randn(4, 16).to(DEVICE)
    y[0, 0] = float("nan")
    y[1, 8] = float("inf")
    w = torch.ones(4, 1).to(DEVICE)
    out = weighted_swiglu(y, w)
    ref = torch.nn.functional.silu(y[:, :8]) * y[:, 8:]
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    from moe_utils import swiglu, weighted_bias_quick_geglu_impl, weighted_bias_swiglu_impl, weighted_swiglu

    y = torch.randn(6, 16).to(DEVICE)
    w = torch.rand(6, 1).to(DEVICE)
    with pytest.raises(ValueError, match=r"last dimension of input must be even.*\(6, 15\)"):
        weighted_bias_swiglu_impl(torch.randn(6, 15).to(DEVICE), w)
    with pytest.raises(ValueError, match=r"weights has shape \(5, 1\).*T = 6"):
        weighted_bias_swiglu_impl(y, w[:5])
    with pytest.raises(ValueError, match=r"weights has shape \(6,\)"):
        weighted_swiglu(y, w.reshape(6))
    with pytest.raises(TypeError, match=r"input has dtype torch.int32"):
        swiglu(torch.ones(6, 16, dtype=torch.int32, device=DEVICE))
    with pytest.raises(TypeError, match=r"weights has dtype torch.int64"):
        weighted_swiglu(y, torch.ones(6, 1, dtype=torch.int64, device=DEVICE))
    other = torch.device("meta") if DEVICE.type == "cpu" else torch.device("cpu")
    with pytest.raises(ValueError, match=r"weights is on"):
        weighted_swiglu(y, w.to(other))
    with pytest.raises(ValueError, match=r"clamp_value must be a non-negative float"):
        weighted_bias_quick_geglu_impl(y, None, w, clamp_value=-1.0)
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not broadcast"):
        weighted_bias_quick_geglu_impl(y, torch.randn(3).to(DEVICE), w)
    # Not a tensor at all: the argument is named (until session 39 an AttributeError from inside).
    with pytest.raises(TypeError, match=r"weighted_bias_swiglu_impl: input must be a torch.Tensor, got list"):
        weighted_bias_swiglu_impl(y.tolist(), w)
    with pytest.raises(TypeError, match=r"weighted_swiglu: weights must be a torch.Tensor, got list"):
        weighted_swiglu(y, w.tolist())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bad_input_raises_for_every_activation(name):
    """The same checks, through every registered spec's entry points (no kernel runs)."""
    spec = SPECS[name]
    mod = _module(name)
    y = torch.randn(6, 16).to(DEVICE)
    w = torch.rand(6, 1).to(DEVICE)
    b = torch.randn(16).to(DEVICE)
    impl = getattr(mod, f"weighted_bias_{name}_impl")

    def call_impl(x, weights, **kw):
        return impl(x, None, weights, **kw) if spec.impl_bias else impl(x, weights, **kw)

    with pytest.raises(ValueError, match=r"last dimension of input must be even"):
        call_impl(torch.randn(6, 15).to(DEVICE), w)
    with pytest.raises(ValueError, match=r"weights has shape \(5, 1\)"):
        call_impl(y, w[:5])
    with pytest.raises(TypeError, match=r"input has dtype torch.int32"):
        getattr(mod, name)(torch.ones(6, 16, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not broadcast"):
        getattr(mod, f"weighted_bias_{name}")(y, torch.randn(3).to(DEVICE), w)
    with pytest.raises(ValueError, match=r"g has shape \(6, 7\)"):
        getattr(mod, f"weighted_{name}_back")(torch.randn(6, 7).to(DEVICE), y, w)
    for back in (f"{name}_back", f"weighted_{name}_back", f"weighted_bias_{name}_back"):
        args = {f"{name}_back": (y,), f"weighted_{name}_back": (y, w), f"weighted_bias_{name}_back": (y, b, w)}[back]
        with pytest.raises(TypeError, match=rf"{back}: g must be a torch.Tensor, got list"):
            getattr(mod, back)(torch.randn(6, 8).tolist(), *args)
        with pytest.raises(TypeError, match=rf"{back}: input must be a torch.Tensor, got list"):
            getattr(mod, back)(torch.randn(6, 8).to(DEVICE), y.tolist(), *args[1:])
    with pytest.raises(TypeError, match=r"interleaved must be a bool"):
        getattr(mod, f"weighted_bias_{name}")(y, b, w, interleaved=None)
    for param in spec.params:
        with pytest.raises(TypeError, match=rf"{param.name} must be a float, got str"):
            call_impl(y, w, **{param.name: "1.0"})
        # The kernels take parameters as constants: a tensor that requires grad would have its
        # gradient dropped without a word (the reference's plain helpers differentiate it).
        learnable = torch.tensor(0.75, device=DEVICE, requires_grad=True)
        with pytest.raises(ValueError, match=rf"{param.name} is a tensor that requires grad"):
            call_impl(y, w, **{param.name: learnable})
        with pytest.raises(ValueError, match=rf"{param.name} is a tensor that requires grad"):
            getattr(mod, name)(y, **{param.name: learnable})
        with pytest.raises(ValueError, match=rf"{param.name} must be a scalar, got a tensor of shape \(2,\)"):
            call_impl(y, w, **{param.name: torch.ones(2, device=DEVICE)})
        # Read once as a constant: a detached tensor, or a numpy scalar, gives the float's result.
        want = call_impl(y, w, **{param.name: 0.75})
        for same in (learnable.detach(), np.float32(0.75), np.float64(0.75)):
            assert torch.equal(call_impl(y, w, **{param.name: same}), want)
        # NaN is never a constant anyone means (the outputs would all be NaN); below the spec's
        # minimum (clamped SwiGLU's limit: [-limit, limit] empty) neither.
        bad = [float("nan"), torch.tensor(float("nan"), device=DEVICE)]
        if param.minimum is not None:
            bad += [param.minimum - 0.5, np.float32(param.minimum - 1.0)]
            assert call_impl(y, w, **{param.name: param.minimum}).isfinite().all()  # the bound itself is fine
        for value in bad:
            with pytest.raises(ValueError, match=rf"{impl.__name__}: {param.name} must be a number.*got"):
                call_impl(y, w, **{param.name: value})
            with pytest.raises(ValueError, match=rf"{param.name} must be a number"):
                getattr(mod, f"weighted_{name}_back")(torch.randn(6, 8).to(DEVICE), y, w, **{param.name: value})
    if spec.clamp:
        with pytest.raises(ValueError, match=r"clamp_value must be a non-negative float"):
            call_impl(y, w, clamp_value=-1.0)
        with pytest.raises(ValueError, match=r"clamp_value is a tensor that requires grad"):
            call_impl(y, w, clamp_value=torch.tensor(2.0, device=DEVICE, requires_grad=True))
        with pytest.raises(ValueError, match=r"clamp_value must be a scalar, got a tensor of shape \(2,\)"):
            call_impl(y, w, clamp_value=torch.ones(2, device=DEVICE))
        with pytest.raises(ValueError, match=r"clamp_value must be a non-negative float or None, got True"):
            call_impl(y, w, clamp_value=True)
        assert torch.equal(call_impl(y, w, clamp_value=np.float32(2.0)), call_impl(y, w, clamp_value=2.0))
        assert torch.equal(call_impl(y, w, clamp_value=np.int64(2)), call_impl(y, w, clamp_value=2.0))


def test_inputs_are_not_modified():
    from moe_utils import weighted_bias_quick_geglu_impl

    y = torch.randn(8, 32).to(DEVICE) * 10
    w = torch.rand(8, 1).to(DEVICE)
    b = torch.randn(32).to(DEVICE)
    copies = [t.clone() for t in (y, w, b)]
    out = weighted_bias_quick_geglu_impl(y.requires_grad_(), b, w, True, 0.5, 2.0)
    out.sum().backward()
    for before, after in zip(copies, (y.detach(), w, b), strict=True):
        assert torch.equal(before, after)


# -- the seed API ------------------------------------------------------------------------------

# name -> parameter names, from seed-api.txt (NeMo Automodel's moe_utils).
SEED_FUNCTIONS = {
    "geglu": ["y"],
    "geglu_back": ["g", "y"],
    "permute": ["tokens", "routing_map", "probs", "num_out_tokens", "fused", "drop_and_pad"],
    "quick_geglu": ["y", "linear_offset"],
    "quick_geglu_back": ["g", "y", "linear_offset"],
    "quick_gelu": ["y", "alpha"],
    "swiglu": ["y"],
    "swiglu_back": ["g", "y"],
    "unpermute": [
        "permuted_tokens",
        "sorted_indices",
        "restore_shape",
        "probs",
        "routing_map",
        "fused",
        "drop_and_pad",
    ],
    "weighted_bias_geglu_impl": ["input", "weights", "fp8_input_store"],
    "weighted_bias_quick_geglu": ["y", "bias", "weights", "linear_offset"],
    "weighted_bias_quick_geglu_back": ["g", "y", "bias", "weights", "linear_offset"],
    "weighted_bias_quick_geglu_impl": [
        "input",
        "bias",
        "weights",
        "fp8_input_store",
        "linear_offset",
        "clamp_value",
        "alpha",
    ],
    "weighted_bias_swiglu_impl": ["input", "weights", "fp8_input_store"],
    "weighted_geglu": ["y", "weights"],
    "weighted_geglu_back": ["g", "y", "weights"],
    "weighted_quick_geglu": ["y", "weights", "linear_offset"],
    "weighted_quick_geglu_back": ["g", "y", "weights", "linear_offset"],
    "weighted_swiglu": ["y", "weights"],
    "weighted_swiglu_back": ["g", "y", "weights"],
}
SEED_CLASSES = {
    "MoEAuxLossAutoScaler": None,
    "WeightedBiasQuickGeGLUFunction": ["input", "bias", "weights", "fp8_input_store", "linear_offset"],
    "WeightedGEGLUFunction": ["input", "weights", "fp8_input_store"],
    "WeightedQuickGeGLUFunction": ["input", "weights", "fp8_input_store", "linear_offset"],
    "WeightedSwiGLUFunction": ["input", "weights", "fp8_input_store"],
}


@pytest.mark.parametrize("name", sorted(SEED_FUNCTIONS))
def test_seed_function_signatures(name):
    params = list(inspect.signature(getattr(moe_utils, name)).parameters)
    want = SEED_FUNCTIONS[name]
    assert params[: len(want)] == want, f"{name}{params} does not start with the seed's {want}"


@pytest.mark.parametrize("name", sorted(SEED_CLASSES))
def test_seed_classes(name):
    cls = getattr(moe_utils, name)
    assert issubclass(cls, torch.autograd.Function)
    if SEED_CLASSES[name] is not None:
        params = list(inspect.signature(cls.forward).parameters)[1:]
        assert params[: len(SEED_CLASSES[name])] == SEED_CLASSES[name]
    assert name in moe_utils.__all__


def test_quick_gelu():
    from moe_utils import quick_gelu

    y = torch.randn(7, 5, dtype=torch.bfloat16)
    ref = y.double() * torch.sigmoid(2.0 * y.double())
    assert_close_to_ref(quick_gelu(y, alpha=2.0), ref, torch.bfloat16, "quick_gelu")


def test_submodule_imports_do_not_shadow_public_functions():
    """Importing an implementation module must not replace the function of the same public name."""
    import moe_utils.aux_loss
    import moe_utils.gelu
    import moe_utils.permutation
    import moe_utils.unpermutation

    for name in ("permute", "unpermute", "quick_gelu", "swiglu", "MoEAuxLossAutoScaler"):
        assert callable(getattr(moe_utils, name)) and not inspect.ismodule(getattr(moe_utils, name)), name


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_saved_tensor_budget(fp8, with_bias):
    """The Functions keep only what the backward reads: input (or its fp8 copy), bias, weights."""
    from moe_utils import WeightedBiasQuickGeGLUFunction, WeightedQuickGeGLUFunction

    n_rows, h = 64, 96
    y = torch.randn(n_rows, 2 * h, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    w = torch.rand(n_rows, 1, device=DEVICE, requires_grad=True)
    b = torch.randn(2 * h, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if with_bias:
            out = WeightedBiasQuickGeGLUFunction.apply(y, b, w, fp8)
        else:
            out = WeightedQuickGeGLUFunction.apply(y, w, fp8)
    nbytes = sum(t.numel() * t.element_size() for t in saved)
    x_bytes = n_rows * 2 * h * (1 if fp8 else 2)
    budget = x_bytes + n_rows * 4 + (2 * h * 2 if with_bias else 0)
    assert nbytes == budget, (nbytes, budget, [(t.dtype, tuple(t.shape)) for t in saved])
    out.float().sum().backward()


def test_fp8_copy_is_written_only_where_a_backward_can_run(monkeypatch):
    """fp8_input_store's copy serves the backward alone: where autograd records no graph of the
    call (no input requiring grad; or grad mode off, under no_grad or inference_mode, even with a
    bias parameter or an input that requires grad) the forward does not write it, and the output is
    the same bits; with grad mode on and any input requiring grad (the weights alone too) it does."""

    from moe_utils import (
        WeightedBiasQuickGeGLUFunction,
        WeightedQuickGeGLUFunction,
        weighted_bias_quick_geglu_impl,
        weighted_bias_swiglu_impl,
    )

    forward_ops = {_module(name)._IMPL.forward_op for name in ("swiglu", "quick_geglu")}
    stores = []
    call = rt.call

    def spy(op, launcher, *args):
        if op in forward_ops:
            stores.append(args[3])  # the forward's fp8_store switch
        return call(op, launcher, *args)

    monkeypatch.setattr(rt, "call", spy)
    gen = make_generator(47)
    y = torch.randn(12, 2 * 40, generator=gen).to(torch.bfloat16).to(DEVICE)
    w = torch.rand(12, 1, generator=gen).to(DEVICE)
    plain = weighted_bias_swiglu_impl(y, w, False)
    with torch.no_grad():
        assert torch.equal(weighted_bias_swiglu_impl(y, w, True), plain)
    assert torch.equal(weighted_bias_swiglu_impl(y, w, True), plain)  # nothing requires grad
    assert torch.equal(
        WeightedQuickGeGLUFunction.apply(y, w, True, 0.5), WeightedQuickGeGLUFunction.apply(y, w, False, 0.5)
    )
    assert stores == [False] * 5
    stores.clear()
    # Evaluation of a block whose bias (a parameter) requires grad; a leaf input that requires grad.
    bias = torch.randn(2 * 40, generator=gen).to(DEVICE).requires_grad_(True)
    leaf = y.clone().requires_grad_(True)
    want = WeightedBiasQuickGeGLUFunction.apply(y, bias.detach(), w, False).detach()
    stores.clear()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            for form in (WeightedBiasQuickGeGLUFunction.apply, weighted_bias_quick_geglu_impl):
                assert torch.equal(form(y, bias, w, True), want)
            assert torch.equal(weighted_bias_swiglu_impl(leaf, w, True), plain)
    assert stores == [False] * 6
    stores.clear()
    for yy, ww in ((y.requires_grad_(True), w), (y.detach(), w.requires_grad_(True))):
        out = weighted_bias_swiglu_impl(yy, ww, True)
        out.float().sum().backward()
    assert stores == [True, True]


@pytest.mark.parametrize("h", [1, 3, 48, 100, 300, 768, 1408, 2048, 2880, 5000, 7168])
def test_least_padding_block(h):
    # The chosen power of two pads h the least among narrowest .. widest (capped at h's power of
    # two), and no wider (or, with widest_on_tie=False, no narrower) block pads it as little.
    from moe_utils._runtime import least_padding_block

    for narrowest, widest in ((128, 1024), (256, 1024)):
        cap = min(widest, 1 << max(0, (h - 1).bit_length()))
        candidates = [b for b in (1 << i for i in range(14)) if min(narrowest, cap) <= b <= cap]
        padded = {b: -(-h // b) * b for b in candidates}
        wide = least_padding_block(h, narrowest, widest)
        narrow = least_padding_block(h, narrowest, widest, widest_on_tie=False)
        for block in (wide, narrow):
            assert block in candidates, (h, block, candidates)
            assert padded[block] == min(padded.values())
        assert all(padded[b] > padded[wide] for b in candidates if b > wide)
        assert all(padded[b] > padded[narrow] for b in candidates if b < narrow)


@pytest.mark.parametrize("h", [1, 5, 96, 300, 768, 1408, 2048, 2880, 5000, 7168, 20000])
@pytest.mark.parametrize("n_rows", [1, 3, 4096])
def test_backward_config_shapes(h, n_rows):
    # Launch shapes are powers of two, never wider than the rows' power of two (rows: n_rows;
    # columns: below 256 only where h is), and the clamp / fp8 choice only moves a tie: the
    # number of padded columns is the same either way.
    from moe_utils._runtime import FP8_WIDE_STEPS_IN_TWO_WARPS, backward_config

    pow2 = lambda n: 1 << max(0, (n - 1).bit_length())  # noqa: E731
    for weighted in (False, True):
        configs = [backward_config(n_rows, h, weighted, heavy) for heavy in (False, True)]
        for cfg in configs:
            for v in (cfg.block_r, cfg.block_h, cfg.num_warps):
                assert v == pow2(v), cfg
            assert cfg.block_r <= pow2(n_rows) and cfg.block_h <= max(pow2(h), 1)
            assert cfg.block_h >= min(256, pow2(h)) and 4 <= cfg.num_warps <= 16
            assert cfg.block_r * cfg.block_h <= (1024 if weighted else 8192)
        padded = {-(-h // cfg.block_h) * cfg.block_h for cfg in configs}
        assert len(padded) == 1, configs
        # The fp8 copy without heavy math changes only the warps: 2 on weighted steps of 512
        # columns, and of 1024 where Triton is 3.8 or later (test_light_fp8_backward_wide_steps).
        light = backward_config(n_rows, h, weighted, False, True)
        assert (light.block_r, light.block_h) == (configs[0].block_r, configs[0].block_h)
        two = weighted and (light.block_h == 512 or (light.block_h == 1024 and FP8_WIDE_STEPS_IN_TWO_WARPS))
        assert light.num_warps == (2 if two else configs[0].num_warps), light
        if not weighted:
            assert configs[0] == configs[1]


@pytest.mark.parametrize("h", [1, 5, 96, 300, 768, 1408, 2048, 2880, 5000, 7168, 20000])
@pytest.mark.parametrize("n_rows", [1, 3, 1000, 3000, 4096, 16384, 65536, 1 << 20])
def test_bias_sum_config_shapes(h, n_rows):
    """The backward with bias_sum: one row a block (the column sums need no exchange between warps;
    session 41 measured [4, 256] tiles 2-4x slower), as wide as the tile without it but not past the
    row's power of two, the same warps; a power of two of rows a program: about 1024 programs where
    the rows allow (n_rows / 1024 rounded down, 1 to 64), with heavy math about 2048 (at least 4 rows
    where 1024 programs have them, at most 32)."""
    from moe_utils._runtime import backward_config, bias_sum_config, next_pow2

    for weighted in (False, True):
        for heavy, args in ((False, (False,)), (True, (True, True)), (True, (True, False, True, True, True, 24))):
            cfg = backward_config(n_rows, h, weighted, *args)
            summed, steps = bias_sum_config(cfg, n_rows, h, heavy)
            assert summed.block_r == 1 and summed.num_warps == cfg.num_warps
            assert summed.block_h == min(cfg.block_r * cfg.block_h, max(cfg.block_h, next_pow2(h))), (cfg, summed)
            assert steps == next_pow2(steps) and 1 <= steps <= (32 if heavy else 64)
            programs = 2048 if heavy and n_rows >= 4 * 2048 else 1024
            assert steps <= max(1, n_rows // programs) < 2 * steps or steps == (32 if heavy else 64), (n_rows, steps)


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("heavy", [False, True])
@pytest.mark.parametrize("h", [1, 5, 96, 768, 1408, 2048, 2880, 7168, 20000])
@pytest.mark.parametrize("n_rows", [1, 3, 4096, 16384, 65536])
def test_forward_config_shapes(h, n_rows, heavy, fp8):
    # Launch shapes are powers of two within the rows' and the width's powers of two. Launch-bound
    # forwards (below 2**22 outputs) run 8 warps on tiles of at most 4096 elements, at most 256
    # columns wide; the others 4 warps on tiles of 1024 elements (2 warps with heavy math where
    # neither the fp8 store nor streaming), fewer only where the rows are fewer, streamed
    # (evict_first) below 2**24 outputs, in the same column blocks either way. Light math ignores
    # the store.
    from moe_utils import _runtime as rt

    pow2 = lambda n: 1 << max(0, (n - 1).bit_length())  # noqa: E731
    cfg = rt.forward_config(n_rows, h, heavy, fp8)
    light = rt.forward_config(n_rows, h)
    assert rt.forward_config(n_rows, h, False, fp8) == light
    assert cfg.block_h == light.block_h and cfg.evict_first == light.evict_first, (cfg, light)
    for v in (cfg.block_r, cfg.block_h, cfg.num_warps):
        assert v == pow2(v), cfg
    tile = cfg.block_r * cfg.block_h
    assert cfg.block_r <= pow2(n_rows) and cfg.block_h <= pow2(h) and tile <= 4096
    outputs = n_rows * h
    if outputs < rt._SMALL_BELOW:
        assert cfg.num_warps == 8 and cfg.block_h <= 256 and not cfg.evict_first, cfg
    else:
        stream = outputs < rt._STREAM_BELOW
        assert cfg.num_warps == (2 if heavy and not fp8 and not stream else 4) and cfg.evict_first == stream, cfg
        assert tile == 1024 or (tile > 1024 and cfg.block_r == 1) or cfg.block_r == pow2(n_rows), cfg


def test_heavy_forward_flag():
    # The generated _HEAVY_FORWARD is whether the forward math calls erf (_kernel_lib.erf, a pair of
    # polynomials on the GPU): exact GEGLU only among the built-in activations; GEGLU's tanh is a
    # sigmoid (MUFU). The file imports erf from _kernel_lib exactly where its math calls it.
    import inspect

    for name in SPECS:
        mod = _module(name)
        math = inspect.getsource(getattr(mod, f"_{name}_fwd_math").fn)
        assert mod._HEAVY_FORWARD == ("erf(" in math), name
        assert "tl.erf(" not in math, name
        calls_erf = "erf(" in inspect.getsource(mod)
        assert (getattr(mod, "erf", None) is _kernel_lib.erf) == calls_erf, name
        assert mod._HEAVY_FORWARD == (name == "exact_geglu"), name


def test_heavy_backward_rule():
    # The weighted backward's tie rule: the clamp is always heavy; the fp8 copy only on top of
    # math heavier than SwiGLU's (GEGLU's tanh, exact GEGLU's erf, clamped SwiGLU's clamps), as
    # measured (benchmarks/NOTES.md, session 10 run 2); without either nothing is.
    from moe_utils._runtime import heavy_backward

    ops = {name: _module(name)._BACKWARD_OPS for name in SPECS}
    assert ops["swiglu"] < ops["geglu"] and ops["reglu"] < ops["swiglu"]
    for name, n in ops.items():
        assert heavy_backward(3.0, False, n) and heavy_backward(3.0, True, n)
        assert not heavy_backward(None, False, n)
        expected = name in ("geglu", "exact_geglu", "clamped_swiglu")
        assert heavy_backward(None, True, n) == expected, (name, n)


def test_light_fp8_backward_rule():
    # 2 warps only with the fp8 copy, no clamp, and math that is not heavy (measured on SwiGLU,
    # session 18, and on Quick-GEGLU without the clamp): ReGLU, squared ReGLU and Quick-GEGLU too;
    # never the GEGLUs or clamped SwiGLU. As the generated launcher asks, at 1408 columns (512-column steps).
    from moe_utils._runtime import backward_config, heavy_backward

    def warps(clamp_value, fp8, n):
        return backward_config(65536, 1408, True, heavy_backward(clamp_value, fp8, n), fp8).num_warps

    for name in SPECS:
        n = _module(name)._BACKWARD_OPS
        assert warps(None, False, n) == 4 and warps(3.0, True, n) == 4
        expected = name in ("swiglu", "reglu", "squared_reglu", "quick_geglu")
        assert (warps(None, True, n) == 2) == expected, (name, n)
        assert (warps(None, True, n) == 2) != heavy_backward(None, True, n), (name, n)


@pytest.mark.parametrize("wide", [False, True])
def test_light_fp8_backward_wide_steps(monkeypatch, wide):
    # On 1024-column steps the backward from the fp8 copy runs 2 warps where Triton is 3.8 or
    # later (FP8_WIDE_STEPS_IN_TWO_WARPS; measured on 3.6 and 3.9, sessions 48 and 51), 4 before,
    # unless the clamp is on (heavy math without it takes 2 warps too); the tile and bf16 input
    # keep their configs either way.
    from moe_utils import _runtime as rt

    monkeypatch.setattr(rt, "FP8_WIDE_STEPS_IN_TWO_WARPS", wide)
    rt.backward_config.cache_clear()
    try:
        for n_rows, h in [(65536, 2048), (16384, 2880), (16384, 7168), (3, 2048), (65536, 4096)]:
            light = rt.backward_config(n_rows, h, True, False, True)
            assert light.block_h == 1024 and light.num_warps == (2 if wide else 4), (n_rows, h, light)
            bf16 = rt.backward_config(n_rows, h, True, False, False)
            assert (light.block_r, light.block_h, bf16.num_warps) == (bf16.block_r, bf16.block_h, 4), (n_rows, h)
            heavy = rt.backward_config(n_rows, h, True, True, True)
            assert heavy.num_warps == (2 if wide and heavy.block_h == 1024 else 4), (n_rows, h, heavy)
            clamped = rt.backward_config(n_rows, h, True, True, True, clamp=True)
            assert clamped == rt.BlockConfig(heavy.block_r, heavy.block_h, 4), (n_rows, h, clamped)
        assert rt.backward_config(16384, 2880, True, True, True).num_warps == (2 if wide else 4)
        assert rt.backward_config(65536, 1408, True, False, True).num_warps == 2  # 512-column steps
        assert rt.backward_config(16384, 768, True, False, True).num_warps == 4  # 256-column steps
    finally:
        rt.backward_config.cache_clear()


def test_interleaved_backward_rule():
    # The interleaved layout's weighted backward without the fp8 copy, with math of at least
    # SwiGLU's operations (from 4096 columns: clamped, or math of more than _LIGHT_BACKWARD_OPS):
    # 2 warps, on 256- or 512-column steps (the fewer padded columns, 512 on a tie) past 1024
    # columns, and at 256-column steps unless clamped (measured: benchmarks/NOTES.md, sessions
    # 29-30). With the fp8 copy and light math: 512-element tiles of 2 warps at 256-column steps.
    # Otherwise ReGLU and squared ReGLU, the fp8 copy, the split layout, and SwiGLU and unclamped
    # Quick-GEGLU from 4096 columns keep the split layout's config.
    from moe_utils._runtime import _LIGHT_BACKWARD_OPS, backward_config, heavy_backward

    def config(name, n_rows, h, clamp, fp8=False, interleaved=True):
        n = _module(name)._BACKWARD_OPS
        heavy = heavy_backward(3.0 if clamp else None, fp8, n)
        return backward_config(n_rows, h, True, heavy, fp8, interleaved, clamp, n)

    for name in SPECS:
        own = name not in ("reglu", "squared_reglu")
        for n_rows, h, clamp in [(16384, 768, False), (16384, 768, True), (65536, 1408, False), (16384, 1408, True),
                                 (16384, 2880, True), (65536, 2048, False), (65536, 1100, False)]:  # fmt: skip
            split = config(name, n_rows, h, clamp, interleaved=False)
            got = config(name, n_rows, h, clamp)
            fp8_split = config(name, n_rows, h, clamp, True, False)
            light_fp8 = not heavy_backward(3.0 if clamp else None, True, _module(name)._BACKWARD_OPS)
            if fp8_split.block_h == 256 and light_fp8:
                # the light fp8 backward at 256-column steps: 512-element tiles of 2 warps
                assert config(name, n_rows, h, clamp, fp8=True) == type(fp8_split)(2, 256, 2), (name, h, clamp)
            else:
                assert config(name, n_rows, h, clamp, fp8=True) == fp8_split, (name, h, clamp)
            if not own or (h <= 1024 and clamp):
                assert got == split, (name, h, clamp)
            elif h <= 1024:
                assert (got.block_r, got.block_h, got.num_warps) == (split.block_r, split.block_h, 2), (name, got)
            else:
                block_h = 256 if h == 1100 else 512  # 1100: 1280 columns in 256s, 1536 in 512s
                assert (got.block_r, got.block_h, got.num_warps) == (1024 // block_h, block_h, 2), (name, h, got)
        for h, clamp in [(4096, False), (7168, False), (7168, True), (4100, False), (4100, True)]:
            split = config(name, 65536, h, clamp, interleaved=False)
            got = config(name, 65536, h, clamp)
            heavier = clamp or _module(name)._BACKWARD_OPS > _LIGHT_BACKWARD_OPS
            if not own or not heavier:
                assert got == split, (name, h, clamp)
            elif h == 4100:  # 4352 columns in 256s, 4608 in 512s: 2 warps unless clamped
                assert (got.block_r, got.block_h, got.num_warps) == (4, 256, 4 if clamp else 2), (name, clamp, got)
            else:
                assert (got.block_r, got.block_h, got.num_warps) == (2, 512, 2), (name, h, clamp, got)
            # with the fp8 copy: heavy math on 512-element tiles of 2 warps, light as below 4096
            fp8_split, got8 = config(name, 65536, h, clamp, True, False), config(name, 65536, h, clamp, True)
            if heavy_backward(3.0 if clamp else None, True, _module(name)._BACKWARD_OPS):
                block_h = 256 if h == 4100 else 512
                assert (got8.block_r, got8.block_h, got8.num_warps) == (512 // block_h, block_h, 2), (name, h, got8)
            elif fp8_split.block_h == 256:
                assert got8 == type(fp8_split)(2, 256, 2), (name, h, clamp, got8)
            else:
                assert got8 == fp8_split, (name, h, clamp, got8)
        assert config("swiglu", 65536, 7168, False) == type(split)(1, 1024, 4)
        assert config("quick_geglu", 65536, 7168, False) == type(split)(1, 1024, 4)  # no clamp: light
    assert config("swiglu", 3, 1408, False).block_r == 2  # never more rows than the rows' power of two
    assert config("swiglu", 1, 1408, False).block_r == 1


def _spy_backward_config(monkeypatch) -> list:
    """Record every config _runtime.backward_config returns (the generated launchers call it
    through the module) in the list returned."""
    from moe_utils import _runtime as rt

    configs, real = [], rt.backward_config

    def spy(*args):
        configs.append(real(*args))
        return configs[-1]

    monkeypatch.setattr(rt, "backward_config", spy)
    return configs


@pytest.mark.parametrize("name", ["swiglu", "geglu", "quick_geglu", "reglu"])
@pytest.mark.parametrize("h", [200, 1300, 4608])
def test_interleaved_backward_tiles_match_float64(backend, monkeypatch, name, h):
    """The interleaved weighted backward on the tiles of its own rule (2 warps; [2, 512] at 1300
    and 4608 columns, whose 256- and 512-column steps pad alike; from 4096 columns only GEGLU's
    math and Quick-GEGLU's clamp) against float64, bf16, with bias, clamp."""
    from moe_utils import _runtime as rt

    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(zlib.crc32(f"interleaved-tiles{name}{h}".encode()))
    y = (torch.randn(5, 2 * h, generator=gen) * 3).to(torch.bfloat16).to(DEVICE).requires_grad_(True)
    bias = torch.randn(2 * h, generator=gen).to(torch.bfloat16).to(DEVICE).requires_grad_(True)
    w = torch.rand(5, 1, generator=gen).add_(0.1).to(DEVICE).requires_grad_(True)
    g = torch.randn(5, h, generator=gen).to(torch.bfloat16).to(DEVICE)
    params = _params(spec, gen)
    clamp = 2.5 if spec.clamp else None
    real = rt.backward_config
    configs = _spy_backward_config(monkeypatch)
    out = getattr(mod, f"_{spec.class_stem}Function").apply("t", y, bias, w, False, clamp, True, *params)
    d_y, d_b, d_w = torch.autograd.grad(out, (y, bias, w), g)
    reference = SpecReference(spec)
    ref = reference.forward_backward(y, bias, w, g, params, clamp_value=clamp, interleaved=True)
    for got, want, what in zip((out, d_y, d_b), ref, ("out", "d_y", "d_bias"), strict=False):
        assert_close_to_ref(got, want, torch.bfloat16, f"interleaved {what}")
    assert_close_to_ref(d_w, ref[3], torch.bfloat16, "interleaved d_weights", bound=reference.d_w_bound)
    if backend == "triton":
        (cfg,) = configs
        split = real(5, h, True, rt.heavy_backward(clamp, False, mod._BACKWARD_OPS))
        heavier = clamp is not None or mod._BACKWARD_OPS > rt._LIGHT_BACKWARD_OPS
        if name == "reglu" or (h >= 4096 and not heavier):
            assert cfg == split and (h < 4096 or cfg.num_warps == 4), cfg
        elif h > 1024:
            assert (cfg.block_r, cfg.block_h, cfg.num_warps) == (2, 512, 2), cfg
        else:  # 256-column steps: 2 warps unless clamped
            warps = 4 if clamp is not None else 2
            assert split.block_h == 256 and (cfg.block_r, cfg.block_h, cfg.num_warps) == (4, 256, warps), cfg


@pytest.mark.parametrize("name", ["swiglu", "quick_geglu", "geglu", "reglu"])
@pytest.mark.parametrize("h", [200, 4608])
def test_interleaved_fp8_backward_tiles_match_float64(backend, monkeypatch, name, h):
    """The interleaved weighted backward from the fp8 copy against float64 of the fp8-rounded
    input: at 256-column steps (200 columns) light math (no clamp: SwiGLU, Quick-GEGLU, ReGLU) on
    512-element tiles of 2 warps, GEGLU (heavy with the copy) on the split layout's tiles; from
    4096 columns (4608: 512-column steps) GEGLU on 512-element tiles of 2 warps, the others on the
    split layout's."""
    from moe_utils import _runtime as rt

    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(zlib.crc32(f"interleaved-fp8-tiles{name}{h}".encode()))
    y = (torch.randn(5, 2 * h, generator=gen) * 3).to(torch.bfloat16).to(DEVICE).requires_grad_(True)
    w = torch.rand(5, 1, generator=gen).add_(0.1).to(DEVICE).requires_grad_(True)
    g = torch.randn(5, h, generator=gen).to(torch.bfloat16).to(DEVICE)
    params = _params(spec, gen)
    real = rt.backward_config
    configs = _spy_backward_config(monkeypatch)
    out = getattr(mod, f"_{spec.class_stem}Function").apply("t", y, None, w, True, None, True, *params)
    d_y, d_w = torch.autograd.grad(out, (y, w), g)
    y8 = torch.clamp(y.detach().float(), -448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    reference = SpecReference(spec)
    ref = reference.forward_backward(y8, None, w, g, params, interleaved=True)
    assert_close_to_ref(d_y, ref[1], torch.bfloat16, "interleaved fp8 d_y")
    assert_close_to_ref(d_w, ref[3], torch.bfloat16, "interleaved fp8 d_weights", bound=reference.d_w_bound)
    if backend == "triton":
        (cfg,) = configs
        heavy = rt.heavy_backward(None, True, mod._BACKWARD_OPS)
        assert heavy == (name == "geglu")
        split = real(5, h, True, heavy, True)
        if h < 4096:
            assert split.block_h == 256
            assert cfg == (split if heavy else rt.BlockConfig(2, 256, 2)), cfg
        else:
            assert split.block_h == 512 and split != rt.BlockConfig(1, 512, 2)
            assert cfg == (rt.BlockConfig(1, 512, 2) if heavy else split), cfg


def test_weights_only_backward_config():
    """d_weights alone (store_dx=False) takes [8, 128] tiles of 4 warps where 128-column steps pad
    a row less up to 2048 columns (1408 at any row count), and from the fp8 copy at 32768 rows or
    more at every width (at 16384 rows 3-8.5% slower on the H200 at 2048 and 2880); elsewhere the
    store's tiles, in every layout, with and without the clamp."""
    from moe_utils import _runtime as rt

    for n_rows in (16384, 32768, 65536):
        for fp8 in (False, True):
            for interleaved in (False, True):
                for clamp, ops in ((False, 12), (False, 14), (True, 14), (False, 30)):
                    heavy = rt.heavy_backward(1.0 if clamp else None, fp8, ops)
                    for h in (768, 1408, 2048, 2880, 7168):
                        store = rt.backward_config(n_rows, h, True, heavy, fp8, interleaved, clamp, ops)
                        alone = rt.backward_config(n_rows, h, True, heavy, fp8, interleaved, clamp, ops, False)
                        case = (n_rows, h, fp8, interleaved, clamp, ops, store, alone)
                        narrow = h == 1408 or (fp8 and n_rows >= 32768)
                        assert alone == (rt.BlockConfig(8, 128, 4) if narrow else store), case
                        if narrow and h in (1408, 2880):  # there 128-column steps pad a row less
                            assert -(-h // store.block_h) * store.block_h > -(-h // 128) * 128, case
    assert rt.backward_config(3, 1408, True, False, False, False, False, 12, False) == rt.BlockConfig(4, 128, 4)
    assert rt.backward_config(4096, 1408, False, store_dx=False) == rt.backward_config(4096, 1408, False)


@pytest.mark.parametrize("interleaved", [False, True], ids=["split", "interleaved"])
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("name", ["swiglu", "quick_geglu"])
@pytest.mark.parametrize("h", [300, 2100])
def test_weights_only_backward_tiles_match_float64(backend, monkeypatch, name, h, fp8, interleaved):
    """The router trained alone (only the weights require grad): the backward writes d_weights on
    its own tiles where 128-column steps pad less (300 columns; 2100 only from the fp8 copy and
    32768 rows, so here on the store's), against float64 and, to fp32 rounding (another order of
    the row sum), the d_weights of the backward that also writes d_x."""
    from moe_utils import _runtime as rt

    spec = SPECS[name]
    mod = _module(name)
    gen = make_generator(zlib.crc32(f"weights-only-tiles{name}{h}{fp8}{interleaved}".encode()))
    y = (torch.randn(5, 2 * h, generator=gen) * 3).to(torch.bfloat16).to(DEVICE)
    w = torch.rand(5, 1, generator=gen).add_(0.1).to(DEVICE)
    g = torch.randn(5, h, generator=gen).to(torch.bfloat16).to(DEVICE)
    params = _params(spec, gen)
    clamp = 2.5 if spec.clamp else None
    fn = getattr(mod, f"_{spec.class_stem}Function")
    configs = _spy_backward_config(monkeypatch)
    grads = {}
    for y_grad in (False, True):
        yy, ww = y.clone().requires_grad_(y_grad), w.clone().requires_grad_(True)
        out = fn.apply("t", yy, None, ww, fp8, clamp, interleaved, *params)
        grads[y_grad] = torch.autograd.grad(out, (yy, ww) if y_grad else (ww,), g)[-1]
    y_ref = torch.clamp(y.float(), -448, 448).to(torch.float8_e4m3fn).to(torch.float64) if fp8 else y
    reference = SpecReference(spec)
    ref = reference.forward_backward(y_ref, None, w, g, params, clamp_value=clamp, interleaved=interleaved)
    assert_close_to_ref(grads[False], ref[3], torch.bfloat16, "d_weights alone", bound=reference.d_w_bound)
    torch.testing.assert_close(grads[False], grads[True], rtol=1e-5, atol=1e-5 * ref[3].abs().max().item())
    if backend == "triton":
        alone, store = configs
        if h == 300:
            assert alone == rt.BlockConfig(8, 128, 4) and store.block_h > 128, configs
        else:
            assert alone == store, configs


@pytest.mark.parametrize("fp8", [True, False])
@pytest.mark.parametrize("name", ["swiglu", "quick_geglu", "exact_geglu"])
@pytest.mark.parametrize("h", [300, 600])
def test_forward_launch_shapes_give_the_same_bits(monkeypatch, name, h, fp8):
    # Small problems take 256-column blocks, large ones the block that pads a row the least (128
    # columns at these widths, in 8 rows; exact GEGLU's heavy math without the fp8 copy in 2 warps
    # where the loads do not stream, the others in 4); the interpreter's
    # shapes are all small, so force the large shapes too, streamed and not (with bias, weights,
    # clamp, with and without the fp8 copy), and compare bits: the forward is elementwise, so the
    # launch shape must not change a single one.
    from moe_utils import _runtime as rt

    if not TRITON:
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    launch = _module(name)._launch_forward
    gen = make_generator(31)
    x = torch.randn(21, 2 * h, generator=gen).to(torch.bfloat16).to(DEVICE)
    bias = torch.randn(2 * h, generator=gen).to(torch.bfloat16).to(DEVICE)
    w = torch.rand(21, generator=gen).to(DEVICE)
    results = []
    for small_below, stream_below in ((1 << 62, 1 << 62), (0, 1 << 62), (0, 0)):
        monkeypatch.setattr(rt, "_SMALL_BELOW", small_below)
        monkeypatch.setattr(rt, "_STREAM_BELOW", stream_below)
        rt.forward_config.cache_clear()
        cfg = rt.forward_config(21, h, _module(name)._HEAVY_FORWARD, fp8)
        params = _params(SPECS[name], make_generator(3))
        shape = (cfg.block_r, cfg.block_h, cfg.num_warps, cfg.evict_first)
        results.append((shape, launch(x, bias, w, fp8, 3.0, False, *params)))
    rt.forward_config.cache_clear()
    (small, (out_a, fp8_a)), *large = results
    assert len({small, *(shape for shape, _ in large)}) == 3  # three different launch shapes ran
    assert out_a.isfinite().all() and fp8_a.numel() == (x.numel() if fp8 else 0)
    for _, (out_b, fp8_b) in large:
        assert torch.equal(out_a, out_b) and torch.equal(fp8_a, fp8_b)


@triton.jit
def _erf_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, _kernel_lib.erf(tl.load(x_ptr + offs, mask=mask)), mask=mask)


@pytest.mark.skipif(not TRITON, reason="needs the GPU or Triton's interpreter")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # x * x of 1e30 in numpy
@pytest.mark.parametrize("cuda13", [False, True], ids=["libdevice12", "libdevice13"])
def test_kernel_lib_erf_matches_float64(monkeypatch, cuda13):
    # _kernel_lib.erf against torch.erf in float64: both branches, both sides of the switch at
    # |x| = 1.00296 (an error in either polynomial's coefficients or order shows there), zeros with
    # their sign, tiny and huge values, infinities and NaN. Within 4 fp32 ulp (the interpreter
    # rounds each FMA twice; the GPU is bit-exact with tl.erf, tests/test_gpu.py). Both far-branch
    # polynomials (_kernel_lib.ERF_CUDA13: CUDA 13's libdevice from Triton 3.9, CUDA 12's before)
    # under the interpreter, which reads the flag at every call; the GPU compiles its Triton's.
    if bool(cuda13) != bool(_kernel_lib.ERF_CUDA13):
        if not rt.INTERPRET:
            pytest.skip("the GPU compiles the erf of its Triton's libdevice (the interpreter checks both)")
        monkeypatch.setattr(_kernel_lib, "ERF_CUDA13", tl.constexpr(cuda13))
    gen = make_generator(7)
    switch = torch.tensor(1.002959966659546, dtype=torch.float32)
    near = torch.stack([torch.nextafter(switch, torch.tensor(v)) for v in (0.0, 9.0)] + [switch])
    x = torch.cat(
        [
            torch.linspace(-6.0, 6.0, 997),
            torch.randn(512, generator=gen) * 2,
            near,
            -near,
            torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, 0.5, 3.9, 9.5, -9.5, 1e30, -1e30]),
            torch.tensor([float("inf"), float("-inf"), float("nan")]),
        ]
    ).to(torch.float32)
    out = torch.full_like(x, 7.0, device=DEVICE)  # poisoned
    _erf_kernel[(triton.cdiv(x.numel(), 256),)](x.to(DEVICE), out, x.numel(), BLOCK=256)
    out = out.cpu()
    ref = torch.erf(x.double())
    finite = ~torch.isnan(x)
    err = (out[finite].double() - ref[finite]).abs()
    ulp = torch.finfo(torch.float32).eps * ref[finite].abs().clamp_min(2.0**-126)
    assert (err <= 4 * ulp).all(), (x[finite][err > 4 * ulp], out[finite][err > 4 * ulp])
    assert torch.isnan(out[~finite]).all()
    assert torch.equal(torch.signbit(out[finite]), torch.signbit(x[finite]))  # erf(-0.0) is -0.0
