"""torch.compile without graph breaks (dynamic shapes too), opcheck for every op, checkpointing."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import DEVICE, FactoryLog, make_generator
from moe_utils.codegen.specs import REGISTRY
from torch._dynamo.testing import CompileCounterWithBackend

import moe_utils
from moe_utils import MoEAuxLossAutoScaler, permute, unpermute, weighted_bias_quick_geglu_impl
from moe_utils import _runtime as rt


def _activation_ops(name):
    mod = importlib.import_module(f"moe_utils.generated.{name}")
    return mod._forward_op, mod._backward_op


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.name)
def test_opcheck_activation_ops(spec):
    fwd, bwd = _activation_ops(spec.name)
    gen = make_generator(1)
    x = torch.randn(6, 32, generator=gen).to(DEVICE).requires_grad_(True)
    w = torch.rand(6, generator=gen).to(DEVICE).requires_grad_(True)
    b = torch.randn(32, generator=gen).to(DEVICE).requires_grad_(True)
    params = [p.default for p in spec.params]
    clamp = 2.0 if spec.clamp else None
    for fp8 in (False, True):
        torch.library.opcheck(fwd, (x, b, w, fp8, clamp, False, *params))
        torch.library.opcheck(fwd, (x, None, None, fp8, None, True, *params))
    g = torch.randn(6, 16, generator=gen).to(DEVICE)
    for interleaved in (False, True):
        args = (g, x.detach(), b.detach(), w.detach(), clamp, interleaved, torch.float32, *params)
        torch.library.opcheck(bwd, args)
        torch.library.opcheck(bwd, (*args, False))  # store_dx=False: d_weights alone
        for clamped_dx in ("keep", "both"):  # the bias's gradient where the clamp changed a value
            torch.library.opcheck(bwd, (*args, True, clamped_dx))
        for store_dx in (True, False):  # the shared bias's gradient summed in the kernel, d_x or not
            torch.library.opcheck(bwd, (*args, store_dx, "zero", True))


def test_opcheck_routing_ops():
    from moe_utils.permutation import _permute_backward_op, _permute_op
    from moe_utils.unpermutation import _unpermute_backward_op, _unpermute_op

    gen = make_generator(2)
    x = torch.randn(10, 24, generator=gen).to(DEVICE).requires_grad_(True)
    m = torch.zeros(10, 4, dtype=torch.bool)
    m[torch.arange(10), torch.arange(10) % 4] = True
    m[torch.arange(10), (torch.arange(10) + 1) % 4] = True
    m = m.to(DEVICE)
    p = torch.rand(10, 4, generator=gen).to(DEVICE).requires_grad_(True)
    torch.library.opcheck(_permute_op, (x, m, p, 20, False))
    out, perm_probs, plan = _permute_op(x.detach(), m, p.detach(), 20, False)
    torch.library.opcheck(
        _permute_backward_op, (torch.randn_like(out), torch.randn_like(perm_probs), plan, 10, 4, p.dtype)
    )
    rows = out.clone().requires_grad_(True)
    torch.library.opcheck(_unpermute_op, (rows, plan, p, 10, False, False))
    torch.library.opcheck(_unpermute_op, (rows, plan, p, 10, False, True))
    torch.library.opcheck(_unpermute_backward_op, (torch.randn(10, 24).to(DEVICE), out, plan, p.detach(), True, False))


def test_ops_backward_makes_no_zeros_for_their_storage_outputs():
    # Called directly under autograd, an op's backward got zeros for each output without a
    # gradient: the fp8 copy's [N, 2H] bytes (an activation with fp8_store), the plan's int64
    # (permute). Until session 45; now none is made.
    from moe_utils.permutation import _permute_op

    gen = make_generator(45)
    fwd, _ = _activation_ops("swiglu")
    x = torch.randn(6, 32, generator=gen).to(DEVICE).requires_grad_(True)
    w = torch.rand(6, generator=gen).to(DEVICE).requires_grad_(True)
    out, x_fp8 = fwd(x, None, w, True, None, False)
    assert x_fp8.shape == (6, 32)
    with FactoryLog() as log:
        d_x, d_w = torch.autograd.grad(out, (x, w), torch.randn(6, 16, generator=gen).to(DEVICE))
    assert not [made for made in log.nonempty() if made[1] == (6, 32) and made[2] == torch.uint8], log.made
    assert d_x.shape == x.shape and d_w.shape == w.shape and d_x.abs().sum() > 0

    m = torch.zeros(10, 4, dtype=torch.bool)
    m[torch.arange(10), torch.arange(10) % 4] = True
    m = m.to(DEVICE)
    tokens = torch.randn(10, 24, generator=gen).to(DEVICE).requires_grad_(True)
    p = torch.rand(10, 4, generator=gen).to(DEVICE).requires_grad_(True)
    rows, perm_probs, _ = _permute_op(tokens, m, p, 10, False)
    with FactoryLog() as log:
        d_tokens, d_p = torch.autograd.grad((rows, perm_probs), (tokens, p), (torch.ones_like(rows), perm_probs))
    assert not [made for made in log.nonempty() if made[2] == torch.int64], log.made
    torch.testing.assert_close(d_tokens, torch.ones_like(tokens))  # one expert per token
    torch.testing.assert_close(d_p, p.detach() * m)


class TinyMoE(torch.nn.Module):
    """router top-k -> permute -> expert matmul -> weighted activation -> matmul -> unpermute."""

    def __init__(self, hidden=32, ffn=16, n_experts=4, k=2):
        super().__init__()
        self.k = k
        self.router = torch.nn.Linear(hidden, n_experts, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, 2 * ffn) / hidden**0.5)
        self.w2 = torch.nn.Parameter(torch.randn(ffn, hidden) / ffn**0.5)

    def forward(self, x):
        n_tokens = x.shape[0]
        probs = torch.softmax(self.router(x), dim=-1)
        top = torch.topk(probs, self.k, dim=-1).indices
        routing_map = torch.zeros_like(probs, dtype=torch.bool).scatter(1, top, True)
        probs = probs * routing_map
        rows, row_probs, plan = permute(x, routing_map, probs, num_out_tokens=n_tokens * self.k, fused=True)
        h = rows @ self.w1
        h = weighted_bias_quick_geglu_impl(h, None, row_probs.unsqueeze(-1), False, 0.5, 7.0, 1.702)
        rows_out = h @ self.w2
        out = unpermute(rows_out, plan, x.shape, fused=True)
        aux_loss = (probs.mean(0) ** 2).sum()
        return MoEAuxLossAutoScaler.apply(out, aux_loss)


def test_compiled_moe_block_has_no_graph_breaks_and_matches_eager():
    torch.manual_seed(0)
    model = TinyMoE().to(DEVICE)
    x = torch.randn(24, 32).to(DEVICE)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # any graph break is an error
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fp8", [False, True])
def test_compiled_activation_keeps_fp32_scalars(fp8):
    """alpha, linear_offset, clamp_value and limit reach the kernel as fp32 scalars: compiled == eager,
    bit for bit, also once they change between calls and torch.compile makes them symbolic (until
    session 39 the argument checks' math.isnan failed to trace there: a changing clamp_value broke
    the graph). A bad value still fails loudly, compiled too."""
    from moe_utils import weighted_bias_clamped_swiglu_impl

    gen = make_generator(4)
    y = torch.randn(16, 64, generator=gen).to(torch.bfloat16).to(DEVICE).requires_grad_(True)
    w = torch.rand(16, 1, generator=gen).to(DEVICE).requires_grad_(True)

    def fn(y, w, offset, alpha, clamp):
        return weighted_bias_quick_geglu_impl(y, None, w, fp8, offset, clamp, alpha)

    def clamped(y, w, limit):
        return weighted_bias_clamped_swiglu_impl(y, None, w, fp8, limit)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    compiled_clamped = torch.compile(clamped, fullgraph=True)
    for offset, alpha, clamp in ((0.5, 1.3, 3.0), (0.25, 2.1, 2.5), (0.75, 1.7, 1.5)):
        for a, b in ((fn(y, w, offset, alpha, clamp), compiled(y, w, offset, alpha, clamp)),
                     (clamped(y, w, 2 * clamp), compiled_clamped(y, w, 2 * clamp))):  # fmt: skip
            assert torch.equal(a, b)
            ga = torch.autograd.grad(a.float().sum(), (y, w))
            gb = torch.autograd.grad(b.float().sum(), (y, w))
            assert all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))
    with pytest.raises(Exception, match=r"clamp_value must be a non-negative float"):
        compiled(y, w, 0.5, 1.3, -1.0)
    with pytest.raises(Exception, match=r"limit must be a number >= 0.0, got -1.0"):
        compiled_clamped(y, w, -1.0)


def test_compiled_constants_traced_from_numpy_and_tensors():
    """Activation constants that torch.compile traces instead of knowing (numpy numbers, which dynamo
    traces as arrays, and tensors; given as arguments or read from a closure) take the spec's math in
    PyTorch ops with the constant as a 0-d tensor, which Inductor fuses: no graph break under
    fullgraph=True (until session 42: "Unsupported repr() on tensor"), and the outputs and gradients
    of the kernels' path with the same numbers as Python floats, to fp32 rounding. A tensor constant
    that requires grad is still refused."""
    import numpy as np

    from moe_utils import quick_geglu, weighted_bias_clamped_swiglu_impl, weighted_bias_quick_geglu_back

    gen = make_generator(6)
    y = (torch.randn(12, 48, generator=gen) * 3).to(DEVICE).requires_grad_(True)
    w = torch.rand(12, 1, generator=gen).to(DEVICE).requires_grad_(True)
    b = torch.randn(48, generator=gen).to(DEVICE)
    g = torch.randn(12, 24, generator=gen).to(DEVICE)
    offset, clamp, alpha, limit = np.float32(0.5), np.float64(2.0), np.float32(1.5), np.float64(1.25)

    def impl(y, w, offset, clamp, alpha):
        return weighted_bias_quick_geglu_impl(y, b, w, False, offset, clamp, alpha)

    def from_closure(y, w):
        return weighted_bias_quick_geglu_impl(y, b, w, False, offset, clamp, alpha)

    def clamped(y, w, limit):
        return weighted_bias_clamped_swiglu_impl(y, None, w, False, limit)

    def plain(y, offset):
        return quick_geglu(y, offset)

    def back(g, y, w, offset):
        return weighted_bias_quick_geglu_back(g, y, b, w, offset)

    floats = (0.5, 2.0, 1.5)
    cases = [
        (impl, (y, w, offset, clamp, alpha), impl(y, w, *floats)),
        (impl, (y, w, torch.tensor(0.5), torch.tensor(2.0), torch.tensor(1.5)), impl(y, w, *floats)),
        (from_closure, (y, w), impl(y, w, *floats)),
        (clamped, (y, w, limit), clamped(y, w, 1.25)),
        (clamped, (y, w, torch.tensor(1.25, device=DEVICE)), clamped(y, w, 1.25)),
        (plain, (y, offset), plain(y, 0.5)),
    ]
    for fn, args, want in cases:
        torch._dynamo.reset()
        got = torch.compile(fn, fullgraph=True)(*args)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        leaves = (y, w) if fn is not plain else (y,)
        grads = torch.autograd.grad(got, leaves, g)
        expected = torch.autograd.grad(want, leaves, g)
        for a, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    got = torch.compile(back, fullgraph=True)(g, y.detach(), w.detach(), offset)
    want = back(g, y.detach(), w.detach(), 0.5)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="linear_offset is a tensor that requires grad"):
        torch.compile(impl, fullgraph=True)(y, w, torch.tensor(0.5, requires_grad=True), clamp, alpha)


@pytest.mark.parametrize("fp8", [False, True])
def test_compiled_seed_functions_trace_their_constants(fp8):
    """The seed API's autograd Functions with constants torch.compile traces (a tensor or a numpy
    number as an argument, a numpy number made inside the compiled function) take the spec's math in
    PyTorch ops in forward and backward: no graph break under fullgraph=True (until session 43 a
    host read, which failed there: "RuntimeError when making fake tensor call"; a numpy number made
    inside raised "alpha must be a float, got ndarray" even without fullgraph), and the outputs and
    gradients of the kernels' path with Python floats, to fp32 rounding, the fp8 copy's too."""
    import numpy as np

    from moe_utils import WeightedBiasQuickGeGLUFunction, WeightedQuickGeGLUFunction

    gen = make_generator(43)
    y = (torch.randn(10, 40, generator=gen) * 3).to(DEVICE).requires_grad_(True)
    w = torch.rand(10, 1, generator=gen).to(DEVICE).requires_grad_(True)
    b = torch.randn(40, generator=gen).to(DEVICE).requires_grad_(True)
    g = torch.randn(10, 20, generator=gen).to(DEVICE)

    def weighted(y, b, w, offset):
        return WeightedQuickGeGLUFunction.apply(y, w, fp8, offset, np.float64(1.5))

    def with_bias(y, b, w, offset):
        return WeightedBiasQuickGeGLUFunction.apply(y, b, w, fp8, offset, 1.5)

    for fn, offset in ((weighted, torch.tensor(0.5)), (weighted, np.float32(0.5)), (with_bias, torch.tensor(0.5))):
        leaves = (y, w) if fn is weighted else (y, b, w)
        want = fn(y, b, w, 0.5)  # eager, Python floats: the kernels
        expected = torch.autograd.grad(want, leaves, g)
        torch._dynamo.reset()
        got = torch.compile(fn, fullgraph=True)(y, b, w, offset)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for a, e in zip(torch.autograd.grad(got, leaves, g), expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "needs", [(False, False, True), (False, True, False), (False, True, True), (True, False, True)]
)
def test_compiled_gradients_of_any_subset_of_inputs(monkeypatch, needs):
    """Compiled, as eager: whichever of input, bias and weights require grad get their gradients
    (bit for bit), and the backward writes d_x only where the input's gradient reads it, and sums the
    shared bias's itself (bias_sum)."""
    mod = importlib.import_module("moe_utils.generated.quick_geglu")
    store_dx = []
    launch = mod._launch_backward

    def spy_launch(*args):  # (..., store_dx, clamped_dx, bias_sum)
        store_dx.append((args[-3], args[-1]))
        return launch(*args)

    monkeypatch.setattr(mod, "_launch_backward", spy_launch)
    monkeypatch.setattr(rt, "BIAS_SUM_MIN_ROWS", 0)  # the bias's sum in the kernel at 12 rows
    gen = make_generator(9)
    y = torch.randn(12, 48, generator=gen).to(torch.bfloat16).to(DEVICE)
    b = torch.randn(48, generator=gen).to(torch.bfloat16).to(DEVICE)
    w = torch.rand(12, 1, generator=gen).to(DEVICE)

    def fn(y, b, w):
        return mod.weighted_bias_quick_geglu_impl(y, b, w, True, 0.5, 3.0)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    results = []
    for f in (fn, compiled):
        leaves = [t.clone().requires_grad_(n) for t, n in zip((y, b, w), needs, strict=True)]
        out = f(*leaves)
        results.append((out, torch.autograd.grad(out.float().sum(), [t for t in leaves if t.requires_grad])))
    (eager_out, eager_grads), (out, grads) = results
    assert torch.equal(out, eager_out)
    assert len(grads) == sum(needs) and all(torch.equal(u, v) for u, v in zip(grads, eager_grads, strict=True))
    assert store_dx == [(needs[0], needs[1])]  # the compiled op's body (eager calls the launcher itself)


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.name)
def test_compiled_evaluation_skips_the_fp8_copy(spec):
    """Compiled in evaluation (no_grad, inference_mode) with a bias parameter (or, without a bias
    argument, an input) that requires grad, weighted_bias_<name>_impl's forward op is traced without
    the fp8 copy, which no backward reads; with grad mode on, the same compiled function retraces
    (torch.compile guards on grad mode) and writes it. The traced Function's forward cannot see grad
    mode; the call site reads it."""
    mod = importlib.import_module(f"moe_utils.generated.{spec.name}")
    impl = getattr(mod, f"weighted_bias_{spec.name}_impl")
    traced = []

    def backend(gm, example_inputs):
        op = mod._IMPL.forward_op._opoverload
        graphs = [m.graph for m in gm.modules() if isinstance(m, torch.fx.GraphModule)]  # the Function's too
        traced.append([n.args[3] for g in graphs for n in g.nodes if n.target == op])  # the op's fp8_store
        return gm

    gen = make_generator(61)
    y = torch.randn(10, 2 * 24, generator=gen).to(torch.bfloat16).to(DEVICE)
    b = torch.randn(2 * 24, generator=gen).to(torch.bfloat16).to(DEVICE).requires_grad_(True)
    w = torch.rand(10, 1, generator=gen).to(DEVICE)
    # Without a bias argument, a leaf input that requires grad.
    args = (y, b, w) if spec.impl_bias else ((y + b.detach()).requires_grad_(True), w)
    want = impl(*args, False).detach()
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: impl(*a, True), fullgraph=True, backend=backend)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert torch.equal(compiled(*args), want)
    assert torch.equal(compiled(*args).detach(), want)
    assert traced == [[False], [False], [True]], traced


