"""One MoE layer, forward and backward, with moe_utils' ops against the reference's: how much of a
layer the ops this package replaces take, and what replacing them saves.

    python benchmarks/layer.py [--out DIR] [--shapes T:E:K:HIDDEN:FFN ...]
    python benchmarks/layer.py --dry      # any machine: tiny fp16 shapes on the CPU, no timing

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
The kernels' split (torch.profiler, the sides alternating, GPU time of each kernel summed): the
grouped GEMMs, and every other kernel, which is the ops' share of the layer (with the offsets' sum,
the same on both sides). Peak memory is the fwd+bwd's allocation above its inputs (the weight
gradients included); held memory what the forward leaves for the backward (saved tensors and
output), which a training step holds for every layer at once. Each shape first checks both sides
against the layer in float64 (the reference's ops, one matmul per expert) and prints their relative
errors. Writes ``layer-<card>.json`` and ``layer-<card>.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import platform
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


def kernel_us(fn: Callable[[], object], calls: int = 2) -> tuple[float, float]:
    """(GEMM kernels, every other kernel): GPU time a call, µs, from torch.profiler. Measured per
    kernel, the ops' share does not move with the GEMMs' own variation (5-8% between processes
    and inputs at 4096:64:8:7168:2048, session 44), which a difference of layer times would carry."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    gemm = other = 0.0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if any(tag in event.name.lower() for tag in GEMM_KERNELS):
            gemm += event.device_time
        else:
            other += event.device_time
    return gemm / calls, other / calls


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
    ref_forward = reference(baselines.activation_baselines(compile_fns=True)["swiglu"][0])
    card = torch.cuda.get_device_name()
    rows = []
    print(MD_HEADER)
    for shape in args.shapes:
        rows.append(time_shape(Layer(shape), ref_forward, args.rounds))
        print(md_row(rows[-1]), flush=True)
        print(f"  {error_text(rows[-1])}")
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"layer-{card.replace(' ', '_')}" + ("-fp8" if FP8[0] else "")
    meta = dict(card=card, torch=torch.__version__, host=platform.node(), fp8_input_store=FP8[0])
    meta["grouped_mm"] = GROUPED_MM[0]
    (args.out / f"{stem}.json").write_text(json.dumps(dict(meta, rows=rows), indent=1) + "\n")
    fp8 = ", fp8_input_store=True on both sides" if FP8[0] else ""
    lines = [f"# One MoE layer, fwd+bwd, on {card}", "", f"torch {torch.__version__}; `benchmarks/layer.py`{fp8}.", ""]
    lines += [MD_HEADER, *map(md_row, rows), ""]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
