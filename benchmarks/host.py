"""Host time of the eager ops: what a training step that is not captured in a CUDA graph pays on
the CPU for each call, beside the GPU time that bench.py reports.

Each op is called back to back ``--calls`` times without a synchronisation between the calls; the
host time is the wall time of the loop per call (the GPU runs behind, so it is the CPU's cost
while the host stays ahead; the shapes are small, where it does). Each op is timed ``--repeats``
times, interleaved with the others, and the median is reported beside one ``torch.add`` (one
launch of a PyTorch kernel: the scale of this host) and the reference written in eager PyTorch.

    python3 benchmarks/host.py [--out DIR] [--calls 200] [--repeats 7]

``--stub-launches`` (any machine, no GPU): our Python alone. The ops run on CPU tensors under
Triton's interpreter with every kernel launch replaced by a no-op (the outputs are garbage), so
the times are the host work around the launches: argument checks, launch configurations, views,
allocations, autograd. The reference's rows are skipped (they would compute). This is the quiet
host to measure host-side changes on (session 33: the H200 machines' hosts move 10-30% between
processes).

A/B of two packages (the older first on PYTHONPATH): run it once per package, alternating, and
compare the medians (host times drift by 10-30% between processes on a busy host).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable

STUB = "--stub-launches" in sys.argv
if STUB:  # before triton and sweep are imported: the interpreter, and sweep's CPU tensors
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["SWEEP_DRY"] = "1"

import torch  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import activation_baselines  # noqa: E402
from sweep import routing_map  # noqa: E402

from moe_utils import permute, unpermute, weighted_bias_swiglu_impl  # noqa: E402


def cases(device: str) -> dict[str, Callable[[], object]]:
    """name -> a call of the op (forward, or forward and backward) on fixed inputs."""
    out: dict[str, Callable[[], object]] = {}
    # Stubbed, tiny shapes: the host work does not grow with them, and nothing real is computed.
    n_rows, h = (64, 96) if STUB else (4096, 768)
    act_tag = f"{n_rows}x{h}"
    y = torch.randn(n_rows, 2 * h, device=device, dtype=torch.bfloat16).requires_grad_(True)
    w = torch.rand(n_rows, 1, device=device).requires_grad_(True)
    g = torch.randn(n_rows, h, device=device, dtype=torch.bfloat16)

    reference = activation_baselines(compile_fns=False)["swiglu"][0]  # forward(y, w, fp8)

    def act(fp8: bool, backward: bool, ours: bool = True) -> Callable[[], object]:
        def call():
            out = weighted_bias_swiglu_impl(y, w, fp8) if ours else reference(y, w, fp8)
            if backward:
                torch.autograd.backward(out, g)

        return call

    gen = torch.Generator(device=device).manual_seed(0)
    out["torch.add (one launch)"] = lambda: torch.add(g, 1)
    out[f"swiglu_impl fwd {act_tag}"] = act(False, False)
    out[f"swiglu_impl fwd+bwd {act_tag}"] = act(False, True)
    out[f"swiglu_impl fwd+bwd fp8 {act_tag}"] = act(True, True)
    out[f"reference swiglu fwd+bwd {act_tag}"] = act(False, True, ours=False)
    n_tokens, hidden = (64, 64) if STUB else (4096, 2048)
    for n_experts, k in ((8, 2), (256, 2)):
        tag = f"{n_tokens}x{n_experts}x{k}x{hidden}"
        tokens = torch.randn(n_tokens, hidden, device=device, dtype=torch.bfloat16).requires_grad_(True)
        routed = routing_map(n_tokens, n_experts, k, gen)
        probs = (torch.softmax(torch.rand(n_tokens, n_experts, device=device), -1) * routed).requires_grad_(True)
        n_out = n_tokens * k

        def perm(tokens=tokens, routed=routed, probs=probs, n_out=n_out):
            return permute(tokens, routed, probs, num_out_tokens=n_out, fused=True)

        def both(tokens=tokens, routed=routed, probs=probs, n_out=n_out, fused=True):
            # fused=False is the reference's algorithm (it synchronises: data-dependent sizes)
            rows, _, plan = permute(tokens, routed, probs, num_out_tokens=n_out, fused=fused)
            out = unpermute(rows, plan, tokens.shape, probs, routed, fused=fused)
            torch.autograd.backward(out, torch.ones_like(out))

        out[f"permute fwd {tag}"] = perm
        out[f"permute+unpermute fwd+bwd {tag}"] = both
        out[f"reference permute+unpermute fwd+bwd {tag}"] = lambda both=both: both(fused=False)
    if STUB:  # the reference computes for real on the CPU: not a host time
        out = {name: fn for name, fn in out.items() if not name.startswith("reference")}
    return out


def stub_launches() -> None:
    """Every Triton launch a no-op; permute's CPU-only check of the plan (which reads what the
    map kernel would have written) too. On the GPU the map kernel asserts instead, so the host
    work stubbed here is the GPU path's."""
    import triton.runtime.interpreter as interpreter

    import moe_utils.routing

    interpreter.InterpretedFunction.run = lambda self, *args, grid, warmup, **kwargs: None
    moe_utils.routing._check_fits = lambda *args: None


def sync() -> None:
    if not STUB:
        torch.cuda.synchronize()


def host_us(fn: Callable[[], object], calls: int) -> float:
    """Host wall time per call of `calls` back-to-back calls (the GPU drained before and after)."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    sync()
    return 1e6 * elapsed / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=None, help="folder for host-<card><tag>.json")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--stub-launches", action="store_true", help="CPU, launches stubbed: our Python alone")
    args = parser.parse_args()
    if STUB:
        stub_launches()
    elif not torch.cuda.is_available():
        print("host.py needs a CUDA device (or --stub-launches)")
        return 1
    ops = cases("cpu" if STUB else "cuda")
    for fn in ops.values():  # compile and warm every kernel first
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(args.repeats):
        for name, fn in ops.items():
            times[name].append(host_us(fn, args.calls))
    card = f"{platform.node()} launches stubbed" if STUB else torch.cuda.get_device_name()
    print(f"{card}; host time per call, median of {args.repeats} x {args.calls} calls (µs)")
    print(f"package: {pathlib.Path(sys.modules['moe_utils'].__file__).parent}")
    for name, values in times.items():
        print(f"{name:48s} {statistics.median(values):8.1f}   ({min(values):.1f}-{max(values):.1f})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"host-{card.replace(' ', '_')}{args.tag}.json"
        path.write_text(json.dumps({"card": card, "calls": args.calls, "times_us": times}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