def test_every_public_name_compiles_through_a_function_class():
    """The activations' public functional forms are torch.autograd.Functions: dynamo traces them."""
    y = torch.randn(8, 32).to(DEVICE).requires_grad_(True)
    w = torch.rand(8, 1).to(DEVICE)
    torch._dynamo.reset()
    for fn in (moe_utils.weighted_swiglu, moe_utils.weighted_geglu, moe_utils.weighted_quick_geglu):
        compiled = torch.compile(fn, fullgraph=True)
        torch.testing.assert_close(compiled(y, w), fn(y, w))


# -- dynamic shapes -------------------------------------------------------------------------------
# In MoE training the rows an expert receives change every step. Compiled with dynamic shapes, a
# graph must serve every row count (from 2: torch specialises sizes 0 and 1 by itself); one size
# check that hashed a symbolic size into a set, or took int() of it, made each new count a
# recompile until the recompile limit (session 32).

_ROW_COUNTS = (5, 7, 9, 12)


def _compile_counting(fn):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    return torch.compile(fn, fullgraph=True, dynamic=True, backend=counter), counter


def _activation_case(name, n, gen):
    y = torch.randn(n, 3, 32, generator=gen).to(DEVICE)
    w = torch.rand(n * 3, 1, generator=gen).to(DEVICE)
    g = torch.randn(n * 3, 16, generator=gen).to(DEVICE)
    b = torch.randn(32, generator=gen).to(DEVICE)
    if name == "swiglu_impl_fp8":  # 3-D input, [T, 1] weights, the fp8 copy for the backward
        return (lambda y, w: moe_utils.weighted_bias_swiglu_impl(y, w, True)), (y, w)
    if name == "quick_geglu_impl_clamp_bias":
        return (lambda y, b, w: weighted_bias_quick_geglu_impl(y, b, w, False, 0.5, 3.0, 1.702)), (y, b, w)
    if name == "weighted_swiglu_3d_interleaved":  # [S, B, 1] weights broadcast
        return (lambda y, w: moe_utils.weighted_swiglu(y, w, interleaved=True)), (y, w.view(n, 3, 1))
    if name == "weighted_geglu_back":
        return (lambda g, y, w: moe_utils.weighted_geglu_back(g, y, w)), (g, y.view(n * 3, 32), w)
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name", ["swiglu_impl_fp8", "quick_geglu_impl_clamp_bias", "weighted_swiglu_3d_interleaved", "weighted_geglu_back"]
)
def test_compiled_activation_serves_every_row_count(name):
    gen = make_generator(5)
    compiled, counter = None, None
    for n in _ROW_COUNTS:
        fn, args = _activation_case(name, n, gen)
        if compiled is None:
            compiled, counter = _compile_counting(fn)
        differentiable = not name.endswith("_back")  # the *_back helpers are not differentiated
        leaves = [a.clone().requires_grad_(differentiable) for a in args]
        out, ref = compiled(*leaves), fn(*leaves)
        outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
        for o, r in zip(outs, refs, strict=True):
            torch.testing.assert_close(o, r)
        if differentiable:  # the backward, compiled with the forward, against the eager one
            g = torch.randn(out.shape, generator=gen).to(DEVICE)
            got = torch.autograd.grad(out, leaves, g)
            want = torch.autograd.grad(ref, leaves, g)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for row counts {_ROW_COUNTS}"


