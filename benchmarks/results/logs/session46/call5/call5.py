"""Session 46 call 4: what floating-point contraction is worth to the kernels (Triton 3.10's default
turns it off). One process, TRITON_DEFAULT_FP_FUSION=0: 'fused' launches with the shipped
COMPILE_OPTIONS (enable_fp_fusion=True), 'unfused' with the dict emptied (the default, off).
Median of do_bench over CUDA-graph replays (GPU time; call 4's eager timings were host-bound at
the small shapes), alternating A B A B."""

import os
import statistics

import torch
import triton
from triton.testing import do_bench

import moe_utils
from moe_utils import _runtime as rt

assert os.environ.get("TRITON_DEFAULT_FP_FUSION") == "0"

torch.manual_seed(0)
dev = "cuda"
SHIPPED = dict(rt.COMPILE_OPTIONS)


def act_case(impl, T, H, fp8, **kw):
    y = torch.randn(T, 2 * H, device=dev, dtype=torch.bfloat16).requires_grad_(True)
    w = torch.rand(T, 1, device=dev).requires_grad_(True)
    g = torch.randn(T, H, device=dev, dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            return impl(y, w, fp8, **kw)

    def fb():
        out = impl(y, w, fp8, **kw)
        return torch.autograd.grad(out, (y, w), g)

    return fwd, fb


def quick(y, w, fp8, **kw):
    return moe_utils.weighted_bias_quick_geglu_impl(y, None, w, fp8, 1.0, 7.0)


def route_case(T, E, k, hidden):
    scores = torch.rand(T, E, device=dev)
    top = scores.topk(k, 1).indices
    m = torch.zeros(T, E, device=dev, dtype=torch.bool).scatter_(1, top, True)
    probs = (scores * m).requires_grad_(True)
    x = torch.randn(T, hidden, device=dev, dtype=torch.bfloat16).requires_grad_(True)
    rows, _, plan = moe_utils.permute(x, m, probs, num_out_tokens=T * k, fused=True)
    rows = rows.detach().requires_grad_(True)
    g = torch.randn(T, hidden, device=dev, dtype=torch.bfloat16)

    def fb():
        out = moe_utils.unpermute(rows, plan, x.shape, probs=probs, routing_map=m, fused=True)
        return torch.autograd.grad(out, (rows, probs), g)

    return None, fb


cases = {}
for T, H in ((65536, 2048), (16384, 768), (65536, 2880)):
    for fp8 in (False, True):
        f, fb = act_case(moe_utils.weighted_bias_swiglu_impl, T, H, fp8)
        cases[f"swiglu fwd {T}x{H} fp8={fp8}"] = f
        cases[f"swiglu fwd+bwd {T}x{H} fp8={fp8}"] = fb
for T, H in ((16384, 2880), (65536, 1408)):
    for fp8 in (False, True):
        f, fb = act_case(quick, T, H, fp8)
        cases[f"quick_geglu(1.0, clamp 7) fwd {T}x{H} fp8={fp8}"] = f
        cases[f"quick_geglu(1.0, clamp 7) fwd+bwd {T}x{H} fp8={fp8}"] = fb
    f, fb = act_case(moe_utils.weighted_bias_geglu_impl, T, H, False)
    cases[f"geglu fwd+bwd {T}x{H}"] = fb
for shape in ((16384, 64, 8, 2048), (4096, 256, 2, 2048)):
    _, fb = route_case(*shape)
    cases[f"unpermute(probs) fwd+bwd {shape}"] = fb

times = {name: {"fused": [], "unfused": []} for name in cases}
for rnd in range(2):
    for mode in ("fused", "unfused") if rnd == 0 else ("unfused", "fused"):
        rt.COMPILE_OPTIONS.clear()
        if mode == "fused":
            rt.COMPILE_OPTIONS.update(SHIPPED)
        for name, fn in cases.items():
            fn()
            fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            times[name][mode].append(do_bench(graph.replay, warmup=25, rep=200, return_mode="median") * 1e3)
            del graph
            torch.cuda.empty_cache()
print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
print(f"{'case':58s} {'fused us':>18s} {'unfused us':>18s} {'unfused/fused':>13s}")
for name, t in times.items():
    a, b = statistics.median(t["fused"]), statistics.median(t["unfused"])
    fused, unfused = (" / ".join(f"{v:.1f}" for v in t[mode]) for mode in ("fused", "unfused"))
    print(f"{name:58s} {fused:>18s} {unfused:>18s} {b / a:13.3f}")
