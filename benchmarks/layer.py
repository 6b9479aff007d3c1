"""One MoE layer, forward and backward, with moe_utils' ops against the reference's: how much of a
layer the ops this package replaces take, and what replacing them saves.

    python benchmarks/layer.py [--out DIR] [--shapes T:E:K:HIDDEN:FFN ...]
    python benchmarks/layer.py --dry      # any machine: tiny fp16 shapes on the CPU, no timing
    python benchmarks/layer.py --kernels  # each of our kernels inside the layer against it alone

The layer, from the router's output (routing_map [T, E] bool, probs [T, E] fp32: the top-k
softmax, zero elsewhere) to the layer's output, as Megatron-Core's grouped MLP runs it with its
weighted activation (the probs applied in the activation, unpermute without them):

    rows, row_probs, idx = permute(x, routing_map, probs, num_out_tokens=T * k)
    h = grouped_mm(rows, w1)                              # [N, 2 * FFN], N = T * k
    a = weighted_bias_swiglu_impl(h, row_probs[:, None])  # [N, FFN]
    y = unpermute(grouped_mm(a, w2), idx, x.shape, routing_map=routing_map)

Both sides run the same expert GEMMs (``torch._grouped_mm``, offsets from the routing map on the
device) and differ in the three ops only:

- ``ours``: ``permute`` / ``unpermute`` with ``fused=True`` and ``weighted_bias_swiglu_impl``;
- ``reference``: Megatron-Core's permute and unpermute in eager PyTorch (as it ships them: the
  masked_select syncs with the host) and its weighted SwiGLU compiled with ``torch.compile`` (its
  ``jit_fuser``).

Times are medians from ``triton.testing.do_bench`` of fwd+bwd (``torch.autograd.grad`` of x, w1, w2
and probs: the router is trained through them), L2 flushed before each call. ``eager``: the calls as
a training step makes them, host included (Megatron runs MoE layers eagerly), the two sides
alternating over ``--rounds`` (the GEMMs drift within a process: the median of the rounds).
``graph``: ours as a CUDA graph, GPU time alone (the reference syncs with the host, so it has none).
The graph itself has no gaps (session 45 call 4: its kernels fill 99.6-99.9% of its span, eager's
98.9-99.6%, the rest launch gaps of about 2 µs), but at the card's power cap its timings follow the
SM clock (call 3): do_bench put it 3-4% (4096:128:8) and 9-12% (16384:128:8) behind eager, in the
GEMMs, while in 1.5 s loops it ran 4-6% faster than eager at 4096:128:8 (whose host is slower than
the GPU there) and within 3% at 16384:128:8. Read this column as ours without the host, at a clock
the eager rounds need not have had.
The kernels' split (torch.profiler, the sides alternating, GPU time of each kernel summed): the
grouped GEMMs, and every other kernel, which is the ops' share of the layer (with the offsets' sum,
the same on both sides). Peak memory is the fwd+bwd's allocation above its inputs (the weight
gradients included); held memory what the forward leaves for the backward (saved tensors and
output), which a training step holds for every layer at once. Each shape first checks both sides
against the layer in float64 (the reference's ops, one matmul per expert) and prints their relative
errors. Writes ``layer-<card>.json`` and ``layer-<card>.md`` to ``--out``.

``--kernels`` instead times each kernel of our side by name (torch.profiler) inside the layer and
in each op's fwd+bwd alone on the same tensors, with L2 flushed before each call ("cold") and back
to back ("warm", how bench.py's figures are timed): whether a kernel tuned alone runs as fast
between the GEMMs. Writes ``layer-kernels-<card>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import platform
import re
import statistics
import sys
from collections.abc import Callable

DRY = "--dry" in sys.argv
if DRY:  # before triton is imported: the kernels run in Triton's interpreter on the CPU
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402

import moe_utils  # noqa: E402
from moe_utils.permutation import _permute_reference  # noqa: E402
from moe_utils.unpermutation import _unpermute_reference  # noqa: E402

DEVICE = "cpu" if DRY else "cuda"
#: --dry runs fp16: the interpreter's fp32 -> bf16 stores truncate (FACTS.md), which would put ours
#: further from the exact layer than the GPU's rounding does; its fp16 stores round to nearest.
DTYPE = torch.float16 if DRY else torch.bfloat16
#: T:E:K:HIDDEN:FFN. Qwen3-30B-A3B's layer (128 experts, top-8, 2048 / 768), DeepSeek-V2-Lite's
#: (64 routed experts, top-6, 2048 / 1408), a 7168-wide layer of 64 experts at top-8 (DeepSeek-V3's
#: widths, a quarter of its experts: what one GPU holds at expert parallelism 4), and Mixtral's top-2
#: of 8 (4096 / 14336).
SHAPES = (
    "4096:128:8:2048:768",
    "16384:128:8:2048:768",
    "16384:64:6:2048:1408",
    "4096:64:8:7168:2048",
    "16384:8:2:4096:14336",
)
DRY_SHAPES = ("24:4:2:32:16", "17:8:3:48:32")
FP8 = [False]  # --fp8-input-store: both activations save their input as fp8 for the backward


def routing(n_tokens: int, n_experts: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A router's output: the top-k of random logits, their softmax as probs [T, E] fp32 (zero off
    the top-k), and routing_map [T, E] bool."""
    logits = torch.randn(n_tokens, n_experts, generator=gen, device=DEVICE)
    top, idx = logits.topk(k, dim=1)
    probs = torch.zeros_like(logits).scatter_(1, idx, top.softmax(dim=1))
    routing_map = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True)
    return routing_map, probs


