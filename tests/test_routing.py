"""permute / unpermute: fused (Triton) against the reference path and float64 autograd."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE, FactoryLog, make_generator, misaligned

from moe_utils import _runtime as rt
from moe_utils import permute, unpermute

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def topk_map(n_tokens, n_experts, k, gen, dtype=torch.bool):
    scores = torch.rand(n_tokens, n_experts, generator=gen)
    idx = scores.topk(min(k, n_experts), dim=1).indices
    m = torch.zeros(n_tokens, n_experts, dtype=torch.bool).scatter_(1, idx, True)
    return m.to(dtype).to(DEVICE)


def capacity_map(n_tokens, n_experts, capacity, gen):
    """Exactly `capacity` tokens per expert (what a drop-and-pad dispatcher produces)."""
    m = torch.zeros(n_tokens, n_experts, dtype=torch.bool)
    for e in range(n_experts):
        m[torch.randperm(n_tokens, generator=gen)[:capacity], e] = True
    return m.to(DEVICE)


CASES = [(t, e, k) for t in (1, 17, 256) for e in (1, 4, 8, 64) for k in (1, 2, 8) if k <= e]


@pytest.mark.parametrize("n_tokens, n_experts, k", CASES)
@pytest.mark.parametrize("hidden", [8, 96, 1000])
def test_fused_permute_equals_reference_exactly(n_tokens, n_experts, k, hidden):
    if n_tokens * hidden > 256 * 96 and hidden == 1000 and DEVICE.type == "cpu":
        n_tokens = 64  # keep the interpreter quick at the widest rows
    gen = make_generator(n_tokens * 1000 + n_experts * 10 + k)
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    a, ap, ai = permute(x, m, p, fused=False)
    b, bp, plan = permute(x, m, p, fused=True)
    assert torch.equal(a, b) and torch.equal(ap, bp)
    assert torch.equal(ai, plan[: ai.numel()])  # the plan starts with the reference's sorted_indices
    # Without probs, and with num_out_tokens given (no host sync): same rows.
    c, cp, _ = permute(x, m, None, num_out_tokens=a.shape[0], fused=True)
    assert cp is None and torch.equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 2, 8])
def test_round_trips(dtype, k):
    gen = make_generator(k)
    n_tokens, n_experts, hidden = 33, 8, 40
    x = torch.randn(n_tokens, hidden, generator=gen).to(dtype).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    perm, _, plan = permute(x, m, fused=True)
    back = unpermute(perm, plan, x.shape, fused=True)
    if dtype == torch.float32:
        torch.testing.assert_close(back, x * k, rtol=1e-6, atol=0)
    else:  # 16-bit rows summed in fp32 are exact: one rounding at the end
        assert torch.equal(back, (x.float() * k).to(dtype))
    back_p = unpermute(perm, plan, x.shape, probs=p, routing_map=m, fused=True)
    want = x.double() * (p * m).sum(1, keepdim=True).double()
    torch.testing.assert_close(back_p.double(), want, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_probs", [False, True])
def test_unpermute_matches_float64(dtype, with_probs):
    gen = make_generator(42)
    n_tokens, n_experts, k, hidden = 45, 16, 4, 72
    x = torch.randn(n_tokens, hidden, generator=gen).to(dtype).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    m[3] = False  # a token routed nowhere gets a zero row
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE) if with_probs else None
    perm_ref, _, idx = permute(x, m, fused=False)
    rows = torch.randn(perm_ref.shape, generator=gen).to(dtype).to(DEVICE)
    _, _, plan = permute(x, m, fused=True)
    out = unpermute(rows, plan, x.shape, probs=p, routing_map=m, fused=True)
    ref = unpermute(rows.double(), idx, x.shape, probs=None if p is None else p.double(), routing_map=m)
    tol = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    assert out.dtype == dtype and torch.all(out[3] == 0)
    # The reference path agrees too, within its own rounding: without probs its scatter_add
    # accumulates in the 16-bit dtype (k roundings), ours in fp32 (one).
    ref_path = unpermute(rows, idx, x.shape, probs=p, routing_map=m, fused=False)
    path_tol = tol if with_probs or dtype == torch.float32 else 4 * tol
    torch.testing.assert_close(out.double(), ref_path.double(), rtol=path_tol, atol=path_tol)


@pytest.mark.parametrize("density", [0.1, 0.3, 0.7])
def test_uneven_top_k_gathers_every_entry(density):
    # The gather (unpermute's forward, permute's backward) unrolls each token's first block_k
    # entries (the average top-k rounded up to a power of two) and loops over the rest: tokens
    # routed nowhere, to fewer experts than block_k, and to many more, against float64.
    gen = make_generator(int(density * 100))
    n_tokens, n_experts, hidden = 41, 12, 40
    m = torch.rand(n_tokens, n_experts, generator=gen) < density
    m[0], m[1], m[2] = True, False, torch.arange(n_experts) == 5  # every expert, none, one
    m = m.to(DEVICE)
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    n_rows = int(m.sum())
    rows = torch.randn(n_rows, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    g_rows = torch.randn(n_rows, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    g_probs = torch.randn(n_rows, generator=gen).to(DEVICE)
    _, _, idx = permute(x, m, fused=False)
    _, _, plan = permute(x, m, fused=True)
    out = unpermute(rows, plan, x.shape, probs=p, routing_map=m, fused=True)
    want = unpermute(rows.double(), idx, x.shape, probs=p.double(), routing_map=m)
    torch.testing.assert_close(out.double(), want, rtol=8e-3, atol=8e-3)
    assert torch.all(out[1] == 0) and out[0].abs().sum() > 0
    grads = {}
    for fused, cast in ((True, torch.bfloat16), (False, torch.float64)):
        xx = x.to(cast).requires_grad_(True)
        pp = p.to(torch.float32 if fused else cast).requires_grad_(True)
        perm, perm_probs, _ = permute(xx, m, pp, fused=fused)
        grads[fused] = torch.autograd.grad((perm, perm_probs), (xx, pp), (g_rows.to(cast), g_probs.to(pp.dtype)))
    for got, want in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=8e-3, atol=8e-3)
    assert torch.all(grads[True][0][1] == 0) and torch.all(grads[True][1][~m] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradients_against_float64_autograd(dtype):
    gen = make_generator(7)
    n_tokens, n_experts, k, hidden = 29, 8, 3, 48
    x = torch.randn(n_tokens, hidden, generator=gen).to(dtype).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    g_rows_weight = torch.randn(n_tokens * k, generator=gen).to(DEVICE)
    g_out = torch.randn(n_tokens, hidden, generator=gen).to(dtype).to(DEVICE)
    mix = torch.randn(hidden, hidden, generator=gen).to(DEVICE) / hidden**0.5

    grads = {}
    for fused, cast in ((True, dtype), (False, torch.float64)):
        xx = x.to(cast).clone().requires_grad_(True)
        pp = p.to(torch.float64 if cast == torch.float64 else p.dtype).clone().requires_grad_(True)
        pp2 = pp.detach().clone().requires_grad_(True)
        expert = mix.to(torch.float64) if cast == torch.float64 else mix
        perm, perm_probs, idx = permute(xx, m, pp, fused=fused)
        rows = (perm.to(expert.dtype) @ expert).to(perm.dtype)  # an "expert" between the two
        loss_probs = (perm_probs * g_rows_weight.to(perm_probs.dtype)).sum()
        out = unpermute(rows, idx, xx.shape, probs=pp2, routing_map=m, fused=fused)
        loss = (out * g_out.to(out.dtype)).sum() + loss_probs
        grads[fused] = torch.autograd.grad(loss, (xx, pp, pp2))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    names = ("d_tokens", "d_probs(permute)", "d_probs(unpermute)")
    for got, want, what in zip(grads[True], grads[False], names, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=lambda s, w=what: f"{w}: {s}")


@pytest.mark.parametrize("hidden", [1500, 2100])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_unpermute_backward_walks_wide_rows_in_column_steps(k, hidden):
    # The scatter-dot (unpermute's backward with the probs gradient) walks each token's rows in
    # column steps, 1024 up to 2048 columns (2048 at top-4) and 2048 beyond: two steps (the second
    # partly masked) or one. Padding rows (num_out_tokens past the routed count) get zeros; against
    # float64 autograd. The forward at top-8 and 1500 columns runs in three 512-column blocks.
    from moe_utils import unpermutation

    assert unpermutation.dot_block_h(hidden, k) == (1024 if hidden <= 2048 and k != 4 else 2048)
    assert unpermutation.gather_block_h(hidden, False, k, 9, False) == (512 if k == 8 and hidden <= 2048 else 1024)
    gen = make_generator(40 + k)
    n_tokens, n_experts = 9, 16
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    g_out = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    rows, _, plan = permute(x, m, num_out_tokens=n_tokens * k + 3, fused=True)
    _, _, idx = permute(x, m, fused=False)
    grads, outs = {}, {}
    for fused, cast in ((True, torch.bfloat16), (False, torch.float64)):
        r = (rows if fused else rows[: n_tokens * k]).to(cast).requires_grad_(True)
        pp = p.to(torch.float32 if fused else cast).requires_grad_(True)
        out = unpermute(r, plan if fused else idx, x.shape, probs=pp, routing_map=m, fused=fused)
        outs[fused] = out
        grads[fused] = torch.autograd.grad(out, (r, pp), g_out.to(cast))
    torch.testing.assert_close(outs[True].double(), outs[False], rtol=8e-3, atol=8e-3)
    d_rows, d_p = grads[True]
    torch.testing.assert_close(d_rows[: n_tokens * k].double(), grads[False][0], rtol=8e-3, atol=8e-3)
    torch.testing.assert_close(d_p.double(), grads[False][1], rtol=2e-2, atol=2e-2)
    assert torch.all(d_rows[n_tokens * k :] == 0) and torch.all(d_p[~m] == 0) and d_p[m].abs().min() > 0


def test_streaming_stores_rule_and_bits(monkeypatch):
    # The scatter's copies stream their stores past L2 (cache modifier .cs) for top-4 and more into
    # outputs of 128 MiB and more; a hint only: permute forward (padding rows too) and unpermute's
    # backward without the probs gradient (the same kernel, scaling) give the same bits with it
    # forced on at a small size.
    from moe_utils import permutation

    assert permutation._streaming_stores(8, 4096 * 8, 2048, 2)  # 128 MiB
    assert permutation._streaming_stores(4, 65536 * 4, 1024, 2)  # 512 MiB at top-4
    assert not permutation._streaming_stores(2, 65536 * 2, 4096, 2)  # top-2: no gain measured
    assert not permutation._streaming_stores(8, 4096 * 8, 1024, 2)  # 64 MiB: stays in L2 for the GEMM
    gen = make_generator(45)
    n_tokens, n_experts, k, hidden = 33, 16, 8, 96
    m = topk_map(n_tokens, n_experts, k, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    g_out = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)

    def run():
        rows, probs, plan = permute(x, m, p, num_out_tokens=n_tokens * k + 5, fused=True)
        r = rows.detach().requires_grad_(True)
        (d_rows,) = torch.autograd.grad(unpermute(r, plan, x.shape, probs=p, routing_map=m, fused=True), r, g_out)
        return rows, probs, d_rows

    want = run()
    monkeypatch.setattr(permutation, "_STREAM_STORE_BYTES", 0)
    assert permutation._streaming_stores(k, 1, 1, 2)
    for a, b in zip(want, run(), strict=True):
        assert torch.equal(a, b)
    assert torch.all(want[0][n_tokens * k :] == 0) and torch.all(want[2][n_tokens * k :] == 0)


@pytest.mark.slow
def test_padding_programs_of_any_size_give_the_same_bits(monkeypatch):
    # permute's scatter and unpermute's backward (the scatter-dot with the probs gradient, the
    # scatter without) zero the padding rows in programs of _PAD_ROWS rows each (64 shipped,
    # session 24; 16 with drop_and_pad), all rows at once in column chunks: with 8, 16
    # or 64 rows a program (the 40 columns in one chunk, or in two of 32 at 64 rows), one or many
    # programs, the last one partial, padding past the routed rows and inside experts
    # (drop_and_pad): the same bits, and the padding rows zero (their outputs poisoned first).
    from moe_utils import _runtime as rt
    from moe_utils import permutation, unpermutation

    assert permutation._PAD_ROWS & (permutation._PAD_ROWS - 1) == 0
    assert permutation.pad_rows_per_program(False) == 64 and permutation.pad_rows_per_program(True) == 16
    gen = make_generator(47)
    n_tokens, n_experts, k, hidden = 37, 12, 3, 40
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    capacity_m = capacity_map(n_tokens, n_experts, 9, gen)
    capacity_m[:5, 2] = False  # expert 2 keeps fewer than capacity tokens: padding inside the rows
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    g_out = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    n_out = n_tokens * k + 70  # 181 rows: 3 programs of 64 (the last partial), 23 of 8

    def run():
        results = []
        for routing_map, drop_and_pad, n_rows in ((m, False, n_out), (capacity_m, True, 10 * n_experts)):
            with rt.poisoned_outputs():
                rows, probs, plan = permute(
                    x, routing_map, p, num_out_tokens=n_rows, fused=True, drop_and_pad=drop_and_pad
                )
                for probs_grad in (True, False):
                    r = rows.detach().requires_grad_(True)
                    pp = p.detach().requires_grad_(probs_grad)
                    out = unpermute(r, plan, x.shape, pp, routing_map, fused=True, drop_and_pad=drop_and_pad)
                    results += torch.autograd.grad(out, (r, pp) if probs_grad else (r,), g_out)
            results += [rows, probs, plan[:n_rows]]
        return results

    shipped = run()
    pad = shipped[5][:n_out] < 0  # padding rows of the first permute (src_token -1)
    assert pad.sum() == 70 and torch.all(shipped[3][pad] == 0) and torch.all(shipped[0][pad] == 0)
    assert torch.all(shipped[2][pad] == 0) and torch.all(shipped[4][pad] == 0)
    for n_rows in (8, 16, 64):
        monkeypatch.setattr(permutation, "_PAD_ROWS", n_rows)
        monkeypatch.setattr(permutation, "_DROP_AND_PAD_PAD_ROWS", {8: 64, 16: 8, 64: 16}[n_rows])
        for a, b in zip(shipped, run(), strict=True):
            assert torch.equal(a, b)

    # unpermute's backward takes its padding programs' rows from the routing it was given, through
    # its ops (session 25): pad_rows_per_program(drop_and_pad) in both kernels, eager, compiled, and
    # through the op's own autograd (torch.ops users).
    asked = []

    def spy(drop_and_pad):
        asked.append(drop_and_pad)
        return 8

    monkeypatch.setattr(permutation, "pad_rows_per_program", spy)
    monkeypatch.setattr(unpermutation, "pad_rows_per_program", spy)
    rows, _, plan = permute(x, capacity_m, p, num_out_tokens=10 * n_experts, fused=True, drop_and_pad=True)
    for path in ("eager", "compiled", "op"):
        for drop_and_pad in (True, False):
            for probs_grad in (True, False):
                r = rows.detach().requires_grad_(True)
                pp = p.detach().requires_grad_(probs_grad)

                def fn(r, pp, drop_and_pad=drop_and_pad):
                    return unpermute(r, plan, x.shape, pp, capacity_m, fused=True, drop_and_pad=drop_and_pad)

                if path == "op":
                    out = unpermutation._unpermute_op(r, plan, pp, n_tokens, drop_and_pad, False)
                else:
                    out = (torch.compile(fn, fullgraph=True) if path == "compiled" else fn)(r, pp)
                asked.clear()
                torch.autograd.grad(out, (r, pp) if probs_grad else (r,), g_out)
                assert asked == [drop_and_pad], (path, drop_and_pad, probs_grad, asked)


def test_drop_and_pad_fixed_capacity():
    gen = make_generator(3)
    n_tokens, n_experts, capacity, hidden = 40, 8, 6, 24
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    m = capacity_map(n_tokens, n_experts, capacity, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    n_out = capacity * n_experts
    a, ap, ai = permute(x, m, p, num_out_tokens=n_out, drop_and_pad=True)
    b, bp, plan = permute(x, m, p, num_out_tokens=n_out, fused=True, drop_and_pad=True)
    assert a.shape == (n_out, hidden) and torch.equal(a, b) and torch.equal(ap, bp)
    ua = unpermute(a, ai, x.shape, p, m, drop_and_pad=True)
    ub = unpermute(b, plan, x.shape, p, m, fused=True, drop_and_pad=True)
    torch.testing.assert_close(ua, ub, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("probs_grad", [False, True])
def test_padding_rows_and_empty_experts(probs_grad):
    # With probs_grad, unpermute's backward runs the scatter-dot kernel, whose extra programs zero
    # the padding rows; without, the scatter with its padding programs.
    gen = make_generator(5)
    n_tokens, n_experts, hidden = 12, 4, 16
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    m = topk_map(n_tokens, n_experts, 2, gen)
    m[:, 1] = False  # an expert with no tokens
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    routed = int(m.sum())
    a, ap, _ = permute(x, m, p, fused=False)
    b, bp, plan = permute(x, m, p, num_out_tokens=routed + 5, fused=True)
    assert b.shape == (routed + 5, hidden)
    assert torch.equal(b[:routed], a) and torch.all(b[routed:] == 0)
    assert torch.equal(bp[:routed], ap) and torch.all(bp[routed:] == 0)
    assert torch.all(plan[routed : routed + 5] == -1)  # src_token marks the padding rows
    b.requires_grad_(True)
    p.requires_grad_(probs_grad)
    back = unpermute(b, plan, x.shape, p, m, fused=True)
    torch.testing.assert_close(back, x * (p * m).sum(1, keepdim=True), rtol=1e-5, atol=1e-5)
    g = torch.randn(back.shape, generator=gen).to(DEVICE)
    grads = torch.autograd.grad(back, (b, p) if probs_grad else (b,), g)
    d_rows = grads[0]
    assert torch.all(d_rows[routed:] == 0)  # padding rows get a zero gradient, not garbage
    want_rows = (g[None, :, :] * p.detach().T[:, :, None])[m.T]  # expert-major, as the rows
    torch.testing.assert_close(d_rows[:routed], want_rows, rtol=1e-5, atol=1e-5)
    if probs_grad:  # d_probs[t, e] = <g[t], x[t]> where routed, 0 elsewhere
        torch.testing.assert_close(grads[1], (g * x).sum(1, keepdim=True) * m, rtol=1e-5, atol=1e-5)


def test_zero_tokens():
    x = torch.randn(0, 16).to(DEVICE)
    m = torch.zeros(0, 4, dtype=torch.bool, device=DEVICE)
    p = torch.rand(0, 4).to(DEVICE)
    for fused in (False, True):
        out, probs, idx = permute(x, m, p, fused=fused)
        assert out.shape == (0, 16) and probs.shape == (0,)
        back = unpermute(out, idx, x.shape, p, m, fused=fused)
        assert back.shape == (0, 16)


def test_fused_on_tensors_triton_cannot_run_on_raises(monkeypatch):
    """fused=True on CPU tensors without the interpreter (a plan made on the GPU and moved to the
    CPU, say): permute and unpermute say what is needed; unpermute raised Triton's "0 active
    drivers ([]). There should only be one." until session 35."""
    from moe_utils import _runtime as rt

    gen = make_generator(51)
    x = torch.randn(10, 16, generator=gen).to(DEVICE)
    m = topk_map(10, 4, 2, gen)
    rows, _, plan = permute(x, m, num_out_tokens=20, fused=True)
    monkeypatch.setattr(rt, "INTERPRET", False)
    with pytest.raises(RuntimeError, match=r"permute: fused=True runs Triton kernels and needs a CUDA device"):
        permute(x.cpu(), m.cpu(), num_out_tokens=20, fused=True)
    with pytest.raises(RuntimeError, match=r"unpermute: fused=True runs Triton kernels and needs a CUDA device"):
        unpermute(rows.cpu(), plan.cpu(), (10, 16), fused=True)


