"""One fused permute at one shape, for a profiler to attach to (Nsight Compute reads the hardware
counters of its kernels on the device tool's H100):

    ncu --clock-control none --kernel-name regex:"_map_kernel|_count_kernel" \\
        --section SpeedOfLight --section WarpStateStats python benchmarks/permute_once.py 65536 256 2 2048

Arguments: tokens, experts, top-k, hidden (the routing map of bench.py: k distinct experts per
token), and optionally a segment count to force (at most that many plan segments, whatever
the shape; by default routing's rule picks).
"""

from __future__ import annotations

import sys

import torch
from sweep import routing_map

import moe_utils
from moe_utils import routing


def main() -> None:
    n_tokens, n_experts, k, hidden = (int(a) for a in sys.argv[1:5])
    if len(sys.argv) > 5:
        routing._MAX_SEGMENTS, routing._LONG_SEGMENT = int(sys.argv[5]), 1 << 62
    g = torch.Generator(device="cuda").manual_seed(0)
    m = routing_map(n_tokens, n_experts, k, g)
    p = torch.rand(n_tokens, n_experts, device="cuda")
    x = torch.randn(n_tokens, hidden, dtype=torch.bfloat16, device="cuda")
    moe_utils.permute(x, m, p, num_out_tokens=n_tokens * k, fused=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
