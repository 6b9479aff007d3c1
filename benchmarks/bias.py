"""A trained shared bias: forward+backward of the weighted activations, ours against the compiled reference.

    python benchmarks/bias.py [--rows 4096 16384 65536] [--width 2880 ...] [--forms quick_geglu_clamp swiglu]
        [--subsets input+bias bias input] [--train-weights] [--no-reference] [--no-pytorch-sum] [--tag _suffix]
        [--rows-per-program 8 16 ...] [--tile BLOCK_R:BLOCK_H:WARPS:ROWS ...] [--torch-sum] [--all-rows]
        [--sum-plan BLOCK_P:WARPS:SPLIT[:STAGES] ...]
    python benchmarks/bias.py --partials [--parts 512 ...] [--sum-plan ...]   # the partials' sum alone

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


def overrides(args) -> list[tuple[str, dict]]:
    """The extra ways to time "ours": (label, _runtime attributes to set for it)."""
    ways = []
    for r in args.rows_per_program:  # r rows a program, at any row count
        rule = {"bias_sum_rows": lambda n, heavy=False, r=r: r, "BIAS_SUM_MIN_ROWS": 0}
        ways.append((f"ours, {r} rows a program", rule))
    if args.all_rows:  # the kernel's sum below BIAS_SUM_MIN_ROWS too
        ways.append(("ours, kernel's sum at any rows", {"BIAS_SUM_MIN_ROWS": 0}))
    if args.torch_sum:  # the partial sums added by torch.sum (session 41), not _kernel_lib.column_sums
        ways.append(("ours, partials by torch.sum", {"COLUMN_SUMS": False}))
    for spec in args.sum_plan:  # column_sums' launch shape: "BLOCK_P:WARPS:SPLIT[:STAGES]" (0: one pass)
        ways.append((f"ours, sum {spec}", {"column_sums_plan": sum_plan(spec)}))
    for spec in args.tile:  # the backward's launch shape with bias_sum: "BLOCK_R:BLOCK_H:WARPS:ROWS"
        block_r, block_h, warps, rows = (int(v) for v in spec.split(":"))

        def config(cfg, n, h, heavy=False, shape=(block_r, block_h, warps), rows=rows):
            return rt.BlockConfig(*shape), max(1, rows // shape[0])

        rule = {"bias_sum_config": config, "BIAS_SUM_MIN_ROWS": 0}
        ways.append((f"ours, [{block_r}, {block_h}] x {warps}, {rows} rows", rule))
    return ways


def sum_plan(spec: str):
    """A column_sums_plan that gives "BLOCK_P:WARPS:SPLIT[:STAGES]" at every size (SPLIT 0: a single
    pass; STAGES: steps in flight, 1 unless given)."""
    block_p, warps, split, stages = ([int(v) for v in spec.split(":")] + [1])[:4]
    shipped = rt.column_sums_plan  # bound now: time_partials swaps rt.column_sums_plan for these plans

    def plan(n_parts, n_cols):
        block_c = shipped(n_parts, n_cols).block_c  # the shipped plan's columns a program
        return rt.SumPlan(block_c, block_p, warps, split or max(n_parts, 1), stages)

    return plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--width", type=int, nargs="+", default=[2880])
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--rows-per-program", type=int, nargs="*", default=[])
    parser.add_argument("--tile", nargs="*", default=[], help="also time launch shapes, BLOCK_R:BLOCK_H:WARPS:ROWS")
    parser.add_argument("--torch-sum", action="store_true", help="also time the partials added by torch.sum")
    parser.add_argument("--sum-plan", nargs="*", default=[], help="column_sums plans, BLOCK_P:WARPS:SPLIT[:STAGES]")
    parser.add_argument("--all-rows", action="store_true", help="also time the kernel's sum below its threshold")
    parser.add_argument("--partials", action="store_true", help="time the partials' sum alone, then exit")
    parser.add_argument("--parts", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="with --partials: rows")
    parser.add_argument("--train-weights", action="store_true", help="the routing weights trained as well")
    parser.add_argument("--subsets", nargs="+", default=["input+bias", "bias", "input"])
    parser.add_argument("--no-reference", action="store_true", help="leave the compiled reference out")
    parser.add_argument("--no-pytorch-sum", action="store_true", help="leave session 40's path out")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    copy = copy_bandwidth()
    card = torch.cuda.get_device_name()
    print(f"{card}: copy {copy:.0f} GB/s")
    if args.partials:
        time_partials(card, args.parts, args.sum_plan)
        return
    rows_out = []
    for form in args.forms:
        ours, reference = FORMS[form]
        compiled = None if args.no_reference else torch.compile(reference)
        for h in args.width:
            for n_rows in args.rows:
                time_shape(args, form, ours, reference, compiled, n_rows, h, copy, card, rows_out)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bias-{card.replace(' ', '_')}{args.tag}.json").write_text(json.dumps(rows_out, indent=1))


def time_partials(card: str, counts: list[int], specs: list[str]) -> None:
    """The backward's partial sums [programs, 2H] fp32 added up: _runtime.sum_partials
    (_kernel_lib.column_sums, its plan and each of ``specs``) against torch.sum, graph replays, at
    ``counts`` rows of partial sums (past _runtime.COLUMN_SUMS_ONE_PASS the plan takes two passes)."""
    for parts in counts:
        for h in (768, 1408, 2048, 2880, 7168):
            partials = torch.randn(parts, 2 * h, device="cuda")
            out = torch.empty(2 * h, device="cuda")
            times = {}
            saved = rt.COLUMN_SUMS, rt.column_sums_plan
            ways = [("column_sums", True, saved[1]), ("torch.sum", False, saved[1])]
            ways += [(spec, True, sum_plan(spec)) for spec in specs]
            for name, column_sums, plan in ways:
                rt.COLUMN_SUMS, rt.column_sums_plan = column_sums, plan
                out.fill_(float("nan"))
                times[name] = timed(lambda i: rt.sum_partials(partials, out))[0] * 1e3
                assert torch.allclose(out, partials.sum(0), rtol=1e-4, atol=1e-3), name
            rt.COLUMN_SUMS, rt.column_sums_plan = saved
            mb = partials.numel() * 4 / 1e6
            spans = "  ".join(f"{k} {v:6.1f} us" for k, v in times.items())
            print(f"{card} partials [{parts}, {2 * h}] {mb:6.1f} MB  {spans}")


def time_shape(args, form, ours, reference, compiled, n_rows, h, copy, card, rows_out) -> None:
    gen = torch.Generator(device="cuda").manual_seed(n_rows)
    y = torch.randn(n_rows, 2 * h, device="cuda", generator=gen).mul_(4).to(torch.bfloat16)
    bias = torch.randn(2 * h, device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.rand(n_rows, 1, device="cuda", generator=gen)
    g = torch.randn(n_rows, h, device="cuda", generator=gen).to(torch.bfloat16)
    ways = [("ours", ours, {})]
    if not args.no_pytorch_sum:
        ways.append(("ours, sum in PyTorch", ours, {"BIAS_SUM": False}))
    ways += [(label, ours, rule) for label, rule in overrides(args)]
    if compiled is not None:
        ways.append(("compiled reference", compiled, {}))
    for impl, fn, rule in ways:
        saved = {name: getattr(rt, name) for name in rule}
        for name, value in rule.items():
            setattr(rt, name, value)
        try:
            for trained in args.subsets:
                yy = y.detach().requires_grad_("input" in trained)
                bb = bias.detach().requires_grad_("bias" in trained)
                ww = w.detach().requires_grad_(args.train_weights)
                wanted = [t for t in (yy, bb, ww) if t.requires_grad]

                def step(i, fn=fn, yy=yy, bb=bb, ww=ww, wanted=wanted):
                    torch.autograd.grad(fn(yy, bb, ww), wanted, g)

                step(0)
                ms, _ = timed(step)
                label = trained + ("+weights" if args.train_weights else "")
                row = dict(card=card, form=form, impl=impl, trained=label, shape=[n_rows, h], us=ms * 1e3)
                row["pct_copy"] = 100 * byte_model(n_rows, h, trained) / ms / 1e6 / copy
                rows_out.append(row)
                print(f"{form} {n_rows}x{h} {impl:36s} {label:19s} {ms * 1e3:8.1f} us  {row['pct_copy']:5.1f}% of copy")
        finally:
            for name, value in saved.items():
                setattr(rt, name, value)
    # ours against the reference's numbers once per shape: the gradients agree to bf16 rounding
    yy, bb, ww = y.detach().requires_grad_(True), bias.detach().requires_grad_(True), w.detach().requires_grad_(True)
    got = torch.autograd.grad(ours(yy, bb, ww), (yy, bb, ww), g)
    want = torch.autograd.grad(reference(yy.double(), bb.double(), ww.double()), (yy, bb, ww), g.double())
    for name, a, b in zip(("d_input", "d_bias", "d_weights"), got, want, strict=True):
        rel = ((a.double() - b).norm() / b.norm()).item()
        print(f"  {name}: relative error against float64 {rel:.2e}")
        assert rel < 1e-2, name


if __name__ == "__main__":
    main()