def offsets(routing_map: torch.Tensor) -> torch.Tensor:
    """The grouped GEMMs' group ends [E] int32 (each expert's rows end), on the device: no sync."""
    return routing_map.sum(0, dtype=torch.int32).cumsum(0, dtype=torch.int32)


#: Whether torch._grouped_mm runs here (main() checks it once on the GPU; the CPU build has it).
GROUPED_MM = [True]


def grouped_mm(rows: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """rows [N, K] of E groups (ending at offs) times w [E, K, M]: [N, M]. float64 (the exact
    layer, which torch._grouped_mm does not take), or where torch._grouped_mm does not run (a GPU
    or torch it does not support): one matmul per expert, a host sync."""
    if rows.dtype != torch.float64 and GROUPED_MM[0]:
        return torch._grouped_mm(rows, w, offs=offs)
    starts = [0, *offs.tolist()]
    return torch.cat([rows[a:b] @ w[e] for e, (a, b) in enumerate(itertools.pairwise(starts))])


def ours(x, w1, w2, routing_map, probs, n_rows):
    """The layer with this package's ops."""
    offs = offsets(routing_map)
    rows, row_probs, plan = moe_utils.permute(x, routing_map, probs=probs, num_out_tokens=n_rows, fused=True)
    a = moe_utils.weighted_bias_swiglu_impl(grouped_mm(rows, w1, offs), row_probs.unsqueeze(-1), FP8[0])
    return moe_utils.unpermute(grouped_mm(a, w2, offs), plan, x.shape, routing_map=routing_map, fused=True)


def reference(act: Callable) -> Callable:
    """The layer with the reference's ops; act is its weighted SwiGLU (forward(y, weights, fp8))."""

    def forward(x, w1, w2, routing_map, probs, n_rows):
        offs = offsets(routing_map)
        rows, row_probs, idx = _permute_reference(x, routing_map, probs, n_rows, False)
        a = act(grouped_mm(rows, w1, offs), row_probs.unsqueeze(-1), FP8[0])
        return _unpermute_reference(grouped_mm(a, w2, offs), idx, x.shape, None, routing_map, False)

    return forward


class Layer:
    """One shape's inputs (fixed seed) and its fwd+bwd calls."""

    def __init__(self, shape: str):
        self.shape = shape
        n_tokens, n_experts, k, hidden, ffn = (int(v) for v in shape.split(":"))
        gen = torch.Generator(device=DEVICE).manual_seed(0)

        def randn(*size, scale=1.0):
            return (scale * torch.randn(*size, generator=gen, device=DEVICE)).to(DTYPE).requires_grad_(True)

        self.n_rows = n_tokens * k
        self.routing_map, self.probs = routing(n_tokens, n_experts, k, gen)
        self.probs.requires_grad_(True)  # the router is trained through them
        self.x = randn(n_tokens, hidden)
        self.w1 = randn(n_experts, hidden, 2 * ffn, scale=hidden**-0.5)
        self.w2 = randn(n_experts, ffn, hidden, scale=ffn**-0.5)
        self.g = randn(n_tokens, hidden).detach()

    def fwd_bwd(self, forward: Callable) -> Callable[[], tuple[torch.Tensor, ...]]:
        """forward's output and the gradients of x, w1, w2 and probs."""

        def run():
            y = forward(self.x, self.w1, self.w2, self.routing_map, self.probs, self.n_rows)
            return (y.detach(), *torch.autograd.grad(y, (self.x, self.w1, self.w2, self.probs), self.g))

        return run

    def exact(self) -> tuple[torch.Tensor, ...]:
        """The reference layer in float64 (its SwiGLU eager): what both sides are measured against."""
        leaves = [t.detach().double().requires_grad_(True) for t in (self.x, self.w1, self.w2, self.probs)]
        forward = reference(baselines.activation_baselines(compile_fns=False)["swiglu"][0])
        y = forward(*leaves[:3], self.routing_map, leaves[3], self.n_rows)
        return (y.detach(), *torch.autograd.grad(y, leaves, self.g.double()))


OUTPUTS = ("y", "dx", "dw1", "dw2", "dprobs")


def errors(case: Layer, ours_run: Callable, ref_run: Callable) -> dict[str, dict[str, float]]:
    """||got - exact|| / ||exact|| of the output and each gradient, ours and the reference's, against
    the float64 layer."""
    exact = case.exact()

    def relative(got):
        return {n: float((a.double() - b).norm() / b.norm()) for n, a, b in zip(OUTPUTS, got, exact, strict=True)}

    return dict(ours_error=relative(ours_run()), reference_error=relative(ref_run()))


def held_mb(case: Layer, forward: Callable) -> float:
    """What the forward leaves allocated for the backward (the saved tensors and the output), in
    MiB: a training step holds this for every layer until its backward, so it is the memory that
    fp8_input_store saves. (The peak also counts the weight gradients, which a training step keeps
    in .grad buffers whatever the ops.)"""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    y = forward(case.x, case.w1, case.w2, case.routing_map, case.probs, case.n_rows)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    del y
    return held / 2**20


#: Kernel names of the grouped GEMMs (CUTLASS's, through torch._grouped_mm); every other kernel
#: of the layer belongs to the ops (and the offsets' sum, the same on both sides).
GEMM_KERNELS = ("cutlass", "gemm", "xmma")


def profiled_kernels(
    fn: Callable[[], object], calls: int, flush: torch.Tensor | None = None, host_ahead: bool = False
) -> dict[str, float]:
    """GPU time a call of each kernel name (µs, summed over its launches), from torch.profiler, fn
    called once before. flush: the L2 overwritten before each call (FLUSH_KERNEL, left out);
    host_ahead: the GPU kept behind the host (HOST_AHEAD_CYCLES, its spin kernel left out)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            if host_ahead:
                torch.cuda._sleep(HOST_AHEAD_CYCLES)
            if flush is not None:
                flush.bitwise_not_()
            fn()
        torch.cuda.synchronize()
    found: dict[str, float] = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not any(tag in event.name for tag in (FLUSH_KERNEL, "spin_kernel")):
            found[event.name] = found.get(event.name, 0.0) + event.device_time / calls
    return found


def is_gemm(name: str) -> bool:
    return any(tag in name.lower() for tag in GEMM_KERNELS)


def kernel_us(fn: Callable[[], object], calls: int = 2) -> tuple[float, float]:
    """(GEMM kernels, every other kernel): GPU time a call, µs. Measured per kernel, the ops' share
    does not move with the GEMMs' own variation (5-8% between processes and inputs at
    4096:64:8:7168:2048, session 44), which a difference of layer times would carry."""
    found = profiled_kernels(fn, calls)
    gemm = sum(us for name, us in found.items() if is_gemm(name))
    return gemm, sum(found.values()) - gemm


def time_shape(case: Layer, ref_forward: Callable, rounds: int) -> dict:
    """Eager fwd+bwd of ours and the reference, alternating over rounds (the medians' median: the
    GEMMs drift within a process), then ours as a CUDA graph, the kernels' split, memory."""
    from bench import peak_memory_mb
    from sweep import capture_graph
    from triton.testing import do_bench

    ours_run, ref_run = case.fwd_bwd(ours), case.fwd_bwd(ref_forward)
    row = dict(shape=case.shape, **errors(case, ours_run, ref_run))
    eager: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(rounds):
        for name, fn in (("ours", ours_run), ("reference", ref_run)):
            eager[name].append(1e3 * do_bench(fn, warmup=10, rep=100, return_mode="median"))
    for name, times in eager.items():
        row[f"{name}_eager_us"] = statistics.median(times)
        row[f"{name}_eager_rounds_us"] = times
    row["ours_graph_us"] = None  # the per-expert GEMMs' host sync cannot be captured
    if GROUPED_MM[0]:
        graph = capture_graph(ours_run, ours_run)
        row["ours_graph_us"] = 1e3 * do_bench(graph.replay, warmup=5, rep=100, return_mode="median")
        del graph
    # The kernels' split, alternating too (ABBA...). The GEMMs take longer beside ours than beside
    # the reference's ops (session 44: 0.2-11%): at the card's power cap the reference's long
    # memory-bound ops let the SM clock recover between GEMMs (call 8: 1652-1883 against 1558-1634
    # MHz on average). Timed first, as in call 5, the side also drew the GEMMs' drift.
    split: dict[str, list[tuple[float, float]]] = {"ours": [], "reference": []}
    for r in range(max(2, rounds + rounds % 2)):
        for name in ("ours", "reference")[:: 1 if r % 2 == 0 else -1]:
            split[name].append(kernel_us(ours_run if name == "ours" else ref_run))
    for name, pairs in split.items():
        row[f"{name}_gemm_kernels_us"] = statistics.mean(p[0] for p in pairs)
        row[f"{name}_other_kernels_us"] = statistics.mean(p[1] for p in pairs)
    row["ours_peak_mb"] = peak_memory_mb(ours_run)
    row["reference_peak_mb"] = peak_memory_mb(ref_run)
    row["ours_held_mb"] = held_mb(case, ours)
    row["reference_held_mb"] = held_mb(case, ref_forward)
    return row


