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


def test_dtensor_refusals_name_the_arguments(one_process_group):
    """The routing ops refuse DTensors (the routing works across shards); the activations refuse a
    DTensor beside a plain tensor, as DTensor's operators do."""
    gen = make_generator(63)
    y = _dtensor(torch.randn(6, 40, generator=gen))
    w = torch.rand(6, 1, generator=gen)
    with pytest.raises(TypeError, match=r"WeightedSwiGLUFunction: input is a DTensor but weights is not"):
        moe_utils.WeightedSwiGLUFunction.apply(y, w, False)
    with pytest.raises(TypeError, match=r"weighted_bias_swiglu_impl: input is a DTensor but weights is not"):
        moe_utils.weighted_bias_swiglu_impl(y, w)
    with pytest.raises(TypeError, match=r"swiglu_back: g is a DTensor but input is not"):
        moe_utils.swiglu_back(_dtensor(torch.randn(6, 20, generator=gen)), y.to_local())
    with pytest.raises(ValueError, match=r"weighted_swiglu: weights has shape \(5, 1\); expected \[T, 1\] with T = 6"):
        moe_utils.weighted_swiglu(y, _dtensor(torch.rand(5, 1, generator=gen)))
    # An odd width is named as such (until session 50 the functional forms said "weights is a
    # DTensor but input is not", the Functions refused the DTensor weights).
    odd, w_dt = _dtensor(torch.randn(6, 15, generator=gen)), _dtensor(w)
    for call in (moe_utils.weighted_swiglu, moe_utils.WeightedSwiGLUFunction.apply):
        with pytest.raises(ValueError, match=r"last dimension of input must be even.*\(6, 15\)"):
            call(odd, w_dt)
    with pytest.raises(ValueError, match=r"weighted_swiglu_back: the last dimension of input must be even"):
        moe_utils.weighted_swiglu_back(_dtensor(torch.randn(6, 7, generator=gen)), odd, w_dt)
    routing_map = torch.zeros(6, 4, dtype=torch.bool)
    routing_map[:, 1] = True
    with pytest.raises(TypeError, match=r"permute: tokens is a DTensor"):
        moe_utils.permute(_dtensor(torch.randn(6, 8, generator=gen)), routing_map, fused=True)


