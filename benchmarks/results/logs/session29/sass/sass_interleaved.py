"""Session 29: the weighted backward's loop in sm_90 SASS, per layout, fp8 copy and tile.

    python benchmarks/results/logs/session29/sass/sass_interleaved.py swiglu [geglu ...] [--il-only]

Counts a loop's instructions and its shared-memory traffic (LDS, STS, BAR) and shuffles, with the
helpers of tests/test_sm90_compile.py (CPU only: Triton's own ptxas and cuobjdump).
"""

import importlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "tests"))
from test_sm90_compile import loop_body, sass

TILES = ((8, 128, 4), (4, 128, 2), (4, 256, 4), (4, 256, 2), (2, 256, 2), (2, 512, 4), (2, 512, 2), (1, 1024, 4))
TILES += ((1, 1024, 2),)
FLAGS = dict(HAS_BIAS=False, HAS_WEIGHT=True, CLAMP=False, NATIVE_FP8=True)


def count(pattern: str, lines: list[str]) -> int:
    return sum(1 for line in lines if re.search(pattern, line))


def main() -> None:
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    layouts = (True,) if "--il-only" in sys.argv else (False, True)
    for name in names:
        kernel = getattr(importlib.import_module(f"moe_utils.generated.{name}"), f"_{name}_bwd")
        floats = ("clamp_value", *(p for p in kernel.arg_names if p in ("alpha", "linear_offset", "limit")))
        for il in layouts:
            for fp8 in (False, True):
                for br, bh, warps in TILES:
                    cx = dict(FLAGS, LOAD_FP8=fp8, BLOCK_R=br, BLOCK_H=bh, INTERLEAVED=il)
                    lines, regs = sass(kernel, cx, warps, floats=floats, types={"x_ptr": "*u8"} if fp8 else None)
                    body = loop_body(lines)
                    lds, sts, bar, shfl = (count(p, body) for p in (r"\bLDS", r"\bSTS", r"\bBAR", "SHFL"))
                    print(
                        f"{name:12s} il={int(il)} fp8={int(fp8)} [{br},{bh}]x{warps}: total {len(lines):4d}"
                        f" regs {regs:3d} loop {len(body):4d} LDS {lds:2d} STS {sts:2d} BAR {bar:2d} SHFL {shfl:2d}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