# -- --kernels: each of our kernels inside the layer against the same op alone ---------------------

#: The L2 flush before a cold call: 256 MiB (the H200's L2 is 50 MiB), bitwise_not in place, a
#: kernel none of the ops launches, so its time is told apart by name.
FLUSH_KERNEL = "bitwise_not"
#: GPU cycles slept (torch.cuda._sleep, PyTorch's spin_kernel) before each profiled call, about 12
#: ms: the host queues the whole call while the GPU waits, so its kernels run back to back as
#: between a layer's GEMMs. Without it an op alone at 4096 tokens is host-bound (Next 10), and a
#: kernel launched with PDL, whose time starts when it is let start (its wait for the kernel before
#: included), looks shorter alone than in the layer (session 45 call 1: the map kernel 3.0 µs alone,
#: 5.5 in the layer).
HOST_AHEAD_CYCLES = 20_000_000


def kernels_by_name(fn: Callable[[], object], flush: torch.Tensor | None = None) -> dict[str, float]:
    """GPU time a call of each kernel name but the GEMMs' (µs), the GPU kept behind the host."""
    return {n: us for n, us in profiled_kernels(fn, 5, flush, host_ahead=True).items() if not is_gemm(n)}


def short_kernel_name(name: str) -> str:
    """A kernel's name for the table: Triton's as they are, PyTorch's C++ templates by their kernel
    and functor ("vectorized_elementwise_kernel FillFunctor")."""
    if "<" not in name:
        return name
    head, template = name.removeprefix("void ").split("<", 1)
    kernel = head.split("::")[-1]
    functor = re.search(r"(\w*(?:Functor|functor|copy_kernel\w*))\b", template)
    return f"{kernel} {functor.group(1)}" if functor else kernel


