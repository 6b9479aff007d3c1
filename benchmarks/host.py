"""Host time of the eager ops: what a training step that is not captured in a CUDA graph pays on
the CPU for each call, beside the GPU time that bench.py reports.

Each op is called back to back ``--calls`` times without a synchronisation between the calls; the
host time is the wall time of the loop per call (the GPU runs behind, so it is the CPU's cost
while the host stays ahead; the shapes are small, where it does). Each op is timed ``--repeats``
times, interleaved with the others, and the median is reported beside one ``torch.add`` (one
launch of a PyTorch kernel: the scale of this host) and the reference written in eager PyTorch.

    python3 benchmarks/host.py [--out DIR] [--calls 200] [--repeats 7]

A/B of two packages (the older first on PYTHONPATH): run it once per package, alternating, and
compare the medians (host times drift by 10-30% between processes on a busy host).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import activation_baselines  # noqa: E402
from sweep import routing_map  # noqa: E402

from moe_utils import permute, unpermute, weighted_bias_swiglu_impl  # noqa: E402


def cases(device: str) -> dict[str, Callable[[], object]]:
    """name -> a call of the op (forward, or forward and backward) on fixed inputs."""
    out: dict[str, Callable[[], object]] = {}
    n_rows, h = 4096, 768
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
    out["swiglu_impl fwd 4096x768"] = act(False, False)
    out["swiglu_impl fwd+bwd 4096x768"] = act(False, True)
    out["swiglu_impl fwd+bwd fp8 4096x768"] = act(True, True)
    out["reference swiglu fwd+bwd 4096x768"] = act(False, True, ours=False)
    for n_tokens, n_experts, k, hidden in ((4096, 8, 2, 2048), (4096, 256, 2, 2048)):
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
    return out


def host_us(fn: Callable[[], object], calls: int) -> float:
    """Host wall time per call of `calls` back-to-back calls (the GPU drained before and after)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return 1e6 * elapsed / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=None, help="folder for host-<card><tag>.json")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("host.py needs a CUDA device")
        return 1
    ops = cases("cuda")
    for fn in ops.values():  # compile and warm every kernel first
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(args.repeats):
        for name, fn in ops.items():
            times[name].append(host_us(fn, args.calls))
    card = torch.cuda.get_device_name()
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
