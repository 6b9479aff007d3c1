"""Turn benchmarks/results/*.json (from bench.py) into one markdown table and one plot per card.

    python benchmarks/report.py [--results benchmarks/results]

Needs matplotlib (``pip install .[bench]``); runs anywhere, no GPU.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

LARGE = 1 << 25  # T * H at or above this is a "large" activation shape (issue 4)


def _load(results: Path) -> dict[str, list[tuple[dict, list[dict]]]]:
    by_card: dict[str, list[tuple[dict, list[dict]]]] = defaultdict(list)
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if "meta" not in data:  # sweep.py's launch-shape data, not a benchmark run
            continue
        meta = dict(data["meta"], file=path.name)
        by_card[meta["card"]].append((meta, data["results"]))
    return by_card


def _index(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["family"], r["op"], r["impl"], tuple(r["shape"])): r for r in rows}


def _fmt_us(row: dict | None) -> str:
    return "—" if row is None else f"{row['us']:.1f}"


def _pct(row: dict | None) -> str:
    return "—" if row is None else f"{row['pct_copy']:.0f}%"


def _speedup(ours: dict | None, other: dict | None) -> str:
    return "—" if ours is None or other is None else f"{other['us'] / ours['us']:.2f}x"


def activation_table(rows: list[dict]) -> list[str]:
    idx = _index(rows)
    shapes = sorted({tuple(r["shape"]) for r in rows if r["family"] in ("swiglu", "geglu", "quick_geglu")})
    out = [
        "| activation | T x H | op | ours µs | ours % copy | compiled ref µs | % copy | speedup "
        "| eager ref µs | speedup | peak MiB ours / compiled ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family in ("swiglu", "geglu", "quick_geglu"):
        for shape in shapes:
            for op in ("fwd", "fwd_fp8", "bwd", "bwd_fp8", "fwd_bwd", "fwd_bwd_fp8"):
                ours = idx.get((family, op, "ours", shape))
                if ours is None:
                    continue
                comp = idx.get((family, op, "ref_compiled", shape))
                eager = idx.get((family, op, "ref_eager", shape))
                peak = "—"
                if ours.get("peak_mb") is not None and comp is not None and comp.get("peak_mb") is not None:
                    peak = f"{ours['peak_mb']:.0f} / {comp['peak_mb']:.0f}"
                out.append(
                    f"| {family} | {shape[0]} x {shape[1]} | {op} | {_fmt_us(ours)} | {_pct(ours)} | {_fmt_us(comp)} "
                    f"| {_pct(comp)} | {_speedup(ours, comp)} | {_fmt_us(eager)} | {_speedup(ours, eager)} | {peak} |"
                )
    return out


EXTRA = ("reglu", "exact_geglu", "clamped_swiglu", "squared_reglu")


def extra_table(rows: list[dict]) -> list[str]:
    """Activations beyond the seed API, and swiglu with interleaved gate/up (against split swiglu)."""
    idx = _index(rows)
    out = [
        "| activation | T x H | op | ours µs | ours % copy | baseline | baseline µs | % copy | speedup "
        "| peak MiB ours / baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        interleaved = r["impl"] == "ours_interleaved"
        if not (r["family"] in EXTRA and r["impl"] == "ours") and not interleaved:
            continue
        shape = tuple(r["shape"])
        if interleaved:
            pairs = [("swiglu split layout (ours)", idx.get((r["family"], r["op"], "ours", shape)))]
        else:
            pairs = [
                ("PyTorch compiled", idx.get((r["family"], r["op"], "ref_compiled", shape))),
                ("PyTorch eager", idx.get((r["family"], r["op"], "ref_eager", shape))),
            ]
        name = f"{r['family']} (interleaved)" if interleaved else r["family"]
        for label, other in pairs:
            if other is None and label != pairs[0][0]:
                continue
            peak = "—"
            if r.get("peak_mb") is not None and other is not None and other.get("peak_mb") is not None:
                peak = f"{r['peak_mb']:.0f} / {other['peak_mb']:.0f}"
            out.append(
                f"| {name} | {shape[0]} x {shape[1]} | {r['op']} | {r['us']:.1f} | {r['pct_copy']:.0f}% | {label} "
                f"| {_fmt_us(other)} | {_pct(other)} | {_speedup(r, other)} | {peak} |"
            )
    return out


def plain_table(rows: list[dict]) -> list[str]:
    idx = _index(rows)
    out = [
        "| activation | T x H | ours GPU µs (% copy) | ours eager µs | Liger eager µs |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["op"] == "plain_fb" and r["impl"] == "ours":
            liger = idx.get((r["family"], "plain_fb", "liger", tuple(r["shape"])))
            eager = "—" if r.get("us_eager") is None else f"{r['us_eager']:.1f}"
            out.append(
                f"| {r['family']} | {r['shape'][0]} x {r['shape'][1]} | {r['us']:.1f} ({r['pct_copy']:.0f}%) | {eager} "
                f"| {_fmt_us(liger)} |"
            )
    return out


def routing_table(rows: list[dict]) -> list[str]:
    idx = _index(rows)
    out = [
        "| op | T, E, k, hidden | variant | ours µs | ours % copy | reference µs | ref % copy | speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["family"] not in ("permute", "unpermute") or r["impl"] != "ours":
            continue
        ref = idx.get((r["family"], r["op"], "reference", tuple(r["shape"])))
        out.append(
            f"| {r['family']} | {', '.join(map(str, r['shape']))} | {r['op']} | {r['us']:.1f} | {r['pct_copy']:.0f}% "
            f"| {_fmt_us(ref)} | {_pct(ref)} | {_speedup(r, ref)} |"
        )
    return out


def target_lines(rows: list[dict]) -> list[str]:
    """The numbers issue 4's targets are judged by, from whatever this card measured."""
    acts = [r for r in rows if r["family"] in ("swiglu", "geglu", "quick_geglu") and r["impl"] == "ours"]
    lines = []

    def low(rs):
        return min(rs, key=lambda r: r["pct_copy"]) if rs else None

    for op, label in (("fwd_bwd", "weighted fwd+bwd"), ("fwd", "weighted fwd"), ("fwd_bwd_fp8", "fwd+bwd, fp8 store")):
        worst = low([r for r in acts if r["op"] == op and r["shape"][0] * r["shape"][1] >= LARGE])
        if worst:
            lines.append(
                f"- {label}, large shapes (T·H ≥ 2^25): lowest {worst['pct_copy']:.1f}% "
                f"({worst['family']} {worst['shape'][0]} x {worst['shape'][1]})"
            )
    small = [r for r in acts if r["op"] == "fwd_bwd" and tuple(r["shape"]) == (16384, 768)]
    if small:
        lines.append(f"- fwd+bwd at T=16384, H=768: lowest {low(small)['pct_copy']:.1f}%")
    idx = _index(rows)
    slower = [
        f"{r['family']} {r['op']} {r['shape'][0]}x{r['shape'][1]} ({r['us']:.1f} vs {c['us']:.1f} µs)"
        for r in acts
        if (c := idx.get((r["family"], r["op"], "ref_compiled", tuple(r["shape"])))) is not None and r["us"] > c["us"]
    ]
    slower += [
        f"{r['family']} {r['op']} {r['shape']} ({r['us']:.1f} vs {c['us']:.1f} µs)"
        for r in rows
        if r["family"] in ("permute", "unpermute")
        and r["impl"] == "ours"
        and (c := idx.get((r["family"], r["op"], "reference", tuple(r["shape"])))) is not None
        and r["us"] > c["us"]
    ]
    lines.append("- ops slower than the compiled reference: " + ("; ".join(slower) if slower else "none"))
    for fam in ("permute", "unpermute"):
        for op in ("fwd", "bwd"):
            anchor = [
                r
                for r in rows
                if r["family"] == fam
                and r["op"] == op
                and r["impl"] == "ours"
                and tuple(r["shape"]) in ((16384, 64, 8, 2048), (8192, 128, 8, 7168))
            ]
            if anchor:
                lines.append(
                    f"- {fam} {op} at issue 3's shapes: "
                    + ", ".join(f"{r['pct_copy']:.1f}% ({', '.join(map(str, r['shape']))})" for r in anchor)
                )
            grid = [r for r in rows if r["family"] == fam and r["op"] == op and r["impl"] == "ours"]
            if len(grid) > len(anchor):
                worst = low(grid)
                below = sum(r["pct_copy"] < 85 for r in grid)
                lines.append(
                    f"- {fam} {op} over all {len(grid)} routing shapes: lowest {worst['pct_copy']:.1f}% "
                    f"({', '.join(map(str, worst['shape']))}); {below} below 85%"
                )
    return lines