def standalone_ops(case: Layer) -> dict[str, Callable[[], object]]:
    """Each of our ops' fwd+bwd alone, on tensors of the layer's shapes and dtypes: permute of the
    layer's tokens and probs, the weighted SwiGLU of [N, 2 * FFN] rows, unpermute of [N, hidden]
    rows with the layer's plan."""
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    ffn = case.w1.shape[2] // 2
    rows, row_probs, plan = moe_utils.permute(
        case.x, case.routing_map, probs=case.probs, num_out_tokens=case.n_rows, fused=True
    )

    def like(t: torch.Tensor, width: int | None = None) -> torch.Tensor:
        shape = (t.shape[0], width) if width is not None else t.shape
        return torch.randn(*shape, generator=gen, device=DEVICE).to(t.dtype)

    h = like(rows, 2 * ffn).requires_grad_(True)
    weights = row_probs.detach().unsqueeze(-1).requires_grad_(True)
    expert_out = like(rows).requires_grad_(True)
    g_rows, g_row_probs, g_act = like(rows), like(row_probs), like(rows, ffn)
    plan = plan.detach()

    def permute_run():
        out, out_probs, _ = moe_utils.permute(
            case.x, case.routing_map, probs=case.probs, num_out_tokens=case.n_rows, fused=True
        )
        return torch.autograd.grad((out, out_probs), (case.x, case.probs), (g_rows, g_row_probs))

    def act_run():
        a = moe_utils.weighted_bias_swiglu_impl(h, weights, FP8[0])
        return torch.autograd.grad(a, (h, weights), g_act)

    def unpermute_run():
        y = moe_utils.unpermute(expert_out, plan, case.x.shape, routing_map=case.routing_map, fused=True)
        return torch.autograd.grad(y, expert_out, case.g)

    return {"permute": permute_run, "weighted_bias_swiglu_impl": act_run, "unpermute": unpermute_run}