def test_num_out_tokens_from_numpy_or_a_tensor():
    """num_out_tokens as a numpy integer (a capacity computed with numpy), a 0-d integer array (what
    such a number made inside a torch.compile'd function arrives as after a graph break) or a 0-dim
    tensor (read on the host) gives the int's result; a float or a 1-element array is refused."""
    import numpy as np

    gen = make_generator(49)
    x = torch.randn(12, 24, generator=gen).to(DEVICE)
    m = topk_map(12, 4, 2, gen)
    n = int(m.sum())
    for fused in (False, True):
        want = permute(x, m, num_out_tokens=n + 2, fused=fused)[0]
        for same in (np.int64(n + 2), np.int32(n + 2), np.array(n + 2), torch.tensor(n + 2)):
            assert torch.equal(permute(x, m, num_out_tokens=same, fused=fused)[0], want)
        with pytest.raises(ValueError, match=r"num_out_tokens must be a non-negative int or None, got 26.5"):
            permute(x, m, num_out_tokens=26.5, fused=fused)
        for bad in (np.float64(n + 2), np.array([n + 2]), np.array(-1)):
            with pytest.raises(ValueError, match=r"num_out_tokens must be a non-negative int or None, got"):
                permute(x, m, num_out_tokens=bad, fused=fused)


