"""Tensor subclasses at the public entry points: a functional collective's result (waited on, the
same numbers and gradients as the plain tensor) and a DTensor (a clear TypeError). Before session
36 both reached Triton, which failed with "Attempted to access the data pointer on an invalid python
storage"."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, TRITON, make_generator

import moe_utils

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")


def _collective(t: torch.Tensor) -> torch.Tensor:
    """t as a functional collective returns it (torch.distributed._functional_collectives, e.g. an
    all-to-all of the token dispatch): an AsyncCollectiveTensor, here a leaf of its own."""
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    out = AsyncCollectiveTensor(t.detach().clone().requires_grad_(t.requires_grad))
    assert type(out) is AsyncCollectiveTensor
    return out


class _CollectiveGradient(torch.autograd.Function):
    """Identity whose backward hands on the gradient as a collective's result, as a functional
    all-to-all's backward after the op would."""

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        from torch.distributed._functional_collectives import AsyncCollectiveTensor

        return AsyncCollectiveTensor(g.detach().clone())


def _twins(*tensors):
    """(plain leaves, collective leaves) with the same values."""
    plain = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
    return plain, [_collective(t) for t in plain]


@pytest.mark.skipif(not TRITON, reason="the kernels need a GPU or TRITON_INTERPRET=1")
def test_activation_takes_a_collective_result():
    gen = make_generator(61)
    y = torch.randn(6, 40, generator=gen).to(DEVICE)
    b = torch.randn(40, generator=gen).to(DEVICE)
    w = torch.rand(6, 1, generator=gen).to(DEVICE)
    g = torch.randn(6, 20, generator=gen).to(DEVICE)
    results = []
    for collective, leaves in enumerate(_twins(y, b, w)):
        out = moe_utils.weighted_bias_quick_geglu_impl(*leaves, True, 0.5, 3.0)  # fp8 copy, offset, clamp
        grads = torch.autograd.grad(_CollectiveGradient.apply(out) if collective else out, leaves, g)
        back = moe_utils.weighted_bias_quick_geglu_back(g, *(t.detach() for t in leaves), 0.5, 3.0)
        results.append((out, grads, back))
    (out, grads, back), (out_c, grads_c, back_c) = results
    assert type(out_c) is torch.Tensor and torch.equal(out_c, out)
    assert all(torch.equal(u, v) for u, v in zip(grads, grads_c, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(back, back_c, strict=True))


@pytest.mark.skipif(not TRITON, reason="the kernels need a GPU or TRITON_INTERPRET=1")
def test_routing_takes_collective_results():
    gen = make_generator(62)
    n_tokens, n_experts, hidden = 9, 4, 24
    scores = torch.rand(n_tokens, n_experts, generator=gen)
    routing_map = torch.zeros(n_tokens, n_experts, dtype=torch.bool)
    routing_map.scatter_(1, scores.topk(2, dim=1).indices, True)
    tokens = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    probs = (scores * routing_map).to(DEVICE)
    routing_map = routing_map.to(DEVICE)
    g = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    g_rows = torch.randn(n_tokens * 2, hidden, generator=gen).to(DEVICE)
    results = []
    for collective in (False, True):
        (t, p), (tc, pc) = _twins(tokens, probs)
        t, p = (tc, pc) if collective else (t, p)
        rmap = _collective(routing_map) if collective else routing_map
        rows, row_probs, plan = moe_utils.permute(t, rmap, p, num_out_tokens=n_tokens * 2, fused=True)
        # The experts' output comes back through a collective too (a new leaf here).
        expert_out = (rows * 2).detach().requires_grad_(True)
        expert_in = _collective(expert_out) if collective else expert_out
        out = moe_utils.unpermute(expert_in, plan, tokens.shape, probs=p, fused=True)
        cotangents = (g_rows, torch.arange(row_probs.numel(), dtype=row_probs.dtype, device=DEVICE))
        if collective:  # permute's backward gets collective results too
            rows, row_probs = _CollectiveGradient.apply(rows), _CollectiveGradient.apply(row_probs)
        d_rows, d_probs_rows = torch.autograd.grad((rows, row_probs), (t, p), cotangents)
        grads = torch.autograd.grad(_CollectiveGradient.apply(out) if collective else out, (expert_in, p), g)
        results.append((rows, row_probs, out, d_rows, d_probs_rows, *grads))
    for a, b in zip(*results, strict=True):
        assert type(b) is torch.Tensor and torch.equal(a, b)


def _dtensor(t: torch.Tensor):
    """t as a DTensor sharded by rows on a one-process CPU mesh (gloo, no communication)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (1,))
    return DTensor.from_local(t.cpu(), mesh, [Shard(0)], run_check=False)


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_dtensor_inputs_are_refused_with_a_clear_error(one_process_group):
    gen = make_generator(63)
    y = _dtensor(torch.randn(6, 40, generator=gen))
    w = torch.rand(6, 1, generator=gen)
    with pytest.raises(
        TypeError, match=r"weighted_bias_swiglu_impl: input is a DTensor \(placements \(Shard\(dim=0\),\)\)"
    ):
        moe_utils.weighted_bias_swiglu_impl(y, w)
    with pytest.raises(TypeError, match=r"swiglu_back: g is a DTensor"):
        moe_utils.swiglu_back(_dtensor(torch.randn(6, 20, generator=gen)), y.to_local())
    routing_map = torch.zeros(6, 4, dtype=torch.bool)
    routing_map[:, 1] = True
    with pytest.raises(TypeError, match=r"permute: tokens is a DTensor"):
        moe_utils.permute(_dtensor(torch.randn(6, 8, generator=gen)), routing_map, fused=True)