def plot(card: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ax = axes[0]
    for impl, style in (("ours", "-o"), ("ref_compiled", "--s"), ("ref_eager", ":^")):
        for family, color in (("swiglu", "C0"), ("geglu", "C1"), ("quick_geglu", "C2")):
            pts = sorted(
                (r["shape"][0] * r["shape"][1], r["pct_copy"])
                for r in rows
                if r["family"] == family and r["op"] == "fwd_bwd" and r["impl"] == impl
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, color=color, label=f"{family} {impl}", alpha=0.9 if impl == "ours" else 0.6)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("T x H (elements of the output)")
    ax.set_ylabel("% of device-to-device copy bandwidth")
    ax.set_title("weighted activation, forward + backward (bf16, fp32 weights)")
    ax.set_ylim(0, 110)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    ax = axes[1]
    labels, ours, ref = [], [], []
    idx = _index(rows)
    for r in rows:
        anchor = tuple(r["shape"]) in ((16384, 64, 8, 2048), (8192, 128, 8, 7168))
        if r["family"] in ("permute", "unpermute") and r["impl"] == "ours" and r["op"] in ("fwd", "bwd") and anchor:
            labels.append(f"{r['family'][:5]} {r['op']}\n{','.join(map(str, r['shape']))}")
            ours.append(r["pct_copy"])
            other = idx.get((r["family"], r["op"], "reference", tuple(r["shape"])))
            ref.append(other["pct_copy"] if other else 0.0)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], ours, 0.4, label="moe_utils (fused)")
    ax.bar([x + 0.2 for x in xs], ref, 0.4, label="reference")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=0, fontsize=7)
    ax.set_ylabel("% of copy bandwidth")
    ax.set_title("permute / unpermute at issue 3's shapes (T, E, k, hidden)")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=8)
    fig.suptitle(card)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    for card, runs in sorted(_load(args.results).items()):
        slug = card.replace(" ", "_")
        # One row per (family, op, impl, shape): a later file (sorted by name) replaces an earlier one.
        rows = list(_index([r for _, rs in runs for r in rs]).values())
        text = [f"# {card}", ""]
        for meta, results in runs:
            passes = ""
            if meta.get("passes", 1) > 1:  # bench.py --passes: the median pass's row, every pass's time beside it
                worst = max(results, key=lambda r: r.get("spread_pct", 0.0))
                passes = (
                    f", the median of {meta['passes']} passes (widest spread {worst['spread_pct']:.1f}%: "
                    f"{worst['family']} {worst['op']} {worst['impl']} {tuple(worst['shape'])})"
                )
            text.append(
                f"- `{meta['file']}`: device-to-device copy {meta['copy_gbs']:.0f} GB/s, torch {meta['torch']}, "
                f"triton {meta['triton']}, {meta['seconds']:.0f} s{passes}"
                + (f". {meta['note']}" if "note" in meta else "")
            )
        text += [
            "",
            "Times are medians of `triton.testing.do_bench` over CUDA-graph replays (GPU time; ops that synchronise "
            "with the host are timed eagerly). % copy = bytes of the explicit byte model / time, over the copy "
            "bandwidth measured in the same run. Generated by `benchmarks/report.py`.",
            "",
            "## Targets (issue 4)",
            "",
            *target_lines(rows),
            "",
        ]
        if any(r["family"] in ("swiglu", "geglu", "quick_geglu") for r in rows):
            text += ["## Weighted activations", "", *activation_table(rows), ""]
            text += [
                "## Unweighted forward + backward against Liger-Kernel",
                "",
                "Liger's kernels do not survive CUDA-graph capture here, so the comparison is eager against "
                "eager (host overhead included, noisy on this VM); ours also in GPU time.",
                "",
                *plain_table(rows),
                "",
            ]
        if any(r["family"] in EXTRA or r["impl"] == "ours_interleaved" for r in rows):
            text += [
                "## Activations beyond the seed API, and the interleaved layout",
                "",
                "Baseline for the new activations: the plain PyTorch composition (weighted in the storage dtype, "
                "autograd backward), eager and `torch.compile`d; the reference has no such functions.",
                "",
                *extra_table(rows),
                "",
            ]
        if any(r["family"] in ("permute", "unpermute") for r in rows):
            text += ["## permute / unpermute", "", *routing_table(rows), ""]
        (args.results / f"{slug}.md").write_text("\n".join(text) + "\n")
        plot(card, rows, args.results / f"{slug}.png")
        print(f"wrote {slug}.md and {slug}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