def test_integer_routing_map_and_strided_inputs():
    gen = make_generator(9)
    x_wide = torch.randn(20, 64, generator=gen).to(DEVICE)
    x = x_wide[:, ::2]  # non-contiguous columns
    m = topk_map(20, 8, 2, gen, dtype=torch.int32)
    p = torch.rand(8, 20, generator=gen).to(DEVICE).t()  # transposed probs
    a, ap, _ = permute(x, m, p, fused=False)
    b, bp, _ = permute(x, m, p, fused=True)
    assert torch.equal(a, b) and torch.equal(ap, bp)


@pytest.mark.parametrize("n_experts", [8, 256])
def test_misaligned_inputs_give_the_aligned_results(n_experts):
    """Tokens, routing map, probs, expert rows and gradients one element into their storage: the
    same bits as aligned copies through fused permute and unpermute, forward and backward (the map
    kernel reads a byte map as uint64 words only where the map is 8-byte aligned)."""
    gen = make_generator(43)
    n_tokens, hidden = 40, 72
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    m = topk_map(n_tokens, n_experts, 2, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    g = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    n = int(m.sum())
    results = []
    for xx, mm, pp, gg in ((x, m, p, g), tuple(misaligned(t) for t in (x, m, p, g))):
        xx, pp = xx.detach().requires_grad_(True), pp.detach().requires_grad_(True)
        rows, row_probs, plan = permute(xx, mm, pp, num_out_tokens=n + 3, fused=True)
        h = misaligned(rows * 2) if xx.data_ptr() % 16 else rows * 2
        out = unpermute(h, plan, (n_tokens, hidden), pp, mm, fused=True)
        grads = torch.autograd.grad((out, row_probs), (xx, pp), (gg, torch.ones_like(row_probs)))
        results.append((rows, row_probs, out, *grads))
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("hidden", [96, 2500])
def test_gather_grid_order_gives_the_same_bits(monkeypatch, hidden):
    # The gather (unpermute's forward, permute's backward) runs on a grid in memory order above a
    # size the interpreter's shapes never reach: force both grids and compare bits (2500 columns are
    # three column blocks of 1024 on the 2-D grid and two of 2048 in memory order, the last one
    # partly masked).
    from moe_utils import unpermutation

    block_h = unpermutation.gather_block_h
    assert block_h(2500, False, 4, 37, False) == 1024 and block_h(2500, True, 4, 37, True) == 2048
    assert block_h(96, True, 4, 37, False) == 128
    # unpermute's forward of few tokens at top-8 up to 2048 columns: 512; not permute's backward
    assert block_h(2048, True, 8, 4096, False) == 512 and block_h(2048, True, 8, 4096, True) == 2048
    assert block_h(2048, True, 8, 16384, False) == 2048 and block_h(4096, True, 8, 4096, False) == 2048

    gen = make_generator(12)
    n_tokens, n_experts, k = 37, 8, 3
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE) * m
    g_rows = torch.randn(n_tokens * k, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    g_probs = torch.randn(n_tokens * k, generator=gen).to(DEVICE)
    results = []
    for ordered_above in (1 << 62, 0):
        monkeypatch.setattr(unpermutation, "_ORDERED_GATHER_ABOVE", ordered_above)
        xx, pp = x.clone().requires_grad_(True), p.clone().requires_grad_(True)
        rows, perm_probs, plan = permute(xx, m, pp, num_out_tokens=n_tokens * k + 5, fused=True)
        d_x, d_p = torch.autograd.grad(
            (rows, perm_probs), (xx, pp), (torch.cat([g_rows, g_rows[:5]]), torch.cat([g_probs, g_probs[:5]]))
        )
        out = unpermute(rows.detach(), plan, x.shape, p, m, fused=True)
        results.append((out, d_x, d_p))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert results[0][0].abs().sum() > 0 and results[0][1].abs().sum() > 0


@pytest.mark.parametrize("n_experts", [40, 300])
def test_permute_backward_row_store_gives_the_same_bits(monkeypatch, n_experts):
    # permute's backward (the gather with the probs gradient) builds each token's row of d_probs in
    # registers and stores it once up to 256 experts (at top-8 only at 129-256); elsewhere zeros, a
    # barrier and each entry's gradient. Both forms, on both grids, give the same bits (every
    # element of the poisoned d_probs written), against float64 autograd of the reference; tokens
    # with more entries than the unrolled BLOCK_K (the loop after it), a token routed nowhere,
    # padding rows.
    from moe_utils import unpermutation

    row_store = unpermutation.d_probs_row_store
    assert row_store(1, 2) and row_store(200, 4) and row_store(256, 2) and row_store(256, 8) and row_store(129, 8)
    assert not row_store(128, 8) and not row_store(8, 8) and not row_store(257, 2) and not row_store(1024, 8)
    gen = make_generator(47)
    n_tokens, hidden = 23, 40
    m = topk_map(n_tokens, n_experts, 2, gen)
    m[::5, :7] = True  # 7-8 experts for some tokens: BLOCK_K is 3 here
    m[4] = False
    routed = int(m.sum())
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    g_rows = torch.randn(routed + 5, hidden, generator=gen).to(DEVICE)
    g_probs = torch.randn(routed + 5, generator=gen).to(DEVICE)
    results = []
    for ordered_above in (1 << 62, 0):
        for most in (0, 1024):  # the zeros everywhere, the row store everywhere
            monkeypatch.setattr(unpermutation, "_ORDERED_GATHER_ABOVE", ordered_above)
            monkeypatch.setattr(unpermutation, "_ROW_STORE_MOST_E", most)
            monkeypatch.setattr(unpermutation, "_ROW_STORE_MANY_K", 1 << 30)
            xx, pp = x.clone().requires_grad_(True), p.clone().requires_grad_(True)
            rows, perm_probs, _ = permute(xx, m, pp, num_out_tokens=routed + 5, fused=True)
            results.append(torch.autograd.grad((rows, perm_probs), (xx, pp), (g_rows, g_probs)))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)
    x64, p64 = x.double().requires_grad_(True), p.double().requires_grad_(True)
    rows, perm_probs, _ = permute(x64, m, p64, fused=False)
    want = torch.autograd.grad((rows, perm_probs), (x64, p64), (g_rows[:routed].double(), g_probs[:routed].double()))
    for got, ref in zip(results[0], want, strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.all(results[0][1][~m] == 0) and torch.all(results[0][1][m] != 0)


def test_determinism_of_fused_unpermute_and_backward():
    gen = make_generator(11)
    n_tokens, n_experts, k, hidden = 64, 16, 8, 128
    x = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    m = topk_map(n_tokens, n_experts, k, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    rows, _, plan = permute(x, m, fused=True)
    g = torch.randn(n_tokens, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    results = []
    for _ in range(3):
        r = rows.clone().requires_grad_(True)
        pp = p.clone().requires_grad_(True)
        out = unpermute(r, plan, x.shape, pp, m, fused=True)
        results.append((out, *torch.autograd.grad(out, (r, pp), g)))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("pad", [0, 3])
def test_float64_routing_passes_gradcheck(pad):
    """float64 rows and probs are multiplied and summed in float64 (routing.compute_dtype), as the
    reference does: until session 34 the kernels did it in fp32, 3e-8 off, and gradcheck failed."""
    gen = make_generator(64)
    n_tokens, n_experts, hidden = 5, 3, 3  # gradcheck perturbs every input: few, under the interpreter
    m = topk_map(n_tokens, n_experts, 2, gen)
    tokens = torch.randn(n_tokens, hidden, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    probs = torch.rand(n_tokens, n_experts, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    n_rows = int(m.sum()) + pad

    def round_trip(t, p, fused=True):
        rows, row_probs, plan = permute(t, m, p, num_out_tokens=n_rows, fused=fused)
        rows = rows * 1.5 + row_probs.unsqueeze(-1)
        return unpermute(rows, plan, t.shape, probs=p, routing_map=m, fused=fused)

    assert torch.autograd.gradcheck(round_trip, (tokens, probs))
    # and the same numbers as the reference's path, to float64 rounding
    want = round_trip(tokens, probs, fused=False)
    torch.testing.assert_close(round_trip(tokens, probs), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("num_out_tokens", [None, 9, 12], ids=["unpadded", "exact", "padded"])
def test_plan_with_another_token_count_raises(num_out_tokens):
    """restore_shape is checked against the plan's length. Until session 34 a padded plan for T
    tokens had the length of an unpadded one for T + 1: unpermute accepted restore_shape (T + 1, H)
    and misread the plan, every row wrong (no error)."""
    gen = make_generator(34)
    n_tokens, hidden = 6, 5
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    m = torch.zeros(n_tokens, 3, dtype=torch.bool)
    m[torch.arange(n_tokens), torch.arange(n_tokens) % 3] = True
    m[torch.arange(0, n_tokens, 2), (torch.arange(0, n_tokens, 2) + 1) % 3] = True  # 9 routed pairs
    m = m.to(DEVICE)
    probs = torch.rand(n_tokens, 3, generator=gen).to(DEVICE)
    rows, _, plan = permute(x, m, num_out_tokens=num_out_tokens, fused=True)
    for wrong in (n_tokens - 1, n_tokens + 1, n_tokens + 2):
        with pytest.raises(ValueError, match=f"not a routing plan for {wrong} tokens"):
            unpermute(rows, plan, (wrong, hidden), fused=True)
        # With probs, their shape against restore_shape is checked first.
        with pytest.raises(ValueError, match=rf"probs has shape \(6, 3\); expected .* = \[{wrong}, 3\]"):
            unpermute(rows, plan, (wrong, hidden), probs=probs, routing_map=m, fused=True)
    # The right shape still round-trips, padding rows and all.
    want = unpermute(*permute(x, m, fused=False)[::2], x.shape, probs=probs, routing_map=m, fused=False)
    torch.testing.assert_close(unpermute(rows, plan, x.shape, probs=probs, routing_map=m, fused=True), want)


def test_bad_routing_input_raises_clear_errors():
    x = torch.randn(6, 16).to(DEVICE)
    m = torch.zeros(6, 4, dtype=torch.bool, device=DEVICE)
    m[:, 0] = True
    with pytest.raises(ValueError, match=r"routing_map has shape \(5, 4\)"):
        permute(x, m[:5], fused=True)
    with pytest.raises(TypeError, match=r"routing_map has dtype torch.float32"):
        permute(x, m.float(), fused=True)
    with pytest.raises(ValueError, match=r"probs has shape \(6, 3\)"):
        permute(x, m, torch.rand(6, 3).to(DEVICE), fused=True)
    perm, _, plan = permute(x, m, fused=True)
    with pytest.raises(ValueError, match=r"hidden size 16 but restore_shape is \(6, 8\)"):
        unpermute(perm, plan, (6, 8), fused=True)
    with pytest.raises(ValueError, match="routing plan"):
        unpermute(perm, torch.arange(6, device=DEVICE), x.shape, fused=True)
    with pytest.raises(ValueError, match="num_out_tokens = 4"):
        permute(x, m, num_out_tokens=4, fused=False)
    with pytest.raises(ValueError, match="sorted_indices is on meta but permuted_tokens is on"):
        unpermute(perm, plan.to("meta"), x.shape, fused=True)
    rows, _, idx = permute(x, m, fused=False)
    with pytest.raises(ValueError, match="sorted_indices is on meta but permuted_tokens is on"):
        unpermute(rows, idx.to("meta"), x.shape, fused=False)
    # the reference's scatter_add_ would drop the rows past a shorter index without an error
    with pytest.raises(ValueError, match="sorted_indices has 5 entries but permuted_tokens has 6 rows"):
        unpermute(rows, idx[:5], x.shape, fused=False)
    with pytest.raises(ValueError, match=r"1-D int64 .* got torch.float32 \(6,\)"):
        unpermute(rows, idx.float(), x.shape, fused=False)
    with pytest.raises(ValueError, match=r"got torch.int64 \(6, 1\)"):
        unpermute(rows, idx[:, None], x.shape, fused=False)
    with pytest.raises(TypeError, match=r"sorted_indices must be .* got list"):
        unpermute(rows, idx.tolist(), x.shape, fused=False)
    # restore_shape: two non-negative ints (numpy and one-element integer tensors too). Until
    # session 39 None gave "'NoneType' object is not iterable", and int() truncated floats.
    for fused, (out_rows, index) in ((True, (perm, plan)), (False, (rows, idx))):
        want = unpermute(out_rows, index, x.shape, fused=fused)
        for same in ((np.int64(6), np.int32(16)), torch.tensor([6, 16]), [6, 16]):
            assert torch.equal(unpermute(out_rows, index, same, fused=fused), want)
        for bad, error in ((None, TypeError), (6, TypeError), ((6.0, 16.0), TypeError), ((6.5, 16), TypeError),
                           ((-6, 16), ValueError), ((6, 16, 1), ValueError)):  # fmt: skip
            with pytest.raises(error, match=r"unpermute: restore_shape must be \[num_tokens, hidden\]"):
                unpermute(out_rows, index, bad, fused=fused)
        with pytest.raises(TypeError, match=r"unpermute: probs must be a floating-point tensor, got list"):
            unpermute(out_rows, index, x.shape, probs=torch.rand(6, 4).tolist(), routing_map=m, fused=fused)
        with pytest.raises(ValueError, match=r"unpermute: probs has shape \(6,\); expected .* = \[6, E\]"):
            unpermute(out_rows, index, x.shape, probs=torch.rand(6).to(DEVICE), fused=fused)
    with pytest.raises(ValueError, match="capacity \\* num_experts"):
        permute(x, m, num_out_tokens=7, fused=True, drop_and_pad=True)
    # 2^31 tokens (stride-0 views: nothing allocated): the plan's per-expert counts are int32.
    huge = 2**31
    with pytest.raises(ValueError, match=r"fewer than 2\^31 tokens .* 2147483648 tokens"):
        permute(x[:1].expand(huge, 16), m[:1].expand(huge, 4), num_out_tokens=8, fused=True)
    with pytest.raises(ValueError, match=r"at most 1024 experts, got 1025"):
        permute(x, torch.zeros(6, 1025, dtype=torch.bool, device=DEVICE), fused=True)
    if DEVICE.type == "cpu":  # on the GPU this check is a device-side assertion: see the next test
        with pytest.raises(ValueError, match="num_out_tokens = 4"):
            permute(x, m, num_out_tokens=4, fused=True)
        with pytest.raises(ValueError, match="capacity"):
            permute(x, m, num_out_tokens=8, fused=True, drop_and_pad=True)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the device-side assertion exists only on the GPU")
@pytest.mark.parametrize("drop_and_pad", [False, True])
def test_too_small_num_out_tokens_fails_loudly_on_the_gpu(drop_and_pad):
    """No host sync means no Python exception, but never a silent wrong answer: the device-side
    assertion stops the process. Run in a child process, since it poisons the CUDA context."""
    import subprocess
    import sys

    script = (
        "import torch, moe_utils\n"
        "x = torch.randn(6, 16, device='cuda')\n"
        "m = torch.zeros(6, 4, dtype=torch.bool, device='cuda'); m[:, 0] = True\n"
        f"out = moe_utils.permute(x, m, num_out_tokens=8 if {drop_and_pad} else 4, fused=True, "
        f"drop_and_pad={drop_and_pad})\n"
        "torch.cuda.synchronize()\n"
        "print('NO ERROR')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "NO ERROR" not in proc.stdout
    assert "device-side assert" in proc.stderr or "Assertion" in proc.stderr, proc.stderr[-2000:]


def _six_expert_routing():
    gen = make_generator(21)
    x = torch.randn(12, 16, generator=gen).to(DEVICE)
    m = torch.zeros(12, 6, dtype=torch.bool)
    m[torch.arange(12), torch.arange(12) % 6] = True
    m[torch.arange(12), (torch.arange(12) + 1) % 6] = True
    p = torch.rand(12, 6, generator=gen).to(DEVICE)
    return x, m.to(DEVICE), p, gen


def test_unpermute_without_routing_map_checks_probs_against_the_plan():
    """fused=True reads probs[t, e] at each entry's expert: probs narrower than the plan's experts
    would be read past its rows (and the backward would write past d_probs' rows). With routing_map
    the shapes are compared; without it the gather checks each entry (the CPU here; on the GPU a
    device-side assertion, the next test)."""
    x, m, p, gen = _six_expert_routing()
    rows, _, plan = permute(x, m, p, num_out_tokens=24, fused=True)
    want = unpermute(rows, plan, x.shape, p, m, fused=True)
    assert torch.equal(unpermute(rows, plan, x.shape, p, fused=True), want)
    wider = torch.cat([p, torch.rand(12, 3, generator=gen).to(DEVICE)], 1)  # columns past the plan's: not read
    assert torch.equal(unpermute(rows, plan, x.shape, wider, fused=True), want)
    with pytest.raises(ValueError, match="probs has 4 experts but routing_map has 6"):
        unpermute(rows, plan, x.shape, p[:, :4], m, fused=True)
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="probs has 4 experts but the plan routes tokens to expert 5"):
            unpermute(rows, plan, x.shape, p[:, :4], fused=True)
        with pytest.raises(ValueError, match="probs has 4 experts but the plan routes tokens to expert 5"):
            torch.compile(lambda r, q: unpermute(r, plan, x.shape, q, fused=True), fullgraph=True)(rows, p[:, :4])


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the device-side assertion exists only on the GPU")
def test_unpermute_with_narrower_probs_fails_loudly_on_the_gpu():
    """The GPU side of the previous test, in a child process (the assertion poisons the CUDA context)."""
    import subprocess
    import sys

    script = (
        "import torch, moe_utils\n"
        "x = torch.randn(12, 16, device='cuda')\n"
        "m = torch.zeros(12, 6, dtype=torch.bool, device='cuda')\n"
        "t = torch.arange(12, device='cuda'); m[t, t % 6] = True; m[t, (t + 1) % 6] = True\n"
        "p = torch.rand(12, 6, device='cuda')\n"
        "rows, _, plan = moe_utils.permute(x, m, p, num_out_tokens=24, fused=True)\n"
        "ok = moe_utils.unpermute(rows, plan, x.shape, p, fused=True)\n"
        "torch.cuda.synchronize(); print('CHECKED PATH RUNS')\n"
        "out = moe_utils.unpermute(rows, plan, x.shape, p[:, :4].contiguous(), fused=True)\n"
        "torch.cuda.synchronize()\n"
        "print('NO ERROR')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "CHECKED PATH RUNS" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode != 0 and "NO ERROR" not in proc.stdout
    assert "device-side assert" in proc.stderr or "Assertion" in proc.stderr, proc.stderr[-2000:]


def test_max_top_k_equals_experts():
    gen = make_generator(13)
    x = torch.randn(9, 32, generator=gen).to(DEVICE)
    m = torch.ones(9, 5, dtype=torch.bool, device=DEVICE)
    a, _, _ = permute(x, m, fused=False)
    b, _, plan = permute(x, m, fused=True)
    assert torch.equal(a, b)
    torch.testing.assert_close(unpermute(b, plan, x.shape, fused=True), 5 * x)


@pytest.mark.parametrize("n_experts", [128, 512])
def test_many_experts(n_experts):
    gen = make_generator(n_experts)
    x = torch.randn(24, 16, generator=gen).to(DEVICE)
    m = topk_map(24, n_experts, 8, gen)
    p = torch.rand(24, n_experts, generator=gen).to(DEVICE)
    a, ap, _ = permute(x, m, p, fused=False)
    b, bp, _ = permute(x, m, p, fused=True)
    assert torch.equal(a, b) and torch.equal(ap, bp)


@pytest.mark.slow
def test_many_segments_and_steps():
    # 1024 experts: one-token steps with 4 warps, so 4500 tokens take 500 segments of nine steps
    # each (at least _MIN_SEGMENT_TOKENS tokens); and padding rows.
    gen = make_generator(17)
    n_tokens, n_experts = 4500, 1024
    m = topk_map(n_tokens, n_experts, 1, gen)
    m[::7, 1000] = True  # a second expert for some tokens
    x = torch.randn(n_tokens, 4, generator=gen).to(DEVICE)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    a, ap, ai = permute(x, m, p, fused=False)
    n = a.shape[0]
    b, bp, plan = permute(x, m, p, num_out_tokens=n + 3, fused=True)
    assert torch.equal(a, b[:n]) and torch.equal(ap, bp[:n]) and torch.equal(ai, plan[:n])
    assert torch.all(b[n:] == 0) and torch.all(bp[n:] == 0) and torch.all(plan[n : n + 3] == -1)


def test_drop_and_pad_pads_short_experts():
    # Fewer than capacity tokens for some experts: the rest of their rows are zero padding.
    gen = make_generator(19)
    n_tokens, n_experts, capacity, hidden = 30, 5, 7, 40
    m = capacity_map(n_tokens, n_experts, capacity, gen)
    short = {1: 3, 4: 0}  # expert -> tokens it keeps
    for e, keep in short.items():
        rows = m[:, e].nonzero().flatten()
        m[rows[keep:], e] = False
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    n_out = capacity * n_experts
    b, bp, plan = permute(x, m, p, num_out_tokens=n_out, fused=True, drop_and_pad=True)
    for e in range(n_experts):
        kept = short.get(e, capacity)
        tokens = m[:, e].nonzero().flatten()
        rows = slice(e * capacity, e * capacity + kept)
        pad = slice(e * capacity + kept, (e + 1) * capacity)
        assert torch.equal(plan[rows], tokens) and torch.equal(b[rows], x[tokens])
        assert torch.equal(bp[rows], p[tokens, e])
        assert torch.all(plan[pad] == -1) and torch.all(b[pad] == 0) and torch.all(bp[pad] == 0)
    back = unpermute(b, plan, x.shape, p, m, fused=True, drop_and_pad=True)
    torch.testing.assert_close(back, x * (p * m).sum(1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_drop_and_pad_short_experts_fused_against_reference():
    """An expert short of capacity (README, "Experts short of capacity"): the fused path zero-pads
    its rows, the reference's algorithm (fused=False) fills them with the first tokens not routed to
    it, carrying their probs[t, e], and its unpermute adds those rows back. Where every expert has
    exactly capacity tokens the two agree bit for bit; short, they agree on the routed rows, and
    the unpermuted outputs agree where probs are zero off the map (Megatron's router)."""
    gen = make_generator(23)
    n_tokens, n_experts, capacity, hidden = 20, 4, 5, 24
    m = capacity_map(n_tokens, n_experts, capacity, gen)
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    p = torch.rand(n_tokens, n_experts, generator=gen).add_(0.1).to(DEVICE)
    n_out = capacity * n_experts
    full = [permute(x, m, p, num_out_tokens=n_out, fused=f, drop_and_pad=True) for f in (False, True)]
    for a, b in zip(full[0][:2], full[1][:2], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(full[0][2], full[1][2][:n_out])
    short = m.clone()
    short[short[:, 1].nonzero().flatten()[2:], 1] = False  # expert 1 keeps 2 of its 5 tokens
    kept = short[:, 1].nonzero().flatten()
    unrouted = (~short[:, 1]).nonzero().flatten()[: capacity - 2]  # the reference's fill, ascending
    ref, ref_p, ref_i = permute(x, short, p, num_out_tokens=n_out, fused=False, drop_and_pad=True)
    got, got_p, plan = permute(x, short, p, num_out_tokens=n_out, fused=True, drop_and_pad=True)
    rows, pad = slice(capacity, capacity + 2), slice(capacity + 2, 2 * capacity)
    routed = torch.ones(n_out, dtype=torch.bool, device=x.device)
    routed[pad] = False
    assert torch.equal(got[routed], ref[routed]) and torch.equal(got_p[routed], ref_p[routed])
    assert torch.equal(ref_i[rows], kept) and torch.equal(ref_i[pad], unrouted)
    assert torch.equal(ref[pad], x[unrouted]) and torch.equal(ref_p[pad], p[unrouted, 1])
    assert torch.all(got[pad] == 0) and torch.all(got_p[pad] == 0) and torch.all(plan[pad] == -1)
    expert_out = torch.randn(n_out, hidden, generator=gen).to(DEVICE)
    zero_off = p * short  # probs zero off the map
    back = [
        unpermute(expert_out, i, x.shape, zero_off, short, fused=f, drop_and_pad=True)
        for f, i in ((False, ref_i), (True, plan))
    ]
    torch.testing.assert_close(back[1], back[0], rtol=1e-6, atol=1e-6)
    # With probs non-zero off the map, the reference adds the fill rows back to their tokens.
    ref_back = unpermute(expert_out, ref_i, x.shape, p, short, fused=False, drop_and_pad=True)
    got_back = unpermute(expert_out, plan, x.shape, p, short, fused=True, drop_and_pad=True)
    fill = torch.zeros(n_tokens, hidden, device=x.device).index_add_(
        0, unrouted, expert_out[pad] * p[unrouted, 1, None]
    )
    torch.testing.assert_close(ref_back - got_back, fill, rtol=1e-5, atol=1e-5)


def test_permute_same_under_every_launch_order(monkeypatch):
    # The count and map kernels letting the next launch at their start, the scatter reading its
    # source rows before it waits for the map kernel, the scan kernel letting the map kernel
    # launch at its start (programmatic dependent launch on the GPU; the same kernels without it
    # under the interpreter), or every kernel waiting: the same bits, the reference's, with
    # padding rows and with drop_and_pad (padding rows there too); and the map kernel doing the
    # scan's work.
    from moe_utils import _runtime as rt
    from moe_utils import routing

    gen = make_generator(43)
    n_tokens, n_experts, hidden = 70, 12, 40
    m = topk_map(n_tokens, n_experts, 3, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    ref, ref_probs, ref_indices = permute(x, m, p, fused=False)
    n = ref.shape[0]
    capacity_m = capacity_map(n_tokens, n_experts, 5, gen)
    results = []
    forms = (  # (count and map trigger, early source, scan trigger by shape, the map kernel scanning)
        (False, False, False, False),
        (True, False, False, False),
        (False, True, False, False),
        (True, True, False, False),
        (True, True, True, False),
        (True, True, True, True),
    )
    for trigger, early, scan_rule, scan_in_map in forms:
        monkeypatch.setattr(routing, "_SCAN_IN_MAP", 4096 if scan_in_map else 0)
        monkeypatch.setitem(rt.PDL_TRIGGER, "map", trigger)
        monkeypatch.setitem(rt.PDL_TRIGGER, "count", trigger)
        monkeypatch.setattr(rt, "PDL_EARLY_SOURCE", early)
        monkeypatch.setattr(rt, "PDL_SCAN_TRIGGER_UP_TO", (4096, 128) if scan_rule else (0, 0))
        out, probs, plan = permute(x, m, p, num_out_tokens=n + 9, fused=True)
        assert torch.equal(out[:n], ref) and torch.equal(probs[:n], ref_probs) and torch.equal(plan[:n], ref_indices)
        assert torch.all(out[n:] == 0) and torch.all(probs[n:] == 0)
        dropped = permute(x, capacity_m, p, num_out_tokens=6 * n_experts, fused=True, drop_and_pad=True)
        assert torch.all(dropped[0].view(n_experts, 6, hidden)[:, 5] == 0)  # each expert's padding row
        results.append((out, probs, plan, *dropped))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
def test_map_word_walk_gives_the_tile_walks_plan(monkeypatch):
    # The map kernel's walk over uint64 words of the map (routing._map_words_walk, session 25),
    # in two-token steps (session 26) and in one-token steps: one entry a thread where no group of
    # 8 experts holds two routed ones, per expert where one does (tokens 8 and 36 on), in
    # one-token segments, segments of 5 tokens (the last pair of each one token; the last
    # segment past the tokens) and of 16, with padding rows, without num_out_tokens, with
    # drop_and_pad (short experts: padding inside their rows) and on a uint8 map: the plan, the
    # rows and the probs of the tile walk, bit for bit, and the reference's.
    from moe_utils import routing

    gen = make_generator(53)
    n_tokens, n_experts, hidden = 64, 256, 8
    m = topk_map(n_tokens, n_experts, 2, gen)
    m[7] = False  # a token routed nowhere
    m[8, :16] = True  # two full groups
    m[10:, 21] = True  # a busy expert: ranks past 8 within a segment, one routed in its group
    m[36:, 42:44] = True  # two busy experts of one group: the per-expert step, ranks past 4
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    capacity = int(m.sum(0).max()) + 1
    drop_m = m & (m.cumsum(0) <= capacity - 2)  # the busiest experts keep capacity - 2 tokens
    ref = permute(x, m, p, fused=False)
    n = ref[0].shape[0]

    def run():
        return (
            *permute(x, m, p, num_out_tokens=n + 9, fused=True),
            *permute(x, m.to(torch.uint8), p, fused=True),
            *permute(x, drop_m, p, num_out_tokens=capacity * n_experts, fused=True, drop_and_pad=True),
        )

    monkeypatch.setattr(routing, "_WORDS_MIN_SEGMENT", 1)  # the walk where it can run, not only where it is faster
    monkeypatch.setattr(routing, "_WORDS_MOST_K", 8)
    words = []
    rule = routing._map_words
    monkeypatch.setattr(routing, "_map_words", lambda *a: words.append(rule(*a)) or words[-1])
    results = []
    # segments of 1, 5 and 16 tokens (1024, 13 and 4 at most), two tokens a step or one; the tile walk
    forms = ((1024, True, True), (13, True, True), (4, True, True), (13, True, False), (4, True, False))
    forms += ((4, False, True),)
    for most, on, pairs in forms:
        monkeypatch.setattr(routing, "_MAX_SEGMENTS", most)
        monkeypatch.setattr(routing, "_MAP_WORDS", on)
        monkeypatch.setattr(routing, "_WORDS_PAIRS", pairs)
        results.append(run())
    assert words == [True] * 15 + [False] * 3  # the word walk ran where asked
    out, probs, plan = results[0][:3]
    assert torch.equal(out[:n], ref[0]) and torch.equal(probs[:n], ref[1]) and torch.equal(plan[:n], ref[2])
    assert torch.equal(results[0][5][:n], ref[2])  # the uint8 map, no padding
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_map_words_rule():
    # Where the word walk can run: byte maps whose rows are whole aligned uint64 words, one-token
    # steps (groups of 8 experts), segments shorter than 256 tokens (the rows an expert takes in
    # one fit a byte). Where it runs (faster on the H200, session 25): one warp (E = 129-256),
    # segments of at least 16 tokens, at most 2 entries a token.
    from moe_utils import routing

    m = torch.zeros(64, 256, dtype=torch.bool)
    assert routing._map_words(m, 32, 1, 256, 2) and routing._map_words(m, 16, 1, 256, 1)
    assert not routing._map_words(m, 8, 1, 256, 2)  # 8-token segments (4096 tokens)
    assert not routing._map_words(m, 32, 1, 256, 4)  # top-4 and more
    assert not routing._map_words(m, 256, 1, 256, 2)  # segments of 256 tokens
    assert not routing._map_words(m, 32, 2, 128, 2)  # two-token steps
    assert not routing._map_words(torch.zeros(64, 512, dtype=torch.bool), 32, 1, 512, 2)  # two warps
    assert not routing._map_words(m.to(torch.int32), 32, 1, 256, 2)  # 4 bytes an entry
    assert routing._map_words(torch.zeros(64, 256, dtype=torch.bool)[:, :248], 32, 1, 256, 2)  # 31 words of 32
    assert not routing._map_words(torch.zeros(64, 256, dtype=torch.bool)[:, :250], 32, 1, 256, 2)  # E = 250
    assert not routing._map_words(torch.zeros(64, 264, dtype=torch.bool)[:, 1:257], 32, 1, 256, 2)  # unaligned
    assert not routing._map_words(m.t().contiguous().t(), 32, 1, 256, 2)  # experts not contiguous


@pytest.mark.slow
@pytest.mark.parametrize("n_experts", [6, 40, 300])
def test_plan_does_not_depend_on_launch_shape(monkeypatch, n_experts):
    # Tile sizes, segment counts, scan tiles, the map kernel's prefetch and its scan only split or
    # order the same counting sort differently: the plan and the permuted probs must be identical,
    # bit for bit, and the reference's. The small-tile configs walk segments of 10 (E = 6), 38 (40) or 75
    # (300) steps, the last one partly past T.
    from moe_utils import routing

    gen = make_generator(37)
    n_tokens = 300
    m = topk_map(n_tokens, n_experts, 3, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    x = torch.randn(n_tokens, 8, generator=gen).to(DEVICE)
    results = []
    configs = (  # (tile, segments, long segment, scan tile, map prefetch, least tokens a segment,
        # most counts the map kernel scans itself: with num_out_tokens, in the first of each pair;
        # 4096 covers the first such config at every E and the second at E = 6, tables of 32 to
        # 2048 counts, summed 64 counts at a time: 1 to 8 chunks, the last one partial at E = 6)
        (256, 1024, 8, 4096, True, 8, 0),
        (256, 1024, 8, 4096, True, 1, 0),
        (1024, 1024, 8, 1024, False, 8, 0),
        (64, 4, 16, 16, True, 8, 0),
        (64, 4, 16, 16, False, 8, 4096),
        (64, 4, 1, 16, True, 8, 0),  # twice the segments where one-warp walks stay long
        (4096, 1024, 8, 8192, True, 1, 0),
        (256, 4096, 8, 1024, False, 8, 0),
        (256, 1024, 8, 4096, True, 8, 4096),
    )
    for tile, segments, long_segment, scan_tile, prefetch, least, scan_in_map in configs:
        monkeypatch.setattr(routing, "_SCAN_IN_MAP", scan_in_map)
        monkeypatch.setattr(routing, "_SCAN_IN_MAP_TILE", 64)
        monkeypatch.setattr(routing, "_MIN_SEGMENT_TOKENS", least)
        monkeypatch.setattr(routing, "_MAP_PREFETCH", prefetch)
        monkeypatch.setattr(routing, "_PLAN_TILE", tile)
        monkeypatch.setattr(routing, "_MAX_SEGMENTS", segments)
        monkeypatch.setattr(routing, "_LONG_SEGMENT", long_segment)
        monkeypatch.setattr(routing, "_LONG_SEGMENT_TOKENS", 1)
        monkeypatch.setattr(routing, "_SCAN_TILE", scan_tile)
        results.append(permute(x, m, p, num_out_tokens=3 * n_tokens + 5, fused=True))
        results.append(permute(x, m, p, fused=True))
    ref, ref_probs, ref_indices = permute(x, m, p, fused=False)
    n = ref.shape[0]
    for out, probs, plan in results[1::2]:
        assert torch.equal(out, ref) and torch.equal(probs, ref_probs) and torch.equal(plan[:n], ref_indices)
    for padded in (0, 1):
        first = results[padded]
        for other in results[padded::2]:
            for a, b in zip(first, other, strict=True):
                assert torch.equal(a, b)


def test_segment_rule():
    # Twice the segments only where the map kernel runs one warp per program and the segments
    # stay at least _LONG_SEGMENT steps and _LONG_SEGMENT_TOKENS tokens long (the shapes measured
    # on the H100, sessions 7 and 8).
    from moe_utils.routing import _segments

    assert _segments(65536, 256)[1] == 2048  # one-token steps: 32 steps a segment
    assert _segments(65536, 64)[1] == 2048  # 4-token steps: 8 steps a segment
    assert _segments(16384, 256)[1] == 1024  # 8 steps but 8 tokens a segment with 2048
    assert _segments(16384, 64)[1] == 1024  # 4 steps a segment with 1024
    assert _segments(65536, 8)[1] == 1024  # 32-token steps: 2 steps a segment
    # At most 2^19 counts in the scan unless walks pass 64 steps (session 15's plan sweep).
    assert _segments(16384, 1024)[:2] == (32, 512)
    assert _segments(32768, 1000)[:2] == (64, 512)
    assert _segments(65536, 1024)[:2] == (64, 1024)  # 512 segments would be walks of 128 steps
    assert _segments(65536, 512)[:2] == (64, 1024)
    # Several warps a program (E > 256): segments of at least 8 tokens (H200, session 15).
    assert _segments(4096, 1024)[:2] == (8, 512)
    assert _segments(4096, 512)[:2] == (8, 512)
    assert _segments(4096, 256)[:2] == (4, 1024)  # one warp: 1024 segments of 4 one-token steps
    assert _segments(4096, 64)[:2] == (4, 1024)
    for n_tokens, n_experts in ((65536, 256), (16384, 64), (5, 3), (100003, 7)):
        seg_len, n_seg, block_t, _ = _segments(n_tokens, n_experts)
        assert seg_len % block_t == 0 and (n_seg - 1) * seg_len < n_tokens <= n_seg * seg_len


def test_scan_in_map_rule():
    # The map kernel does the scan's work at E = 8 up to 16384 tokens (count tiles of 1024 and
    # 4096, H200 session 17), the scan kernel runs from 65536 x 8 and at 64 experts and more.
    import triton

    from moe_utils.routing import _scan_in_map, _segments

    def scans(n_tokens, n_experts):
        _, n_seg, _, block_e = _segments(n_tokens, n_experts)
        return _scan_in_map(triton.next_power_of_2(n_seg), block_e)

    assert scans(4096, 8) and scans(16384, 8) and scans(300, 8) and scans(70, 12)
    assert not any((scans(65536, 8), scans(4096, 64), scans(16384, 256), scans(300, 40), scans(300, 300)))


@pytest.mark.parametrize("num_out", [None, 43])
def test_zero_width_tokens_still_get_a_complete_plan(num_out):
    # permute's scatter writes src_token and the permuted probs of every row: with hidden = 0 it
    # copies no columns, but it must still run.
    gen = make_generator(41)
    n_tokens, n_experts = 20, 6
    m = topk_map(n_tokens, n_experts, 2, gen)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(DEVICE)
    x = torch.randn(n_tokens, 0, generator=gen).to(DEVICE)
    _, ap, ai = permute(x, m, p, fused=False)
    b, bp, plan = permute(x, m, p, num_out_tokens=num_out, fused=True)
    n = ai.numel()
    assert b.shape == (num_out or n, 0)
    assert torch.equal(plan[:n], ai) and torch.equal(bp[:n], ap)
    assert torch.all(plan[n : bp.numel()] == -1) and torch.all(bp[n:] == 0)


def test_programmatic_dependent_launch_is_off_where_it_cannot_run(monkeypatch):
    # pdl_args turns it on only for CUDA tensors on sm_90 and later outside the interpreter
    # (tests/test_gpu.py checks it there); MOE_UTILS_PDL=0 turns it off.
    import subprocess
    import sys

    from moe_utils import _runtime as _rt

    for kernel in _rt.PDL_TRIGGER:
        assert _rt.pdl_args(torch.device("cpu"), kernel) == {"PDL": 0}
        assert _rt.pdl_args(torch.device("cpu"), kernel, True) == {"PDL": 0}
    # The plan's scan kernel triggers too at small routing maps (session 17).
    assert _rt.scan_triggers(4096, 128) and _rt.scan_triggers(1, 1)
    assert not _rt.scan_triggers(4097, 8) and not _rt.scan_triggers(4096, 129)
    monkeypatch.setattr(_rt, "PDL", False)
    assert _rt.pdl_args(torch.device("cuda", 0), "scatter") == {"PDL": 0}
    code = "import moe_utils._runtime as r; print(r.PDL)"
    for value, want in (("0", "False"), ("1", "True")):
        env = {**os.environ, "MOE_UTILS_PDL": value}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert run.stdout.strip() == want


@pytest.mark.parametrize("used", ["both", "rows", "probs"])
@pytest.mark.parametrize("probs_grad", [True, False])
def test_permute_backward_makes_only_what_its_gradients_need(used, probs_grad):
    # Autograd hands a backward zeros for each output without a gradient unless the Function turns
    # that off: permute's plan (non-differentiable) got a plan-sized int64 fill every backward until
    # session 45. Now the backward allocates no int64 tensor, computes the probs' gradient only when
    # the probs require grad, and still gives zeros where only the rows were used.
    gen = make_generator(45)
    n_tokens, n_experts, k, hidden = 13, 8, 3, 24
    m = topk_map(n_tokens, n_experts, k, gen)
    x64 = torch.randn(n_tokens, hidden, generator=gen, dtype=torch.float64).to(DEVICE)
    p64 = (torch.rand(n_tokens, n_experts, generator=gen, dtype=torch.float64).to(DEVICE) + 0.5) * m
    n_rows = int(m.sum())
    g_rows = torch.randn(n_rows, hidden, generator=gen, dtype=torch.float64).to(DEVICE)
    g_probs = torch.randn(n_rows, generator=gen, dtype=torch.float64).to(DEVICE)
    x = x64.float().requires_grad_(True)
    p = p64.float().requires_grad_(probs_grad)
    rows, perm_probs, _ = permute(x, m, p, num_out_tokens=n_rows, fused=True)
    outs = {"both": (rows, perm_probs), "rows": (rows,), "probs": (perm_probs,)}[used]
    grads_in = {"both": (g_rows, g_probs), "rows": (g_rows,), "probs": (g_probs,)}[used]
    inputs = (x, p) if probs_grad else (x,)
    with FactoryLog() as log:
        got = torch.autograd.grad(outs, inputs, [g.float() for g in grads_in])
    made = log.nonempty()
    assert not [t for t in made if t[2] == torch.int64], made
    if not probs_grad:
        assert not [t for t in made if t[1] == (n_tokens, n_experts)], made
    # float64 autograd of the reference: the rows' and the probs' parts are independent.
    xr, pr = x64.clone().requires_grad_(True), p64.clone().requires_grad_(True)
    ref_rows, ref_probs, _ = permute(xr, m, pr, fused=False)
    want_x = torch.autograd.grad(ref_rows, xr, g_rows)[0] if used != "probs" else torch.zeros_like(x64)
    want_p = torch.autograd.grad(ref_probs, pr, g_probs)[0] if used != "rows" else torch.zeros_like(p64)
    torch.testing.assert_close(got[0].double(), want_x, rtol=1e-5, atol=1e-5)
    if probs_grad:
        torch.testing.assert_close(got[1].double(), want_p, rtol=1e-5, atol=1e-5)


@triton.jit
def _masked_copy_kernel(src_ptr, dst_ptr, n_rows, width, BLOCK: tl.constexpr):
    # The routing kernels' mask shape: a tile's column mask and a scalar condition on the program.
    row = tl.program_id(0) - 1
    cols = tl.arange(0, BLOCK)
    mask = (cols < width) & ((row >= 0) & (row < n_rows))
    tl.store(dst_ptr + row * width + cols, tl.load(src_ptr + row * width + cols, mask=mask), mask=mask)


@pytest.mark.skipif(not rt.INTERPRET, reason="Triton's interpreter only (TRITON_INTERPRET=1)")
def test_interpreter_takes_a_scalar_condition_in_a_mask():
    """Triton 3.9's interpreter refused the integer masks that 3.6-3.8's took, failing every fused
    permute and unpermute on the CPU; _kernel_lib.interpreter_reads_masks_as_bool (applied when
    moe_utils is imported under the interpreter) hands them bool masks."""
    src = torch.randn(3, 5)
    dst = torch.full((3, 5), float("nan"))
    _masked_copy_kernel[(5,)](src, dst, 3, 5, BLOCK=8)  # programs 0 and 4 have no row
    assert torch.equal(dst, src)


@triton.jit
def _scaled_step(x, scale):
    return tl.sigmoid(x) * scale  # tl.sigmoid: a helper of triton.language's own (its module sees tl.core)


@triton.jit
def _helper_loop_kernel(src_ptr, dst_ptr, width, STEPS: tl.constexpr, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(src_ptr + cols, mask=mask)
    for step in range(STEPS):
        x = _scaled_step(x, step + 1.0)
    tl.store(dst_ptr + cols, x, mask=mask)


@pytest.mark.skipif(not rt.INTERPRET, reason="Triton's interpreter only (TRITON_INTERPRET=1)")
def test_interpreter_patches_the_language_once_a_launch(monkeypatch):
    """Triton's interpreter patched triton.language again at every call of a @triton.jit helper (a
    third of its time in the routing kernels); _kernel_lib.interpreter_patches_once_a_launch
    (applied when moe_utils is imported under the interpreter) patches each language module once a
    launch. The patching is the same for 1 and 6 helper calls (in each launch: the kernel's module,
    then tl.sigmoid's, which sees tl.core, and tl too once the interpreter has rewritten a function
    of its module: hence a first launch before the counted ones); the results are the float64
    recurrence's; after a launch tl's builtins are its own again (tl.core's are not, as without
    the change: the interpreter never undoes a device call's patching)."""
    from triton.runtime import interpreter

    assert interpreter.GridExecutor._moe_utils_patch_once
    patched = []
    walk = interpreter._patch_builtin
    monkeypatch.setattr(interpreter, "_patch_builtin", lambda pkg, *a: patched.append(pkg) or walk(pkg, *a))
    src = torch.randn(37)
    counts = []
    for steps in (6, 1, 6):
        dst = torch.full_like(src, float("nan"))
        patched.clear()
        _helper_loop_kernel[(1,)](src, dst, 37, STEPS=steps, BLOCK=64)
        counts.append(len(patched))
        want = src.double()
        for step in range(steps):
            want = torch.sigmoid(want) * (step + 1)
        torch.testing.assert_close(dst.double(), want, rtol=1e-6, atol=1e-6)
    assert counts[1] == counts[2] and tl.core in patched, (counts, patched)
    assert tl.core.is_builtin(tl.load) and tl.core.is_builtin(tl.tensor.__add__)
