"""Property-based tests (hypothesis) over shapes, dtypes, parameters and routing maps.

Every example is compared with a float64 reference. CI runs 25 derandomized examples per test (the
same ones every run, so CI cannot flake); MOE_UTILS_HYPOTHESIS_EXAMPLES=400 explores with fresh
random examples (run with 400 before this file landed: all passed).
"""

from __future__ import annotations

import importlib
import os

import torch
from conftest import DEVICE, assert_close_to_ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moe_utils.codegen.specs import REGISTRY
from reference import SpecReference

from moe_utils import permute, unpermute

SETTINGS = settings(
    max_examples=int(os.environ.get("MOE_UTILS_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    derandomize="MOE_UTILS_HYPOTHESIS_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@SETTINGS
@given(
    spec=st.sampled_from(REGISTRY),
    dtype=st.sampled_from(DTYPES),
    n_rows=st.integers(0, 9),
    h=st.integers(1, 40),
    with_bias=st.booleans(),
    fp8=st.booleans(),
    clamp=st.one_of(st.none(), st.floats(0.5, 4.0)),
    param_shift=st.floats(-0.5, 0.5),
    interleaved=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_activations_match_float64(spec, dtype, n_rows, h, with_bias, fp8, clamp, param_shift, interleaved, seed):
    gen = torch.Generator().manual_seed(seed)
    mod = importlib.import_module(f"moe_utils.generated.{spec.name}")
    y = (torch.randn(n_rows, 2 * h, generator=gen) * 3).to(dtype).to(DEVICE).requires_grad_(True)
    w = torch.rand(n_rows, 1, generator=gen).to(DEVICE).requires_grad_(True)
    bias = torch.randn(2 * h, generator=gen).to(dtype).to(DEVICE).requires_grad_(True) if with_bias else None
    g = torch.randn(n_rows, h, generator=gen).to(dtype).to(DEVICE)
    params = tuple(p.default + param_shift for p in spec.params)
    clamp = clamp if spec.clamp else None
    fn = getattr(mod, f"_{spec.class_stem}Function")
    out = fn.apply("property", y, bias, w, fp8, clamp, interleaved, *params)
    inputs = (y, w) + ((bias,) if with_bias else ())
    grads = torch.autograd.grad(out, inputs, g)
    y_ref = y
    if fp8:  # the backward sees the fp8 copy; the forward does not
        y_ref = torch.clamp(y.detach().float(), -448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    reference = SpecReference(spec)
    ref_fwd = reference.forward_backward(y, bias, w, None, params, clamp_value=clamp, interleaved=interleaved)[0]
    assert_close_to_ref(out, ref_fwd, dtype, "out")
    ref = reference.forward_backward(y_ref, bias, w, g, params, clamp_value=clamp, interleaved=interleaved)
    assert_close_to_ref(grads[0], ref[1], dtype, "d_y")
    assert_close_to_ref(grads[1], ref[3], dtype, "d_weights", bound=reference.d_w_bound)
    if with_bias:
        assert_close_to_ref(grads[2], ref[2], dtype, "d_bias")


@SETTINGS
@given(
    n_tokens=st.integers(0, 24),
    n_experts=st.integers(1, 16),
    hidden=st.integers(1, 40),
    density=st.floats(0.0, 1.0),
    with_probs=st.booleans(),
    pad=st.integers(0, 3),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_routing_matches_reference(n_tokens, n_experts, hidden, density, with_probs, pad, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, hidden, generator=gen).to(dtype).to(DEVICE)
    m = (torch.rand(n_tokens, n_experts, generator=gen) < density).to(DEVICE)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE) if with_probs else None
    a, ap, idx = permute(x, m, p, fused=False)
    routed = a.shape[0]
    b, bp, plan = permute(x, m, p, num_out_tokens=routed + pad, fused=True)
    assert torch.equal(b[:routed], a) and torch.all(b[routed:] == 0)
    if with_probs:
        assert torch.equal(bp[:routed], ap)
    rows = torch.randn(b.shape, generator=gen).to(dtype).to(DEVICE)
    out = unpermute(rows, plan, x.shape, p, m, fused=True)
    ref = unpermute(rows[:routed].double(), idx, x.shape, None if p is None else p.double(), m)
    assert_close_to_ref(out, ref, dtype, "unpermute")


@SETTINGS
@given(
    n_tokens=st.integers(0, 20),
    n_experts=st.integers(1, 12),
    hidden=st.integers(1, 33),
    density=st.floats(0.0, 1.0),
    drop_and_pad=st.booleans(),
    pad=st.integers(0, 3),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_routing_gradients_match_float64(n_tokens, n_experts, hidden, density, drop_and_pad, pad, dtype, seed):
    """permute -> a nonlinear function of the rows -> unpermute with probs, forward and backward
    (d_tokens, d_probs through both ops), fused against the reference in float64: random maps with
    padding rows, or drop_and_pad maps of exactly `capacity` tokens an expert."""
    gen = torch.Generator().manual_seed(seed)
    if drop_and_pad:
        capacity = int(torch.randint(0, n_tokens + 1, (), generator=gen))
        m = torch.zeros(n_tokens, n_experts, dtype=torch.bool)
        for e in range(n_experts):
            m[torch.randperm(n_tokens, generator=gen)[:capacity], e] = True
        n_out = capacity * n_experts
    else:
        m = torch.rand(n_tokens, n_experts, generator=gen) < density
        n_out = int(m.sum()) + pad
    m = m.to(DEVICE)
    x = torch.randn(n_tokens, hidden, generator=gen).to(dtype).to(DEVICE)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    g = torch.randn(n_tokens, hidden, generator=gen).to(dtype).to(DEVICE)

    def run(xx, pp, fused):
        xx, pp = xx.detach().requires_grad_(True), pp.detach().requires_grad_(True)
        rows, row_probs, plan = permute(xx, m, pp, num_out_tokens=n_out, fused=fused, drop_and_pad=drop_and_pad)
        # Nonlinear without cancellation (rows * rows + rows cancels near -1 in 16-bit storage)
        out = unpermute(rows * rows * 0.5 + 2, plan, xx.shape, pp, m, fused=fused, drop_and_pad=drop_and_pad)
        loss = (out.double() * g.double()).sum() + row_probs.double().square().sum()
        return (out, *torch.autograd.grad(loss, (xx, pp)))

    got = run(x, p, True)
    want = run(x.double(), p.double(), False)
    assert_close_to_ref(got[0], want[0], dtype, "out")
    assert_close_to_ref(got[1], want[1], dtype, "d_tokens")
    # d_probs[t, e] = sum over the row of g * h + 2 p: the row sum cancels, so its error (from the
    # 16-bit rows) is relative to the sum of absolute terms.
    h = x.double() * x.double() * 0.5 + 2
    bound = ((g.double().abs() * h).sum(1, keepdim=True) + 2 * p.double()) * m
    assert_close_to_ref(got[2], want[2], dtype, "d_probs", bound=bound)
