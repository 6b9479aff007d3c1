"""Host time per call of the eager ops (session 32): perf_counter over back-to-back calls, no sync
between them, against the GPU time of the same calls; cProfile of the worst."""
import cProfile, io, os, pstats, sys, time
import torch
import triton
from triton.testing import do_bench
import moe_utils
from moe_utils import permute, unpermute, weighted_bias_swiglu_impl

dev = "cuda"
torch.manual_seed(0)
def routing(T, E, K):
    logits = torch.randn(T, E, device=dev)
    top = logits.topk(K, -1).indices
    m = torch.zeros(T, E, device=dev, dtype=torch.bool).scatter(1, top, True)
    return m, torch.softmax(logits, -1) * m

cases = {}
T, H = 4096, 768
x = torch.randn(T, 2 * H, device=dev, dtype=torch.bfloat16); w = torch.rand(T, 1, device=dev)
xg = x.clone().requires_grad_(); wg = w.clone().requires_grad_(); go = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
cases["act fwd 4096x768"] = lambda: weighted_bias_swiglu_impl(x, w, False)
def act_fb(fp8):
    out = weighted_bias_swiglu_impl(xg, wg, fp8); torch.autograd.backward(out, go)
cases["act fwd+bwd 4096x768"] = lambda: act_fb(False)
cases["act fwd+bwd fp8 4096x768"] = lambda: act_fb(True)
def ref_fb():
    a, b = xg.float().chunk(2, -1); out = (torch.nn.functional.silu(a) * b * wg).to(xg.dtype); torch.autograd.backward(out, go)
cases["ref eager fwd+bwd 4096x768"] = ref_fb
for (Tt, E, K, Hd) in [(4096, 8, 2, 2048), (4096, 256, 2, 2048)]:
    tok = torch.randn(Tt, Hd, device=dev, dtype=torch.bfloat16); m, p = routing(Tt, E, K)
    rows, rp, plan = permute(tok, m, p, num_out_tokens=Tt * K, fused=True)
    tag = f"{Tt}x{E}x{K}x{Hd}"
    cases[f"permute fwd {tag}"] = (lambda tok=tok, m=m, p=p, Tt=Tt, K=K: permute(tok, m, p, num_out_tokens=Tt * K, fused=True))
    cases[f"unpermute fwd {tag}"] = (lambda rows=rows, plan=plan, tok=tok, p=p, m=m: unpermute(rows, plan, tok.shape, probs=p, routing_map=m, fused=True))
    tg = tok.clone().requires_grad_(); pg = p.clone().requires_grad_()
    def pu(tg=tg, pg=pg, m=m, Tt=Tt, K=K):
        r, rpp, pl = permute(tg, m, pg, num_out_tokens=Tt * K, fused=True)
        o = unpermute(r, pl, tg.shape, probs=pg, routing_map=m, fused=True); torch.autograd.backward(o, torch.ones_like(o))
    cases[f"permute+unpermute fwd+bwd {tag}"] = pu
cases["torch.add (one launch)"] = lambda: torch.add(x, 1)

print("PDL", os.environ.get("MOE_UTILS_PDL", "default"))
print(f"{'op':40s} {'host us/call':>12s} {'eager do_bench us':>18s}")
for name, fn in cases.items():
    for _ in range(10): fn()
    torch.cuda.synchronize()
    n = 200; t = time.perf_counter()
    for _ in range(n): fn()
    host = 1e6 * (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    eager = 1e3 * do_bench(fn, warmup=10, rep=50, return_mode="median")
    print(f"{name:40s} {host:12.1f} {eager:18.1f}", flush=True)
if len(sys.argv) > 1:
    for name in ("act fwd+bwd fp8 4096x768", "permute fwd 4096x256x2x2048"):
        pr = cProfile.Profile(); pr.enable()
        for _ in range(200): cases[name]()
        pr.disable(); torch.cuda.synchronize()
        s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30); print("==", name); print(s.getvalue()[:6000])