def test_compiled_moe_block_serves_every_token_count():
    """permute (num_out_tokens = T * k), the activation and unpermute: one graph for every T."""
    torch.manual_seed(0)
    model = TinyMoE().to(DEVICE)
    gen = make_generator(6)
    compiled, counter = _compile_counting(model)
    for n in _ROW_COUNTS:
        x = torch.randn(n * 2, 32, generator=gen).to(DEVICE)
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        eager = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
        for g, e in zip(grads, eager, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for token counts"


def test_compiled_drop_and_pad_serves_every_token_count():
    """permute/unpermute with drop_and_pad and probs: the plan view accepts symbolic sizes."""
    gen = make_generator(7)

    def fn(x, m, p):
        rows, row_probs, plan = permute(x, m, p, num_out_tokens=2 * m.shape[1], fused=True, drop_and_pad=True)
        out = unpermute(rows, plan, x.shape, probs=p, routing_map=m, fused=True, drop_and_pad=True)
        return rows, row_probs, out

    compiled, counter = _compile_counting(fn)
    for n in _ROW_COUNTS:
        x = torch.randn(n, 24, generator=gen).to(DEVICE)
        m = torch.zeros(n, 4, dtype=torch.bool)
        for e in range(4):  # capacity 2: two distinct tokens per expert
            m[torch.randperm(n, generator=gen)[:2], e] = True
        m = m.to(DEVICE)
        p = torch.rand(n, 4, generator=gen).to(DEVICE)
        for a, b in zip(compiled(x, m, p), fn(x, m, p), strict=True):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for token counts"


def test_compiled_permute_with_a_numpy_count_made_inside():
    """A numpy number made inside the compiled function as permute's num_out_tokens (a capacity
    computed with numpy) sizes the output, so dynamo cannot trace it: it breaks the graph and hands
    permute a 0-d integer array, which gives the int's result (session 48; until then permute
    refused it, "got array(...)", where eager PyTorch took the number). With fullgraph=True the
    break is dynamo's error, not ours."""
    import numpy as np

    gen = make_generator(50)
    x = torch.randn(12, 24, generator=gen).to(DEVICE)
    m = torch.zeros(12, 4, dtype=torch.bool)
    m[torch.arange(12), torch.arange(12) % 4] = True
    m = m.to(DEVICE)

    def fn(x, m):
        rows = permute(x, m, num_out_tokens=np.int64(x.shape[0]) + 2, fused=True)[0]
        return rows * 2

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(fn)(x, m), fn(x, m), rtol=0, atol=0)
    torch._dynamo.reset()
    with pytest.raises(Exception) as info:
        torch.compile(fn, fullgraph=True)(x, m)
    assert not isinstance(info.value, ValueError) and "must be a non-negative int" not in str(info.value), info.value


