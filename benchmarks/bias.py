"""A trained shared bias: forward+backward of the weighted activations, ours against the compiled reference.

    python benchmarks/bias.py [--rows 4096 16384 65536] [--width 2880] [--rows-per-program 8 16 32 64]
        [--forms quick_geglu_clamp swiglu] [--no-reference] [--tag _suffix]

Two forms with a [2H] bias shared by every row (bf16, fp32 weights):
- "quick_geglu_clamp": ``weighted_bias_quick_geglu_impl`` with GPT-OSS's constants (clamp 7, offset 1,
  alpha 1.702). The clamp comes before the bias, so the bias's gradient is not zero where a value was
  clamped and the input's is (session 40).
- "swiglu": ``weighted_bias_swiglu``, no clamp.
Each per subset of trained tensors (input+bias, bias, input), three ways:
- "ours": the backward kernel sums the bias's gradient over its rows itself (bias_sum, session 41):
  an fp32 row of partial sums per program, summed by the launcher; d_x is written only for the
  input. Below ``_runtime.BIAS_SUM_MIN_ROWS`` (4096) rows, session 40's path (next).
- "ours, sum in PyTorch": the same package with ``_runtime.BIAS_SUM`` off, session 40's path: d_x
  written (twice with the clamp and the input trained: with and without the clamp's zeros), then
  PyTorch's column sum reads it again.
- "compiled reference": the reference's composition (clamp, add the bias, activation, weights)
  compiled whole by ``torch.compile``.
Times are CUDA-graph replays (bench.timed: medians of triton.testing.do_bench). Bandwidth is a byte
model of what any implementation must move: forward, read x and write out (6H bytes a row); backward,
read g and x (6H), write d_x where the input is trained (4H); the bias's sum adds nothing to it. It is
a percentage of a device-to-device copy measured in the same run. --rows-per-program also times
"ours" at each grouping of rows a backward program sums (``_runtime.bias_sum_rows``), to pick it,
the kernel's sum at any row count.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
from baselines import clamp_input, quick_geglu, swiglu
from bench import copy_bandwidth, timed

from moe_utils import _runtime as rt
from moe_utils import weighted_bias_quick_geglu_impl, weighted_bias_swiglu

CLAMP, OFFSET = 7.0, 1.0  # alpha: baselines.quick_geglu's 1.702


def reference_clamp(y, bias, w):
    """The reference's algorithm in PyTorch ops (baselines.py): clamp before the bias, then the
    weighted activation, in fp32."""
    x = clamp_input(y, CLAMP) + bias
    return (quick_geglu(x.float(), OFFSET) * w).to(y.dtype)


def reference_swiglu(y, bias, w):
    return (swiglu((y + bias).float()) * w).to(y.dtype)


FORMS = {
    "quick_geglu_clamp": (
        lambda y, b, w: weighted_bias_quick_geglu_impl(y, b, w, False, OFFSET, CLAMP, 1.702),
        reference_clamp,
    ),
    "swiglu": (weighted_bias_swiglu, reference_swiglu),
}


def byte_model(n_rows: int, h: int, trained: str) -> int:
    return n_rows * (6 * h + 6 * h + (4 * h if "input" in trained else 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--width", type=int, default=2880)
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--rows-per-program", type=int, nargs="*", default=[])
    parser.add_argument("--no-reference", action="store_true", help="leave the compiled reference out")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    copy = copy_bandwidth()
    card = torch.cuda.get_device_name()
    print(f"{card}: copy {copy:.0f} GB/s")
    rule, least = rt.bias_sum_rows, rt.BIAS_SUM_MIN_ROWS
    rows_out = []
    for form in args.forms:
        ours, reference = FORMS[form]
        compiled = None if args.no_reference else torch.compile(reference)
        for n_rows in args.rows:
            h = args.width
            gen = torch.Generator(device="cuda").manual_seed(n_rows)
            y = torch.randn(n_rows, 2 * h, device="cuda", generator=gen).mul_(4).to(torch.bfloat16)
            bias = torch.randn(2 * h, device="cuda", generator=gen).to(torch.bfloat16)
            w = torch.rand(n_rows, 1, device="cuda", generator=gen)
            g = torch.randn(n_rows, h, device="cuda", generator=gen).to(torch.bfloat16)
            ways = [("ours", ours, True, None), ("ours, sum in PyTorch", ours, False, None)]
            ways += [(f"ours, {r} rows a program", ours, True, r) for r in args.rows_per_program]
            if compiled is not None:
                ways.append(("compiled reference", compiled, True, None))
            for impl, fn, in_kernel, rows_per_program in ways:
                rt.BIAS_SUM = in_kernel
                rt.bias_sum_rows = rule if rows_per_program is None else (lambda n, heavy=False, r=rows_per_program: r)
                rt.BIAS_SUM_MIN_ROWS = least if rows_per_program is None else 0  # the kernel's sum at any row count
                for trained in ("input+bias", "bias", "input"):
                    yy = y.detach().requires_grad_("input" in trained)
                    bb = bias.detach().requires_grad_("bias" in trained)
                    wanted = [t for t in (yy, bb) if t.requires_grad]

                    def step(i, fn=fn, yy=yy, bb=bb, wanted=wanted):
                        torch.autograd.grad(fn(yy, bb, w), wanted, g)

                    step(0)
                    ms, _ = timed(step)
                    row = dict(card=card, form=form, impl=impl, trained=trained, shape=[n_rows, h], us=ms * 1e3)
                    row["pct_copy"] = 100 * byte_model(n_rows, h, trained) / ms / 1e6 / copy
                    rows_out.append(row)
                    what = f"{form} {n_rows}x{h} {impl:28s} {trained:11s}"
                    print(f"{what} {ms * 1e3:8.1f} us  {row['pct_copy']:5.1f}% of copy")
            rt.BIAS_SUM, rt.bias_sum_rows, rt.BIAS_SUM_MIN_ROWS = True, rule, least
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
    (out / f"bias-{card.replace(' ', '_')}{args.tag}.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