def kernel_rows(case: Layer) -> list[dict]:
    """Each kernel name of our layer's fwd+bwd: µs a step inside the layer, and in the ops alone,
    cold and warm, summed over the ops that launch it (permute's scatter is unpermute's backward's
    too); those ops."""
    flush = torch.empty(2**26, dtype=torch.int32, device=DEVICE)
    layer = kernels_by_name(case.fwd_bwd(ours), flush=flush)
    alone = {op: (kernels_by_name(fn, flush=flush), kernels_by_name(fn)) for op, fn in standalone_ops(case).items()}
    rows = []
    for name, layer_us in sorted(layer.items(), key=lambda kv: -kv[1]):
        ops = [op for op, (cold, _) in alone.items() if name in cold]
        times = dict(layer_us=layer_us, cold_us=None, warm_us=None)
        if ops:
            times["cold_us"] = sum(alone[op][0][name] for op in ops)
            times["warm_us"] = sum(alone[op][1].get(name, 0.0) for op in ops)
        rows.append(dict(shape=case.shape, ops=ops, kernel=short_kernel_name(name), full_name=name, **times))
    ours_rows = [r for r in rows if r["ops"]]
    total = {key: sum(r[key] for r in ours_rows) for key in ("layer_us", "cold_us", "warm_us")}
    rows.append(dict(shape=case.shape, ops=["all three"], kernel="(the ops' kernels, summed)", full_name="", **total))
    return rows


KERNELS_HEADER = (
    "| T:E:k:hidden:ffn | ops | kernel | in the layer, µs | alone, L2 cold | alone, warm | layer / cold |\n"
    "|---|---|---|---|---|---|---|"
)


def kernel_md_row(r: dict) -> str:
    def us(v):
        return "—" if v is None else f"{v:.1f}"

    ratio = "—" if not r["cold_us"] else f"{r['layer_us'] / r['cold_us']:.2f}"
    times = " | ".join(us(r[key]) for key in ("layer_us", "cold_us", "warm_us"))
    ops = " + ".join(r["ops"]) or "— (the GEMMs' offsets, autograd)"
    return f"| {r['shape']} | {ops} | `{r['kernel']}` | {times} | {ratio} |"


MD_HEADER = (
    "| T:E:k:hidden:ffn | layer fwd+bwd, eager: ours / reference | speedup | ours, CUDA graph | "
    "GEMM kernels: ours / reference | the other kernels: ours / reference | peak MiB: ours / reference | "
    "held for the backward, MiB: ours / reference |\n"
    "|---|---|---|---|---|---|---|---|"
)


def md_row(r: dict) -> str:
    graph = "—" if r["ours_graph_us"] is None else f"{r['ours_graph_us']:.0f} µs"
    return (
        f"| {r['shape']} | {r['ours_eager_us']:.0f} / {r['reference_eager_us']:.0f} µs | "
        f"{r['reference_eager_us'] / r['ours_eager_us']:.2f}x | {graph} | "
        f"{r['ours_gemm_kernels_us']:.0f} / {r['reference_gemm_kernels_us']:.0f} µs | "
        f"{r['ours_other_kernels_us']:.0f} / {r['reference_other_kernels_us']:.0f} µs | "
        f"{r['ours_peak_mb']:.0f} / {r['reference_peak_mb']:.0f} | "
        f"{r['ours_held_mb']:.0f} / {r['reference_held_mb']:.0f} |"
    )