def test_compiled_sequential_experts_with_data_dependent_row_counts():
    """Megatron's SequentialMLP: rows split per expert by a count read from the device. The
    activation gets unbacked (data-dependent) row counts, 0 among them, without graph breaks."""
    torch._dynamo.reset()
    gen = make_generator(8)
    n_experts, hidden, ffn = 3, 8, 16
    w1 = torch.randn(n_experts, hidden, 2 * ffn, generator=gen).to(DEVICE).requires_grad_(True)
    w2 = torch.randn(n_experts, ffn, hidden, generator=gen).to(DEVICE).requires_grad_(True)

    def experts(x, probs, counts, probs_counts=None):
        outs = []
        # Two reads of the counts: the rows and the weights get unrelated data-dependent sizes,
        # which the weights' shape check cannot compare while tracing (it asserts them at run time).
        probs_counts = counts if probs_counts is None else probs_counts
        rows, weights = torch.split(x, counts.tolist()), torch.split(probs, probs_counts.tolist())
        for e, (xe, pe) in enumerate(zip(rows, weights, strict=True)):
            h = moe_utils.weighted_bias_swiglu_impl(xe @ w1[e], pe.unsqueeze(-1), True)
            outs.append(h @ w2[e])
        return torch.cat(outs)

    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(experts, fullgraph=True)
        for counts in ([3, 0, 4], [5, 2, 1], [1, 6, 2]):
            x = torch.randn(sum(counts), hidden, generator=gen).to(DEVICE).requires_grad_(True)
            p = torch.rand(sum(counts), generator=gen).to(DEVICE)
            c = torch.tensor(counts).to(DEVICE)
            out, ref = compiled(x, p, c), experts(x, p, c)
            torch.testing.assert_close(out, ref)
            got = torch.autograd.grad(out.sum(), (x, w1, w2))
            want = torch.autograd.grad(ref.sum(), (x, w1, w2))
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b)
        # Weights that do not match their rows: eagerly the ValueError, compiled the graph's assert.
        x, p = torch.randn(7, hidden).to(DEVICE), torch.rand(7).to(DEVICE)
        c, c_probs = torch.tensor([3, 0, 4]).to(DEVICE), torch.tensor([4, 0, 3]).to(DEVICE)
        with pytest.raises(ValueError, match="weights has shape"):
            experts(x, p, c, c_probs)
        with pytest.raises(RuntimeError):
            compiled(x, p, c, c_probs)


