"""A/B of two copies of the package on one machine: experiments.py with the given arguments in
alternating processes, the installed package first, then an older copy (a folder holding
``moe_utils/``, put first on PYTHONPATH), ``--runs`` processes each; then, per (kind, shape),
every time of each package and the change of the medians. Drift between processes is real
(NOTES, session 20): compare medians over three processes or more, not ``--passes`` in one.

    python3 ab.py --old ../bench_x --out DIR [--runs 3] [--timeout 60] [--only-kinds bwd] \\
        -- --only ops --no-routing --act-names geglu --act-interleaved --act-shapes 65536x7168

``--summary DIR`` prints an earlier run's table again without timing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections import defaultdict

HERE = pathlib.Path(__file__).resolve().parent


def run(old: str, out: pathlib.Path, runs: int, timeout: float, args: list[str]) -> None:
    """Alternate the packages (new, old, new, ...): each process writes its log and its
    experiments-*-ab-{new|old}{i}.json to ``out``."""
    start = time.monotonic()
    for i in range(1, 2 * runs + 1):
        pkg = "new" if i % 2 else "old"
        env = dict(os.environ)
        if pkg == "old":
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(pathlib.Path(old).resolve()), env.get("PYTHONPATH")) if p
            )
        cmd = [sys.executable, str(HERE / "experiments.py"), "--out", str(out), f"--tag=-ab-{pkg}{i}", *args]
        with open(out / f"ab-{pkg}{i}.log", "w") as log:
            try:
                rc = subprocess.run(
                    cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        print(f"{pkg}{i} rc {rc} at {time.monotonic() - start:.0f} s", flush=True)


def summary(out: pathlib.Path, only_kinds: str = "") -> list[str]:
    """One line per (kind, shape) that both packages timed: each process's time, then the
    median's change from old to new."""
    times: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(out.glob("experiments-*-ab-*.json")):
        pkg = "new" if "-ab-new" in path.name else "old"
        for row in json.loads(path.read_text()):
            if only_kinds in row["kind"]:
                kind = " ".join(filter(None, (row["kind"], row.get("name"))))
                times[(kind, tuple(row["shape"]))][pkg].append(row["us"])
    lines = []
    for (kind, shape), by in times.items():
        if by["old"] and by["new"]:
            old, new = statistics.median(by["old"]), statistics.median(by["new"])
            each = {p: " / ".join(f"{t:.1f}" for t in by[p]) for p in ("old", "new")}
            shape_s = " x ".join(map(str, shape))
            lines.append(
                f"{kind:28s} {shape_s:22s} old {each['old']}  new {each['new']}  {100 * (new / old - 1):+.1f}%"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", help="folder holding the older copy's moe_utils/")
    ap.add_argument("--out", required=True, help="folder of the logs and result files")
    ap.add_argument("--runs", type=int, default=3, help="processes per package")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per process")
    ap.add_argument("--only-kinds", default="", help="summarise only kinds containing this text")
    ap.add_argument("--summary", action="store_true", help="only print the table of --out's files")
    ap.add_argument("experiments_args", nargs=argparse.REMAINDER, help="after --: experiments.py's arguments")
    args = ap.parse_args()
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        if not args.old:
            ap.error("--old is required unless --summary")
        extra = args.experiments_args[1:] if args.experiments_args[:1] == ["--"] else args.experiments_args
        run(args.old, out, args.runs, args.timeout, extra)
    lines = summary(out, args.only_kinds)
    (out / "ab-summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
