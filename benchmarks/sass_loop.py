"""Instruction counts of a generated activation kernel's main loop, compiled for sm_90 on the CPU.

    python benchmarks/sass_loop.py swiglu,geglu,quick_geglu [--forward] [--tiles 8x256x4 2x1024x4]
    python benchmarks/sass_loop.py --map      # the routing plan's map kernel instead

No GPU needed: Triton compiles for a CUDA sm_90 target and the cuobjdump that its wheel carries
disassembles the cubin. For each activation, weighted, with and without the fp8 copy (Quick-GEGLU
with its clamp, as bench.py runs it), it prints the registers, the instructions of the longest
backward-branching span (the column-step loop of the backward; the forward has no loop and is
counted whole), the instructions per (gate, up) pair and thread, and the commonest opcodes.
Pointers and the widths and row strides are declared multiples of 16, as the JIT declares them at
a launch with aligned tensors and H a multiple of 16: loads and stores are then vectorised. (Until
session 10 they were not declared, and the counts were those of scalar code: Quick-GEGLU's
backward in 2048-element tiles 164 registers and 65 instructions per pair, where the launch has
109 and 49.)
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the interpreter replaces kernels by Python functions
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_sm90_compile
from sweep import dims

FLOATS = ("clamp_value", "linear_offset", "alpha", "limit")
# The compile and the loop's span: test_sm90_compile.sass and loop_body (pointers, the widths and
# row strides declared multiples of 16 as the JIT declares them at an aligned launch; until
# session 10 they were not, and the counts were those of scalar code).
sass, loop_body = test_sm90_compile.sass, test_sm90_compile.loop_body


def opcodes(body: list[str]) -> str:
    """The commonest opcodes of body, with their counts."""
    ops: dict[str, int] = {}
    for line in body:
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        ops[m.group(1) if m else "?"] = ops.get(m.group(1) if m else "?", 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12])


def map_kernel() -> None:
    """The map kernel's step (routing.py) at the tiles its rule picks (E = 256, 64, 8) and two
    tokens at E = 256, with and without its prefetch, then its word walk in one- and two-token
    steps, at a launch's specializations
    (test_sm90_compile.map_step: the experts' stride 1, or the map's byte loads are not
    vectorised; the token, row and segment counts multiples of 16, and E where it is one)."""
    for block_t, block_e in ((1, 256), (2, 256), (4, 64), (32, 8)):
        for prefetch in (False, True):
            body, regs = test_sm90_compile.map_step(block_t, block_e, prefetch)
            print(
                f"map [{block_t}, {block_e}] prefetch={prefetch}: {regs} registers, {len(body)} instructions a step, "
                f"{len(body) / block_t:.0f} per token; {opcodes(body)}",
                flush=True,
            )
    for pairs in (False, True):  # the word walk (E = 129-256, top-2): one token a step, or two
        body, regs = test_sm90_compile.map_step(1, 256, words=True, pairs=pairs)
        tokens = 2 if pairs else 1
        print(
            f"map words, {tokens} token(s) a step: {regs} registers, {len(body)} instructions a step (both branches "
            f"of each token's placement), {len(body) / tokens:.0f} per token; {opcodes(body)}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="?", default="", help="comma-separated activation names")
    ap.add_argument("--forward", action="store_true", help="the forward kernel instead of the backward")
    ap.add_argument("--map", action="store_true", help="the routing plan's map kernel")
    ap.add_argument(
        "--tiles", nargs="*", type=dims, default=None,
        help="ROWSxCOLUMNSxWARPS tiles (default: forward 32x128x8 4x1024x8, backward 4x512x4 4x256x4 1x1024x4)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.map:
        map_kernel()
        return
    for name in args.names.split(","):
        mod = importlib.import_module(f"moe_utils.generated.{name}")
        kernel = getattr(mod, f"_{name}_{'fwd' if args.forward else 'bwd'}")
        tiles = ((32, 128, 8), (4, 1024, 8)) if args.forward else ((4, 512, 4), (4, 256, 4), (1, 1024, 4))
        if args.tiles:
            tiles = tuple(args.tiles)
        for fp8 in (False, True):
            for br, bh, warps in tiles:
                common = dict(HAS_BIAS=False, HAS_WEIGHT=True, CLAMP=name == "quick_geglu", NATIVE_FP8=True)
                if args.forward:
                    cx = dict(common, STORE_FP8=fp8, INTERLEAVED=False, X_POLICY="", BLOCK_R=br, BLOCK_H=bh)
                    types = {}
                else:
                    cx = dict(common, LOAD_FP8=fp8, STORE_DX=True, CLAMPED_DX="zero", INTERLEAVED=False)
                    cx.update(BIAS_SUM=False, ROW_STEPS=1, BLOCK_R=br, BLOCK_H=bh)
                    types = {"x_ptr": "*u8"} if fp8 else {}
                lines, regs = sass(kernel, cx, warps, FLOATS, types=types)
                body = lines if args.forward else loop_body(lines)
                pairs = br * bh / (32 * warps)
                top = opcodes(body)
                kind = "fwd" if args.forward else "bwd"
                print(
                    f"{name} {kind} fp8={fp8} [{br}, {bh}] x {warps} warps: {regs} registers, {len(body)} "
                    f"instructions, {len(body) / pairs:.1f} per pair and thread; {top}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
