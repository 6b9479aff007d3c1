"""Quick-GEGLU with its clamp and a trained bias: forward+backward, ours against the compiled reference.

    python benchmarks/clamp_bias.py [--rows 16384 65536] [--width 2880]

The bias is added after the clamp, so its gradient is not zero where a value was clamped, the
input's is (session 40 fixed ours, which summed the input's). Our backward then writes d_x twice,
with and without the clamp's zeros ("both"), or once without them when only the bias is trained
("keep"). This times fwd+bwd of ``weighted_bias_quick_geglu_impl`` (bf16, fp32 weights, clamp 7,
offset 1, alpha 1.702, GPT-OSS's constants) per subset of trained tensors, beside the reference's
composition (clamp, add the bias, activation, weights) compiled whole by ``torch.compile``. Times
are CUDA-graph replays (bench.timed: medians of triton.testing.do_bench); bandwidth is a byte model
of what any implementation must move (forward: read x, write out; backward: read g and x, write
d_x, and read it again for the bias's column sum), as a percentage of a device-to-device copy
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
from baselines import clamp_input, quick_geglu
from bench import copy_bandwidth, timed

from moe_utils import weighted_bias_quick_geglu_impl

CLAMP, OFFSET = 7.0, 1.0  # alpha: baselines.quick_geglu's 1.702


def reference(y, bias, w):
    """The reference's algorithm in PyTorch ops (baselines.py): clamp before the bias, then the
    weighted activation, in fp32."""
    x = clamp_input(y, CLAMP) + bias
    return (quick_geglu(x.float(), OFFSET) * w).to(y.dtype)


def ours(y, bias, w):
    return weighted_bias_quick_geglu_impl(y, bias, w, False, OFFSET, CLAMP, 1.702)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--width", type=int, default=2880)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    copy = copy_bandwidth()
    card = torch.cuda.get_device_name()
    print(f"{card}: copy {copy:.0f} GB/s")
    compiled = torch.compile(reference)
    rows_out = []
    for n_rows in args.rows:
        h = args.width
        gen = torch.Generator(device="cuda").manual_seed(n_rows)
        y = torch.randn(n_rows, 2 * h, device="cuda", generator=gen).mul_(4).to(torch.bfloat16)
        bias = torch.randn(2 * h, device="cuda", generator=gen).to(torch.bfloat16)
        w = torch.rand(n_rows, 1, device="cuda", generator=gen)
        g = torch.randn(n_rows, h, device="cuda", generator=gen).to(torch.bfloat16)
        nbytes = n_rows * (2 * 2 * h + 2 * h) + n_rows * (2 * h + 2 * 2 * h + 2 * 2 * h) + n_rows * 2 * 2 * h
        for impl, fn in (("ours", ours), ("compiled reference", compiled)):
            for trained in ("input+bias", "bias", "input"):
                yy = y.detach().requires_grad_("input" in trained)
                bb = bias.detach().requires_grad_("bias" in trained)
                wanted = [t for t in (yy, bb) if t.requires_grad]

                def step(i, fn=fn, yy=yy, bb=bb, wanted=wanted):
                    torch.autograd.grad(fn(yy, bb, w), wanted, g)

                step(0)
                ms, _ = timed(step)
                row = dict(card=card, impl=impl, trained=trained, shape=[n_rows, h], us=ms * 1e3)
                row["pct_copy"] = 100 * nbytes / ms / 1e6 / copy
                rows_out.append(row)
                print(f"{n_rows}x{h} {impl:20s} {trained:11s} {ms * 1e3:8.1f} us  {row['pct_copy']:5.1f}% of copy")
        # ours against the reference's numbers once per shape: the gradients agree to bf16 rounding
        yy, bb = y.detach().requires_grad_(True), bias.detach().requires_grad_(True)
        got = torch.autograd.grad(ours(yy, bb, w), (yy, bb), g)
        want = torch.autograd.grad(reference(yy.double(), bb.double(), w.double()), (yy, bb), g.double())
        for name, a, b in zip(("d_input", "d_bias"), got, want, strict=True):
            rel = ((a.double() - b).norm() / b.norm()).item()
            print(f"  {name}: relative error against float64 {rel:.2e}")
            assert rel < 1e-2, name
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"clamp_bias-{card.replace(' ', '_')}.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
