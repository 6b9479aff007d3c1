"""GPU-only guarantees: CUDA graphs, tensors past 2**31 elements, erf's bits. They run on the H100 (device tool)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from moe_utils.codegen.specs import REGISTRY
from reference import SpecReference

from moe_utils import (
    _kernel_lib,
    permute,
    swiglu,
    swiglu_back,
    unpermute,
    weighted_bias_geglu_impl,
    weighted_bias_quick_geglu_impl,
    weighted_bias_swiglu_impl,
)

SPECS = {s.name: s for s in REGISTRY}

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device; benchmarks/device_run.sh tests runs it there"
    ),
]


def _graph(fn):
    """Capture fn() in a CUDA graph after a warm-up on a side stream; return (graph, outputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fn()
    return graph, outs


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("train_bias", [False, True])
def test_activation_forward_backward_replays_in_a_cuda_graph(monkeypatch, fp8, train_bias):
    """A training step's activation replays in a CUDA graph, bit for bit as eager; with the bias
    trained, its gradient is summed in the backward kernel and the partial sums by the launcher."""
    from moe_utils import _runtime as rt

    monkeypatch.setattr(rt, "BIAS_SUM_MIN_ROWS", 0)  # the kernel's sum at 512 rows
    x = torch.randn(512, 2 * 320, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(512, 1, device="cuda")
    b = torch.randn(640, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(512, 320, device="cuda", dtype=torch.bfloat16)

    def step():
        xx = x.detach().requires_grad_(True)
        ww = w.detach().requires_grad_(True)
        bb = b.detach().requires_grad_(train_bias)
        out = weighted_bias_quick_geglu_impl(xx, bb, ww, fp8, 0.5, 6.0, 1.702)
        return (out, *torch.autograd.grad(out, [t for t in (xx, bb, ww) if t.requires_grad], g))

    graph, outs = _graph(step)
    for _ in range(2):  # new inputs in the captured buffers, then replay
        x.copy_(torch.randn_like(x) * 3)
        w.copy_(torch.rand_like(w))
        graph.replay()
        torch.cuda.synchronize()
        want = step()
        for got, ref in zip(outs, want, strict=True):
            assert torch.equal(got, ref)


def test_drop_and_pad_routing_replays_in_a_cuda_graph():
    n_tokens, n_experts, capacity, hidden = 256, 8, 48, 128
    x = torch.randn(n_tokens, hidden, device="cuda", dtype=torch.bfloat16)
    m = torch.zeros(n_tokens, n_experts, device="cuda", dtype=torch.bool)
    p = torch.rand(n_tokens, n_experts, device="cuda")

    def new_routing():
        m.zero_()
        for e in range(n_experts):
            m[torch.randperm(n_tokens, device="cuda")[:capacity], e] = True

    new_routing()

    def step():
        rows, probs, plan = permute(x, m, p, num_out_tokens=capacity * n_experts, fused=True, drop_and_pad=True)
        out = unpermute(rows * 2, plan, x.shape, p, m, fused=True, drop_and_pad=True)
        return rows, probs, out

    graph, outs = _graph(step)
    for _ in range(2):
        new_routing()
        x.copy_(torch.randn_like(x))
        p.copy_(torch.rand_like(p))
        graph.replay()
        torch.cuda.synchronize()
        want = step()
        for got, ref in zip(outs, want, strict=True):
            assert torch.equal(got, ref)
        ref_rows, ref_probs, _ = permute(x, m, p, num_out_tokens=capacity * n_experts, drop_and_pad=True)
        assert torch.equal(outs[0], ref_rows) and torch.equal(outs[1], ref_probs)


@pytest.mark.parametrize("k", [2, 8])
@pytest.mark.parametrize("form", ["wait", "shipped", "trigger"])
def test_programmatic_dependent_launch_gives_the_same_bits_and_replays(monkeypatch, k, form):
    # The routing kernels launch with programmatic dependent launch on sm_90 and later: each may
    # start while the kernel before it finishes, and waits for its writes before reading. Forward
    # and backward of permute and unpermute, eagerly and replayed in a CUDA graph, against the
    # same steps with it off (same bits): every kernel letting the next launch as its programs
    # exit; as shipped (the count and map kernels, and at this size the scan kernel, let it
    # launch at their start); every kernel letting it launch at its start.
    from moe_utils import _runtime as _rt

    if torch.cuda.get_device_capability()[0] < 9:
        assert _rt.pdl_args(torch.device("cuda"), "scatter") == {"PDL": 0}
        return
    n_tokens, n_experts, hidden = 300, 16, 192
    monkeypatch.setattr(_rt, "PDL", True)
    if form == "shipped":
        assert _rt.scan_triggers(n_tokens, n_experts) and _rt.PDL_TRIGGER["map"] and _rt.PDL_TRIGGER["count"]
        assert _rt.pdl_args(torch.device("cuda"), "scan", True) == {"PDL": 2, "launch_pdl": True}
    else:
        monkeypatch.setattr(_rt, "PDL_TRIGGER", dict.fromkeys(_rt.PDL_TRIGGER, form == "trigger"))
        monkeypatch.setattr(_rt, "PDL_SCAN_TRIGGER_UP_TO", (0, 0))
        for kernel in _rt.PDL_TRIGGER:
            want = {"PDL": 2 if form == "trigger" else 1, "launch_pdl": True}
            assert _rt.pdl_args(torch.device("cuda"), kernel) == want
    gen = torch.Generator(device="cuda").manual_seed(k)
    scores = torch.rand(n_tokens, n_experts, device="cuda", generator=gen)
    m = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    x = torch.randn(n_tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    p = torch.rand(n_tokens, n_experts, device="cuda", generator=gen)
    g_rows = torch.randn(n_tokens * k, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    g_out = torch.randn(n_tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)

    def step():
        xx, pp, pp2 = (t.detach().requires_grad_(True) for t in (x, p, p))
        rows, perm_probs, plan = permute(xx, m, pp, num_out_tokens=n_tokens * k, fused=True)
        expert_rows = (rows.detach() * 2).requires_grad_(True)
        out = unpermute(expert_rows, plan, x.shape, pp2, m, fused=True)
        grads = torch.autograd.grad((rows, perm_probs), (xx, pp), (g_rows, perm_probs.detach()))
        grads += torch.autograd.grad(out, (expert_rows, pp2), g_out)
        return (rows, perm_probs, out, *grads)

    with monkeypatch.context() as off:
        off.setattr(_rt, "PDL", False)
        want = step()
    got = step()
    graph, outs = _graph(step)
    graph.replay()
    torch.cuda.synchronize()
    for a, b, c in zip(want, got, outs, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert all(t.abs().sum() > 0 for t in want)


def _rows_close(got, ref64, tol):
    torch.testing.assert_close(got.double(), ref64, rtol=tol, atol=tol)


# (activation, half width, interleaved, fp8_input_store): every layout and copy of the weighted
# kernels past 2**31 elements of x, each on the tiles its launch rule gives it there: split bf16
# [1, 1024] (one row a tile); interleaved bf16 [2, 512] in 2 warps; GEGLU's fp8 copy (heavy) with
# 128-column forward blocks of 8 rows and [4, 256] backward steps; interleaved SwiGLU's fp8 copy
# (light) on [2, 256] in 2 warps.
_PAST_2_31 = [("swiglu", 1024, False, False), ("swiglu", 2048, True, False), ("geglu", 1408, False, True),
              ("swiglu", 768, True, True)]  # fmt: skip


@pytest.mark.parametrize(("name", "h", "interleaved", "fp8"), _PAST_2_31)
def test_weighted_activation_past_2_31_elements(name, h, interleaved, fp8):
    n_rows = (1 << 31) // (2 * h) + 64  # x has more than 2**31 elements
    x = torch.randn(n_rows, 2 * h, device="cuda", dtype=torch.bfloat16)
    assert x.numel() > 2**31
    w = torch.rand(n_rows, 1, device="cuda")
    x.requires_grad_(True)
    w.requires_grad_(True)
    impl = {"swiglu": weighted_bias_swiglu_impl, "geglu": weighted_bias_geglu_impl}[name]
    out = impl(x, w, fp8, interleaved=interleaved)
    g = torch.randn_like(out)
    d_x, d_w = torch.autograd.grad(out, (x, w), g)
    reference = SpecReference(SPECS[name])
    for start in (0, n_rows // 2, n_rows - 8):
        sl = slice(start, start + 8)
        xx = x[sl].detach()
        ref_out = reference.forward_backward(xx, weights=w[sl], interleaved=interleaved)[0]
        # With fp8_input_store the backward sees x through its fp8 copy (saturated at +-448).
        saved = torch.clamp(xx.float(), -448, 448).to(torch.float8_e4m3fn).float() if fp8 else xx
        _, ref_dx, _, ref_dw = reference.forward_backward(saved, weights=w[sl], g=g[sl], interleaved=interleaved)
        _rows_close(out[sl].cpu(), ref_out, 2e-2)
        _rows_close(d_x[sl].cpu(), ref_dx, 2e-2)
        torch.testing.assert_close(d_w[sl].double().cpu(), ref_dw.reshape(d_w[sl].shape), rtol=1e-2, atol=0.5)


def test_bias_gradient_summed_past_2_31_elements():
    """A shared bias's gradient summed inside the backward (bias_sum) past 2**31 elements of x, with
    the input's gradient beside it: against the float64 column sum of that gradient (no clamp, so the
    two agree but for d_x's bf16 rounding). The programs' rows of partial sums start past 2**31
    bytes of x's rows."""
    from moe_utils.generated.swiglu import weighted_bias_swiglu

    h = 1024
    n_rows = (1 << 31) // (2 * h) + 64
    x = torch.randn(n_rows, 2 * h, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    assert x.numel() > 2**31
    b = torch.randn(2 * h, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    w = torch.rand(n_rows, 1, device="cuda")
    out = weighted_bias_swiglu(x, b, w)
    d_x, d_b = torch.autograd.grad(out, (x, b), torch.randn_like(out))
    want = d_x.sum(0, dtype=torch.float64)
    assert torch.isfinite(d_b).all()
    assert ((d_b.double() - want).norm() / want.norm()).item() < 1e-2


def test_unweighted_activation_past_2_31_elements():
    """The unweighted forward and backward (whole-row steps) past 2**31 elements of y."""
    h = 2048
    n_rows = (1 << 31) // (2 * h) + 64
    y = torch.randn(n_rows, 2 * h, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(n_rows, h, device="cuda", dtype=torch.bfloat16)
    out, d_y = swiglu(y), swiglu_back(g, y)
    reference = SpecReference(SPECS["swiglu"])
    for start in (0, n_rows // 2, n_rows - 8):
        sl = slice(start, start + 8)
        ref_out, ref_dy, _, _ = reference.forward_backward(y[sl], g=g[sl])
        _rows_close(out[sl].cpu(), ref_out, 2e-2)
        _rows_close(d_y[sl].cpu(), ref_dy, 2e-2)


def test_permute_unpermute_past_2_31_elements():
    """Both ops forward and backward (the gather with the probs gradient, the scatter-dot) on
    permuted rows of more than 2**31 elements, checked at tokens whose rows lie past that line."""
    n_tokens, n_experts, k, hidden = 65536, 64, 8, 4160  # rows: 524288 x 4160 > 2**31 elements
    x = torch.randn(n_tokens, hidden, device="cuda", dtype=torch.bfloat16)
    scores = torch.rand(n_tokens, n_experts, device="cuda")
    top = scores.topk(k, dim=1).indices
    m = torch.zeros(n_tokens, n_experts, device="cuda", dtype=torch.bool).scatter_(1, top, True)
    p = torch.rand(n_tokens, n_experts, device="cuda") * m  # permute's probs
    merge = torch.rand(n_tokens, n_experts, device="cuda") * m  # unpermute's
    x.requires_grad_(True)
    p.requires_grad_(True)
    merge.requires_grad_(True)
    rows, perm_probs, plan = permute(x, m, p, num_out_tokens=n_tokens * k, fused=True)
    assert rows.numel() > 2**31
    src = plan[: rows.shape[0]]
    for start in (0, rows.shape[0] // 2, rows.shape[0] - 4):
        sl = slice(start, start + 4)
        assert torch.equal(rows[sl], x[src[sl]])
    out = unpermute(rows, plan, x.shape, merge, m, fused=True)
    g = torch.randn_like(out)
    d_x, d_p, d_merge = torch.autograd.grad((out, perm_probs), (x, p, merge), (g, torch.ones_like(perm_probs)))
    # The source tokens of the first, middle and last rows (the last past 2**31 elements of rows).
    n_rows = rows.shape[0]
    tokens = torch.cat([src[:4], src[n_rows // 2 : n_rows // 2 + 4], src[-4:]]).unique()
    xt, gt, mt = x[tokens].detach().double(), g[tokens].double(), m[tokens]
    _rows_close(out[tokens], xt * merge[tokens].sum(1, keepdim=True).double(), 3e-2)
    # d_x[t] = sum over t's rows of g[t] * merge[t, e]; d_merge[t, e] = <g[t], x[t]> where routed.
    _rows_close(d_x[tokens], gt * merge[tokens].sum(1, keepdim=True).double(), 3e-2)
    want = torch.where(mt, (gt * xt).sum(1, keepdim=True), 0.0)
    torch.testing.assert_close(d_merge[tokens].double(), want, rtol=1e-3, atol=1e-2)
    assert torch.equal(d_p, m.to(d_p.dtype))  # each routed probability's gradient: its row's 1


def test_compiled_moe_block_runs_in_inductor_cuda_graphs():
    """torch.compile(mode="reduce-overhead"): the block (router, permute, activation, unpermute,
    aux loss) is recorded into Inductor's CUDA graphs, none skipped, for two token counts, and its
    replays match eager, gradients too."""
    from test_compile import TinyMoE
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_trees

    torch.manual_seed(0)
    model = TinyMoE(hidden=256, ffn=320, n_experts=8, k=2).cuda()
    params = list(model.parameters())
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for n_tokens in (512, 768, 512):
        for _ in range(4):  # warm-up, recording, then replays
            x = torch.randn(n_tokens, 256, device="cuda")
            out = compiled(x)
            grads = torch.autograd.grad(out.square().sum(), params)
            out = out.clone()  # the graph's output buffer is overwritten by the next replay
            want = model(x)
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
            for g, e in zip(grads, torch.autograd.grad(want.square().sum(), params), strict=True):
                torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert manager is not None and sum(len(nodes) for nodes in manager.roots.values()) >= 2  # recorded


@pytest.mark.parametrize("fp8", [False, True])
def test_peak_memory_of_forward_backward_is_within_budget(fp8):
    """Forward + backward allocates only its outputs: out [T, H], the fp8 copy when asked for,
    d_x [T, 2H] and d_w [T]. No fp32 temporaries of the input's size, no saved intermediates."""
    n_rows, h = 8192, 2048
    x = torch.randn(n_rows, 2 * h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(n_rows, 1, device="cuda", requires_grad=True)
    g = torch.randn(n_rows, h, device="cuda", dtype=torch.bfloat16)
    weighted_bias_swiglu_impl(x, w, fp8)  # warm up (compile) outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = weighted_bias_swiglu_impl(x, w, fp8)
    after_forward = torch.cuda.memory_allocated() - base
    grads = torch.autograd.grad(out, (x, w), g)
    torch.cuda.synchronize()
    assert grads[0].shape == x.shape and grads[1].shape == w.shape
    peak = torch.cuda.max_memory_allocated() - base
    out_bytes, d_x_bytes, fp8_bytes = n_rows * h * 2, n_rows * 2 * h * 2, n_rows * 2 * h
    slack = 1 << 20  # d_w, allocator rounding
    # What the forward keeps alive: the output, plus the fp8 copy instead of nothing extra.
    assert after_forward <= out_bytes + (fp8_bytes if fp8 else 0) + slack, after_forward
    assert peak <= out_bytes + (fp8_bytes if fp8 else 0) + d_x_bytes + slack, peak


@triton.jit
def _erf_mismatches(out_ptr, start, BLOCK: tl.constexpr):
    # For the BLOCK fp32 bit patterns from start + program * BLOCK: how many _kernel_lib.erf gets
    # wrong against tl.erf (other bits, or a number for NaN); subnormal inputs excluded.
    offs = start + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    bits = offs.to(tl.int32)  # wraps: start 0 to 2**32 covers every pattern
    x = bits.to(tl.float32, bitcast=True)
    ours = _kernel_lib.erf(x)
    wrong = tl.where(x != x, ours == ours, ours.to(tl.int32, bitcast=True) != tl.erf(x).to(tl.int32, bitcast=True))
    subnormal = ((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)
    tl.store(out_ptr + tl.program_id(0), tl.sum((wrong & ~subnormal).to(tl.int32), axis=0))


@triton.jit
def _erf_of(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _kernel_lib.erf(tl.load(x_ptr + offs)))


def test_kernel_lib_erf_has_the_bits_of_tl_erf_for_every_input():
    # The generated kernels' erf (two polynomials and a select) against the libdevice erff that
    # tl.erf links (Inductor's compiled reference calls it) and against the erff that torch.erf
    # calls, for all 2**32 fp32 inputs. Measured on the H200 (session 28): the bits of tl.erf at
    # every input but a subnormal one (tl.erf flushes those to 0), the bits of torch.erf at every
    # subnormal one, and never more than 1 ulp from torch.erf, whose erff differs from tl.erf's by
    # 1 ulp at 7.3 million inputs with 1.00296 <= |x| <= 3.92. Triton 3.9 links CUDA 13's libdevice,
    # whose erff has other far-branch coefficients (_kernel_lib.ERF_CUDA13): before session 47 this
    # erf missed its bits at 7,294,414 inputs there (session 47 call 2).
    block = 4096
    counts = torch.full((2**32 // block,), -1, dtype=torch.int32, device="cuda")
    _erf_mismatches[(counts.numel(),)](counts, 0, BLOCK=block)
    assert (counts >= 0).all() and counts.sum().item() == 0, counts.nonzero()[:8]
    chunk = 2**28
    off_torch = far_from_torch = 0
    for lo in range(-(2**31), 2**31, chunk):
        bits = torch.arange(lo, lo + chunk, dtype=torch.int64, device="cuda").to(torch.int32)
        x = bits.view(torch.float32)
        ours = torch.full_like(x, 7.0)
        _erf_of[(chunk // block,)](x, ours, BLOCK=block)
        ref = torch.erf(x)
        nan = torch.isnan(x)
        assert torch.isnan(ours[nan]).all()
        subnormal = ((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)
        ulps = (ours.view(torch.int32).long() - ref.view(torch.int32).long()).abs()
        ulps[torch.signbit(ours) != torch.signbit(ref)] = 2**32
        off_torch += ((ulps != 0) & subnormal).sum().item()
        far_from_torch += ((ulps > 1) & ~nan).sum().item()
    assert off_torch == 0 and far_from_torch == 0, (off_torch, far_from_torch)


def _after_queued_work(dev: torch.device, t: torch.Tensor) -> torch.Tensor:
    """t, overwritten by a write queued behind about 20 ms of work on dev's current stream: a
    kernel that does not wait for that stream (one launched on another device) reads the old values."""
    with torch.cuda.device(dev):
        torch.cuda._sleep(40_000_000)
        return t.mul_(-1.5).add_(0.25)


def _second_device_step(dev: torch.device, fp8: bool):
    """Every Triton launch path once, on dev, each input written last on dev's stream: the MoE
    block eagerly (permute with probs, the Quick-GEGLU activation, unpermute, gradients),
    drop_and_pad routing, fp8_input_store SwiGLU and a *_back helper. Returns every output and
    gradient."""
    from test_compile import TinyMoE

    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = TinyMoE(hidden=192, ffn=160, n_experts=8, k=2).to(dev)
    x = _after_queued_work(dev, torch.randn(300, 192, generator=gen).to(dev))
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    n_tokens, n_experts, capacity = 96, 4, 40
    m = torch.zeros(n_tokens, n_experts, dtype=torch.bool)
    for e in range(n_experts):
        m[torch.randperm(n_tokens, generator=gen)[:capacity], e] = True
    m = m.to(dev)
    p = torch.rand(n_tokens, n_experts, generator=gen).to(dev).requires_grad_(True)
    tokens = torch.randn(n_tokens, 136, generator=gen).to(dev, torch.bfloat16)
    tokens = _after_queued_work(dev, tokens).requires_grad_(True)
    rows, row_probs, plan = permute(tokens, m, p, num_out_tokens=capacity * n_experts, fused=True, drop_and_pad=True)
    merged = unpermute(rows * 2, plan, tokens.shape, p, m, fused=True, drop_and_pad=True)
    d_tokens, d_p = torch.autograd.grad((merged.float().square().sum(), row_probs.sum()), (tokens, p))
    y = _after_queued_work(dev, torch.randn(70, 2 * 100, generator=gen).to(dev, torch.bfloat16)).requires_grad_(True)
    w = torch.rand(70, 1, generator=gen).to(dev).requires_grad_(True)
    g = torch.randn(70, 100, generator=gen).to(dev, torch.bfloat16)
    act = weighted_bias_swiglu_impl(y, w, fp8)
    d_y, d_w = torch.autograd.grad(act, (y, w), g)
    back = swiglu_back(_after_queued_work(dev, g), y.detach())
    return (out, *grads, rows, row_probs, plan, merged, d_tokens, d_p, act, d_y, d_w, back)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (device tool: nvidia-h200-x2)")
@pytest.mark.parametrize("fp8", [False, True])
def test_ops_run_on_their_inputs_device_when_another_is_current(fp8):
    """Triton launches on the current device and stream: with tensors on cuda:1 and cuda:0 current,
    every op must still run on cuda:1, after the work queued on its stream, and give the bits it
    gives with cuda:1 current."""
    dev = torch.device("cuda", 1)
    with torch.cuda.device(dev):
        want = _second_device_step(dev, fp8)
    with torch.cuda.device(0):
        got = _second_device_step(dev, fp8)
    torch.cuda.synchronize(dev)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.device == dev, f"output {i} is on {a.device}"
        assert torch.equal(a, b), f"output {i} differs"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (device tool: nvidia-h200-x2)")
def test_compiled_block_runs_on_its_inputs_device_when_another_is_current():
    """The same under torch.compile: the torch.library ops' bodies launch on the inputs' device."""
    from test_compile import TinyMoE

    dev = torch.device("cuda", 1)
    torch.manual_seed(0)
    model = TinyMoE(hidden=128, ffn=96, n_experts=8, k=2).to(dev)
    x = torch.randn(200, 128, device=dev)
    with torch.cuda.device(dev):
        want = model(x * -1.5 + 0.25)  # the values _after_queued_work writes
        want_grads = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.cuda.device(0):
        out = compiled(_after_queued_work(dev, x.clone()))
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert out.device == dev
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
