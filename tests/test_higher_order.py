"""Second derivatives: refused loudly where kernels compute the gradient, exact where PyTorch does.

A kernel's gradient carries no autograd graph. Before this file's checks, a backward with
create_graph=True through an activation returned a gradient whose graph held only the path through
the incoming gradient: a Hessian-vector product or a gradient penalty came out wrong, silently.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import DEVICE, TRITON

import moe_utils

F64 = torch.float64


def _leaf(*shape: int, positive: bool = False) -> torch.Tensor:
    t = (
        torch.rand(*shape, dtype=F64, device=DEVICE) + 0.1
        if positive
        else torch.randn(*shape, dtype=F64, device=DEVICE)
    )
    return t.requires_grad_()


ACTIVATIONS = [
    ("weighted_bias_swiglu_impl", lambda y, b, w: moe_utils.weighted_bias_swiglu_impl(y, w)),
    # fp8_input_store keeps no tensor linked to the input: the check must not depend on one.
    ("weighted_bias_swiglu_impl", lambda y, b, w: moe_utils.weighted_bias_swiglu_impl(y, w, True)),
    ("weighted_bias_geglu_impl", lambda y, b, w: moe_utils.weighted_bias_geglu_impl(y, w)),
    (
        "weighted_bias_quick_geglu_impl",
        lambda y, b, w: moe_utils.weighted_bias_quick_geglu_impl(y, b, w, False, 1.0, 7.0),
    ),
    ("WeightedSwiGLUFunction", lambda y, b, w: moe_utils.WeightedSwiGLUFunction.apply(y, w, False)),
    ("swiglu", lambda y, b, w: moe_utils.swiglu(y)),
]


@pytest.mark.parametrize(
    "name, fn",
    ACTIVATIONS,
    ids=["swiglu_impl", "swiglu_impl_fp8", "geglu_impl", "quick_geglu_impl", "Function", "swiglu"],
)
def test_activation_double_backward_raises_naming_the_op(name, fn):
    y, b, w = _leaf(5, 6), _leaf(6), _leaf(5, 1, positive=True)
    # The silent case: a second term that PyTorch differentiates made the gradient carry a graph.
    loss = fn(y, b, w).square().sum() + (y**3).sum()
    with pytest.raises(RuntimeError, match=f"{name}: backward called with create_graph=True"):
        torch.autograd.grad(loss, y, create_graph=True)
    # First derivatives are unchanged, and create_graph=False still works on a fresh graph.
    (d_y,) = torch.autograd.grad(fn(y, b, w).sum(), y)
    assert d_y.shape == y.shape and torch.isfinite(d_y).all()


def test_activation_weights_alone_are_linear_in_the_incoming_gradient():
    """With only the weights requiring grad, d_weights = sum(f(y) * g) is linear in g: a graph is
    refused only where g carries one."""
    y, w = torch.randn(5, 6, dtype=F64, device=DEVICE), _leaf(5, 1, positive=True)
    out = moe_utils.weighted_bias_swiglu_impl(y, w)
    (got,) = torch.autograd.grad(out.sum(), w, create_graph=True, retain_graph=True)
    (want,) = torch.autograd.grad(out.sum(), w, retain_graph=True)
    assert got.grad_fn is None
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="weighted_bias_swiglu_impl: backward called with create_graph=True"):
        torch.autograd.grad(out.square().sum(), w, create_graph=True)


def test_activation_op_double_backward_raises():
    swiglu_mod = importlib.import_module("moe_utils.generated.swiglu")
    y, w = _leaf(4, 8), _leaf(4, positive=True)
    out, _ = swiglu_mod._forward_op(y, None, w, False, None, False)
    with pytest.raises(RuntimeError, match="moe_utils::swiglu_fwd: backward called with create_graph=True"):
        torch.autograd.grad(out.square().sum(), (y, w), create_graph=True)
    (d_y,) = torch.autograd.grad(swiglu_mod._forward_op(y, None, w, False, None, False)[0].sum(), y)
    assert torch.isfinite(d_y).all()


def test_back_helpers_give_values_and_refuse_a_backward_through_them():
    y, w, bias = _leaf(3, 2, 10), _leaf(3, 2, 1, positive=True), _leaf(10)
    g = torch.randn(3, 2, 5, dtype=F64, device=DEVICE)
    with torch.no_grad():
        want = moe_utils.weighted_bias_swiglu_back(g, y, bias, w)
    got = moe_utils.weighted_bias_swiglu_back(g, y, bias, w)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.requires_grad and not b.requires_grad
    with pytest.raises(RuntimeError, match="weighted_bias_swiglu_back: its gradients are computed by kernels"):
        got[0].sum().backward()
    d_y = moe_utils.swiglu_back(g, y)  # y requires grad, g not
    with pytest.raises(RuntimeError, match="swiglu_back: its gradients are computed by kernels"):
        torch.autograd.grad(d_y.sum(), y)
    # Tensors without requires_grad: plain results, as before.
    plain = moe_utils.swiglu_back(g, y.detach())
    assert not plain.requires_grad
    torch.testing.assert_close(plain, d_y.detach(), rtol=0, atol=0)


def test_fp8_input_store_must_not_be_a_tensor():
    y, w = _leaf(4, 6), _leaf(4, 1, positive=True)
    # The bias-style call of a *_impl without a bias argument: weights land in fp8_input_store.
    with pytest.raises(
        TypeError, match=r"weighted_bias_swiglu_impl: fp8_input_store must be a bool, got a tensor of shape \(4, 1\)"
    ):
        moe_utils.weighted_bias_swiglu_impl(y, w, w)
    # The reference's truth values still work (a config's 0/1).
    torch.testing.assert_close(
        moe_utils.weighted_bias_swiglu_impl(y, w, 0), moe_utils.weighted_bias_swiglu_impl(y, w, False)
    )


def _routing(n_tokens: int = 6, n_experts: int = 3, hidden: int = 5):
    tokens = _leaf(n_tokens, hidden)
    routing_map = torch.zeros(n_tokens, n_experts, dtype=torch.bool, device=DEVICE)
    routing_map[torch.arange(n_tokens), torch.arange(n_tokens) % n_experts] = True
    routing_map[torch.arange(0, n_tokens, 2), (torch.arange(0, n_tokens, 2) + 1) % n_experts] = True
    probs = _leaf(n_tokens, n_experts, positive=True)
    return tokens, routing_map, probs, int(routing_map.sum())


def test_plain_routing_is_differentiable_twice():
    """fused=False is what the fused path's error points to, so it must give exact second derivatives."""
    tokens, routing_map, probs, n_rows = _routing()

    def round_trip(t, p):
        rows, row_probs, idx = moe_utils.permute(t, routing_map, p, num_out_tokens=n_rows)
        out = moe_utils.unpermute(rows * row_probs.unsqueeze(-1), idx, t.shape, probs=p, routing_map=routing_map)
        return out.square()

    assert torch.autograd.gradgradcheck(round_trip, (tokens, probs))


