"""torch.func transforms (grad, vjp, jvp, vmap, hessian) and forward-mode AD over the functional forms.

The reference's functional forms are PyTorch functions, which every transform differentiates; ours
launch kernels from autograd Functions, which PyTorch refuses under them. Under a transform the
functional forms and the *_back helpers run the spec's eager math in PyTorch ops (`_runtime.eager_gated`).
These tests check what the transforms compute against float64 references, not against our own path.
"""

from __future__ import annotations

import importlib
import zlib

import pytest
import torch
from conftest import DEVICE, TRITON, assert_close_to_ref, make_generator
from moe_utils.codegen.specs import REGISTRY
from reference import SpecReference
from torch.autograd import forward_ad
from torch.func import grad, hessian, jvp, vjp, vmap

import moe_utils
from moe_utils import _runtime as rt

SPECS = {s.name: s for s in REGISTRY}


def _module(name):
    return importlib.import_module(f"moe_utils.generated.{name}")


def _params(spec, gen):
    return tuple(p.default + 0.25 + 0.5 * torch.rand((), generator=gen).item() for p in spec.params)


def _data(key, lead, h, dtype):
    gen = make_generator(zlib.crc32(key.encode()))
    n_rows = 1
    for n in lead:
        n_rows *= n
    y = (torch.randn((*lead, 2 * h), generator=gen) * 2).to(dtype).to(DEVICE)
    w = torch.rand((n_rows, 1), generator=gen).add_(0.1).to(DEVICE)
    bias = (torch.randn(2 * h, generator=gen) * 0.5).to(dtype).to(DEVICE)
    g = torch.randn((*lead, h), generator=gen).to(dtype).to(DEVICE)
    return gen, y, w, bias, g


def _form(name, form, params, clamp_value=None, interleaved=False, fp8=False):
    """(function of (y, w, bias), which of them it reads)."""
    mod = _module(name)
    spec = SPECS[name]
    kw = dict(zip([p.name for p in spec.params], params, strict=True))
    if form == "plain":
        return (lambda y, w, b: getattr(mod, name)(y, *params, interleaved=interleaved)), (True, False, False)
    if form == "weighted":
        f = getattr(mod, f"weighted_{name}")
        return (lambda y, w, b: f(y, w, *params, interleaved=interleaved)), (True, True, False)
    if form == "weighted_bias":
        f = getattr(mod, f"weighted_bias_{name}")
        return (lambda y, w, b: f(y, b, w, *params, interleaved=interleaved)), (True, True, True)
    impl = getattr(mod, f"weighted_bias_{name}_impl")
    if clamp_value is not None:
        kw["clamp_value"] = clamp_value
    if spec.impl_bias:
        return (lambda y, w, b: impl(y, b, w, fp8, **kw, interleaved=interleaved)), (True, True, True)
    return (lambda y, w, b: impl(y, w, fp8, **kw, interleaved=interleaved)), (True, True, False)


FORMS = ["plain", "weighted", "weighted_bias", "impl"]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["split", "interleaved"])
def test_vjp_matches_float64(name, form, dtype, interleaved):
    """torch.func.vjp (and grad) of every functional form: output and gradients of input, bias and
    routing weights against the float64 reference, in the dtypes the kernels return them."""
    spec = SPECS[name]
    _, y, w, bias, g = _data(f"vjp{name}{form}{dtype}{interleaved}", (2, 3), 5, dtype)
    gen = make_generator(1)
    params = _params(spec, gen)
    clamp = 1.5 if form == "impl" and name == "quick_geglu" else None
    f, reads = _form(name, form, params, clamp, interleaved)
    out, pullback = vjp(f, y, w, bias)
    d_y, d_w, d_b = pullback(g)
    ref = SpecReference(spec)
    ref_out, ref_dy, ref_db, ref_dw = ref.forward_backward(
        y,
        bias if reads[2] else None,
        w if reads[1] else None,
        g,
        params,
        clamp,
        interleaved,
    )
    assert out.dtype == dtype and d_y.dtype == dtype
    assert_close_to_ref(out, ref_out, dtype, "out")
    assert_close_to_ref(d_y, ref_dy, dtype, "d_y")
    if reads[1]:
        assert d_w.dtype == w.dtype
        assert_close_to_ref(d_w, ref_dw, dtype, "d_w", bound=ref.d_w_bound)
    else:
        assert torch.count_nonzero(d_w) == 0
    if reads[2]:
        assert d_b.dtype == dtype
        assert_close_to_ref(d_b, ref_db, dtype, "d_bias")
    # grad of a scalar function is the same pullback
    d_y_grad = grad(lambda y: (f(y, w, bias).float() * g.float()).sum())(y)
    assert_close_to_ref(d_y_grad, ref_dy, dtype, "grad")


