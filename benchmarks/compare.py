"""Compare two bench.py result files (an older run against a newer one), ours only.

    python benchmarks/compare.py OLD.json NEW.json [--op FAMILY/OP ...] [--below 85]

For each (family, op) present in both files: the number of shapes, the geometric mean of the time
ratio new / old, the shapes that moved most either way, and how many shapes sit below ``--below``
percent of the copy bandwidth in each file (the issue's routing targets count those). ``--op``
lists every shape of the named (family, op) pairs, sorted by the ratio. Old files come from git:
``git show REV:benchmarks/results/NVIDIA_H200-activations.json > /tmp/old.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict


def load(path: str) -> dict[tuple, dict]:
    """(family, op, shape) -> our row, from a bench.py results file."""
    rows = json.load(open(path))["results"]
    return {(r["family"], r["op"], tuple(r["shape"])): r for r in rows if r["impl"] == "ours"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--op", nargs="*", default=[], help="family/op pairs to list shape by shape")
    ap.add_argument("--below", type=float, default=85.0, help="count shapes below this % of copy")
    args = ap.parse_args()
    old, new = load(args.old), load(args.new)
    pairs = defaultdict(list)  # (family, op) -> [(shape, old row, new row)]
    for key in sorted(old.keys() & new.keys()):
        pairs[key[:2]].append((key[2], old[key], new[key]))
    for (family, op), rows in pairs.items():
        ratios = [n["us"] / o["us"] for _, o, n in rows]
        mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        order = sorted(rows, key=lambda r: r[2]["us"] / r[1]["us"])
        below = [sum(1 for r in rows if r[i]["pct_copy"] < args.below) for i in (1, 2)]

        def moved(row):
            shape, o, n = row
            return f"{shape} {o['us']:.1f} -> {n['us']:.1f} µs"

        print(
            f"{family:12s} {op:12s} {len(rows):3d} shapes, new/old {100 * (mean - 1):+5.1f}%, "
            f"below {args.below:g}%: {below[0]} -> {below[1]}; best {moved(order[0])}; worst {moved(order[-1])}"
        )
    for name in args.op:
        family, op = name.split("/")
        for shape, o, n in sorted(pairs[(family, op)], key=lambda r: r[2]["us"] / r[1]["us"]):
            change = 100 * (n["us"] / o["us"] - 1)
            print(f"  {family} {op} {shape!s:24s} {o['us']:9.1f} -> {n['us']:9.1f} µs {change:+6.1f}%")


if __name__ == "__main__":
    main()
