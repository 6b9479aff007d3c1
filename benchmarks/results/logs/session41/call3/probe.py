# session 41 call 2: where the bias_sum time goes (kernel or the partials' sum), by torch.profiler
import torch
from moe_utils import _runtime as rt
import importlib
mod = importlib.import_module("moe_utils.generated.swiglu")
from torch.profiler import profile, ProfilerActivity

for n_rows, h, rpp in ((65536, 2880, 4), (65536, 2880, 32), (16384, 768, 4), (16384, 768, 32)):
    rt._BIAS_SUM_ROWS = ((0, rpp),)
    x = torch.randn(n_rows, 2 * h, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(n_rows, h, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(n_rows, device="cuda")
    b = torch.randn(2 * h, device="cuda", dtype=torch.bfloat16)
    for store_dx in (False, True):
        args = (g, x, b, w, None, False, x.dtype, store_dx, "zero", True)
        for _ in range(3):
            mod._launch_backward(*args)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                mod._launch_backward(*args)
            torch.cuda.synchronize()
        print(f"== {n_rows}x{h} rows/program {rpp} store_dx {store_dx}")
        for e in prof.key_averages():
            if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0:
                print(f"   {e.key[:80]:80s} {e.self_device_time_total / e.count:9.1f} us x{e.count}")
    # the sum alone, and with bf16 input like session 40's
    p = torch.randn((n_rows // rpp, 2 * h), device="cuda")
    out = torch.empty(2 * h, device="cuda")
    from triton.testing import do_bench
    print("   torch.sum(partials, 0, out=)", do_bench(lambda: torch.sum(p, 0, out=out), return_mode="median") * 1e3, "us")
    print("   partials.sum(0)", do_bench(lambda: p.sum(0), return_mode="median") * 1e3, "us")
    dx = torch.randn((n_rows, 2 * h), device="cuda", dtype=torch.bfloat16)
    print("   d_x.sum(0, fp32)", do_bench(lambda: dx.sum(0, dtype=torch.float32), return_mode="median") * 1e3, "us")
