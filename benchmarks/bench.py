"""Benchmark moe_utils against the reference (eager and torch.compile'd) and Liger-Kernel.

    python benchmarks/bench.py                  # the full grid of issue 4
    python benchmarks/bench.py --quick          # a few shapes per family
    python benchmarks/bench.py --out DIR        # where results/<card>.json goes
    python benchmarks/bench.py --passes 3 ...   # every shape timed in three passes, the median kept

Times are medians of ``triton.testing.do_bench``; bandwidth comes from an explicit byte model (each
input read once, each output written once) and is reported as a percentage of a device-to-device
copy measured in the same run. Small inputs rotate through several copies so that L2 does not
flatter them. ``benchmarks/report.py`` turns the JSON into the markdown table and the plot.

``--passes N`` runs the chosen sections N times over and keeps, per op and shape, the row of the
median pass (the lower median for even N) with every pass's time beside it (``us_passes``) and
their spread (``spread_pct``: (max - min) / median). Some shapes move 5-10% between runs minutes
apart at unchanged kernels (session 19: Quick-GEGLU fwd+bwd with the fp8 copy at 65536 x 2880,
835.9 us in the grid and 780.6 in a rerun); one pass is one sample of that.

The compiled reference sees each hidden width in a fresh ``torch.compile`` state (dynamo reset),
rows ascending: compiled for the first row count, then once more with the row count dynamic and
the width static, as a training run with a fixed FFN width and varying expert loads compiles it.
(Until session 11 the grid went row-major in one state: the width changed from the second shape
on, dynamo made it dynamic too, and those kernels ran at 10-40% of copy where the static-width
ones run at 95-100%.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines
from moe_utils.codegen.specs import REGISTRY
from sweep import capture_graph

import moe_utils
from moe_utils import generated
from moe_utils.permutation import _launch_permute_backward
from moe_utils.unpermutation import _launch_unpermute_backward

L2_ROTATE_BYTES = 256 << 20  # rotate inputs until one pass touches at least this much memory
RESULTS: list[dict] = []
PASS = [0]  # the pass being run (--passes), recorded in each row
SPECS = {spec.name: spec for spec in REGISTRY}


def timed(fn: Callable[[int], object], rotate: int = 1, capture: bool = True) -> tuple[float, float | None]:
    """(ms on the GPU, ms eager) of fn(i) over rotating input sets i.

    GPU time comes from replaying a CUDA graph of the calls, as METHOD.md advises for short ops:
    it leaves out Python and launch overhead, which a training step hides behind its matmuls.
    Eager time is triton.testing.do_bench of the plain calls, host overhead included. Ops that
    synchronise with the host cannot be captured; their GPU time is the eager time (None beside it).
    """
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % rotate
        fn(state["i"])

    eager = do_bench(call, warmup=25, rep=100, return_mode="median")
    if not capture:
        return eager, None
    try:
        inner = max(1, min(50, int(2.0 / max(eager * rotate, 1e-3))))  # about 2 ms per replay

        def body(calls: int) -> None:
            for _ in range(calls):
                for i in range(rotate):
                    fn(i)

        graph = capture_graph(lambda: body(1), lambda: body(inner))
        replay = do_bench(graph.replay, warmup=10, rep=100, return_mode="median")
        del graph
        return replay / (inner * rotate), eager
    except Exception as exc:  # host-synchronising ops cannot be captured
        torch.cuda.synchronize()
        print(f"  (not capturable: {type(exc).__name__}; GPU time = eager time)")
        return eager, None


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy (bytes read + written), 2 GiB bf16."""
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * (1 << 30) * 2 / ms / 1e6


def record(family, op, impl, shape, times, nbytes, copy_gbs, peak_mb=None, **extra):
    ms, eager_ms = times
    gbs = nbytes / ms / 1e6
    row = dict(family=family, op=op, impl=impl, shape=shape, us=ms * 1e3, gbs=gbs, pct_copy=100 * gbs / copy_gbs)
    row["pass"] = PASS[0]
    row["us_eager"] = None if eager_ms is None else eager_ms * 1e3
    row["graph"] = eager_ms is not None
    if peak_mb is not None:
        row["peak_mb"] = peak_mb
    row.update(extra)
    RESULTS.append(row)
    eager_txt = f"{eager_ms * 1e3:9.1f} us eager" if eager_ms is not None else "  (host sync: eager only)"
    print(
        f"{family:11s} {op:12s} {impl:13s} {shape!s:22s} {ms * 1e3:9.1f} us {gbs:6.0f} GB/s "
        f"{row['pct_copy']:5.1f}% {eager_txt}"
    )
    sys.stdout.flush()