def _ref_jvp(spec, y, w, bias, ty, tw, tb, params, interleaved):
    """Directional derivative of weighted_bias(y, bias, w) in float64: df/dx . t summed per pair."""
    ref = SpecReference(spec)
    ones = torch.ones(*y.shape[:-1], y.shape[-1] // 2, dtype=torch.float64)
    out, d_y, _, _ = ref.forward_backward(y, bias, w, ones, params, None, interleaved)  # w * df/dx
    f = ref.forward_backward(y, bias, None, None, params, None, interleaved)[0]

    def halves(t):
        t = t.detach().to(torch.float64).cpu().expand(y.shape)
        return (t[..., 0::2], t[..., 1::2]) if interleaved else t.chunk(2, -1)

    d_gate, d_up = halves(d_y)
    t_gate, t_up = halves(ty + tb)
    tw = tw.detach().to(torch.float64).cpu().reshape(*y.shape[:-1], 1)
    return out, d_gate * t_gate + d_up * t_up + f * tw


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("interleaved", [False, True], ids=["split", "interleaved"])
def test_jvp_and_forward_ad_match_float64(name, interleaved):
    """Forward mode, through torch.func.jvp and through torch.autograd.forward_ad's dual tensors."""
    spec = SPECS[name]
    dtype = torch.float32
    gen, y, w, bias, _ = _data(f"jvp{name}{interleaved}", (7,), 6, dtype)
    ty, tw, tb = torch.randn_like(y), torch.randn_like(w), torch.randn_like(bias)
    params = _params(spec, gen)
    f = getattr(_module(name), f"weighted_bias_{name}")

    def call(y, w, b):
        return f(y, b, w, *params, interleaved=interleaved)

    ref_out, ref_tangent = _ref_jvp(spec, y, w, bias, ty, tw, tb, params, interleaved)
    out, tangent = jvp(call, (y, w, bias), (ty, tw, tb))
    assert_close_to_ref(out, ref_out, dtype, "out")
    assert_close_to_ref(tangent, ref_tangent, dtype, "jvp")
    with forward_ad.dual_level():
        dual = call(forward_ad.make_dual(y, ty), forward_ad.make_dual(w, tw), forward_ad.make_dual(bias, tb))
        primal, tangent = forward_ad.unpack_dual(dual)
    assert_close_to_ref(primal, ref_out, dtype, "forward_ad out")
    assert_close_to_ref(tangent, ref_tangent, dtype, "forward_ad tangent")


def _finite_difference(fn, x, v, eps=1e-6):
    return (fn(x + eps * v) - fn(x - eps * v)) / (2 * eps)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_second_derivatives_match_finite_differences(name):
    """Hessian-vector products through the functional form (jvp of grad, and hessian), and the
    derivative of a *_back helper, against central differences of the float64 reference's gradient."""
    spec = SPECS[name]
    gen, y, w, bias, g = _data(f"hvp{name}", (4,), 3, torch.float64)
    params = _params(spec, gen)
    mod = _module(name)
    v = torch.randn_like(y)
    ref = SpecReference(spec)

    def ref_grad(y):
        return ref.forward_backward(y, bias, w, g, params)[1]

    expected = _finite_difference(ref_grad, y, v).to(DEVICE)  # the reference computes on the CPU

    def loss(y):
        return (getattr(mod, f"weighted_bias_{name}")(y, bias, w, *params) * g).sum()

    hvp = jvp(grad(loss), (y,), (v,))[1]
    torch.testing.assert_close(hvp, expected, rtol=1e-6, atol=1e-6)
    full = hessian(loss)(y).reshape(y.numel(), y.numel())
    torch.testing.assert_close((full @ v.reshape(-1)).reshape(y.shape), expected, rtol=1e-6, atol=1e-6)
    # The helper's d_y is the same gradient; its vjp with v is the same product (the Hessian is symmetric).
    back = getattr(mod, f"weighted_bias_{name}_back")
    _, pullback = vjp(lambda y: back(g, y, bias, w, *params)[0], y)
    torch.testing.assert_close(pullback(v)[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["swiglu", "quick_geglu", "clamped_swiglu"])
def test_vmap_matches_per_sample_float64(name):
    """vmap over a batch of experts' inputs: the impl and the *_back helpers per sample, against the
    float64 reference of each sample."""
    spec = SPECS[name]
    dtype = torch.bfloat16
    gen, y, _, bias, g = _data(f"vmap{name}", (3, 5), 4, dtype)  # 3 samples of 5 rows
    w = torch.rand((3, 5, 1), generator=gen).add_(0.1).to(DEVICE)
    params = _params(spec, gen)
    mod = _module(name)
    kw = dict(zip([p.name for p in spec.params], params, strict=True))
    impl = getattr(mod, f"weighted_bias_{name}_impl")
    back = getattr(mod, f"weighted_bias_{name}_back")
    if spec.impl_bias:
        out = vmap(lambda y, w: impl(y, bias, w, False, **kw))(y, w)
    else:
        out = vmap(lambda y, w: impl(y, w, False, **kw))(y, w)
    d_y, d_b, d_w = vmap(lambda g, y, w: back(g, y, bias, w, *params))(g, y, w)
    assert out.shape == (3, 5, 4) and d_y.shape == y.shape and d_b.shape == (3, 8) and d_w.shape == w.shape
    ref = SpecReference(spec)
    for i in range(3):
        ref_out = ref.forward_backward(y[i], bias if spec.impl_bias else None, w[i], None, params)[0]
        assert_close_to_ref(out[i], ref_out, dtype, f"impl sample {i}")
        _, ref_dy, ref_db, ref_dw = ref.forward_backward(y[i], bias, w[i], g[i], params)
        assert_close_to_ref(d_y[i], ref_dy, dtype, f"d_y sample {i}")
        assert_close_to_ref(d_b[i], ref_db, dtype, f"d_bias sample {i}")
        assert_close_to_ref(d_w[i], ref_dw, dtype, f"d_w sample {i}", bound=ref.d_w_bound)


@pytest.mark.parametrize("name", ["swiglu", "geglu", "quick_geglu"])
def test_fp8_input_store_under_transforms(name):
    """With fp8_input_store the transforms see the kernels' contract: the output of the input itself,
    the derivatives at the saturated fp8 copy (values beyond +-448 included)."""
    spec = SPECS[name]
    dtype = torch.bfloat16
    gen, y, w, bias, g = _data(f"fp8{name}", (9,), 6, dtype)
    y[0, :3] = torch.tensor([600.0, -1000.0, 3.3], dtype=dtype)  # saturates, and one that rounds
    params = _params(spec, gen)
    kw = dict(zip([p.name for p in spec.params], params, strict=True))
    impl = getattr(_module(name), f"weighted_bias_{name}_impl")

    def call(y, w, b, fp8):
        return impl(y, b, w, fp8, **kw) if spec.impl_bias else impl(y, w, fp8, **kw)

    out, pullback = vjp(lambda y, w, b: call(y, w, b, True), y, w, bias)
    d_y, d_w, d_b = pullback(g)
    plain_out = vjp(lambda y, w, b: call(y, w, b, False), y, w, bias)[0]
    assert torch.equal(out, plain_out), "the fp8 copy changed the forward"
    ref = SpecReference(spec)
    b = bias if spec.impl_bias else None
    assert_close_to_ref(out, ref.forward_backward(y, b, w, None, params)[0], dtype, "out")
    copy = rt.to_fp8_saturated(y).to(torch.float64)
    assert copy.abs().max() == 448
    _, ref_dy, ref_db, ref_dw = ref.forward_backward(copy, b, w, g, params)
    assert_close_to_ref(d_y, ref_dy, dtype, "d_y from the copy")
    assert_close_to_ref(d_w, ref_dw, dtype, "d_w from the copy", bound=ref.d_w_bound)
    if spec.impl_bias:
        assert_close_to_ref(d_b, ref_db, dtype, "d_bias from the copy")
    # and the copy matters here: the gradient of the input itself is elsewhere
    exact_dy = ref.forward_backward(y, b, w, g, params)[1]
    assert (ref_dy - exact_dy).abs().max() > 1e-2


def test_transform_checks_arguments_as_the_kernels_path():
    """Bad input names the argument under a transform too."""
    y = torch.randn(4, 7, device=DEVICE)
    w = torch.rand(4, 1, device=DEVICE)
    with pytest.raises(ValueError, match="last dimension of input must be even"):
        grad(lambda y: moe_utils.weighted_swiglu(y, w).sum())(y)
    y = torch.randn(4, 8, device=DEVICE)
    short = torch.rand(3, 1, device=DEVICE)
    with pytest.raises(ValueError, match=r"weights has shape \(3, 1\)"):
        vmap(lambda y: moe_utils.weighted_bias_swiglu_impl(y, short))(y[None])
    with pytest.raises(ValueError, match="limit"):
        grad(lambda y: moe_utils.weighted_bias_clamped_swiglu_impl(y, None, w, limit=-1.0).sum())(y)


def test_module_without_eager_math_says_regenerate():
    """A module generated before the eager math was passed on refuses the transforms by name."""
    mod = _module("swiglu")
    old = rt.ActivationImpl(
        name="swiglu",
        param_names=(),
        launch_forward=mod._IMPL.launch_forward,
        launch_backward=mod._IMPL.launch_backward,
        forward_op=mod._IMPL.forward_op,
        backward_op=mod._IMPL.backward_op,
        abi=rt.GENERATED_ABI,
    )
    y = torch.randn(3, 8, device=DEVICE)
    with pytest.raises(RuntimeError, match="Regenerate it"):
        grad(lambda y: rt.eager_gated(old, "swiglu", y, None, None, False, None, False, ()).sum())(y)
    # Outside a transform the kernels' path is unchanged.
    out = rt.apply_gated(mod._SwiGLUFunction, old, "swiglu", y, None, None, False, None, False)
    assert_close_to_ref(out, SpecReference(SPECS["swiglu"]).forward_backward(y)[0], torch.float32, "out")


@pytest.mark.skipif(not TRITON, reason="fused=True needs a GPU or TRITON_INTERPRET=1")
def test_fused_routing_refuses_transforms_and_unfused_runs_under_them():
    gen = make_generator(5)
    x = torch.randn(6, 8, generator=gen).to(DEVICE)
    routing_map = torch.zeros(6, 4, dtype=torch.bool)
    routing_map[torch.arange(6), torch.arange(6) % 4] = True
    routing_map[torch.arange(6), (torch.arange(6) + 1) % 4] = True
    routing_map = routing_map.to(DEVICE)
    probs = torch.rand(6, 4, generator=gen).to(DEVICE)

    def loss(x, fused):
        rows, _, order = moe_utils.permute(x, routing_map, probs, num_out_tokens=12, fused=fused)
        return moe_utils.unpermute(rows * rows, order, x.shape, probs, routing_map, fused=fused).sum()

    with pytest.raises(RuntimeError, match=r"permute: fused=True .*torch\.func.*fused=False"):
        grad(lambda x: loss(x, True))(x)
    rows, _, order = moe_utils.permute(x, routing_map, probs, num_out_tokens=12, fused=True)
    with pytest.raises(RuntimeError, match=r"unpermute: fused=True .*torch\.func.*fused=False"):
        vjp(lambda r: moe_utils.unpermute(r, order, x.shape, probs, routing_map, fused=True), rows)
    with forward_ad.dual_level(), pytest.raises(RuntimeError, match=r"permute: fused=True"):
        moe_utils.permute(forward_ad.make_dual(x, torch.ones_like(x)), routing_map, fused=True)
    # fused=False is plain PyTorch: d/dx sum_e p[t, e] x[t]^2 = 2 x[t] sum of t's routed probs
    expected = 2 * x * (probs * routing_map).sum(1, keepdim=True)
    torch.testing.assert_close(grad(lambda x: loss(x, False))(x), expected)
    torch.testing.assert_close(moe_utils.permute(x, routing_map, probs, fused=False)[0], rows[:12])


def test_compiled_transforms():
    """A transform inside a compiled function (fullgraph: Inductor compiles the eager math) and a
    compiled function inside a transform both give the transform's gradient."""
    gen = make_generator(9)
    y = torch.randn(5, 12, generator=gen).to(DEVICE)
    w = torch.rand(5, 1, generator=gen).to(DEVICE)

    def loss(y):
        return moe_utils.weighted_bias_swiglu_impl(y, w).float().square().sum()

    expected = grad(loss)(y)
    torch._dynamo.reset()
    compiled = torch.compile(lambda y: grad(loss)(y), fullgraph=True)
    torch.testing.assert_close(compiled(y), expected)
    # (PyTorch runs a compiled function under an eager transform without compiling it: issue 128711)
    torch.testing.assert_close(grad(torch.compile(loss))(y), expected)
    # and the plain compiled call is the kernels' custom op as before
    y.requires_grad_(True)
    out = torch.compile(loss, fullgraph=True)(y)
    torch.testing.assert_close(torch.autograd.grad(out, y)[0], expected)