def _two_ranks(rank: int, store_path: str) -> None:
    """One of two CPU processes (gloo): the functional forms and the seed Function classes on
    DTensors of every placement of a [5, 3, 40] input (rows sharded unevenly by either row
    dimension, replicated, columns sharded), against the same calls on the full tensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        gen = make_generator(64)  # the same values on both ranks
        y = torch.randn(5, 3, 40, generator=gen)
        w = torch.rand(5, 3, 1, generator=gen)
        b = torch.randn(40, generator=gen)
        b_rows = torch.randn(5, 1, 40, generator=gen)  # broadcast along the second dimension
        g = torch.randn(5, 3, 20, generator=gen)

        def close(got, want):
            got = got.full_tensor()
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

        for placements in ([Shard(0)], [Shard(1)], [Replicate()], [Shard(2)]):
            w_placements = placements if placements != [Shard(2)] else [Shard(1)]
            cases = [
                # (op, its arguments before the tensors' placements, extra arguments)
                (moe_utils.weighted_bias_quick_geglu_impl, (y, b, w), (True, 0.5, 3.0)),  # fp8 copy, offset, clamp
                (moe_utils.weighted_bias_swiglu, (y, b_rows, w.reshape(15, 1)), ()),  # per-row bias, [T, 1] weights
                # the seed Functions: the same local rows in their forward, DTensors made in their backward
                (moe_utils.WeightedBiasQuickGeGLUFunction.apply, (y, b, w), (True, 0.5)),
                (moe_utils.WeightedSwiGLUFunction.apply, (y, w.reshape(15, 1)), (False,)),
            ]
            for op, tensors, extra in cases:
                plain = [t.clone().requires_grad_(True) for t in tensors]
                want = op(*plain, *extra)
                want_grads = torch.autograd.grad(want, plain, g)
                # a shared bias replicated, [5, 3, ...] weights and bias like the input's rows, [15, 1] by rows
                others = {1: [Replicate()], 2: [Shard(0)], 3: w_placements}
                spread = [distribute_tensor(tensors[0], mesh, placements)]
                spread += [distribute_tensor(t, mesh, others[t.dim()]) for t in tensors[1:]]
                spread = [t.requires_grad_(True) for t in spread]
                got = op(*spread, *extra)
                # the rows stay where they are; a column shard is gathered first
                assert got.placements == (tuple(placements) if placements != [Shard(2)] else (Replicate(),))
                close(got, want)
                # the Functions' incoming gradient replicated: brought to the output's rows in their backward
                cotangent = [Replicate()] if op.__name__ == "apply" else got.placements
                grads = torch.autograd.grad(got, spread, distribute_tensor(g, mesh, cotangent))
                for grad, want_grad, leaf in zip(grads, want_grads, spread, strict=True):
                    assert grad.placements == leaf.placements
                    close(grad, want_grad)
            if placements == [Shard(1)]:  # traced by torch.compile in one graph: the same numbers and gradients

                def both(y, b, w):
                    functional = moe_utils.weighted_bias_quick_geglu_impl(y, b, w, True, 0.5, 3.0)
                    return functional + moe_utils.WeightedBiasQuickGeGLUFunction.apply(y, b, w, True, 0.25)

                plain = [t.clone().requires_grad_(True) for t in (y, b, w)]
                want = both(*plain)
                want_grads = torch.autograd.grad(want, plain, g)
                spread = [
                    distribute_tensor(t, mesh, p).requires_grad_(True)
                    for t, p in zip((y, b, w), (placements, [Replicate()], placements), strict=True)
                ]
                got = torch.compile(both, fullgraph=True)(*spread)
                assert got.placements == (Shard(1),)
                close(got, want)
                grads = torch.autograd.grad(got, spread, distribute_tensor(g, mesh, got.placements))
                for grad, want_grad in zip(grads, want_grads, strict=True):
                    close(grad, want_grad)
            # the *_back helper, a [5, 1, 40] bias: its gradient summed over the broadcast rows and the ranks
            want = moe_utils.weighted_bias_swiglu_back(g, y, b_rows, w)
            spread = [distribute_tensor(t, mesh, w_placements) for t in (g, y, b_rows, w)]
            spread[1] = distribute_tensor(y, mesh, placements)
            got = moe_utils.weighted_bias_swiglu_back(*spread)
            for grad, want_grad, arg in zip(got, want, spread[1:], strict=True):
                assert grad.placements == arg.placements
                close(grad, want_grad)
        # The interleaved layout keeps a column shard where H divides over it (whole (gate, up) pairs
        # on each rank; a shared bias sharded alike, the weights' gradient summed over the ranks),
        # and gathers it where not (H = 21).
        y_odd, b_odd = torch.randn(5, 3, 42, generator=gen), torch.randn(42, generator=gen)
        for inputs, kept in (((y, b, w), True), ((y_odd, b_odd, w), False)):
            plain = [t.clone().requires_grad_(True) for t in inputs]
            want = moe_utils.weighted_bias_quick_geglu_impl(*plain, True, 0.5, 3.0, interleaved=True)
            want_grads = torch.autograd.grad(want, plain, g if kept else torch.ones_like(want))
            spread = [
                distribute_tensor(t, mesh, p).requires_grad_(True)
                for t, p in zip(inputs, ([Shard(2)], [Shard(0)], [Replicate()]), strict=True)
            ]
            got = moe_utils.weighted_bias_quick_geglu_impl(*spread, True, 0.5, 3.0, interleaved=True)
            assert got.placements == ((Shard(2),) if kept else (Replicate(),))
            close(got, want)
            cotangent = distribute_tensor(g if kept else torch.ones_like(want), mesh, got.placements)
            for grad, want_grad, leaf in zip(
                torch.autograd.grad(got, spread, cotangent), want_grads, spread, strict=True
            ):
                assert grad.placements == leaf.placements
                close(grad, want_grad)
        want = moe_utils.weighted_bias_swiglu_back(g, y, b_rows, w, interleaved=True)
        spread = [
            distribute_tensor(t, mesh, p)
            for t, p in zip((g, y, b_rows, w), ([Shard(2)],) * 3 + ([Replicate()],), strict=True)
        ]
        got = moe_utils.weighted_bias_swiglu_back(*spread, interleaved=True)
        for grad, want_grad, arg in zip(got, want, spread[1:], strict=True):
            assert grad.placements == arg.placements
            close(grad, want_grad)
    finally:
        dist.destroy_process_group()


def test_functional_forms_take_dtensors_on_two_ranks(tmp_path):
    """Each rank runs the kernels on its local rows (the Triton interpreter's on the CPU CI; on a GPU
    machine the CPU tensors take the eager path, the same placements logic)."""
    import torch.multiprocessing as mp

    mp.spawn(_two_ranks, args=(str(tmp_path / "store"),), nprocs=2, join=True)