def median_of_passes(rows: list[dict]) -> list[dict]:
    """Per (family, op, impl, shape), in first-seen order: the row of the median pass by time (the
    lower median for an even count), with every pass's time (``us_passes``, in pass order) and
    their spread in percent of the median (``spread_pct``). A single pass comes back unchanged."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["op"], row["impl"], tuple(row["shape"])), []).append(row)
    if all(len(group) == 1 for group in groups.values()):
        return list(rows)
    merged = []
    for group in groups.values():
        times = [row["us"] for row in group]
        ranked = sorted(group, key=lambda row: row["us"])
        median = ranked[(len(ranked) - 1) // 2]
        spread = 100 * (max(times) - min(times)) / median["us"]
        merged.append(dict(median, us_passes=times, spread_pct=spread))
    return merged


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak allocation above what was allocated before fn, in MiB (fn's result is released)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# -- activations -----------------------------------------------------------------------------------

OURS = {
    "swiglu": (lambda x, w, fp8: generated.weighted_bias_swiglu_impl(x, w, fp8), (), None),
    "geglu": (lambda x, w, fp8: generated.weighted_bias_geglu_impl(x, w, fp8), (), None),
    "quick_geglu": (
        lambda x, w, fp8: generated.weighted_bias_quick_geglu_impl(x, None, w, fp8, 0.5, 7.0),
        (0.5, 1.702),
        7.0,
    ),
}


def activation_params(name: str) -> tuple[str, tuple, float | None]:
    """(module, parameters, clamp) of an activation as the tuning scripts name it: bench.py's three
    with their parameters (Quick-GEGLU: offset and clamp), NAME_noclamp for the same without the
    clamp, or any other registered activation with its parameters' defaults (reglu, squared_reglu,
    clamped_swiglu: limit 7)."""
    from moe_utils.codegen.specs import REGISTRY

    module = name.removesuffix("_noclamp")
    defaults = next((tuple(p.default for p in s.params) for s in REGISTRY if s.name == module), ())
    _, params, clamp = OURS.get(module, (None, defaults, None))
    return module, params, None if name.endswith("_noclamp") else clamp


@dataclass
class ActivationInputs:
    """Rotating bf16 inputs of one activation shape [T, 2H] with fp32 weights, and the byte models
    (each input read once, each output written once)."""

    n_rows: int
    h: int
    rotate: int  # input sets, so that one pass touches at least L2_ROTATE_BYTES
    xs: list[torch.Tensor]  # [T, 2H]
    ws: list[torch.Tensor]  # [T, 1]
    gs: list[torch.Tensor]  # [T, H] incoming gradients
    fwd_bytes: int  # x, w read; out written
    bwd_bytes: int  # g, x, w read; dx, dw written
    fp8_bytes: int  # the fp8 copy of x

    def fwd_bwd(self, f: Callable, fp8: bool = False) -> Callable[[int], None]:
        """Forward f(x, w, fp8) and autograd backward on input set i."""

        def run(i):
            x = self.xs[i].requires_grad_(True)
            w = self.ws[i].requires_grad_(True)
            torch.autograd.grad(f(x, w, fp8), (x, w), self.gs[i])

        return run

    def forward_recorded(self, f: Callable, fp8: bool) -> Callable[[int], object]:
        """Forward f(x, w, fp8) as a training step runs it: grad mode on, the inputs requiring grad.
        Where autograd records no graph of the call (no_grad) ours skips the fp8 copy (session 35),
        so a fwd_fp8 row timed there would time the forward without the copy it counts."""

        def run(i):
            with torch.enable_grad():
                return f(self.xs[i].requires_grad_(True), self.ws[i].requires_grad_(True), fp8)

        return run


def activation_inputs(n_rows: int, h: int) -> ActivationInputs:
    dtype, s = torch.bfloat16, 2
    rotate = max(1, min(8, L2_ROTATE_BYTES // (n_rows * 2 * h * s * 3)))  # x, g, dx per set
    return ActivationInputs(
        n_rows=n_rows,
        h=h,
        rotate=rotate,
        xs=[torch.randn(n_rows, 2 * h, device="cuda", dtype=dtype) for _ in range(rotate)],
        ws=[torch.rand(n_rows, 1, device="cuda") for _ in range(rotate)],
        gs=[torch.randn(n_rows, h, device="cuda", dtype=dtype) for _ in range(rotate)],
        fwd_bytes=n_rows * (2 * h * s + 4 + h * s),
        bwd_bytes=n_rows * (h * s + 2 * h * s + 4 + 2 * h * s + 4),
        fp8_bytes=n_rows * 2 * h,
    )


def bench_activation(name: str, n_rows: int, h: int, copy_gbs: float, refs: dict, liger) -> None:
    dtype, s = torch.bfloat16, 2
    shape = (n_rows, h)
    inputs = activation_inputs(n_rows, h)
    rotate, xs, ws, gs = inputs.rotate, inputs.xs, inputs.ws, inputs.gs
    fwd_bytes, bwd_bytes, fp8_bytes = inputs.fwd_bytes, inputs.bwd_bytes, inputs.fp8_bytes
    bwd8_bytes = bwd_bytes - n_rows * 2 * h * s + fp8_bytes
    ours_fwd, params, clamp = OURS[name]
    impl = importlib.import_module(f"moe_utils.generated.{name}")._IMPL
    fwd_bwd = inputs.fwd_bwd

    variants = [
        (
            "ours",
            ours_fwd,
            lambda i, fp8: impl.launch_backward(
                gs[i], x8s[i] if fp8 else xs[i], None, ws[i], clamp, False, dtype, *params
            ),
        )
    ]
    for label, (rf, rb) in refs.items():
        variants.append((label, rf, lambda i, fp8, rb=rb: rb(gs[i], (x8s[i].to(dtype) if fp8 else xs[i]), ws[i])))
    # The fp8 copies the forward stores, as float8_e4m3fn views of their bits.
    x8s = [
        impl.launch_forward(x, None, w, True, clamp, False, *params)[1].view(torch.float8_e4m3fn)
        for x, w in zip(xs, ws, strict=True)
    ]
    for label, f, b in variants:
        if label == "ref_eager":  # the slowest baseline: forward and forward+backward are enough
            with torch.no_grad():
                record(name, "fwd", label, shape, timed(lambda i: f(xs[i], ws[i], False), rotate), fwd_bytes, copy_gbs)
            run = fwd_bwd(f, False)
            peak = peak_memory_mb(lambda run=run: run(0))
            record(name, "fwd_bwd", label, shape, timed(run, rotate), fwd_bytes + bwd_bytes, copy_gbs, peak)
            continue
        with torch.no_grad():
            record(name, "fwd", label, shape, timed(lambda i: f(xs[i], ws[i], False), rotate), fwd_bytes, copy_gbs)
            ms = timed(inputs.forward_recorded(f, True), rotate)  # the copy is for a backward
            record(name, "fwd_fp8", label, shape, ms, fwd_bytes + fp8_bytes, copy_gbs)
            record(name, "bwd", label, shape, timed(lambda i: b(i, False), rotate), bwd_bytes, copy_gbs)
            record(name, "bwd_fp8", label, shape, timed(lambda i: b(i, True), rotate), bwd8_bytes, copy_gbs)
        for fp8 in (False, True):
            run = fwd_bwd(f, fp8)
            peak = peak_memory_mb(lambda run=run: run(0))
            nbytes = fwd_bytes + bwd_bytes + (fp8_bytes + bwd8_bytes - bwd_bytes if fp8 else 0)
            record(name, "fwd_bwd_fp8" if fp8 else "fwd_bwd", label, shape, timed(run, rotate), nbytes, copy_gbs, peak)
    if name in ("swiglu", "geglu"):
        plain = getattr(generated, name)
        un_bytes = n_rows * (2 * h * s + h * s) + n_rows * (h * s + 2 * h * s + 2 * h * s)

        def ours_plain(i):
            x = xs[i].requires_grad_(True)
            torch.autograd.grad(plain(x), (x,), gs[i])

        record(name, "plain_fb", "ours", shape, timed(ours_plain, rotate), un_bytes, copy_gbs)
        if liger is not None:
            lf = liger[name]
            halves = [(x[:, :h].contiguous(), x[:, h:].contiguous()) for x in xs]

            def liger_plain(i):
                a, b = (t.requires_grad_(True) for t in halves[i])
                torch.autograd.grad(lf.apply(a, b), (a, b), gs[i])

            # Liger's kernels do not survive CUDA-graph capture here: compare eager with eager.
            record(name, "plain_fb", "liger", shape, timed(liger_plain, rotate, capture=False), un_bytes, copy_gbs)


def bench_extra_activation(name: str, n_rows: int, h: int, copy_gbs: float, refs: dict) -> None:
    """An activation beyond the seed API (and the interleaved layout): ours in every form, the plain
    PyTorch composition (eager and compiled, autograd backward) beside it."""
    s = 2
    shape = (n_rows, h)
    inputs = activation_inputs(n_rows, h)
    rotate, xs, ws = inputs.rotate, inputs.xs, inputs.ws
    fwd_bytes, bwd_bytes, fp8_bytes = inputs.fwd_bytes, inputs.bwd_bytes, inputs.fp8_bytes
    impl = getattr(generated, f"weighted_bias_{name}_impl")
    takes_bias = SPECS[name].impl_bias  # the seed's swiglu/geglu impls take no bias

    def ours(interleaved):
        def f(x, w, fp8):
            args = (x, None, w, fp8) if takes_bias else (x, w, fp8)
            return impl(*args, interleaved=interleaved)

        return f

    fwd_bwd = inputs.fwd_bwd

    label_ours = "ours" if name != "swiglu" else "ours_interleaved"
    f_ours = ours(name == "swiglu")
    with torch.no_grad():
        record(
            name, "fwd", label_ours, shape, timed(lambda i: f_ours(xs[i], ws[i], False), rotate), fwd_bytes, copy_gbs
        )
        ms = timed(inputs.forward_recorded(f_ours, True), rotate)
        record(name, "fwd_fp8", label_ours, shape, ms, fwd_bytes + fp8_bytes, copy_gbs)
    for fp8 in (False, True):
        run = fwd_bwd(f_ours, fp8)
        peak = peak_memory_mb(lambda run=run: run(0))
        nbytes = fwd_bytes + bwd_bytes + (2 * fp8_bytes - n_rows * 2 * h * s if fp8 else 0)
        record(name, "fwd_bwd_fp8" if fp8 else "fwd_bwd", label_ours, shape, timed(run, rotate), nbytes, copy_gbs, peak)
    for label, ref in refs.items():
        if ref is None:
            continue
        with torch.no_grad():
            ms = timed(lambda i, ref=ref: ref(xs[i], ws[i]), rotate)
            record(name, "fwd", label, shape, ms, fwd_bytes, copy_gbs)
        run = fwd_bwd(lambda x, w, fp8, ref=ref: ref(x, w))
        peak = peak_memory_mb(lambda run=run: run(0))
        record(name, "fwd_bwd", label, shape, timed(run, rotate), fwd_bytes + bwd_bytes, copy_gbs, peak)


# -- routing ---------------------------------------------------------------------------------------


def bench_routing(n_tokens: int, n_experts: int, k: int, hidden: int, copy_gbs: float, full: bool = True) -> None:
    """Fused permute/unpermute against the reference path; full=False times only the main ops."""
    dtype, s = torch.bfloat16, 2
    shape = (n_tokens, n_experts, k, hidden)
    n_rows = n_tokens * k
    x = torch.randn(n_tokens, hidden, device="cuda", dtype=dtype)
    scores = torch.rand(n_tokens, n_experts, device="cuda")
    top = scores.topk(k, dim=1).indices
    m = torch.zeros(n_tokens, n_experts, device="cuda", dtype=torch.bool).scatter_(1, top, True)
    p = torch.softmax(scores, -1) * m
    rows, perm_probs, plan = moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True)
    _, _, idx = moe_utils.permute(x, m, p, fused=False)
    g_rows = torch.randn_like(rows)
    g_out = torch.randn_like(x)
    g_probs = torch.randn_like(perm_probs)
    perm_bytes = (n_tokens + n_rows) * hidden * s + n_rows * 4 + n_tokens * n_experts
    unperm_bytes = (n_rows + n_tokens) * hidden * s + n_rows * 4
    # unpermute's backward: grad [T, hidden] and the permuted rows read, their gradient written, the
    # routed probs read, and the probs' gradient written whole ([T, E] fp32, zeros where a token has
    # no row), as permute's backward writes it (until session 14 this counted N of the T x E).
    unperm_bwd_bytes = (n_tokens + 2 * n_rows) * hidden * s + n_rows * 4 + n_tokens * n_experts * 4
    with torch.no_grad():
        for label, fused, kw in (("ours", True, {"num_out_tokens": n_rows}), ("reference", False, {})):
            ms = timed(lambda i: moe_utils.permute(x, m, p, fused=fused, **kw), capture=fused)
            record("permute", "fwd", label, shape, ms, perm_bytes, copy_gbs)
            if not full:
                continue
            ms = timed(lambda i: moe_utils.permute(x, m, None, fused=fused, **kw), capture=fused)
            record("permute", "fwd_noprobs", label, shape, ms, perm_bytes - n_rows * 4, copy_gbs)
        ms = timed(lambda i: _launch_permute_backward(g_rows, g_probs, plan, n_tokens, n_experts, p.dtype))
        record("permute", "bwd", "ours", shape, ms, unperm_bytes + n_tokens * n_experts * 4, copy_gbs)
        ref_perm = torch.compile(baselines_permute_backward, dynamic=True)
        ms = timed(lambda i: ref_perm(g_rows, idx, n_tokens))
        record("permute", "bwd", "reference", shape, ms, unperm_bytes, copy_gbs)
        for label, fused, ind in (("ours", True, plan), ("reference", False, idx)):
            ms = timed(lambda i: moe_utils.unpermute(rows, ind, x.shape, p, m, fused=fused), capture=fused)
            record("unpermute", "fwd", label, shape, ms, unperm_bytes, copy_gbs)
            if not full:
                continue
            ms = timed(lambda i: moe_utils.unpermute(rows, ind, x.shape, None, m, fused=fused))
            record("unpermute", "fwd_noprobs", label, shape, ms, unperm_bytes - n_rows * 4, copy_gbs)
        ms = timed(lambda i: _launch_unpermute_backward(g_out, rows, plan, p, True))
        record("unpermute", "bwd", "ours", shape, ms, unperm_bwd_bytes, copy_gbs)
        if not full:
            return
        ms = timed(lambda i: _launch_unpermute_backward(g_out, rows, plan, p, False))
        record("unpermute", "bwd_nodprobs", "ours", shape, ms, (n_tokens + n_rows) * hidden * s + n_rows * 4, copy_gbs)

    def ref_unpermute_fb(i):
        r = rows.detach().requires_grad_(True)
        pp = p.detach().requires_grad_(True)
        out = moe_utils.unpermute(r, idx, x.shape, pp, m, fused=False)
        torch.autograd.grad(out, (r, pp), g_out)

    def ours_unpermute_fb(i):
        r = rows.detach().requires_grad_(True)
        pp = p.detach().requires_grad_(True)
        out = moe_utils.unpermute(r, plan, x.shape, pp, m, fused=True)
        torch.autograd.grad(out, (r, pp), g_out)

    fb_bytes = unperm_bytes + unperm_bwd_bytes
    for label, fn in (("ours", ours_unpermute_fb), ("reference", ref_unpermute_fb)):
        peak = peak_memory_mb(lambda fn=fn: fn(0))
        record("unpermute", "fwd_bwd", label, shape, timed(fn, capture=label == "ours"), fb_bytes, copy_gbs, peak)


def baselines_permute_backward(grad_rows, sorted_indices, n_tokens):
    """The reference's permute backward: index_select's backward, an index_add into zeros."""
    out = torch.zeros((n_tokens, grad_rows.shape[1]), dtype=grad_rows.dtype, device=grad_rows.device)
    return out.index_add_(0, sorted_indices, grad_rows)


def load_liger():
    try:
        from liger_kernel.ops.geglu import LigerGELUMulFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except Exception as exc:
        print(f"Liger-Kernel not available ({exc}); skipping its rows")
        return None
    return {"swiglu": LigerSiLUMulFunction, "geglu": LigerGELUMulFunction}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes per family")
    parser.add_argument(
        "--sections",
        nargs="*",
        choices=["activations", "extra", "routing"],
        default=["activations", "extra", "routing"],
        help="what to run, in this order (extra: activations beyond the seed API and the interleaved layout)",
    )
    parser.add_argument("--budget-s", type=float, default=None, help="start no new shape after this many seconds")
    parser.add_argument("--rows", type=int, nargs="*", default=None, help="activation row counts T to run")
    parser.add_argument("--shapes", nargs="*", default=None, help="activation shapes TxH to run (instead of --rows)")
    parser.add_argument("--routing", choices=["anchors", "grid"], default="grid", help="routing shapes")
    parser.add_argument("--route-tokens", type=int, nargs="*", default=None, help="only routing shapes of these T")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--passes", type=int, default=1, help="run the sections this many times; keep the median")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.passes < 1:
        parser.error(f"--passes must be at least 1, got {args.passes}")
    if not torch.cuda.is_available():
        print("bench.py needs a CUDA device")
        return 2
    card = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth()
    print(f"{card}: device-to-device copy {copy_gbs:.0f} GB/s")
    started = time.time()

    def save() -> Path:
        """Write what has been measured so far (a run stopped by a time limit keeps its results)."""
        args.out.mkdir(parents=True, exist_ok=True)
        slug = card.replace(" ", "_")
        meta = dict(
            card=card,
            copy_gbs=copy_gbs,
            torch=torch.__version__,
            triton=triton.__version__,
            python=platform.python_version(),
            quick=args.quick,
            seconds=time.time() - started,
            passes=PASS[0] + 1,
        )
        path = args.out / f"{slug}{'-quick' if args.quick else ''}{args.tag}.json"
        path.write_text(json.dumps({"meta": meta, "results": median_of_passes(RESULTS)}, indent=1))
        return path

    anchors = [(16384, 64, 8, 2048), (8192, 128, 8, 7168)]  # issue 3's two shapes
    extra_shapes = [(16384, 768), (65536, 2048)]
    if args.quick:
        act_shapes = [(16384, 768), (65536, 2048), (16384, 7168)]
        route_shapes = anchors
    else:
        rows = args.rows or [4096, 16384, 65536, 262144]
        act_shapes = [(t, h) for h in (768, 1408, 2048, 2880, 7168) for t in sorted(rows)]  # see the docstring
        if args.shapes:
            act_shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes]
        route_shapes = list(anchors)
        if args.routing == "grid":
            route_shapes += [
                (t, e, k, hd)
                for t in (4096, 16384, 65536)
                for e in (8, 64, 128, 256)
                for k in (2, 8)
                for hd in (2048, 4096, 7168)
                if (t, e, k, hd) not in anchors and not (t == 65536 and k == 8 and hd == 7168)
            ]
    if args.route_tokens:
        route_shapes = [shape for shape in route_shapes if shape[0] in args.route_tokens]

    def out_of_time() -> bool:
        if args.budget_s is not None and time.time() - started > args.budget_s:
            print(f"time budget of {args.budget_s:.0f} s spent; stopping (results so far are saved)")
            return True
        return False

    def activations():
        liger = load_liger()
        refs = {
            "ref_compiled": baselines.activation_baselines(True),
            "ref_eager": baselines.activation_baselines(False),
        }
        width = None
        for n_rows, h in act_shapes:
            if out_of_time():
                return
            if h != width:  # a fresh compile state per width (the module docstring)
                torch._dynamo.reset()
                width = h
            for name in ("swiglu", "geglu", "quick_geglu"):
                bench_activation(name, n_rows, h, copy_gbs, {k: v[name] for k, v in refs.items()}, liger)
                torch.cuda.empty_cache()
            save()

    def extra():
        # Activations beyond the seed API, and swiglu's interleaved layout (its reference: the split one).
        extra_refs = {
            "ref_compiled": baselines.autograd_baselines(True),
            "ref_eager": baselines.autograd_baselines(False),
        }
        for n_rows, h in extra_shapes:
            if out_of_time():
                return
            torch._dynamo.reset()  # each width in a fresh compile state, as in activations()
            for name in ("reglu", "exact_geglu", "clamped_swiglu", "squared_reglu", "swiglu"):
                refs_here = {k: v.get(name) for k, v in extra_refs.items()}
                bench_extra_activation(name, n_rows, h, copy_gbs, refs_here)
                torch.cuda.empty_cache()
            save()

    def routing():
        for shape in route_shapes:
            if out_of_time():
                return
            bench_routing(*shape, copy_gbs, full=shape in anchors)
            torch.cuda.empty_cache()
            save()

    for PASS[0] in range(args.passes):
        if args.passes > 1:
            print(f"-- pass {PASS[0] + 1} of {args.passes}")
        for section in args.sections:
            {"activations": activations, "extra": extra, "routing": routing}[section]()
    print(f"wrote {save()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
