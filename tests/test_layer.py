"""The package's ops composed into one MoE layer, as Megatron-Core's grouped MLP runs them with its
weighted activation (benchmarks/layer.py times the same layer): permute, the expert GEMMs,
weighted_bias_swiglu_impl with the permuted probs, the second GEMMs, unpermute. Each op has its own
tests; this one checks that their outputs and gradients fit together (the probs' gradient goes
from the activation's weight gradient through permute's backward), against the layer in float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, REL_TOL, assert_close_to_ref, make_generator

import moe_utils


def expert_matmul(rows: torch.Tensor, w: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """rows [N, K], expert e's rows after those of experts < e, times w [E, K, M]."""
    return torch.cat([part @ w[e] for e, part in enumerate(rows.split(counts))])


def moe_layer(x, w1, w2, routing_map, probs, fused: bool):
    counts = routing_map.sum(0).tolist()
    n_rows = sum(counts)
    rows, row_probs, idx = moe_utils.permute(x, routing_map, probs=probs, num_out_tokens=n_rows, fused=fused)
    h = expert_matmul(rows, w1, counts)
    a = moe_utils.weighted_bias_swiglu_impl(h, row_probs.unsqueeze(-1))
    return moe_utils.unpermute(expert_matmul(a, w2, counts), idx, x.shape, routing_map=routing_map, fused=fused)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("n_tokens", "n_experts", "k", "hidden", "ffn"),
    [(24, 4, 2, 32, 16), (17, 8, 3, 40, 24), (1, 4, 2, 8, 8)],
    ids=["even", "odd", "one-token"],
)
def test_moe_layer_matches_float64(dtype, n_tokens, n_experts, k, hidden, ffn):
    gen = make_generator(n_tokens * 100 + k)
    logits = torch.randn(n_tokens, n_experts, generator=gen)
    top, idx = logits.topk(k, dim=1)
    probs = torch.zeros_like(logits).scatter_(1, idx, top.softmax(dim=1)).to(DEVICE)
    routing_map = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True).to(DEVICE)
    routing_map[0, :] = False  # a token routed nowhere: a zero output row, zero gradients
    routing_map[0, 0] = n_tokens == 1  # (the one-token layer keeps one expert)
    probs = probs * routing_map
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)
    w1 = torch.randn(n_experts, hidden, 2 * ffn, generator=gen).to(DEVICE) * hidden**-0.5
    w2 = torch.randn(n_experts, ffn, hidden, generator=gen).to(DEVICE) * ffn**-0.5
    g = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE)

    def run(cast, fused):
        leaves = [t.to(cast).requires_grad_(True) for t in (x, w1, w2)]
        p = probs.to(torch.float64 if cast == torch.float64 else torch.float32).requires_grad_(True)
        y = moe_layer(*leaves, routing_map, p, fused)
        return (y, *torch.autograd.grad(y, (*leaves, p), g.to(y.dtype)))

    got = run(dtype, fused=True)
    want = run(torch.float64, fused=False)
    for name, a, b in zip(("y", "d_x", "d_w1", "d_w2", "d_probs"), got, want, strict=True):
        assert a.dtype == (torch.float32 if name == "d_probs" else dtype), name
        # Three 16-bit roundings on every path (the GEMMs' outputs, the activation's) and the GEMMs'
        # own accumulation: twice the dtype's bound of one op. That covers the interpreter's bf16
        # stores too, which truncate (FACTS.md): at most 9.1e-3 against 2e-2 there.
        assert_close_to_ref(a, b, dtype, name, rel_tol=2 * REL_TOL[dtype])
    if n_tokens > 1:
        assert torch.all(got[0][0] == 0) and torch.all(got[1][0] == 0), "the token routed nowhere"
