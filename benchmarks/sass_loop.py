"""Instruction counts of a generated activation kernel's main loop, compiled for sm_90 on the CPU.

    python benchmarks/sass_loop.py swiglu,geglu,quick_geglu [--forward]
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
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the interpreter replaces kernels by Python functions
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_sm90_compile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from moe_utils import routing

FLOATS = {"clamp_value", "linear_offset", "alpha", "limit"}
ALIGNED_INTS = {"H", "x_row_stride", "grad_out_row_stride", "map_stride_t"}  # multiples of 16 where benchmarked
LINE = re.compile(r"\s+/\*([0-9a-f]{4})\*/")


def sass(kernel, constexprs: dict, warps: int, types: dict, ints: set = frozenset()) -> tuple[list[str], int]:
    names = kernel.arg_names
    sig = {}
    for n in names:
        if n in constexprs:
            sig[n] = "constexpr"
        elif n in types:
            sig[n] = types[n]
        elif n.endswith("_ptr"):
            int64 = n in test_sm90_compile.INT64_POINTERS
            sig[n] = "*i64" if int64 else test_sm90_compile.POINTERS.get(n, "*bf16")
        else:
            sig[n] = "fp32" if n in FLOATS else "i32"
    # What the JIT tells the compiler at a launch with aligned tensors and widths that are multiples
    # of 16 (H = 768 ... 7168): without it, loads and stores are not vectorised and the counts are
    # those of scalar code (the session-9 figures in NOTES were).
    aligned = [i for i, n in enumerate(names) if sig[n].startswith("*") or n in ALIGNED_INTS | ints]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(
        fn=kernel, signature=sig, constexprs={(names.index(a),): v for a, v in constexprs.items()}, attrs=attrs
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    cubin = Path("/tmp/moe_utils_sass_loop.cubin")
    cubin.write_bytes(compiled.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    text = subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    return [line for line in text.splitlines() if LINE.match(line)], regs


def loop_body(lines: list[str]) -> list[str]:
    """The longest span that ends in a branch back to its start; all lines if there is none."""
    addr = [int(LINE.match(line).group(1), 16) for line in lines]
    best = None
    for i, line in enumerate(lines):
        m = re.search(r"BRA 0x([0-9a-f]+)\s*;", line)
        if m and int(m.group(1), 16) < addr[i]:
            start = addr.index(int(m.group(1), 16)) if int(m.group(1), 16) in addr else 0
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
    return lines if best is None else lines[best[0] : best[1] + 1]


def opcodes(body: list[str]) -> str:
    """The commonest opcodes of body, with their counts."""
    ops: dict[str, int] = {}
    for line in body:
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        ops[m.group(1) if m else "?"] = ops.get(m.group(1) if m else "?", 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12])


def map_kernel() -> None:
    """The map kernel's step (routing.py) at the tiles its rule picks (E = 256, 64, 8; one warp) and
    two tokens at E = 256, with and without its prefetch. The launch specializes the experts'
    stride (1) into a constant: so here, or the map's byte loads are not vectorised. The token,
    row and segment counts are declared multiples of 16, as at bench.py's shapes, and E too where
    it is one (E = BLOCK_E >= 16; E = 8 is not, and its loads' masks then keep them bytewise)."""
    for block_t, block_e in ((1, 256), (2, 256), (4, 64), (32, 8)):
        for prefetch in (False, True):
            cx = dict(DROP_AND_PAD=False, PADDED=True, CHECK=False, BLOCK_T=block_t, BLOCK_E=block_e)
            cx.update(PREFETCH=prefetch, PDL=1, map_stride_e=1, GROUP=routing._map_group(block_e))
            aligned = {"T", "N", "seg_len"} | ({"E"} if block_e >= 16 else set())
            lines, regs = sass(routing._map_kernel, cx, 1, {}, aligned)
            body = loop_body(lines)
            print(
                f"map [{block_t}, {block_e}] prefetch={prefetch}: {regs} registers, {len(body)} instructions a step, "
                f"{len(body) / block_t:.0f} per token; {opcodes(body)}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="?", default="", help="comma-separated activation names")
    ap.add_argument("--forward", action="store_true", help="the forward kernel instead of the backward")
    ap.add_argument("--map", action="store_true", help="the routing plan's map kernel")
    args = ap.parse_args()
    if args.map:
        map_kernel()
        return
    for name in args.names.split(","):
        mod = importlib.import_module(f"moe_utils.generated.{name}")
        kernel = getattr(mod, f"_{name}_{'fwd' if args.forward else 'bwd'}")
        for fp8 in (False, True):
            for br, bh in ((4, 512), (4, 256), (1, 1024)) if not args.forward else ((32, 128), (4, 1024)):
                common = dict(HAS_BIAS=False, HAS_WEIGHT=True, CLAMP=name == "quick_geglu", NATIVE_FP8=True)
                if args.forward:
                    cx = dict(common, STORE_FP8=fp8, INTERLEAVED=False, X_POLICY="", BLOCK_R=br, BLOCK_H=bh)
                    warps, types = 8, {}
                else:
                    cx = dict(common, LOAD_FP8=fp8, INTERLEAVED=False, BLOCK_R=br, BLOCK_H=bh)
                    warps, types = 4, ({"x_ptr": "*u8"} if fp8 else {})
                lines, regs = sass(kernel, cx, warps, types)
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