_CHECKPOINTING = [(False, False), (True, False), (False, True)]


@pytest.mark.parametrize(("use_reentrant", "compiled"), _CHECKPOINTING, ids=["plain", "reentrant", "compiled"])
def test_moe_block_under_activation_checkpointing_and_autocast(use_reentrant, compiled):
    """The block recomputed in its backward (torch.utils.checkpoint) gives the gradients of the
    plain block; under bf16 autocast it runs in bf16 and stays within bf16's error of them."""
    torch.manual_seed(0)
    model = TinyMoE().to(DEVICE)
    params = list(model.parameters())
    x = torch.randn(12, 32, generator=make_generator(9)).to(DEVICE)
    want_out = model(x)
    want = torch.autograd.grad(want_out.square().sum(), params)
    torch._dynamo.reset()
    for autocast in (False, True):

        def step(x, autocast=autocast):
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
                return torch.utils.checkpoint.checkpoint(model, x, use_reentrant=use_reentrant)

        model.zero_grad()
        out = (torch.compile(step) if compiled else step)(x.clone().requires_grad_(use_reentrant))
        out.float().square().sum().backward()  # reentrant checkpointing supports backward() only
        got = [p.grad for p in params]
        if autocast:
            assert out.dtype == torch.bfloat16
            for g, w in zip(got, want, strict=True):
                assert (g.float() - w).norm() <= 0.05 * w.norm()
        else:
            torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_exported_moe_block_serves_every_token_count():
    """torch.export (non-strict: the Python runs on symbolic sizes, no dynamo) with the token count
    dynamic: num_out_tokens = T * k reaches permute as a SymInt."""
    torch.manual_seed(0)
    model = TinyMoE().to(DEVICE).eval()
    gen = make_generator(10)
    x = torch.randn(12, 32, generator=gen).to(DEVICE)
    exported = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("tokens", min=2)}})
    for n in (12, 20):
        x = torch.randn(n, 32, generator=gen).to(DEVICE)
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)
