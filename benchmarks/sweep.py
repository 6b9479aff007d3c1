"""Launch-shape sweep: the data behind the block-size tables in ``moe_utils/_runtime.py`` and the
routing kernels. Not part of the user-facing benchmark (``bench.py``); run it when tuning.

    python benchmarks/sweep.py --out DIR [--only {act,routing,unweighted,profile,plan,small,wide,blocks} ...]

Times every candidate launch shape of the activation forward (with and without the fp8 store),
the backward (bf16 and fp8 saved input; without weights, every step width), the permute scatter
and the unpermute backward's scatter-dot, plus each piece of the fused permute (plan, scatter,
padding) and a write-only fill, all as CUDA-graph replays (``triton.testing.do_bench_cudagraph``,
median). ``plan``: the routing plan under every launch shape of its three kernels (each checked
bit-equal to the shipped one); ``small``: launch-bound forwards down to 2 warps, with and without
streaming loads (rotating inputs); ``wide``: the forward's column block at wide rows, with and without the fp8
store; ``blocks``: per activation, the forward's column block and the weighted backward's column
step from 128 columns up; ``profile``: per-kernel times of one fused permute. The default runs act, routing and
unweighted. Writes ``sweep-<card>.json`` after every group: {kind: [{shape, config, us, pct}]}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import time

import torch
import triton

import moe_utils
from moe_utils import _runtime as _rt
from moe_utils.permutation import _launch_scatter, _scatter_rows_kernel, scatter_rows
from moe_utils.routing import build_plan, plan_view
from moe_utils.unpermutation import _scatter_dot_kernel

DTYPE = torch.bfloat16
gen = importlib.import_module("moe_utils.generated.swiglu")  # the package re-exports the function swiglu
#: SWEEP_DRY=1 (with TRITON_INTERPRET=1): tiny shapes on the CPU, each kernel run once, to check the script.
DRY = os.environ.get("SWEEP_DRY") == "1"
DEVICE = "cpu" if DRY else "cuda"


def bench(fn) -> float:
    fn()
    if DRY:
        return 1.0
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median") * 1e3  # µs


def capture_graph(warm, body) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``body()``, captured after ``warm()`` ran on a side stream (the first calls,
    which compile kernels and fill the allocator, stay out of the capture: torch.cuda.graph's
    rule). The graph replays its kernels on the buffers they had at capture: whoever replays it
    keeps those buffers' owners (the inputs) alive as long as the graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        warm()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


def dims(text: str) -> tuple[int, ...]:
    """A shape or tile from the command line: "65536x2048" -> (65536, 2048) (argparse's type=)."""
    return tuple(int(v) for v in text.split("x"))


def warm_up(seconds: float) -> None:
    """Keep the GPU copying 1 GiB buffers for about ``seconds`` before anything is timed (a control
    for a cold GPU). Session 20 (experiments.py --only realloc): the first three copies of 4096 x
    8 x 2 x 2048 timed in a fresh process ran its permute forward at 16.8-17.4 µs, every later
    timing, of the same inputs too, at 15.5-16.1; three seconds of this first (call 6) left that
    unchanged, so a cold GPU is not the cause."""
    if DRY or seconds <= 0:
        return
    a = torch.empty(1 << 29, dtype=DTYPE, device=DEVICE)
    b = torch.empty_like(a)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(10):
            b.copy_(a)
        torch.cuda.synchronize()


def copy_gbs() -> float:
    n = 1 << (10 if DRY else 30)
    a = torch.empty(n, dtype=DTYPE, device=DEVICE)
    b = torch.empty_like(a)
    if DRY:
        return 1.0
    # Eagerly, as bench.py does: timed as a CUDA-graph replay it read 2.72-2.77 TB/s on an H200
    # against 4.27 eagerly (session 9); a captured copy_ is likely a memcpy node (the copy engine).
    us = triton.testing.do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median") * 1e3
    return 2 * n * 2 / us / 1e3


def act_configs(h: int):
    for block_h in (64, 128, 256, 512, 1024, 2048, 4096):
        if block_h > max(64, triton.next_power_of_2(h)):
            continue
        for tile, warps in ((2048, 4), (4096, 4), (4096, 8), (8192, 8), (16384, 16)):
            block_r = tile // block_h
            if 1 <= block_r <= 128:
                yield block_r, block_h, warps


def forward_launch(x, w, out, fp8, config, store_fp8, policy=""):
    """A closure launching swiglu's weighted forward kernel with config = (BLOCK_R, BLOCK_H, warps)
    on its grid in memory order (the generated _launch_forward's); fp8 receives the fp8 copy of x
    when store_fp8."""
    (n_rows, h), (br, bh, nw) = out.shape, config
    grid = (triton.cdiv(n_rows, br) * triton.cdiv(h, bh),)

    def run():
        gen._swiglu_fwd[grid](
            x, x, w, out, fp8, n_rows, h, x.stride(0), 0, 0.0,
            HAS_BIAS=False, HAS_WEIGHT=True, CLAMP=False, STORE_FP8=store_fp8, NATIVE_FP8=_rt.NATIVE_FP8,
            INTERLEAVED=False, X_POLICY=policy, BLOCK_R=br, BLOCK_H=bh, num_warps=nw, **_rt.COMPILE_OPTIONS,
        )  # fmt: skip

    return run


def backward_launch(g, src, w, dx, dw, config, load_fp8):
    """A closure launching swiglu's backward kernel with config = (BLOCK_R, BLOCK_H, warps); w None:
    no weights (and no weight gradient)."""
    (n_rows, h), (br, bh, nw) = g.shape, config

    def run():
        gen._swiglu_bwd[(triton.cdiv(n_rows, br),)](
            g, src, dx, dx if w is None else w, dx, dx if dw is None else dw, dx, n_rows, h, g.stride(0),
            src.stride(0), 0, 0.0, HAS_BIAS=False, HAS_WEIGHT=w is not None, CLAMP=False, LOAD_FP8=load_fp8,
            STORE_DX=True, CLAMPED_DX="zero", BIAS_SUM=False, ROW_STEPS=1, NATIVE_FP8=_rt.NATIVE_FP8,
            INTERLEAVED=False, BLOCK_R=br, BLOCK_H=bh, num_warps=nw, **_rt.COMPILE_OPTIONS,
        )  # fmt: skip

    return run


def sweep_activations(results, copy, rows_list, widths):
    for n_rows in rows_list:
        for h in widths:
            x = torch.randn(n_rows, 2 * h, dtype=DTYPE, device=DEVICE)
            w = torch.rand(n_rows, dtype=torch.float32, device=DEVICE)
            out = torch.empty(n_rows, h, dtype=DTYPE, device=DEVICE)
            fp8 = torch.empty(n_rows, 2 * h, dtype=torch.uint8, device=DEVICE)
            g = torch.randn(n_rows, h, dtype=DTYPE, device=DEVICE)
            dx = torch.empty_like(x)
            dw = torch.empty_like(w)
            e = n_rows * h
            for store_fp8 in (False, True):
                nbytes = e * 2 * 2 + e * 2 + n_rows * 4 + (e * 2 if store_fp8 else 0)
                for br, bh, nw in act_configs(h):
                    us = bench(forward_launch(x, w, out, fp8, (br, bh, nw), store_fp8))
                    kind = "fwd_fp8" if store_fp8 else "fwd"
                    results.setdefault(kind, []).append(
                        dict(shape=[n_rows, h], config=[br, bh, nw], us=us, pct=100 * nbytes / us / 1e3 / copy)
                    )
            fp8.copy_(x.to(torch.float8_e4m3fn).view(torch.uint8))
            for load_fp8 in (False, True):
                src = fp8 if load_fp8 else x
                nbytes = e * 2 * (1 if load_fp8 else 2) + e * 2 + e * 2 * 2 + n_rows * 8
                for br, bh, nw in act_configs(h):
                    if br * bh > 8192:
                        continue

                    us = bench(backward_launch(g, src, w, dx, dw, (br, bh, nw), load_fp8))
                    kind = "bwd_fp8" if load_fp8 else "bwd"
                    results.setdefault(kind, []).append(
                        dict(shape=[n_rows, h], config=[br, bh, nw], us=us, pct=100 * nbytes / us / 1e3 / copy)
                    )
            best = {
                k: max((r for r in v if r["shape"] == [n_rows, h]), key=lambda r: r["pct"])
                for k, v in results.items()
                if k.startswith(("fwd", "bwd"))
            }
            print(n_rows, h, {k: (b["config"], round(b["pct"], 1)) for k, b in best.items()}, flush=True)
            yield


def sweep_wide_forward(results, copy, shapes):
    """The forward at wide rows, with and without the fp8 store: column blocks of 1024, 2048 and
    4096 (tiles of 4096 elements, 8 warps, and the 4-warp whole-row tile), on the grid in memory
    order. Picks the column block of forward_config at large shapes."""
    for n_rows, h in shapes:
        x = torch.randn(n_rows, 2 * h, dtype=DTYPE, device=DEVICE)
        w = torch.rand(n_rows, dtype=torch.float32, device=DEVICE)
        out = torch.empty(n_rows, h, dtype=DTYPE, device=DEVICE)
        fp8 = torch.empty(n_rows, 2 * h, dtype=torch.uint8, device=DEVICE)
        e = n_rows * h
        configs = [(4096 // bh, bh, 8) for bh in (1024, 2048, 4096)] + [(1, 4096, 4), (2, 2048, 4)]
        for store_fp8 in (False, True):
            nbytes = e * 2 * 2 + e * 2 + n_rows * 4 + (e * 2 if store_fp8 else 0)
            for br, bh, nw in configs:
                us = bench(forward_launch(x, w, out, fp8, (br, bh, nw), store_fp8))
                kind = "fwd_wide_fp8" if store_fp8 else "fwd_wide"
                results.setdefault(kind, []).append(
                    dict(shape=[n_rows, h], config=[br, bh, nw], us=us, pct=100 * nbytes / us / 1e3 / copy)
                )
                print(n_rows, h, kind, [br, bh, nw], f"{us:.1f} us", flush=True)
        yield


def sweep_blocks(
    results,
    copy,
    shapes,
    parts=("fwd", "bwd"),
    shipped_block=False,
    bwd_tiles=((1024, 4), (2048, 4), (2048, 8)),
    fwd_tiles=((4096, 8),),
    acts=("swiglu", "geglu", "quick_geglu"),
    interleaved=False,
    store_dx=True,
):
    """Per activation (swiglu, geglu, quick_geglu with bench.py's offset and clamp): the column
    block of the weighted forward (fp8 store or not; tiles of ``fwd_tiles`` (elements, warps[,
    streaming loads 0/1]), streaming loads where forward_config streams unless given) and the column
    step of the weighted backward (bf16 or fp8 saved input), from 128 columns up, in tiles of 1024
    elements with 4 warps and 2048 with 4 or 8 (the shipped tile: 2048 with 4). Narrow blocks waste
    no masked lanes at H = 768, 1408, 2880, which matters where the arithmetic (Quick-GEGLU, the fp8
    decode) is not hidden behind memory; smaller tiles per thread hold fewer registers (Quick-GEGLU's
    backward: 164 at 2048 elements with 4 warps, 52-56 at 1024; benchmarks/sass_loop.py). Goes
    through the generated launchers with the config functions of ``_runtime`` replaced. ``parts``:
    "fwd", "bwd" or both; ``bwd_tiles``: (elements, warps) of the backward's tiles;
    ``shipped_block``: only the column block forward_config picks, for both parts (to time tiles
    alone); ``acts``: bench.py's three, "quick_geglu_noclamp" (its offset, no clamp), or any
    activation without parameters (reglu, squared_reglu); ``interleaved``: x in the interleaved
    layout (kinds ending in _il); ``store_dx=False``: the backward without d_x, as where only the
    routing weights require grad (kinds ending in _nodx)."""
    from bench import activation_params

    saved = _rt.forward_config, _rt.backward_config
    try:
        for name in acts:
            module, params, clamp = activation_params(name)
            generated = importlib.import_module(f"moe_utils.generated.{module}")
            impl = generated._IMPL
            for n_rows, h in shapes:
                x = torch.randn(n_rows, 2 * h, dtype=DTYPE, device=DEVICE)
                w = torch.rand(n_rows, 1, dtype=torch.float32, device=DEVICE)
                g = torch.randn(n_rows, h, dtype=DTYPE, device=DEVICE)
                il, tag = interleaved, ("_il" if interleaved else "") + ("" if store_dx else "_nodx")
                x8 = impl.launch_forward(x, None, w, True, clamp, il, *params)[1].view(torch.float8_e4m3fn)
                e = n_rows * h
                ships = {fp8: saved[0](n_rows, h, generated._HEAVY_FORWARD, fp8) for fp8 in (False, True)}
                shipped = ships[False]  # its column block and streaming are the store's too
                for bh in (shipped.block_h,) if shipped_block else (128, 256, 512, 1024, 2048):
                    if bh > max(128, triton.next_power_of_2(h)):
                        continue
                    for f_tile, f_warps, *evict in fwd_tiles if "fwd" in parts else ():
                        stream = bool(evict[0]) if evict else shipped.evict_first
                        fcfg = _rt.BlockConfig(max(1, f_tile // bh), bh, f_warps, stream)
                        _rt.forward_config = lambda n, hh, heavy=False, fp8=False, c=fcfg: c
                        for fp8 in (False, True):
                            nbytes = e * 2 * 2 + e * 2 + n_rows * 4 + (e * 2 if fp8 else 0)
                            us = bench(lambda fp8=fp8: impl.launch_forward(x, None, w, fp8, clamp, il, *params))
                            kind = f"blocks_fwd{'_fp8' if fp8 else ''}_{name}{tag}"
                            row = dict(shape=[n_rows, h], config=[fcfg.block_r, bh, f_warps, *evict], us=us)
                            results.setdefault(kind, []).append({**row, "pct": 100 * nbytes / us / 1e3 / copy})
                            ship = ships[fp8]
                            same = (fcfg.block_r, bh, f_warps, stream) == (
                                ship.block_r, ship.block_h, ship.num_warps, ship.evict_first
                            )  # fmt: skip
                            mark = " (shipped)" if same else ""
                            print(kind, n_rows, h, row["config"], f"{us:.1f} us{mark}", flush=True)
                    for tile, nw in bwd_tiles if bh <= 1024 and "bwd" in parts else ():
                        bcfg = _rt.BlockConfig(max(1, tile // bh), bh, nw)
                        _rt.backward_config = lambda n, hh, weighted, heavy, fp8=False, *rule, c=bcfg: c
                        for fp8 in (False, True):
                            src = x8 if fp8 else x
                            nbytes = e * 2 * (1 if fp8 else 2) + e * 2 + (e * 2 * 2 if store_dx else 0) + n_rows * 8
                            args = (g, src, None, w, clamp, il, DTYPE, *params, store_dx)
                            us = bench(lambda args=args: impl.launch_backward(*args))
                            kind = f"blocks_bwd{'_fp8' if fp8 else ''}_{name}{tag}"
                            row = dict(shape=[n_rows, h], config=[bcfg.block_r, bh, nw], us=us)
                            results.setdefault(kind, []).append({**row, "pct": 100 * nbytes / us / 1e3 / copy})
                            heavy = _rt.heavy_backward(clamp, fp8, generated._BACKWARD_OPS)  # as the launcher
                            ship = saved[1](
                                n_rows, h, True, heavy, fp8, il, clamp is not None, generated._BACKWARD_OPS, store_dx
                            )
                            mark = (
                                " (shipped)"
                                if (ship.block_r, ship.block_h, ship.num_warps) == (bcfg.block_r, bh, nw)
                                else ""
                            )
                            print(kind, n_rows, h, row["config"], f"{us:.1f} us{mark}", flush=True)
                _rt.forward_config, _rt.backward_config = saved
                yield
    finally:
        _rt.forward_config, _rt.backward_config = saved


def sweep_unweighted_backward(results, copy, shapes):
    """Backward without weights (Liger's case): every step width and tile. Session 3, run 1 also
    spread the column steps over the grid's second axis: no difference, so that is gone."""
    for n_rows, h in shapes:
        x = torch.randn(n_rows, 2 * h, dtype=DTYPE, device=DEVICE)
        g = torch.randn(n_rows, h, dtype=DTYPE, device=DEVICE)
        dx = torch.empty_like(x)
        nbytes = n_rows * h * 2 * 5
        for bh in (128, 256, 512, 1024, 2048, 4096, 8192):
            for tile, nw in ((2048, 4), (4096, 4), (4096, 8), (8192, 8), (8192, 16)):
                br = tile // bh
                if bh > max(128, triton.next_power_of_2(h)) or bh < min(256, h) or not 1 <= br <= 64:
                    continue

                us = bench(backward_launch(g, x, None, dx, None, (br, bh, nw), False))
                results.setdefault("bwd_unweighted", []).append(
                    dict(shape=[n_rows, h], config=[br, bh, nw], us=us, pct=100 * nbytes / us / 1e3 / copy)
                )
        shipped = _rt.backward_config(n_rows, h, False)
        rows = [r for r in results["bwd_unweighted"] if r["shape"] == [n_rows, h]]
        policy = "evict_first" if shipped.evict_first else ""
        mine = [r for r in rows if r["config"] == [shipped.block_r, shipped.block_h, shipped.num_warps, policy]]
        top = sorted(rows, key=lambda r: r["us"])[:4]
        print(n_rows, h, "bwd unweighted (shipped, then best)", [(r["config"], round(r["us"], 1)) for r in mine + top])
        yield


def routing_map(n_tokens, n_experts, k, gen_):
    scores = torch.rand(n_tokens, n_experts, generator=gen_, device=DEVICE)
    idx = scores.topk(k, dim=1).indices
    return torch.zeros(n_tokens, n_experts, dtype=torch.bool, device=DEVICE).scatter_(1, idx, True)


def sweep_routing(results, copy, shapes, parts=("pieces", "scatter", "scatter_dot")):
    """At each (tokens, experts, k, hidden): the fused permute's pieces (plan, scatter, padding, a
    write-only fill), and every launch shape of the scatter and of unpermute's backward
    scatter-dot; ``parts`` picks among the three."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for n_tokens, n_experts, k, hidden in shapes:
        m = routing_map(n_tokens, n_experts, k, g)
        p = torch.rand(n_tokens, n_experts, device=DEVICE)
        x = torch.randn(n_tokens, hidden, dtype=DTYPE, device=DEVICE)
        n_rows = n_tokens * k
        shape = [n_tokens, n_experts, k, hidden]
        plan, rest, _ = build_plan("sweep", m, p, n_rows, False)
        view = plan_view("sweep", plan, n_tokens, n_rows)
        out = torch.empty(n_rows, hidden, dtype=DTYPE, device=DEVICE)
        move = (n_tokens + n_rows) * hidden * 2
        pieces = {
            "permute": (lambda: moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True), move),
            "plan": (lambda: build_plan("sweep", m, p, n_rows, False), 0),
            "scatter": (lambda: scatter_rows(x, out, view, rest=rest), move),
            "zero_padding": (lambda: _launch_scatter(out, 0, out, view, None, None, False), 0),  # its padding programs
            "fill_out": (lambda: out.fill_(1.0), n_rows * hidden * 2),
            "zeros_probs": (lambda: torch.zeros(n_rows, device=DEVICE), 0),
        }
        for name, (fn, nbytes) in pieces.items() if "pieces" in parts else ():
            us = bench(fn)
            pct = 100 * nbytes / us / 1e3 / copy if nbytes else None
            results.setdefault("permute_pieces", []).append(dict(shape=shape, config=name, us=us, pct=pct))
        for bk in (1, 2, 4, 8) if "scatter" in parts else ():
            for bh in (128, 256, 512, 1024, 2048):
                for nw in (2, 4, 8):
                    if bh > triton.next_power_of_2(hidden) or bk * bh > 16384:
                        continue

                    def run(bk=bk, bh=bh, nw=nw):
                        _scatter_rows_kernel[(n_tokens * triton.cdiv(hidden, bh),)](
                            x, x.stride(0), out, x, 0, 0, view.token_ptr, view.entry,
                            view.src_token, rest.perm_probs, rest.expert_count, rest.total, n_tokens, n_rows,
                            hidden, 0, n_experts, 0, SCALE=False, PAD=False, WRITE_PLAN=False, HAS_PROBS=False,
                            DROP_AND_PAD=False, PAD_ROWS=16, PLAN_TOKENS=64, BLOCK_K=bk, BLOCK_H=bh,
                            num_warps=nw, PDL=0, EARLY_SRC=False, STORE_CACHE="", **_rt.COMPILE_OPTIONS,
                        )  # fmt: skip

                    us = bench(run)
                    results.setdefault("scatter", []).append(
                        dict(shape=shape, config=[bk, bh, nw], us=us, pct=100 * move / us / 1e3 / copy)
                    )
        grad = torch.randn(n_tokens, hidden, dtype=DTYPE, device=DEVICE)
        d_probs = torch.zeros(n_tokens, n_experts, device=DEVICE)
        d_perm = torch.empty_like(out)
        nbytes = (n_tokens + 2 * n_rows) * hidden * 2 + n_rows * 4 + n_tokens * n_experts * 4  # bench.py's model
        for bk in (1, 2, 4, 8) if "scatter_dot" in parts else ():
            for bh in (128, 256, 512, 1024, 2048, 4096):
                for nw in (4, 8, 16):
                    if bh > triton.next_power_of_2(hidden) or bk * bh > 16384:
                        continue

                    def run(bk=bk, bh=bh, nw=nw):
                        _scatter_dot_kernel[(n_tokens,)](
                            grad, grad.stride(0), out, out.stride(0), d_perm, p, p.stride(0), p.stride(1), d_probs,
                            view.token_ptr, view.entry, view.src_token, n_tokens, n_rows, hidden, n_experts,
                            PAD=False, PAD_ROWS=16, BLOCK_K=bk, BLOCK_H=bh,
                            BLOCK_E=triton.next_power_of_2(n_experts), num_warps=nw, PDL=0, **_rt.COMPILE_OPTIONS,
                        )  # fmt: skip

                    us = bench(run)
                    results.setdefault("scatter_dot", []).append(
                        dict(shape=shape, config=[bk, bh, nw], us=us, pct=100 * nbytes / us / 1e3 / copy)
                    )
        for kind in ("permute_pieces", "scatter", "scatter_dot"):
            rows = [r for r in results.get(kind, []) if r["shape"] == shape]
            top = sorted(rows, key=lambda r: r["us"])[:3] if kind != "permute_pieces" else rows
            print(shape, kind, [(r["config"], round(r["us"], 1), r["pct"] and round(r["pct"], 1)) for r in top])
        yield


#: (entries per step of the count/map tile, map kernel warps, most segments, scan tile); the first
#: is the shipped launch shape (routing._PLAN_TILE, 8 entries per thread). "Most segments" sets
#: routing._MAX_SEGMENTS, which routing's rule still doubles for long one-warp walks (session 7). Session 4 swept tiles
#: and warps, session 5 the segment count (results/sweep-*.json, "plan" and "plan_s5_segments");
#: this list looks at the scan tile (experts per scan program) and the segment count with it.
PLAN_CONFIGS = [
    (256, 1, 1024, 4096),
    *((256, 1, 1024, scan) for scan in (1024, 2048, 8192)),
    *((256, 1, segs, 4096) for segs in (256, 512, 2048)),
    (512, 2, 512, 4096),
    (512, 1, 1024, 4096),  # one warp, 16 and 32 entries per thread (2 and 4 tokens a step at E = 256)
    (1024, 1, 1024, 4096),
    (256, 1, 2048, 2048),
]


def sweep_plan(results, shapes):
    """The routing plan under every PLAN_CONFIGS entry: build_plan alone (count, scan, map, device
    check: "us") and the whole plan, a permute of zero-width rows (the scatter's programs that write
    src_token and the permuted probs, and its padding programs, too: "us_whole")."""
    from moe_utils import routing

    shipped = (routing._PLAN_TILE, routing._MAP_ENTRIES_PER_THREAD, routing._MAX_SEGMENTS, routing._SCAN_TILE)
    first = PLAN_CONFIGS[0]
    assert shipped == (first[0], first[0] // (32 * first[1]), *first[2:]), "PLAN_CONFIGS[0] is not the shipped shape"
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for n_tokens, n_experts, k in shapes:
        m = routing_map(n_tokens, n_experts, k, g)
        p = torch.rand(n_tokens, n_experts, device=DEVICE)
        n_rows = n_tokens * k
        x = torch.empty(n_tokens, 0, dtype=DTYPE, device=DEVICE)
        ref = moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True)
        for config in PLAN_CONFIGS:
            tile, warps, segs, scan = config  # warps of a full tile: entries per thread = tile / (32 * warps)
            per_thread = tile // (32 * warps)
            routing._PLAN_TILE, routing._MAP_ENTRIES_PER_THREAD, routing._MAX_SEGMENTS, routing._SCAN_TILE = (
                tile,
                per_thread,
                segs,
                scan,
            )
            try:
                _, probs, plan = moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True)
                assert torch.equal(plan, ref[2]) and torch.equal(probs, ref[1]), f"plan differs under {config}"
                us = bench(lambda: build_plan("sweep", m, p, n_rows, False))
                us_whole = bench(lambda: moe_utils.permute(x, m, p, num_out_tokens=n_rows, fused=True))
            finally:
                routing._PLAN_TILE, routing._MAP_ENTRIES_PER_THREAD, routing._MAX_SEGMENTS, routing._SCAN_TILE = shipped
            row = dict(shape=[n_tokens, n_experts, k], config=list(config), us=us, us_whole=us_whole)
            results.setdefault("plan", []).append(row)
        rows = [r for r in results["plan"] if r["shape"] == [n_tokens, n_experts, k]]
        top = sorted(rows, key=lambda r: r["us_whole"])[:4]
        best = [(r["config"], round(r["us"], 1), round(r["us_whole"], 1)) for r in rows[:1] + top]
        print((n_tokens, n_experts, k), "plan, whole plan (shipped, then best)", best)
        yield


def sweep_small_forward(results, copy, shapes):
    """Launch-bound forwards (4096 x 768 is the one shape behind the compiled reference): every
    launch shape down to 2 warps, with and without streaming loads of x. Inputs and outputs rotate
    through sets of at least 256 MB in all, so that L2 does not hold them (bench.py rotates at
    most 8 sets of x, g and d_x, so at 16384 x 768 one set: x is partly in L2 there); the time is
    per set."""
    for n_rows, h in shapes:
        sets = 1 if DRY else max(1, min(64, (256 << 20) // (n_rows * h * 6)))
        xs = [torch.randn(n_rows, 2 * h, dtype=DTYPE, device=DEVICE) for _ in range(sets)]
        ws = [torch.rand(n_rows, dtype=torch.float32, device=DEVICE) for _ in range(sets)]
        outs = [torch.empty(n_rows, h, dtype=DTYPE, device=DEVICE) for _ in range(sets)]
        inputs = list(zip(xs, ws, outs, strict=True))
        nbytes = n_rows * h * 6 + n_rows * 4
        configs = [(br, bh, nw) for br, bh, nw in act_configs(h)]
        configs += [(max(1, tile // bh), bh, 2) for tile in (512, 1024, 2048) for bh in (256, 512, 1024) if bh <= tile]
        for br, bh, nw in configs:
            for policy in ("", "evict_first"):
                launches = [forward_launch(x, w, out, out, (br, bh, nw), False, policy) for x, w, out in inputs]

                def run(launches=launches):
                    for launch in launches:
                        launch()

                us = bench(run) / sets
                results.setdefault("fwd_small", []).append(
                    dict(shape=[n_rows, h], config=[br, bh, nw, policy], us=us, pct=100 * nbytes / us / 1e3 / copy)
                )
        if not DRY:  # the reference as it ships (torch.compile), on the same rotating sets
            from baselines import activation_baselines

            ref = activation_baselines(True)["swiglu"][0]
            ws2 = [w[:, None] for w in ws]

            def run_ref():
                for x, w in zip(xs, ws2, strict=True):
                    ref(x, w, False)

            us = bench(run_ref) / sets
            results["fwd_small"].append(
                dict(shape=[n_rows, h], config="ref_compiled", us=us, pct=100 * nbytes / us / 1e3 / copy)
            )
            print(n_rows, h, f"fwd ref_compiled {us:.2f} us", flush=True)
        shipped = _rt.forward_config(n_rows, h)
        rows = [r for r in results["fwd_small"] if r["shape"] == [n_rows, h] and r["config"] != "ref_compiled"]
        mine = [r for r in rows if r["config"] == [shipped.block_r, shipped.block_h, shipped.num_warps]]
        top = sorted(rows, key=lambda r: r["us"])[:5]
        print(n_rows, h, "fwd (shipped, then best)", [(r["config"], round(r["us"], 2)) for r in mine + top])
        yield


def profile_permute(shapes) -> None:
    """Per-kernel GPU time of one fused permute (torch.profiler), to see where the plan's time goes."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device=DEVICE).manual_seed(0)
    for n_tokens, n_experts, k, hidden in shapes:
        m = routing_map(n_tokens, n_experts, k, g)
        p = torch.rand(n_tokens, n_experts, device=DEVICE)
        x = torch.randn(n_tokens, hidden, dtype=DTYPE, device=DEVICE)
        for _ in range(3):
            moe_utils.permute(x, m, p, num_out_tokens=n_tokens * k, fused=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                moe_utils.permute(x, m, p, num_out_tokens=n_tokens * k, fused=True)
            torch.cuda.synchronize()
        print((n_tokens, n_experts, k, hidden))
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument(
        "--only", nargs="*", choices=("act", "routing", "unweighted", "profile", "plan", "small", "wide", "blocks")
    )
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new shapes after this long")
    ap.add_argument("--shapes", nargs="*", type=dims, default=None, help="TxH shapes for wide, blocks and unweighted")
    ap.add_argument(
        "--route-shapes", nargs="*", type=dims, default=None, help="TxExKxH shapes of --only routing and profile"
    )
    ap.add_argument(
        "--route-parts", nargs="*", default=("pieces", "scatter", "scatter_dot"), help="of --only routing",
        choices=("pieces", "scatter", "scatter_dot"),
    )  # fmt: skip
    ap.add_argument("--parts", nargs="*", default=("fwd", "bwd"), choices=("fwd", "bwd"), help="of --only blocks")
    ap.add_argument(
        "--bwd-tiles", nargs="*", type=dims, default=None, help="ELEMENTSxWARPS backward tiles of --only blocks"
    )
    ap.add_argument(
        "--fwd-tiles", nargs="*", type=dims, default=None,
        help="ELEMENTSxWARPS[xSTREAM] forward tiles of --only blocks (STREAM 0/1: evict_first off/on)",
    )  # fmt: skip
    ap.add_argument("--acts", nargs="*", default=None, help="activations of --only blocks (sweep_blocks)")
    ap.add_argument("--shipped-block", action="store_true", help="--only blocks: forward_config's column block only")
    ap.add_argument("--interleaved", action="store_true", help="--only blocks: x in the interleaved layout")
    ap.add_argument("--no-dx", action="store_true", help="--only blocks: the backward without d_x (store_dx=False)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    copy = copy_gbs()
    card = "dry" if DRY else torch.cuda.get_device_name()
    results: dict = {"card": card, "copy_gbs": copy}
    print(card, f"copy {copy:.0f} GB/s", flush=True)
    groups = []
    routing = [(16384, 64, 8, 2048), (8192, 128, 8, 7168), (4096, 256, 8, 4096)]
    only = set(args.only or ("act", "routing", "unweighted"))
    shapes = args.shapes or None
    if "profile" in only:
        if args.route_shapes and not DRY:
            profiled = args.route_shapes
        else:
            profiled = [*routing, (65536, 256, 2, 2048), (16384, 256, 2, 2048), (4096, 8, 2, 2048)]
        profile_permute(profiled)
    plan_shapes = [(4096, 8, 2), (4096, 256, 2), (16384, 64, 8), (8192, 128, 8), (65536, 8, 8), (65536, 64, 2)]
    plan_shapes += [(65536, 256, 2), (16384, 1024, 8)]
    small = [(4096, 768), (16384, 768)]
    act = [([65536], [2880, 768, 1408, 2048, 7168]), ([16384, 4096], [768])]
    if DRY:
        routing, act = [(5, 4, 2, 96)], [([3], [48])]
        plan_shapes, small = [(5, 4, 2), (7, 300, 2)], [(3, 48)]
    if "plan" in only:
        groups.append(sweep_plan(results, plan_shapes))
    if "wide" in only:
        wide = [(3, 48)] if DRY else [(65536, 7168), (65536, 2880), (65536, 2048), (65536, 1408)]
        groups.append(sweep_wide_forward(results, copy, shapes or wide))
    if "blocks" in only:
        blocks = [(3, 48)] if DRY else [(65536, 1408), (65536, 768), (65536, 2880)]
        tiles = {k: v for k, v in (("bwd_tiles", args.bwd_tiles), ("fwd_tiles", args.fwd_tiles)) if v}
        acts = {"acts": tuple(args.acts)} if args.acts else {}
        acts["interleaved"] = args.interleaved
        acts["store_dx"] = not args.no_dx
        groups.append(sweep_blocks(results, copy, shapes or blocks, args.parts, args.shipped_block, **tiles, **acts))
    if "small" in only:
        groups.append(sweep_small_forward(results, copy, small))
    if "routing" in only:
        if args.route_shapes and not DRY:
            routing = args.route_shapes
        groups.append(sweep_routing(results, copy, routing, args.route_parts))
    if "unweighted" in only:
        unweighted = [(3, 48)] if DRY else [(65536, 7168), (65536, 2880), (65536, 2048), (16384, 768)]
        groups.append(sweep_unweighted_backward(results, copy, shapes or unweighted))
    if "act" in only:
        groups += [sweep_activations(results, copy, rows, widths) for rows, widths in act]
    for group in groups:
        for _ in group:
            (out / f"sweep-{card.replace(' ', '_')}.json").write_text(json.dumps(results, indent=1))
            if time.time() - start > args.budget_s:
                print("time budget spent; stopping")
                return
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    assert _rt.NATIVE_FP8 or DRY
    main()
