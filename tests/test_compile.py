"""torch.compile without graph breaks, and torch.library.opcheck for every op."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import DEVICE, make_generator
from moe_utils.codegen.specs import REGISTRY

import moe_utils
from moe_utils import MoEAuxLossAutoScaler, permute, unpermute, weighted_bias_quick_geglu_impl


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
    torch.library.opcheck(_unpermute_op, (rows, plan, p, 10, False))
    torch.library.opcheck(_unpermute_backward_op, (torch.randn(10, 24).to(DEVICE), out, plan, p.detach(), True, False))


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
    """alpha, linear_offset and clamp reach the kernel as fp32 scalars: compiled == eager, bit for bit."""
    gen = make_generator(4)
    y = torch.randn(16, 64, generator=gen).to(torch.bfloat16).to(DEVICE).requires_grad_(True)
    w = torch.rand(16, 1, generator=gen).to(DEVICE).requires_grad_(True)

    def fn(y, w, offset, alpha):
        return weighted_bias_quick_geglu_impl(y, None, w, fp8, offset, 3.0, alpha)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    for offset, alpha in ((0.5, 1.3), (0.25, 2.1)):
        a = fn(y, w, offset, alpha)
        b = compiled(y, w, offset, alpha)
        assert torch.equal(a, b)
        ga = torch.autograd.grad(a.float().sum(), (y, w))
        gb = torch.autograd.grad(b.float().sum(), (y, w))
        assert all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))


def test_every_public_name_compiles_through_a_function_class():
    """The activations' public functional forms are torch.autograd.Functions: dynamo traces them."""
    y = torch.randn(8, 32).to(DEVICE).requires_grad_(True)
    w = torch.rand(8, 1).to(DEVICE)
    torch._dynamo.reset()
    for fn in (moe_utils.weighted_swiglu, moe_utils.weighted_geglu, moe_utils.weighted_quick_geglu):
        compiled = torch.compile(fn, fullgraph=True)
        torch.testing.assert_close(compiled(y, w), fn(y, w))