def dry_run() -> int:
    """Every shape's layer, ours against the reference (eager), on the CPU; no timing."""
    ref_forward = reference(baselines.activation_baselines(compile_fns=False)["swiglu"][0])
    failed = False
    for shape in DRY_SHAPES:
        case = Layer(shape)
        found = errors(case, case.fwd_bwd(ours), case.fwd_bwd(ref_forward))
        print(f"{shape}: {error_text(found)}")
        # 16-bit rows: each side rounds; ours the activation once, the reference each of its parts.
        failed |= any(found["ours_error"][n] > 1.25 * found["reference_error"][n] + 1e-3 for n in OUTPUTS)
    if failed:
        print("layer.py --dry: ours is further from the float64 layer than the reference")
    return int(failed)


def error_text(found: dict[str, dict[str, float]]) -> str:
    ours, ref = found["ours_error"], found["reference_error"]
    pairs = ", ".join(f"{n} {ours[n]:.2e} / {ref[n]:.2e}" for n in OUTPUTS)
    return f"relative error against the float64 layer, ours / reference: {pairs}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="T:E:K:HIDDEN:FFN")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    parser.add_argument("--rounds", type=int, default=3, help="eager timings of each side, alternating")
    parser.add_argument("--fp8-input-store", action="store_true", help="both activations' fp8_input_store")
    parser.add_argument("--dry", action="store_true", help="CPU, tiny shapes, ours against the reference; no timing")
    parser.add_argument("--kernels", action="store_true", help="our kernels inside the layer against each op alone")
    args = parser.parse_args()
    FP8[0] = args.fp8_input_store
    if args.dry:
        return dry_run()
    if not torch.cuda.is_available():
        print("layer.py needs a CUDA device (or --dry)")
        return 1
    try:
        probe = torch.ones(2, 16, 16, device=DEVICE, dtype=DTYPE)
        grouped_mm(probe[0], probe, torch.tensor([8, 16], device=DEVICE, dtype=torch.int32))
    except RuntimeError as exc:  # e.g. a GPU older than its kernels
        GROUPED_MM[0] = False
        print(f"torch._grouped_mm does not run here ({str(exc).splitlines()[0]}): one matmul per expert")
    card = torch.cuda.get_device_name()
    fp8_tag = "-fp8" if FP8[0] else ""
    if args.kernels:
        return kernels_main(args, card, fp8_tag)
    ref_forward = reference(baselines.activation_baselines(compile_fns=True)["swiglu"][0])
    rows = []
    print(MD_HEADER)
    for shape in args.shapes:
        rows.append(time_shape(Layer(shape), ref_forward, args.rounds))
        print(md_row(rows[-1]), flush=True)
        print(f"  {error_text(rows[-1])}")
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"layer-{card.replace(' ', '_')}{fp8_tag}"
    meta = dict(card=card, torch=torch.__version__, host=platform.node(), fp8_input_store=FP8[0])
    meta["grouped_mm"] = GROUPED_MM[0]
    (args.out / f"{stem}.json").write_text(json.dumps(dict(meta, rows=rows), indent=1) + "\n")
    fp8 = ", fp8_input_store=True on both sides" if FP8[0] else ""
    lines = [f"# One MoE layer, fwd+bwd, on {card}", "", f"torch {torch.__version__}; `benchmarks/layer.py`{fp8}.", ""]
    lines += [MD_HEADER, *map(md_row, rows), ""]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    return 0


def kernels_main(args: argparse.Namespace, card: str, fp8_tag: str) -> int:
    rows = []
    print(KERNELS_HEADER)
    for shape in args.shapes:
        found = kernel_rows(Layer(shape))
        print("\n".join(map(kernel_md_row, found)), flush=True)
        rows += found
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"layer-kernels-{card.replace(' ', '_')}{fp8_tag}"
    meta = dict(card=card, torch=torch.__version__, host=platform.node(), fp8_input_store=FP8[0])
    (args.out / f"{stem}.json").write_text(json.dumps(dict(meta, rows=rows), indent=1) + "\n")
    lines = [f"# Our kernels inside one MoE layer and alone, on {card}", ""]
    lines += [f"torch {torch.__version__}; `benchmarks/layer.py --kernels`; µs a fwd+bwd step.", ""]
    lines += [KERNELS_HEADER, *map(kernel_md_row, rows), ""]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
