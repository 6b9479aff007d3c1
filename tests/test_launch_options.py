"""Every kernel launch of ours passes _runtime.COMPILE_OPTIONS: floating-point contraction asked
for, as the kernels were tuned, timed and tested. Triton 3.9 warns at each compile that leaves it
unset, and from 3.10 its default is off, which would compile other code than the one measured.

The launches are recorded at Triton's own entry (the kernels' ``run``), the interpreter's on the CPU
and the JIT's on the GPU, while the ops run forward and backward: each generated activation (with
its shared bias's gradient summed in the kernel and added up by column_sums), permute with and
without num_out_tokens (the plan's scan in its own kernel, and in the map kernel), unpermute.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import DEVICE, TRITON, make_generator
from moe_utils.codegen.specs import REGISTRY

import moe_utils
from moe_utils import _runtime as rt
from moe_utils import routing

pytestmark = pytest.mark.skipif(not TRITON, reason="the launches are Triton's (GPU or TRITON_INTERPRET=1)")

ROUTING_KERNELS = {
    "_count_kernel",
    "_scan_experts_kernel",
    "_map_kernel",
    "_scatter_rows_kernel",
    "_gather_rows_kernel",
    "_scatter_dot_kernel",
}


@pytest.fixture
def launches(monkeypatch):
    """(kernel name, the launch's enable_fp_fusion) of every launch while the fixture is in use."""
    seen: list[tuple[str, object]] = []
    kernel_type = type(routing._count_kernel)  # InterpretedFunction, or JITFunction on the GPU
    run = kernel_type.run

    def recording_run(self, *args, **kwargs):
        seen.append((self.fn.__name__, kwargs.get("enable_fp_fusion")))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(kernel_type, "run", recording_run)
    return seen


def _assert_fusion_asked(seen, expected: set[str]) -> None:
    names = {name for name, _ in seen}
    assert expected <= names, f"these kernels did not launch: {sorted(expected - names)}"
    missing = sorted({name for name, fusion in seen if fusion is not True})
    assert not missing, f"launched without enable_fp_fusion=True (_runtime.COMPILE_OPTIONS): {missing}"


def test_compile_options_ask_for_fp_fusion():
    assert rt.COMPILE_OPTIONS == {"enable_fp_fusion": True}


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.name)
def test_activation_launches_ask_for_fp_fusion(spec, launches, monkeypatch):
    monkeypatch.setattr(rt, "BIAS_SUM_MIN_ROWS", 0)  # the shared bias's gradient summed in the kernel
    gen = make_generator(7)
    n_rows, h = 5, 24
    y = torch.randn(n_rows, 2 * h, generator=gen).to(DEVICE).requires_grad_(True)
    bias = torch.randn(2 * h, generator=gen).to(DEVICE).requires_grad_(True)
    w = torch.rand(n_rows, 1, generator=gen).add_(0.1).to(DEVICE).requires_grad_(True)
    params = tuple(p.default for p in spec.params)
    f = getattr(importlib.import_module(f"moe_utils.generated.{spec.name}"), f"weighted_bias_{spec.name}")
    f(y, bias, w, *params).sum().backward()
    _assert_fusion_asked(launches, {f"_{spec.name}_fwd", f"_{spec.name}_bwd", "column_sums"})


@pytest.mark.parametrize("num_out_tokens", [None, 12])
def test_routing_launches_ask_for_fp_fusion(num_out_tokens, launches):
    gen = make_generator(11)
    n_tokens, n_experts, k, hidden = 6, 4, 2, 40
    scores = torch.rand(n_tokens, n_experts, generator=gen)
    top = scores.topk(k, dim=1).indices
    routing_map = torch.zeros(n_tokens, n_experts, dtype=torch.bool).scatter_(1, top, True).to(DEVICE)
    probs = (scores * routing_map.cpu()).to(DEVICE).requires_grad_(True)
    x = torch.randn(n_tokens, hidden, generator=gen).to(DEVICE).requires_grad_(True)
    rows, row_probs, plan = moe_utils.permute(x, routing_map, probs, num_out_tokens=num_out_tokens, fused=True)
    out = moe_utils.unpermute(rows * 2.0, plan, x.shape, probs=probs, routing_map=routing_map, fused=True)
    (out.sum() + row_probs.sum()).backward()
    expected = ROUTING_KERNELS - ({"_scan_experts_kernel"} if num_out_tokens is not None else set())
    _assert_fusion_asked(launches, expected)