@pytest.mark.skipif(not TRITON, reason="fused=True needs a GPU or the interpreter")
def test_fused_routing_double_backward_raises_or_is_exact():
    tokens, routing_map, probs, n_rows = _routing()
    rows, row_probs, plan = moe_utils.permute(tokens, routing_map, probs, num_out_tokens=n_rows, fused=True)
    # Linear in the incoming gradient: with a constant one, the gradient is a constant, no error.
    got = torch.autograd.grad(rows.sum() + row_probs.sum(), (tokens, probs), create_graph=True, retain_graph=True)
    want = torch.autograd.grad(rows.sum() + row_probs.sum(), (tokens, probs), retain_graph=True)
    for a, b in zip(got, want, strict=True):
        assert a.grad_fn is None
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # An incoming gradient that carries a graph needs the kernel's derivative: refused.
    with pytest.raises(RuntimeError, match=r"permute: backward called with create_graph=True.*fused=False"):
        torch.autograd.grad(rows.square().sum(), tokens, create_graph=True, retain_graph=True)
    leaf_rows = rows.detach().requires_grad_()
    plain = moe_utils.unpermute(leaf_rows, plan, tokens.shape, fused=True)
    (d_rows,) = torch.autograd.grad(plain.sum(), leaf_rows, create_graph=True, retain_graph=True)
    assert d_rows.grad_fn is None
    torch.testing.assert_close(d_rows, torch.ones_like(d_rows), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"unpermute: backward called with create_graph=True"):
        torch.autograd.grad(plain.square().sum(), leaf_rows, create_graph=True)
    weighted = moe_utils.unpermute(rows, plan, tokens.shape, probs=probs, routing_map=routing_map, fused=True)
    with pytest.raises(RuntimeError, match=r"unpermute: backward called with create_graph=True.*fused=False"):
        torch.autograd.grad(weighted.sum(), tokens, create_graph=True)
