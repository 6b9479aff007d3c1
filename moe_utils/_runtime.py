"""Hand-written glue shared by every generated activation module.

The generated modules (``moe_utils.generated.<name>``) hold the math: Triton kernels, the eager
twin, launchers and the public API. This module holds what is the same for all of them: backend
choice, block-size heuristics, argument checks, flattening to rows, and the autograd plumbing
(``torch.autograd.Function`` bodies and ``torch.library`` registrations).
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import forward_ad

from ._kernel_lib import (
    HAS_PDL,
    column_sums,
    interpreter_patches_once_a_launch,
    interpreter_reads_masks_as_bool,
    to_fp8_saturated,
    triton_version,
)

try:  # numpy numbers as activation constants (traced_constant); numpy itself is not required
    import numpy as _np
except ImportError:  # pragma: no cover - without numpy no constant is a numpy number
    _np = None

try:
    from torch.fx.experimental.symbolic_shapes import guard_or_false
except ImportError:  # torch < 2.8: data-dependent sizes fail to trace, as they did before

    def guard_or_false(cond: Any) -> bool:
        return bool(cond)


__all__ = [
    "INTERPRET",
    "NATIVE_FP8",
    "ActivationImpl",
    "BlockConfig",
    "Rows",
    "backward_config",
    "compute_dtype",
    "eager_inputs",
    "forward_config",
    "heavy_backward",
    "pdl_args",
    "use_triton",
]

#: Triton runs kernels in its CPU interpreter (set before triton is imported).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERPRET:  # Triton 3.9's interpreter refuses the integer masks that 3.6-3.8's took
    interpreter_reads_masks_as_bool()
    interpreter_patches_once_a_launch()  # a third of its time in the routing kernels' walks
#: Hardware fp8 conversions are available (everywhere but the interpreter).
NATIVE_FP8 = not INTERPRET
#: Compile options that every launch of ours passes beside its warps. The kernels were tuned, timed
#: and tested with floating-point contraction (a * b + c compiled as one FMA), Triton's default up to
#: 3.9. Triton 3.9 warns at the first compile that leaves it unset ("TRITON_DEFAULT_FP_FUSION is
#: unset", a UserWarning in the user's log) and turns it off by default from 3.10. Asked for, the
#: kernels compile as they were measured on every version, whatever TRITON_DEFAULT_FP_FUSION says
#: (TRITON_FORCE_DISABLE_FP_FUSION=1 still turns it off). On Triton 3.6 it is the default: the same
#: code. The interpreter ignores it.
COMPILE_OPTIONS: dict[str, Any] = {"enable_fp_fusion": True}

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Test hooks (see tests/conftest.py): fill every output with garbage before a kernel writes it, and
# force the eager path in-process.
_POISON = False
_FORCE_EAGER = False


@contextlib.contextmanager
def poisoned_outputs(enabled: bool = True) -> Iterator[None]:
    """Allocate outputs filled with NaN (floats) or -7 (integers) so unwritten elements show."""
    global _POISON
    previous, _POISON = _POISON, enabled
    try:
        yield
    finally:
        _POISON = previous


@contextlib.contextmanager
def eager_backend() -> Iterator[None]:
    """Run the generated eager path even where the Triton kernels would run."""
    global _FORCE_EAGER
    previous, _FORCE_EAGER = _FORCE_EAGER, True
    try:
        yield
    finally:
        _FORCE_EAGER = previous


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, poisoned under poisoned_outputs()."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if _POISON and out.numel():
        if dtype.is_floating_point and dtype.itemsize > 1:
            out.fill_(float("nan"))
        else:
            out.view(torch.uint8).fill_(0xF9)
    return out


def on_input_device(launcher: Callable[..., Any]) -> Callable[..., Any]:
    """Run a launcher with its first argument's CUDA device as the current device.

    Triton launches on the current device and its current stream, not on the device of its
    arguments. Tensors on cuda:1 while cuda:0 is current would otherwise be read from cuda:0: an
    error where peer access is off ("cannot be accessed from Triton"), and where it is on, a
    kernel on the wrong device and stream, racing the work queued on the tensors' own stream.
    Every launcher (eager, and the body of each torch.library op) is wrapped; where the device is
    already current (the common case) the cost is one device query.
    """

    @functools.wraps(launcher)
    def run(first: torch.Tensor, *args: Any) -> Any:
        device = first.device
        if device.type != "cuda" or device.index == torch.cuda.current_device():
            return launcher(first, *args)
        with torch.cuda.device(device.index):
            return launcher(first, *args)

    return run


def triton_device(t: torch.Tensor) -> bool:
    """Triton kernels can run on this tensor's device (CUDA, or the CPU under the interpreter)."""
    return t.device.type == "cuda" or (INTERPRET and t.device.type == "cpu")


def use_triton(t: torch.Tensor) -> bool:
    """Run the Triton kernels for this tensor (else the eager path generated from the same spec).

    CUDA tensors take Triton; CPU tensors take it only under ``TRITON_INTERPRET=1``. float64 always
    takes the eager path: the kernels compute in fp32, and float64 is for gradcheck, not speed.
    """
    if t.dtype == torch.float64 or _FORCE_EAGER:
        return False
    if t.device.type == "cuda":
        return True
    return INTERPRET and t.device.type == "cpu"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 arithmetic for 16- and 32-bit storage, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- programmatic dependent launch -----------------------------------------------------------

#: Launch the routing kernels with programmatic dependent launch where the GPU has it (sm_90 and
#: later) and Triton does (3.4 and later); never under the interpreter. MOE_UTILS_PDL=0 in the
#: environment turns it off.
PDL = os.environ.get("MOE_UTILS_PDL", "1") != "0"

#: Routing kernels (by the name their launcher passes to pdl_args) that let the next grid launch
#: as soon as they start; the others let it launch as their programs exit. H200, permute's forward
#: (experiments.py --only pdl, session 13): every kernel waiting against PDL off 26.0 -> 23.9 µs
#: at 4096 x 256 x 2 x 2048, 51.7 -> 49.8 at 4096 x 64 x 8, the other ops level to 0.5 µs faster;
#: the plan's three kernels triggering 4-9% slower than that at 256 experts (16384 x 256 x 2: 83.6
#: against 76.9 µs), every kernel triggering up to 3% slower at the large shapes.
#: - map: permute's scatter launches at the map kernel's start and loads its source rows while the
#:   map kernel runs (PDL_EARLY_SOURCE). --only early, session 16, two runs: 4096 x 8 x 2 x 2048
#:   18.1 -> 16.4 µs, 4096 x 256 x 2 23.4 -> 21.5, 16384 x 64 x 2 65.1 -> 62.2, 16384 x 256 x 2
#:   70.9 -> 69.6, the large shapes level (65536 x 256 x 2 254.4 -> 253.4); the map trigger alone
#:   (without the early source) gained 0-0.9 µs.
#: - count: the scan's few programs wait on the SMs while the count runs. --only early, session 17
#:   call 3, two runs, against the map trigger with the early source and the scan rule below:
#:   4096 x 256 x 2 x 2048 21.6 -> 21.1 µs, 16384 x 64 x 2 62.3 -> 61.7 / 62.8 -> 62.1, 16384 x
#:   256 x 2 68.9 -> 68.3, 65536 x 256 x 2 253.7 -> 252.5 / 254.3 -> 253.1, 8192 x 128 x 8 x 7168
#:   301.6 -> 300.0, level to 0.5% faster elsewhere but one run at 65536 x 64 x 2 (+0.4%).
#: - scan: only by shape (PDL_SCAN_TRIGGER_UP_TO).
#: Benchmarks change this table.
PDL_TRIGGER = {"count": True, "scan": False, "map": True, "scatter": False, "gather": False, "scatter_dot": False}
#: permute's scatter loads its source rows before it waits for the map kernel: they are the op's
#: input, complete before the plan's first kernel passed its own wait (each plan kernel waits for
#: the one before, and the map kernel triggers only after its wait), so the copies' reads overlap
#: the end of the plan's walk. Only permute's scatter: elsewhere the source may come from the
#: kernel just before.
PDL_EARLY_SOURCE = True
#: The plan's scan kernel also lets the map kernel launch at its start where the routing map is
#: at most this many (tokens, experts): there the map kernel's programs waiting on the SMs cost
#: the scan little. H200 (experiments.py --only early, session 16 run 4, session 17 calls 1-2),
#: permute fwd with the map trigger and the early source, then with the plan's three kernels
#: triggering: 4096 x 64 x 2 x 2048 20.3 -> 19.7 / 20.3 -> 19.5 µs, 4096 x 128 x 2 21.0 -> 20.4 /
#: 21.5 -> 20.9, 4096 x 8 x 8 46.1 -> 45.2 / 46.3 -> 45.3, 4096 x 8 x 2 x 4096 32.9 -> 31.9, 4096
#: x 64 x 2 x 7168 54.1 -> 53.1; 4096 x 8 x 2 x 2048 -0.3 µs in two runs of the forms, +0.4 to
#: +0.6 in four others, -1.1 (18.1 -> 17.0) against session 16's package (--only ops). At 256
#: experts mixed at 4096 tokens (k = 2: 22.0 -> 22.4) and 1.3-3% slower from 16384 tokens
#: (16384 x 256 x 2 69.6 -> 71.6, 65536 x 256 x 2 253.4 -> 257.7), the scan's trigger the cause
#: (the count's alone is faster there).
PDL_SCAN_TRIGGER_UP_TO = (4096, 128)


def scan_triggers(n_tokens: int, n_experts: int) -> bool:
    """Whether the plan's scan kernel lets the map kernel launch at its start (PDL_SCAN_TRIGGER_UP_TO)."""
    most_tokens, most_experts = PDL_SCAN_TRIGGER_UP_TO
    return n_tokens <= most_tokens and n_experts <= most_experts


@functools.lru_cache(maxsize=16)
def _sm90_or_later(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_args(device: torch.device, kernel: str, trigger: bool = False) -> dict[str, Any]:
    """Keyword arguments of a routing kernel's launch: its ``PDL`` constexpr (``_kernel_lib.pdl_start``)
    and, where it is on, Triton's ``launch_pdl``. The kernel waits for the grid before it before
    it reads anything, so its inputs may come from any kernel, ours or not. It lets the next grid
    launch at its start where PDL_TRIGGER says so or ``trigger`` is true."""
    if not PDL or not HAS_PDL or INTERPRET or device.type != "cuda":
        return {"PDL": 0}
    if not _sm90_or_later(device.index if device.index is not None else torch.cuda.current_device()):
        return {"PDL": 0}
    return {"PDL": 2 if PDL_TRIGGER[kernel] or trigger else 1, "launch_pdl": True}


# -- block sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockConfig:
    """Launch shape of one kernel."""

    block_r: int  # rows per program
    block_h: int  # columns of each half per program (or per loop step in the backward)
    num_warps: int  # warps per program
    evict_first: bool = False  # forward: stream the input past L2 (eviction_policy="evict_first")


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for host-side block sizes."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def cdiv(a: int, b: int) -> int:
    """ceil(a / b), for host-side grid sizes.

    Not triton.cdiv or triton.next_power_of_2: since Triton 3.5 they are constexpr_functions, whose
    call from host code unwraps its arguments as constexprs, 4 us a call (permute's forward made
    14 such calls, up to a fifth of its host time; session 32)."""
    return -(-a // b)


# Launch shapes come from benchmarks/sweep.py on an H100 and an H200 (bf16, T = 65536 and 16384, H
# in 768, 1408, 2048, 2880, 7168; results in benchmarks/results/sweep-*.json).


def least_padding_block(h: int, narrowest: int, widest: int, widest_on_tie: bool = True) -> int:
    """The column block in narrowest .. widest (powers of two) that pads h the least, the widest of
    those on a tie (or the narrowest): masked lanes still issue their arithmetic. 1408 -> 128 (11
    blocks, none masked), 768 -> 256, 2880 -> 128 (2944 columns), 7168 -> 1024."""
    widest = min(widest, next_pow2(h))
    blocks = [1 << b for b in range(min(narrowest, widest).bit_length() - 1, widest.bit_length())]
    return min(blocks, key=lambda b: (-(-h // b) * b, -b if widest_on_tie else b))


@functools.lru_cache(maxsize=1024)
def forward_config(n_rows: int, h: int, heavy: bool = False, fp8: bool = False) -> BlockConfig:
    """Elementwise forward: the column block (128 to 1024 columns per half) that pads a row the
    least (the widest of those on a tie), in tiles of 1024 elements with 4 warps (2 warps where the
    math is ``heavy``, the generated ``_HEAVY_FORWARD`` (erf), the forward does not store the
    ``fp8`` copy and the loads do not stream), on a grid in memory order (the generated
    _launch_forward); launch-bound problems take 256-column blocks of 16 rows with 8 warps.

    Below 2**24 outputs x is loaded with eviction_policy="evict_first" (streaming). That pays off
    where x is partly in L2 when the forward starts, as it is in bench.py (one input set per
    shape at these sizes) and in a training step, where the expert GEMM has just written it:
    H200 bench.py (session 10), without the streaming loads 7-15% slower at 4096 x 768-2880 and
    16384 x 768 (SwiGLU 16384 x 768 18.5 -> 21.2 µs); H100 experiments.py 26.3 -> 24.1 µs with
    them, but 3% slower at 65536 rows. With x rotated out of L2 (sweep.py --only small) they cost
    2.8-4.6% (H200 16384 x 768 20.92 vs 20.01 µs; H100 29.32 vs 28.51). The launch-bound path
    (below 2**22 outputs, e.g. 4096 x 768) does not stream: there both ran at 5.9 µs in bench.py's
    conditions (session 11)."""
    if n_rows * h < _SMALL_BELOW:
        # 4096 x 768 (sweep.py --only small, H100): 16 x 256 tiles 4.80 µs, whole rows 5.44 µs.
        block_h = min(next_pow2(h), 256)
        return BlockConfig(min(4096 // block_h, next_pow2(n_rows)), block_h, 8)
    # Column blocks. H200, 65536 rows, 4096-element tiles then (sweep.py --only blocks, session 9),
    # against the 1024-column blocks of session 8 (which the H100 ran best or within 1% at H =
    # 1408-7168 in sweep.py --only wide): H = 1408 in 128 columns 128 vs 143 µs (SwiGLU), 135 vs
    # 167 (Quick-GEGLU), fp8 store 178 vs 202 / 198 vs 238; 768 in 256 columns 71 vs 78; 2880 in
    # 128 columns within 1% of the best block at each activation. H = 768: the sweep (session 10)
    # had 128 columns 71.4 / 71.7 µs (SwiGLU / GEGLU) against 72.4 / 76.1 in 256, but
    # experiments.py --only ops (session 11) timed both at 71.0 / 71.7 µs, and the fp8 store
    # 1.5-1.7% slower in 128 columns: 768 stays at 256 (the widest on a tie).
    # Tiles of 1024 elements with 4 warps. H200 sweep.py --only blocks --fwd-tiles (session 12),
    # against session 11's 4096 elements with 8 warps: with 128- and 256-column blocks (768, 1408,
    # 2880) faster at 56 of 58 (activation, fp8, shape) pairs from 4096 to 65536 rows, by up to 9%,
    # the other two within 0.9% (SwiGLU 16384 x 2880 68.5 -> 66.6 µs, level with Inductor's 66.4;
    # 65536 x 2880 263.6 -> 259.1; 16384 x 768 18.8 -> 17.9; Quick-GEGLU fp8 store 65536 x 2880
    # 390 -> 370); with 1024-column blocks (2048, 7168) within 1% either way, the GEGLU fp8 store
    # at 7168 1.6-3.5% faster.
    # Heavy math (exact GEGLU's erf) keeps the SMs' issue slots nearly as busy as memory, so each
    # warp wants more independent work: 16 elements a thread, in 1024-element tiles of 2 warps,
    # where the loads do not stream and the forward stores no fp8 copy. H200, sweep.py --only
    # blocks --parts fwd --acts exact_geglu (session 28, three runs at 65536 rows, two at 7168 and
    # 16384 x 2880), with _kernel_lib.erf (38.5 SASS instructions an element against tl.erf's 46):
    # against the 2048-element tiles in 4 warps shipped since session 19 (with tl.erf, 48 against
    # SwiGLU's 29: 65536 x 2048 239.5 -> 222.3 us then), 65536 x 2048 204.7 / 204.8 / 207.0 ->
    # 192.5 / 192.3 / 205.5 us, 2880 356.6 / 371.3 / 308.9 -> 301.4 / 303.6 / 303.2, 1408 and 7168
    # level, 16384 x 2880 76.4 / 78.6 -> 79.5 / 79.9. Streamed (16384 x 768), 4 warps: 21.0 ->
    # 20.6 / 20.7 (2 warps 20.7-20.8). With the fp8 store (one more stream of stores, and the e4m3
    # conversion) the light tile, 1024 elements in 4 warps, against the 2 warps shipped since
    # session 20: 65536 x 2048 268.6 / 268.2 / 272.1 -> 263.6 / 261.4 / 263.4, 2880 401.5 / 401.5 /
    # 426.4 -> 390.9 / 390.6 / 421.8, 1408 193.3 / 193.9 / 194.7 -> 188.7 / 185.0 / 196.6, 16384 x
    # 2880 107.3 / 105.0 -> 101.0 / 101.3, 7168 1045.3 / 981.7 -> 1030.8 / 952.1.
    block_h = least_padding_block(h, 128, 1024)
    stream = n_rows * h < _STREAM_BELOW
    warps = 2 if heavy and not fp8 and not stream else 4
    block_r = min(max(1, 1024 // block_h), next_pow2(n_rows))
    return BlockConfig(block_r, block_h, warps, evict_first=stream)


#: Forward inputs with fewer outputs than this are loaded with eviction_policy="evict_first".
_STREAM_BELOW = 1 << 24
#: Forwards with fewer outputs than this are launch-bound: narrower blocks, more programs.
_SMALL_BELOW = 1 << 22


#: Whether the backward from the fp8 copy runs 2 warps on 1024-column steps, as the light one
#: (backward_config: not ``heavy``) does on 512-column ones; not with the clamp, and since session
#: 51 with heavy math too (backward_config's comment has those figures). Triton 3.8 and 3.9 compile
#: the light backward's 4-warp loop with 44-46 registers where 3.6 takes 38-40 (ten 4-warp programs
#: an SM, not twelve; the same instructions, load widths and stores). H200, ab.py, two processes
#: each (session 48 calls 1-2), 2 warps against 4: under 3.9 SwiGLU 16384 x 2048 -4.0%, 16384 x
#: 2880 -3.9%, 65536 x 2048 -5.4%, 65536 x 2880 -3.3%, Quick-GEGLU without its clamp -3.6 to -4.9%
#: (65536 x 2880 406.4 -> 390.5 µs), 16384 x 7168 level (-0.4% both); under 3.6 SwiGLU -2.0 to
#: +0.9% but Quick-GEGLU +2.5 to +3.2% at four of the five shapes (session 18 had +1.1 / +2.9% at
#: 2048), so 3.6 keeps 4 warps. 3.8 is not timed: its SASS is 3.9's (the same counts and
#: registers).
FP8_WIDE_STEPS_IN_TWO_WARPS = triton_version() >= (3, 8)

#: Backward math of more operations than this (the generated ``_BACKWARD_OPS``: SwiGLU 12,
#: Quick-GEGLU 14, exact GEGLU 21, clamped SwiGLU 24, GEGLU 30) counts as heavy with the fp8 copy.
_LIGHT_BACKWARD_OPS = 16
#: The interleaved layout's weighted backward takes its own tiles (backward_config) for math of at
#: least this many operations: SwiGLU's (12); ReGLU (9) and squared ReGLU (11) keep the split's.
_INTERLEAVED_MATH_OPS = 12


def heavy_backward(clamp_value: float | None, fp8: bool, backward_ops: int) -> bool:
    """Whether a weighted backward has arithmetic the H200 does not hide behind memory: the clamp,
    or the fp8 decode on top of math of more than _LIGHT_BACKWARD_OPS operations (the GEGLUs,
    clamped SwiGLU; backward_config's tie rule)."""
    return clamp_value is not None or (fp8 and backward_ops > _LIGHT_BACKWARD_OPS)


@functools.lru_cache(maxsize=1024)
def backward_config(
    n_rows: int,
    h: int,
    weighted: bool,
    heavy: bool = False,
    fp8: bool = False,
    interleaved: bool = False,
    clamp: bool = False,
    backward_ops: int = 0,
    store_dx: bool = True,
) -> BlockConfig:
    """Backward: each program owns whole rows (the weight gradient is a row sum, kept in fp32
    registers, so the result is deterministic) and walks them in column steps.

    With weights: steps of 256 to 1024 columns (the least padding) in tiles of about 1024 elements,
    4 warps. Below 4096 columns, ``heavy`` (``heavy_backward``: the clamp, or the fp8 decode with
    math of more than _LIGHT_BACKWARD_OPS operations) takes the narrowest of the steps that pad
    the least (above 2048 columns only from 32768 rows); the others, and every row from 4096
    columns, the widest. A backward that reads the fp8 copy (``fp8``) and is not heavy (no clamp,
    light math: ReGLU, squared ReGLU, SwiGLU, Quick-GEGLU) runs 2 warps on steps of 512 columns;
    where Triton is 3.8 or later (FP8_WIDE_STEPS_IN_TWO_WARPS) every backward from the fp8 copy
    without the ``clamp`` runs 2 warps on steps of 1024 columns, heavy math too.
    In the ``interleaved`` layout, without the fp8 copy, with math of at least SwiGLU's
    ``backward_ops`` (from 4096 columns: a ``clamp`` or math of more than _LIGHT_BACKWARD_OPS
    operations): 2 warps, on steps of 256-512 columns past 1024 columns, and at 256-column steps
    unless ``clamp``ed; with the fp8 copy, 512-element tiles of 2 warps at 256-column steps where
    the math is light, and on 256-512-column steps from 4096 columns where it is ``heavy``.

    Without ``store_dx`` (d_weights alone: only the routing weights require grad), [8, 128] tiles
    of 4 warps where 128-column steps pad a row less than the above up to 2048 columns (1408), and
    from the fp8 copy at 32768 rows or more at every width (_narrow_steps_pay).

    Without weights: whole rows of up to 8192 columns per step, 4 to 16 warps. H100: the wide steps made
    the unweighted backward 2.4% (H = 2048) to 5% (2880) faster at 4096 columns (session 3), but
    the weighted one up to 30% slower (1604 -> 1866 µs at 65536 x 7168; Quick-GEGLU and the fp8
    copy worst). Session 8 (sweep.py --only unweighted, 65536 rows): 8192-element tiles with 16
    warps took H = 7168 from 1580 to 1544 µs (Liger-Kernel: 1554), 2880 629 -> 624, 2048 448 -> 442.
    """
    if weighted:
        # H200, 65536 rows (sweep.py --only blocks, session 10), against session 9's 2048-element
        # tiles: Quick-GEGLU with clamp (heavy) at H = 1408 in [4, 256] 224 vs 296 µs, fp8 copy
        # 209 vs 242; 2880 479 vs 515, fp8 431 vs 513; SwiGLU (not heavy) 1408 in [2, 512] 217 vs
        # 238, 2880 in [1, 1024] 449 vs 453; 768 in [4, 256] 4-18% faster at every activation. The
        # 2048-element tiles held 96-109 registers per thread in Quick-GEGLU (16 warps per SM), the
        # 1024-element ones 48-54 (benchmarks/sass_loop.py). On a tie ([4, 256] against [2, 512]
        # or [1, 1024]), with the clamp or the fp8 copy, the narrow step was faster in 10 of 12
        # (activation, width) pairs at H = 1408-2880 (GEGLU fp8 1408 196 vs 212, 2048 268 vs 282;
        # Quick-GEGLU 2880 479 vs 499, fp8 2048 278 vs 297; slower: SwiGLU fp8 2048 269 vs 262, 2880
        # 400 vs 382), but slower in 3 of 4 at 7168 (SwiGLU fp8 944 vs 910, GEGLU fp8 990 vs 958);
        # without either, the wide step was 1-6% faster everywhere (SwiGLU 2880 449 vs 474, 7168
        # 1109 vs 1150; GEGLU 2048 316 vs 331). The two SwiGLU losses are why the fp8 copy alone
        # makes only math heavier than SwiGLU's heavy (heavy_backward; session 11).
        # Session 11 (sweep.py --only blocks --parts bwd, 16384 rows): there the narrow step loses
        # where a row takes more than 8 of them: at 2880, [1, 1024] against [4, 256] Quick-GEGLU
        # 119.6 vs 126.7 µs, GEGLU fp8 104.2 vs 109.6, Quick-GEGLU fp8 109.2 vs 110.0 (at 32768
        # rows level or the narrow step ahead, 218.9 vs 226.4 with fp8); at 2048 and 1408 it still
        # wins or ties (Quick-GEGLU fp8 2048 72.5 vs 76.0, 1408 54.3 vs 58.5 in [2, 512]). Fewer
        # programs (4096 of 4 rows) each walking 12 steps leave the last wave's tail long.
        narrow = heavy and h < 4096 and (h <= 2048 or n_rows >= 32768)
        block_h, tile = least_padding_block(h, 256, 1024, widest_on_tie=not narrow), 1024
    else:
        # H200, 65536 rows (sweep.py --only unweighted, session 9): one whole row per step (two below
        # 1024 columns), 4 warps up to 2048 columns, one per 512 columns beyond. Against the 8192-
        # element tiles with 16 warps: H = 768 118 vs 131 µs, 1408 214 vs 245, 2880 439 vs 496, 2048
        # 315 vs 316; 7168 unchanged ([1, 8192, 16], the H100's best in session 8: 1544 µs).
        block_h, tile = min(next_pow2(h), 8192), 2048
    block_r = min(max(1, tile // block_h), next_pow2(n_rows))
    warps = 4 if weighted else min(16, max(4, block_h // 512))
    wide_in_two = block_h == 1024 and FP8_WIDE_STEPS_IN_TWO_WARPS and not clamp
    if weighted and fp8 and ((block_h == 512 and not heavy) or wide_in_two):
        # H200 (sweep.py --only blocks --parts bwd, session 18, 65536 rows; two runs at 1408):
        # SwiGLU with the fp8 copy in 2 warps, against 4, at 1408 [2, 512] 191.4 -> 181.2 µs and
        # 190.1 -> 180.8 (16384 rows 50.2 -> 48.2), but 768 [4, 256] +4.7%. Without the fp8 copy
        # 2 warps were 1.1-3.4% slower at every width, and with GEGLU's math or Quick-GEGLU's clamp
        # 3-27% slower. Quick-GEGLU with the fp8 copy and no clamp (experiments.py --only ops,
        # session 19 call 1, two runs per package): 1408 200.0 / 200.2 -> 184.4 / 184.4 µs, 16384
        # x 1408 52.0 / 52.2 -> 48.9 / 49.0, 262144 x 1408 -4%. On 1024-column steps 2 warps gain
        # nothing: SwiGLU 2048 / 2880 -0.8% / -0.3% (sweep; level in session 18 call 8's package
        # A/B), Quick-GEGLU 2048 +1.1% (sweep) and +1.1% / +2.9% (A/B), 16384 x 7168 level: so
        # 1024-column steps take 2 warps only where Triton is 3.8 or later (session 48, there).
        # There heavy math without the clamp (GEGLU, exact GEGLU, clamped SwiGLU, whose limit is
        # in its math, not clamp_value) takes them too. H200, Triton 3.9, ab.py, two processes
        # each, 2 warps against 4 at 16384 x 2880 / 16384 x 7168 / 65536 x 7168 (session 51 calls
        # 4 and 6): GEGLU -7.3 / -6.7 / -5.2%, exact GEGLU -1.8 / -8.8 / -4.5%, clamped SwiGLU -2.7
        # / -7.4 / -5.1%, the interleaved layout at 16384 x 2880 GEGLU -5.6%, exact GEGLU -6.6%;
        # but the clamp +2.6 / +4.5 / +3.2% (Quick-GEGLU with its clamp, call 2).
        warps = 2
    heavier = clamp or backward_ops > _LIGHT_BACKWARD_OPS  # than SwiGLU and Quick-GEGLU unclamped
    if weighted and interleaved and not fp8 and backward_ops >= _INTERLEAVED_MATH_OPS and (h < 4096 or heavier):
        # The interleaved layout, bf16 x, math of SwiGLU's operations or more (from 4096 columns:
        # the clamp, or math of more than _LIGHT_BACKWARD_OPS): 2 warps, on steps of 256 or 512
        # columns past 1024 (the fewer padded columns; 512 on a tie), and at 256-column steps
        # unless clamped. H200, sweep.py --only blocks --parts bwd --interleaved (session 29
        # calls 1-2), against the split layout's config: 16384 x 768 SwiGLU [4, 256] 36.2 -> 33.3
        # µs (the split layout: 32.5), GEGLU 36.6 -> 33.5, exact GEGLU 37.5 -> 35.2 (65536 x 768
        # 157.7 -> 130.9); Quick-GEGLU with its clamp in [2, 512] at 1408 70.8 -> 61.1, 16384 x
        # 2880 135.7 -> 123.4, 65536 x 2048 373.3 -> 327.6; GEGLU 2880 127.6 -> 121.7, 2048 345.4
        # -> 321.2; SwiGLU level there (2048 323.0 -> 321.7). Slower, so left as they were: the
        # clamp at 256-column steps (Quick-GEGLU 768 37.9 -> 41.6), ReGLU's lighter math (768
        # 32.5 -> 33.7), [1, 1024] in 2 warps with GEGLU's math (2880 131.5), and the fp8 copy
        # (its own rules, above and below). From 4096 columns (session 30: the sweep at 16384 and
        # 65536 x 4096 and 7168, then experiments.py --only ops against e579835, three processes
        # each) [2, 512] in 2 warps against the split's [1, 1024] in 4: Quick-GEGLU with its clamp
        # -4.8 to -7.0% (65536 x 4096 700 -> 652 µs), GEGLU -0.4 to -4.2% (675 -> 647), exact GEGLU
        # level (-1.9 to +1.7%); SwiGLU 1.6-2.5% slower in the sweep and Quick-GEGLU without the
        # clamp -0.3 to +2.0% (call 4), so those two keep the split's. At 256-column steps the clamp
        # keeps 4 warps at any width: Quick-GEGLU [4, 256] in 2 warps 4-7% slower than in 4 there.
        # Why is not settled: in sm_90 SASS the 2-warp loops still sum d_weight's row across warps
        # through shared memory ([4, 256]: 5 LDS, 5 STS, 3 BAR a step against 3, 3, 3 in 4 warps;
        # [2, 512]: 3, 3, 3 either way), and [8, 128] x 4, whose rows stay in one warp (none), was
        # slower (36.4 µs); each thread holds twice the elements and each barrier waits for 2
        # warps, not 4.
        if h > 1024:
            block_h = least_padding_block(h, 256, 512)
            block_r = min(1024 // block_h, next_pow2(n_rows))
        if (block_h == 512 and h > 1024) or (block_h == 256 and not clamp):
            warps = 2
    if weighted and interleaved and fp8 and not heavy and block_h == 256:
        # The interleaved layout with the fp8 copy and light math (not ``heavy``): 512-element
        # tiles of 2 warps at 256-column steps. H200, sweep.py (session 29 call 1: SwiGLU 16384 x
        # 768 [4, 256, 4] 29.3 µs, [4, 256, 2] 34.4, [2, 256, 2] 27.5; the split layout 27.6
        # either way), then experiments.py --only ops against c23e2d0, three processes each (call
        # 5): SwiGLU 16384 x 768 28.9-29.0 -> 27.3, 65536 x 768 104.1-110.9 -> 99.3-100.3, 4096 x
        # 768 7.2 -> 6.7-6.8; Quick-GEGLU without the clamp the same; ReGLU and squared ReGLU level
        # (27.1-27.2 at 16384 x 768), 4096 x 768 5.4-5.6 -> 5.2-5.4.
        block_r, warps = min(2, next_pow2(n_rows)), 2
    if weighted and interleaved and fp8 and heavy and h >= 4096:
        # The interleaved layout with the fp8 copy and heavy math (the clamp, or more than
        # _LIGHT_BACKWARD_OPS operations) from 4096 columns: 512-element tiles of 2 warps, on steps
        # of 256 or 512 columns (the fewer padded). H200, session 30: experiments.py --only ops
        # against 790c608 (calls 4-5, three processes each) at 16384 / 65536 x 4096 / 7168 against
        # the split's [1, 1024] in 4 warps: GEGLU -2.7 to +1.1%, Quick-GEGLU with its clamp -0.2 to
        # -2.7%, exact GEGLU -2.1 to +0.3%; at 65536 x 4352 (256-column steps, against [4, 256] in
        # 4 warps) GEGLU -6.0%, Quick-GEGLU -4.6%, exact GEGLU -1.3%.
        block_h = least_padding_block(h, 256, 512)
        block_r, warps = min(512 // block_h, next_pow2(n_rows)), 2
    if weighted and not store_dx and _narrow_steps_pay(n_rows, h, block_h, fp8):
        # d_weights alone (store_dx=False: only the routing weights require grad) where 128-column
        # steps pad a row less than the steps above: [8, 128] tiles of 4 warps, whose step sums
        # each row inside one warp (no shared memory in sm_90 SASS). H200, experiments.py --only
        # wonly, SwiGLU and Quick-GEGLU with its clamp, both layouts. Session 36 call 5 (these tiles
        # everywhere against the store's, two processes): where neither pads, 2-5% slower from
        # bf16 input (SwiGLU 16384 x 2048 +4.7 / +4.3%, 65536 x 7168 +3.7 / +2.7%), level or ahead
        # from the fp8 copy; at 2880 from bf16 (128 of 3072 columns saved) -4.6 to +4.2%, level on
        # the whole. Session 37 call 2 (this rule without the row bound against the store's tiles,
        # ab.py, three processes each; the unchanged d_x + d_w forms moved -1.5 to +0.6%): at 1408
        # from bf16 SwiGLU -8.0 to -10.8% split, -1.8 to +0.3% interleaved, Quick-GEGLU -3.0 to
        # -5.3%; from the fp8 copy -3.2 to -10.8% but SwiGLU interleaved at 16384 rows +3.0%; at
        # 2880 from the fp8 copy at 65536 rows -3.5 to -7.0%, at 16384 rows -0.2 to +8.5% (2048
        # programs walking 23 steps: the last wave's tail, as for the heavy narrow steps above).
        # Session 38 call 1 (from the fp8 copy at 32768 rows or more, any width, against the rule
        # before it, ab.py, three processes each; the unchanged forms moved -4.4 to +2.8%, most
        # within 1%): SwiGLU 65536 x 2048 -7.0 / -7.6%, 262144 x 2048 -6.9 / -7.8%, the other 20
        # cases at 768-7168 columns -4.4 to +1.1% (at 16384 x 2048, session 37 call 6: 3-7% slower).
        block_r, block_h, warps = min(8, next_pow2(n_rows)), 128, 4
    return BlockConfig(block_r=block_r, block_h=block_h, num_warps=warps)


def _narrow_steps_pay(n_rows: int, h: int, block_h: int, fp8: bool) -> bool:
    """backward_config's rule for the weights-only backward: up to 2048 columns, where 128-column
    steps pad a row of h columns less than block_h-column steps (by 128 columns: both pad least in
    their range; 1408: 128 of 1536 saved); and from the fp8 copy (``fp8``) at 32768 rows or more,
    at any width (2880: 128 of 3072 saved; 768, 2048, 7168: nothing to save, shorter steps)."""
    saves = cdiv(h, block_h) * block_h > cdiv(h, 128) * 128
    return (saves and h <= 2048) or (fp8 and n_rows >= 32768)


# -- argument checks ---------------------------------------------------------------------------


def _check_float(fn: str, arg: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{fn}: {arg} has dtype {t.dtype}; expected one of float16, bfloat16, float32, float64")


def _check_device(fn: str, arg: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{fn}: {arg} is on {t.device} but the input is on {ref.device}; move both to one device")


def shapes_differ(got: Sequence[Any], want: Sequence[Any]) -> bool:
    """Whether a shape provably differs from the expected one (the argument checks' test).

    Eagerly the sizes are ints and this is `tuple(got) != tuple(want)`. Under torch.compile they may
    be symbolic, and a check must not specialise the graph to them. Where a size is data-dependent
    (rows split by a count read from the device) the comparison cannot be decided while tracing:
    the sizes are taken as equal and the compiled graph asserts it when it runs (torch._check).
    """
    if not torch.compiler.is_compiling():
        return tuple(got) != tuple(want)  # eagerly, plain ints: 0.4 us a check, not 6
    if len(got) != len(want):
        return True
    if any(guard_or_false(a != b) for a, b in zip(got, want, strict=True)):
        return True
    for a, b in zip(got, want, strict=True):
        # No message: dynamo of torch 2.11 refuses a message closure that is not a constant, and
        # Inductor's assert reports the failed relation (e.g. "Eq(u2, u0)") either way.
        torch._check(a == b)
    return False


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Kernels need unit stride along the last dimension; rows may have any stride."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def unit_column_stride(t: torch.Tensor | None) -> torch.Tensor | None:
    """What the launchers accept: unit stride along the last dimension (rows may be strided,
    even zero-strided); anything else is copied once. A 1-D bias is made contiguous."""
    if t is None:
        return None
    if t.dim() == 1:
        return t if t.is_contiguous() else t.contiguous()
    return _last_dim_contiguous(t)


@dataclass
class Rows:
    """An activation call flattened to rows, as the kernels see it."""

    x: torch.Tensor  # [T, 2H], unit stride along the last dimension
    bias: torch.Tensor | None  # [2H] (shared by all rows) or [T, 2H]
    weight: torch.Tensor | None  # [T] contiguous
    out_shape: tuple[int, ...]  # shape of the output, y.shape[:-1] + (H,)


def plain(fn: str, name: str, t: Any) -> Any:
    """t as the launchers need it: a tensor whose memory they read directly.

    Tensor subclasses without memory of their own used to reach Triton, which failed with "Attempted
    to access the data pointer on an invalid python storage". A functional collective's result
    (AsyncCollectiveTensor, e.g. an all-to-all of the token dispatch in torch.distributed's functional
    API) is waited on and unwrapped, as any PyTorch op would; called inside the autograd Functions'
    forward and backward, the graph runs through the wrapper as before. A DTensor is refused: the
    kernels would see its local shard only, which is the op's result for some placements and not
    for others. Other subclasses (the fake and functional tensors of tracing) pass unchanged.
    """
    if type(t) is torch.Tensor or type(t) is torch.nn.Parameter or not isinstance(t, torch.Tensor):
        return t
    if torch.compiler.is_compiling() or not torch.distributed.is_available():
        return t
    from torch.distributed._functional_collectives import AsyncCollectiveTensor
    from torch.distributed.tensor import DTensor

    if isinstance(t, AsyncCollectiveTensor):
        return t.wait()
    if isinstance(t, DTensor):
        raise TypeError(
            f"{fn}: {name} is a DTensor (placements {tuple(t.placements)}); moe_utils' kernels take plain "
            f"tensors here. Expected {name}.to_local() where the op on the local shard is the op you want, "
            "or the full tensor; the activations (their functional forms and Function classes) take DTensors."
        )
    return t


def _check_row_shapes(fn: str, y: Any, bias: Any, weights: Any) -> None:
    """The shapes of an activation's weights ([T, 1] or [..., 1] for input [..., 2H]) and bias (one
    that broadcasts to input), with the global shapes of DTensors in the messages."""
    lead = tuple(y.shape[:-1])
    n_rows = math.prod(lead)
    # Compared, not hashed into a set: under torch.compile the sizes are symbolic, and hashing one
    # specialises the graph to that row count.
    if weights is not None and shapes_differ(weights.shape, (n_rows, 1)) and shapes_differ(weights.shape, (*lead, 1)):
        raise ValueError(
            f"{fn}: weights has shape {tuple(weights.shape)}; expected [T, 1] with T = "
            f"{n_rows} rows of input {tuple(y.shape)}" + (f" (or {(*lead, 1)})" if len(lead) > 1 else "")
        )
    if bias is not None:
        try:
            torch.broadcast_shapes(bias.shape, y.shape)
        except RuntimeError:
            raise ValueError(
                f"{fn}: bias of shape {tuple(bias.shape)} does not broadcast to input {tuple(y.shape)}"
            ) from None
        if bias.dim() > y.dim():
            raise ValueError(f"{fn}: bias has more dimensions ({bias.dim()}) than input ({y.dim()})")


def _check_input_shape(fn: str, y: Any) -> None:
    """input is [..., 2H] (a DTensor's global shape in the message)."""
    if y.dim() == 0:
        raise ValueError(f"{fn}: input must have at least one dimension [..., 2H], got a scalar")
    if y.shape[-1] % 2 != 0:
        raise ValueError(
            f"{fn}: the last dimension of input must be even (gate and up halves), got shape {tuple(y.shape)}"
        )


def prepare(fn: str, y: torch.Tensor, bias: torch.Tensor | None, weights: torch.Tensor | None) -> Rows:
    """Check the arguments of a gated activation and flatten them to rows."""
    y, bias, weights = plain(fn, "input", y), plain(fn, "bias", bias), plain(fn, "weights", weights)
    _check_float(fn, "input", y)
    _check_input_shape(fn, y)
    two_h = y.shape[-1]
    lead = tuple(y.shape[:-1])
    n_rows = math.prod(lead)
    x = _last_dim_contiguous(y.reshape(n_rows, two_h))
    w = None
    if weights is not None:
        _check_float(fn, "weights", weights)
        _check_device(fn, "weights", weights, y)
        _check_row_shapes(fn, y, None, weights)
        w = weights.reshape(n_rows).contiguous()
    b = None
    if bias is not None:
        _check_float(fn, "bias", bias)
        _check_device(fn, "bias", bias, y)
        _check_row_shapes(fn, y, bias, None)
        if bias.shape[-1] == two_h and bias.numel() == two_h:
            b = bias.reshape(two_h).contiguous()  # one bias row shared by every row
        else:
            b = _last_dim_contiguous(bias.expand(y.shape).reshape(n_rows, two_h))
    return Rows(x=x, bias=b, weight=w, out_shape=(*lead, two_h // 2))


def lift_1d(y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """A 1-D [2H] input with [0, 1] weights means zero rows: view it as [0, 2H] (differentiably)."""
    if not (isinstance(y, torch.Tensor) and isinstance(weights, torch.Tensor)):
        return y  # prepare names the argument that is not a tensor
    if y.dim() == 1 and weights.dim() == 2 and weights.shape[0] == 0:
        return y.unsqueeze(0)[:0]
    return y


def _constant_tensor(fn: str, name: str, value: Any) -> torch.Tensor:
    """A tensor (or a numpy number traced by torch.compile) given as an activation constant, as a 0-d
    tensor: one element, and no gradient. The kernels take the value as a constant and return no
    gradient for it, so a tensor that requires grad is refused: its gradient would be silently
    dropped (the reference's plain `quick_geglu` differentiates a tensor `linear_offset`)."""
    t = torch.as_tensor(value)
    if t.numel() != 1:
        raise ValueError(f"{fn}: {name} must be a scalar, got a tensor of shape {tuple(t.shape)}")
    if t.requires_grad:
        raise ValueError(
            f"{fn}: {name} is a tensor that requires grad; moe_utils takes {name} as a constant and "
            f"returns no gradient for it: pass a float (or {name}.detach()) to train without one"
        )
    return t.reshape(())


def _read_constant(fn: str, name: str, value: torch.Tensor) -> Any:
    """A one-element tensor given as an activation constant, read on the host (a sync on the GPU:
    pass a Python float to avoid it); _constant_tensor's checks."""
    return float(_constant_tensor(fn, name, value))


def traced_constant(value: Any) -> bool:
    """Whether an activation constant is a value torch.compile traces rather than knows: a tensor, or
    a numpy number (dynamo traces numpy as arrays of tensors). Reading it on the host would break
    the graph, so the call takes the spec's math in PyTorch ops with the constant as a 0-d tensor
    (apply_gated, backward_helper), which Inductor fuses. Python numbers stay constants (or
    symbolic floats) and take the kernels."""
    if not torch.compiler.is_compiling():
        return False
    return isinstance(value, torch.Tensor) or (_np is not None and isinstance(value, _np.ndarray))


def traced_constants(clamp_value: Any, params: Sequence[Any]) -> bool:
    """Whether any constant of one call is a traced_constant (a loop: dynamo under a torch.func
    transform does not trace a generator expression)."""
    if not torch.compiler.is_compiling():
        return False
    for value in (clamp_value, *params):
        if traced_constant(value):
            return True
    return False


def traced_on(device: torch.device, clamp_value: Any, params: Sequence[Any]) -> tuple[Any, tuple[Any, ...]]:
    """(clamp_value, params) with the traced constants (0-d tensors; a numpy number's is on the CPU)
    moved to the input's device, beside which the PyTorch ops take them."""
    params = tuple(p.to(device) if isinstance(p, torch.Tensor) else p for p in params)
    return (clamp_value.to(device) if isinstance(clamp_value, torch.Tensor) else clamp_value), params


def check_clamp(fn: str, clamp_value: float | None, traced: bool = False) -> float | None:
    """clamp_value is a non-negative float or None; with ``traced`` (the PyTorch ops' path) a
    traced_constant is a 0-d tensor, its value unchecked (NaN, the sign: a read would break the graph)."""
    if clamp_value is None:
        return None
    if traced and traced_constant(clamp_value):
        return _constant_tensor(fn, "clamp_value", clamp_value)
    if isinstance(clamp_value, torch.Tensor):
        clamp_value = _read_constant(fn, "clamp_value", clamp_value)
    if (
        not isinstance(clamp_value, numbers.Real)  # numpy scalars too (a config read through numpy)
        or isinstance(clamp_value, bool)
        or clamp_value != clamp_value  # NaN; not math.isnan: see scalar
        or clamp_value < 0
    ):
        raise ValueError(f"{fn}: clamp_value must be a non-negative float or None, got {clamp_value!r}")
    return float(clamp_value)


def scalar(fn: str, name: str, value: Any, minimum: float | None = None, traced: bool = False) -> float:
    """Activation parameters are Python or numpy numbers, or one-element tensors read once on the host;
    never NaN, and at least the spec's ``minimum`` where it sets one (clamped SwiGLU's limit >= 0).
    With ``traced`` (the PyTorch ops' path) a traced_constant is a 0-d tensor, its value unchecked; elsewhere
    (the autograd Functions' kernels) it is read on the host, which breaks torch.compile's graph there."""
    if traced and traced_constant(value):
        return _constant_tensor(fn, name, value)
    if isinstance(value, torch.Tensor):
        value = _read_constant(fn, name, value)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):  # numpy scalars too
        raise TypeError(f"{fn}: {name} must be a float, got {type(value).__name__}")
    value = float(value)
    # Comparisons, not math.isnan: torch.compile makes a float that changes between calls symbolic
    # (a 0-d tensor inside), and math.isnan of one fails to trace; comparisons of it become guards.
    if value != value or (minimum is not None and value < minimum):  # NaN, or below the minimum
        expected = "a number" if minimum is None else f"a number >= {minimum}"
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")
    return value


def scalars(fn: str, impl: ActivationImpl, params: Sequence[Any], traced: bool = False) -> tuple[float, ...]:
    """The activation parameters of one call, checked (`scalar`) in signature order."""
    minimums = impl.param_minimums or (None,) * len(impl.param_names)
    names = impl.param_names
    return tuple(scalar(fn, n, v, m, traced) for n, v, m in zip(names, params, minimums, strict=True))


# -- eager twin of the kernel skeleton ---------------------------------------------------------


def split_halves(x: torch.Tensor, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) of rows [..., 2H]: the two halves, or the even and odd positions."""
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    gate, up = x.chunk(2, dim=-1)
    return gate, up


def join_halves(gate: torch.Tensor, up: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Inverse of split_halves."""
    if interleaved:
        return torch.stack([gate, up], dim=-1).flatten(-2)
    return torch.cat([gate, up], dim=-1)


def eager_forward_rows(
    math_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    clamp_value: float | None,
    interleaved: bool,
    params: Sequence[float],
) -> torch.Tensor:
    """out [T, H] in x's dtype from rows x [T, 2H], by a spec's eager forward (``_<name>_fwd_eager``)
    in PyTorch ops: the launchers' path where Triton does not run, and the differentiable path of
    torch.func transforms (eager_gated). weight is [T] or None."""
    dtype = compute_dtype(x.dtype)
    gate, up, _, _ = eager_inputs(x, bias, clamp_value, dtype, interleaved)
    w = weight.to(dtype)[:, None] if weight is not None else 1.0
    return math_fn(gate, up, w, *params).to(x.dtype)


def eager_backward_rows(
    math_fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    grad_out: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    clamp_value: float | None,
    interleaved: bool,
    params: Sequence[float],
    x_dtype: torch.dtype,
    clamped_dx: str = "zero",
    store_dx: bool = True,
    bias_sum: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(d_x [T, 2H] in x_dtype or None without store_dx, d_weight [T] in weight's dtype or None,
    d_bias [2H] or None) by a spec's eager backward (``_<name>_bwd_eager``) in PyTorch ops. x holds
    the saved values (the fp8 copy as float8). clamped_dx as the kernels take it (clamped_dx_mode):
    "both" gives d_x [2T, 2H]. bias_sum: d_bias is the column sum of the gradient without the
    clamp's zeros (the shared bias's), in the compute dtype before any rounding, as the kernels sum it."""
    dtype = compute_dtype(x_dtype)
    gate, up, gate_pass, up_pass = eager_inputs(x, bias, clamp_value, dtype, interleaved)
    w = weight.to(dtype)[:, None] if weight is not None else 1.0
    d_gate, d_up, d_weight = math_fn(gate, up, grad_out.to(dtype), w, *params)
    d_w = d_weight.sum(dim=-1).to(weight.dtype) if weight is not None else None
    d_b = join_halves(d_gate.sum(0), d_up.sum(0), interleaved) if bias_sum else None
    if not store_dx:
        return None, d_w, d_b
    kept = None  # d_x without the clamp's zeros: the bias's gradient
    if clamp_value is None or clamped_dx != "zero":
        kept = join_halves(d_gate, d_up, interleaved).to(x_dtype)
        if clamp_value is None or clamped_dx == "keep":
            return kept, d_w, d_b
    zeroed = join_halves(torch.where(gate_pass, d_gate, 0.0), torch.where(up_pass, d_up, 0.0), interleaved).to(x_dtype)
    return (zeroed if kept is None else torch.cat([zeroed, kept])), d_w, d_b


def check_flag(fn: str, name: str, value: Any) -> bool:
    """Boolean switches (fp8_input_store, interleaved) are Python bools."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def fp8_flag(fn: str, value: Any) -> bool:
    """fp8_input_store as the reference reads it (any truth value, e.g. a config's 0/1), but never a
    tensor: a tensor there is an argument in the wrong place (a bias passed to a *_impl without one)."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: fp8_input_store must be a bool, got a tensor of shape {tuple(value.shape)}")
    return bool(value)


def fp8_store_wanted(fn: str, value: Any) -> bool:
    """fp8_input_store at a functional form's call site: off where grad mode is off (evaluation under
    no_grad or inference_mode), where no backward can run. The Function's forward reads whether
    autograd records its call (graph_recorded), which a traced forward cannot: under torch.compile
    it runs in no-grad mode with or without a graph, and its ctx has no edges. The call site sees
    the caller's grad mode, on which torch.compile guards."""
    return fp8_flag(fn, value) and torch.is_grad_enabled()


def eager_inputs(
    x: torch.Tensor, bias: torch.Tensor | None, clamp_value: float | None, dtype: torch.dtype, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """gate, up (clamped, plus bias) in the compute dtype, and the masks where the clamp passed."""
    gate, up = split_halves(x.to(dtype), interleaved)
    gate_pass = up_pass = None
    if clamp_value is not None:
        gate_pass = gate <= clamp_value
        up_pass = (up >= -clamp_value) & (up <= clamp_value)
        gate = torch.clamp(gate, max=clamp_value)
        up = torch.clamp(up, min=-clamp_value, max=clamp_value)
    if bias is not None:
        bias_gate, bias_up = split_halves(bias.to(dtype), interleaved)
        gate = gate + bias_gate
        up = up + bias_up
    return gate, up, gate_pass, up_pass


# -- autograd plumbing -------------------------------------------------------------------------


def call(op: Any, launcher: Callable[..., Any], *args: Any) -> Any:
    """Under torch.compile the torch.library op (opaque to dynamo, no graph break); in eager mode
    the launcher it wraps, without the dispatcher's overhead."""
    return op(*args) if torch.compiler.is_compiling() else launcher(*args)


#: The interface between generated modules and this runtime (the calls each makes of the other).
#: Bump it with any change of them; a module generated for another one is refused at import
#: (ActivationImpl), with the command that regenerates it. 1: until session 36 (no store_dx, no
#: abi argument); 2: the backward's store_dx; 3 (session 40): the backward's clamped_dx, and the
#: eager math passed on (eager_forward, eager_backward); 4 (session 41): the backward's bias_sum and
#: third output (the shared bias's gradient, summed in the kernel).
GENERATED_ABI = 4


@dataclass(frozen=True)
class ActivationImpl:
    """The pieces of one generated activation that the generic plumbing needs."""

    name: str  # spec name, e.g. "swiglu"
    param_names: tuple[str, ...]  # scalar parameters, in signature order
    launch_forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # eager launcher
    launch_backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # eager launcher
    forward_op: Any  # torch.ops.<ns>.<name>_fwd, used under torch.compile
    backward_op: Any  # torch.ops.<ns>.<name>_bwd
    abi: int = 1  # GENERATED_ABI of the templates that rendered the module (absent before 2)
    # Each parameter's smallest accepted value or None (Param.minimum); absent (modules generated
    # before session 39): no bounds.
    param_minimums: tuple[float | None, ...] = ()
    # The spec's forward and backward math in PyTorch ops (``_<name>_fwd_eager``, ``_<name>_bwd_eager``),
    # which torch.func transforms differentiate (eager_gated); None: the functional forms refuse
    # the transforms.
    eager_forward: Callable[..., torch.Tensor] | None = None
    eager_backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def __post_init__(self):
        if self.abi != GENERATED_ABI:
            module = getattr(self.launch_forward, "__module__", self.name)
            raise ImportError(
                f"{module}: generated by another version of moe_utils (generated-code interface "
                f"{self.abi}); this moe_utils needs interface {GENERATED_ABI}. Regenerate it with this "
                "version: regenerate-kernels with the same --spec, --out and --namespace (--check "
                "lists stale files)."
            )

    def forward(self, x, bias, weight, fp8_store, clamp_value, interleaved, params):
        """out [T, H] and the bits (uint8) of the fp8 copy of x (empty unless fp8_store)."""
        args = (x, bias, weight, fp8_store, clamp_value, interleaved, *params)
        return call(self.forward_op, self.launch_forward, *args)

    def backward(
        self,
        grad_out,
        x_saved,
        bias,
        weight,
        clamp_value,
        interleaved,
        x_dtype,
        params,
        store_dx=True,
        clamped_dx="zero",
        bias_sum=False,
    ):
        """d_x [T, 2H] in x_dtype (empty unless store_dx; [2T, 2H] with clamped_dx "both"), d_weight
        [T] in the weight's dtype (empty without weight) and d_bias [2H] in sum_dtype(x_dtype) (empty
        unless bias_sum: the shared bias's gradient, summed in the kernel). clamped_dx: see
        clamped_dx_mode."""
        args = (grad_out, x_saved, bias, weight, clamp_value, interleaved, x_dtype, *params)
        return call(self.backward_op, self.launch_backward, *args, store_dx, clamped_dx, bias_sum)


def sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the bias's column sum for input of ``dtype``: fp32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_bias_sum(bias: torch.Tensor | None, clamped_dx: str, bias_sum: bool) -> None:
    """The backward's bias_sum needs one bias row shared by every row; the bias's gradient then
    leaves the kernel summed, so d_x, if stored, is the input's (clamped_dx "zero")."""
    if not bias_sum:
        return
    if bias is None or bias.dim() != 1:
        got = "no bias" if bias is None else f"a bias of shape {tuple(bias.shape)}"
        raise ValueError(f"backward: bias_sum=True needs a shared bias of shape [2H], got {got}")
    if clamped_dx != "zero":
        raise ValueError(
            f'backward: bias_sum=True takes clamped_dx="zero" (d_x is the input\'s gradient), got {clamped_dx!r}'
        )


#: Whether the backward sums a shared [2H] bias's gradient itself (bias_sum, session 41). False:
#: session 40's path (d_x written, then summed in PyTorch), for benchmarks/bias.py's side-by-side.
BIAS_SUM = True
#: Fewer rows than this take session 40's path with BIAS_SUM too. Below it a program sums one or two
#: rows, so the partial sums weigh as much as d_x or twice (H200, session 41 calls 5 and 8, fwd+bwd
#: with the input and the bias trained, in the kernel against PyTorch's sum: 1024 x 2880 SwiGLU 36.1
#: against 29.2 µs, Quick-GEGLU with its clamp 35.6 against 31.8; 2048 x 2880 55.2 / 49.1 and 57.9 /
#: 55.0; 2048 x 768 SwiGLU 24.7 / 21.5; from 4096 rows the kernel's sum is ahead: 0.5-18% there).
BIAS_SUM_MIN_ROWS = 4096


def sums_bias(bias: torch.Tensor | None, needs_bias: bool, n_rows: int) -> bool:
    """Whether the backward sums the bias's gradient (bias_sum): a normalised shared [2H] bias that
    requires grad, from BIAS_SUM_MIN_ROWS rows. A [T, 2H] bias's gradient is d_x itself; other shapes,
    and fewer rows, are summed from it."""
    return BIAS_SUM and needs_bias and bias is not None and bias.dim() == 1 and n_rows >= BIAS_SUM_MIN_ROWS


def _floor_pow2(n: int) -> int:
    """The largest power of two <= n (1 for n <= 1)."""
    return next_pow2(n + 1) // 2 if n > 1 else 1


def bias_sum_rows(n_rows: int, heavy: bool = False) -> int:
    """Rows a backward program sums the shared bias's gradient over (bias_sum): n_rows / 1024 rounded
    down to a power of two, 1 to 64; with ``heavy`` math (heavy_backward: the clamp, ...) n_rows /
    2048, at least n_rows / 1024 up to 4 and at most 32. The partial sums weigh 4 / (2 * rows) of
    d_x's bf16 bytes, and the launcher reads them once more: fewer rows leave more of them to write
    and read, more leave too few programs to fill the GPU.

    H200, fwd+bwd with the input and the bias trained (benchmarks/bias.py). Session 41 call 1, 1 to 64
    rows a program, SwiGLU on [1, 1024] tiles: 4096 x 2880 76.2 µs at 4 rows (8: 89.6, 16: 102.4,
    32: 150.1), 16384 x 2880 223.8 at 16 (8: 236.6, 32: 266.1), 16384 x 7168 516.9 at 16 (8: 542.1,
    32: 587.6), 65536 x 2880 822.6 at 64 (32: 842.6, 16: 854.9). Call 3, Quick-GEGLU with its clamp
    at 768, 1408, 2880 and 7168 columns: 16384 rows 88.7, 154.9, 269.6, 605.2 at 8 against 93.4,
    163.5, 278.7, 632.0 at 16; 65536 rows 288.9, 541.9, 973.8, 2299.6 at 32 against 307.2, 583.8,
    1020.2, 2359.8 at 64; 4096 rows 32.7, 54.9, 88.7, 191.8 at 4 (2: 36.3, 8: 35.4 at 768)."""
    if heavy:
        return min(32, max(min(4, _floor_pow2(n_rows // 1024)), _floor_pow2(n_rows // 2048)))
    return min(64, _floor_pow2(n_rows // 1024))


def bias_sum_config(cfg: BlockConfig, n_rows: int, h: int, heavy: bool = False) -> tuple[BlockConfig, int]:
    """The backward's launch shape with bias_sum, from its shape without (cfg), and its ROW_STEPS.

    One row a block, as wide as cfg's tile (not past the row's power of two), in cfg's warps: the
    column sums then stay in each thread until a program's last block, and the block's sum over its
    rows needs no exchange between warps. H200, session 41 call 1: on [4, 256] tiles (rows on
    different warps: 16 barriers and 37 shared-memory stores a column step against 1 and 1) the
    backward kernel alone at 16384 x 768 took 237.7 µs at 4 rows a program and 59.5 at 32,
    against 57.7 for fwd+bwd with the input alone trained; on [1, 1024] tiles (SwiGLU, 2880
    columns) the kernel took 418.1 µs at 4 rows and 407.3 at 32 (65536 rows)."""
    block_h = min(cfg.block_r * cfg.block_h, max(cfg.block_h, next_pow2(h)))
    return BlockConfig(1, block_h, cfg.num_warps), bias_sum_rows(n_rows, heavy)


#: Whether sum_partials adds the backward's partial sums with _kernel_lib.column_sums (False:
#: torch.sum, session 41's, for benchmarks/bias.py's side-by-side).
COLUMN_SUMS = True
#: More partial sums than this are added in two passes (column_sums_plan).
COLUMN_SUMS_ONE_PASS = 4096
#: Rows a program of the first pass sums, past COLUMN_SUMS_ONE_PASS.
COLUMN_SUMS_SPLIT = 256


@dataclass(frozen=True)
class SumPlan:
    """Launch shape of sum_partials' _kernel_lib.column_sums."""

    block_c: int  # columns a program
    block_p: int  # rows a step
    num_warps: int  # warps a program
    parts_per_split: int  # rows a program of the first pass sums; n_parts or more: a single pass
    stages: int = 1  # column_sums' STAGES: >1 loads stages - 1 steps ahead into shared memory


def column_sums_plan(n_parts: int, n_cols: int) -> SumPlan:
    """sum_partials' launch shape: 16 columns a program (32 from 8192), 4 warps, steps of 16 KB
    ([256, 16] or [128, 32]), the next two loaded ahead into shared memory (STAGES=3: 32 KB, which
    every CUDA GPU since Volta has). Up to COLUMN_SUMS_ONE_PASS rows one pass, each program taking
    every row; past it a first pass over COLUMN_SUMS_SPLIT rows a program, whose sums a second
    pass adds.

    H200, session 43 call 5 (benchmarks/bias.py, fwd+bwd with the bias and the weights trained):
    against one step in flight ([512, 16] x 8, call 3's best), 7-14% faster at 4096 x 768 (SwiGLU
    23.0 / 23.0 against 25.3 / 24.7 µs, input+bias / bias; Quick-GEGLU with its clamp 26.6 / 24.3
    against 30.9 / 27.0), 3-5% at 4096 x 2880, level to 4% at 16384 x 768, 3% faster to 2% slower
    at the rest (single wide shapes move more: 65536 x 7168, bias, 4.6% slower). At 2048 rows of
    partial sums one pass of these steps was level with or faster than two (the clamp at 16384 x
    768: 84.1 / 70.8 against 85.0 / 72.3 µs, at 16384 x 2880 262.4 / 210.5 against 266.6 /
    212.8). Alone (--partials), one pass was the fastest plan timed at 2048 and 4096 rows but at
    14336 columns ([4096, 2816] 11.2 µs; two passes 14.5, torch.sum 20.5).

    Session 44 call 1, past 4096 rows of partial sums (8192 and 16384, 1536-14336 columns): alone,
    no plan was fastest everywhere (one pass, splits of 256, 1024 or 4096 rows: each 11-26% behind
    the best somewhere); the split of 256 was the best or within 13% of it, and 37% to 0% faster
    than torch.sum (level at 14336 columns). In fwd+bwd (SwiGLU 524288 x 768 / 2880, Quick-GEGLU
    with its clamp 262144 x 768 / 2880; 8192 rows of partial sums) every plan and torch.sum were
    within 1% of each other, but for the clamp at 2880 with the bias alone, where two timings of the
    shipped plan differed by 3% and torch.sum was 1-5% behind them."""
    block_c = 16 if n_cols < 8192 else 32
    split = n_parts if n_parts <= COLUMN_SUMS_ONE_PASS else COLUMN_SUMS_SPLIT
    return SumPlan(block_c, 4096 // block_c, 4, split, 3)


def sum_partials(partials: torch.Tensor, out: torch.Tensor) -> None:
    """out = partials.sum(0) for the backward's fp32 partial sums of the bias's gradient, [programs,
    2H] contiguous, with _kernel_lib.column_sums (column_sums_plan): deterministic, the same bits
    run to run.

    H200, session 43 call 5 (benchmarks/bias.py --partials: the sum alone, graph replays): [1024,
    1536 / 5760 / 14336] 3.1 / 5.3 / 16.3 µs against torch.sum's 8.1 / 10.5 / 22.8; [2048, 1536 /
    5760] 4.2 / 10.5 against 9.7 / 19.5; [4096, 1536 / 5760 / 14336] 6.4 / 26.0 / 60.4 against
    13.5 / 34.3 / 63.8. Session 42's one pass of one step in flight was 5% slower than torch.sum
    in the backward at 2048 rows (Quick-GEGLU with its clamp at 16384 x 768, 93.5 against 88.7
    µs): its 96 programs walked 2048 rows, a memory latency a step."""
    n_parts, n_cols = partials.shape
    if not COLUMN_SUMS or not use_triton(partials):
        torch.sum(partials, 0, out=out)
        return
    plan = column_sums_plan(n_parts, n_cols)
    grid_c = cdiv(n_cols, plan.block_c)
    if n_parts > plan.parts_per_split:  # first pass: a row of sums per split, added below
        splits = cdiv(n_parts, plan.parts_per_split)
        firsts = torch.empty((splits, n_cols), dtype=torch.float32, device=partials.device)
        column_sums[(grid_c, splits)](
            partials, firsts, n_parts, n_cols, plan.parts_per_split,
            BLOCK_P=plan.block_p, BLOCK_C=plan.block_c, STAGES=plan.stages, num_warps=plan.num_warps,
            **COMPILE_OPTIONS,
        )  # fmt: skip
        partials, n_parts = firsts, splits
    column_sums[(grid_c, 1)](
        partials, out, n_parts, n_cols, n_parts,
        BLOCK_P=plan.block_p, BLOCK_C=plan.block_c, STAGES=plan.stages, num_warps=plan.num_warps,
        **COMPILE_OPTIONS,
    )  # fmt: skip


def bias_grad(d_x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Gradient of a normalised bias ([2H] shared, or [T, 2H]) from d_x [T, 2H], summed in fp32."""
    if bias.dim() == 1:
        return d_x.sum(0, dtype=sum_dtype(d_x.dtype)).to(bias.dtype)
    return d_x.to(bias.dtype)


def clamped_dx_mode(clamp_value: float | None, input_grad: bool, bias_grad: bool) -> str:
    """How the backward writes d_x where the clamp changed a value. The input's gradient is zero
    there; the bias is added after the clamp, so its gradient there is the activation's, not zero:
    "zero" (no bias gradient, or no clamp), "keep" (the bias's alone) or "both" (d_x [2T, 2H]: the
    input's rows, then the bias's; split_dx). Until session 40 the bias's gradient summed the
    input's, silently wrong wherever a value was clamped."""
    if clamp_value is None or not bias_grad:
        return "zero"
    return "both" if input_grad else "keep"


def split_dx(d_x: torch.Tensor, mode: str, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the input's gradient rows, the bias's) of the backward's d_x in clamped_dx mode."""
    if mode == "both":
        return d_x[:n_rows], d_x[n_rows:]
    return d_x, d_x


def backward_plan(
    clamp_value: float | None,
    bias: torch.Tensor | None,
    needs_input: bool,
    needs_bias: bool,
    n_rows: int,
    in_kernel: bool = True,
) -> tuple[bool, str, bool]:
    """(store_dx, clamped_dx, bias_sum) of a backward call, for every caller (the Functions, the ops'
    own autograd, the *_back helpers): d_x where the input's gradient, or a bias's summed from it,
    reads it; a shared bias's sum in the kernel (sums_bias; not where in_kernel is False, the
    differentiable path of torch.func transforms); clamped_dx_mode for the rest."""
    summed = in_kernel and sums_bias(bias, needs_bias, n_rows)
    from_dx = needs_bias and not summed
    return needs_input or from_dx, clamped_dx_mode(clamp_value, needs_input, from_dx), summed


def _reduce_bias_grad(
    d_x: torch.Tensor, d_b: torch.Tensor | None, bias_norm: torch.Tensor, y_shape, bias_shape, dtype
) -> torch.Tensor:
    """The bias's gradient in its own shape and dtype: the kernel's sum d_b (bias_sum), or summed from d_x."""
    if d_b is not None:
        return d_b.to(dtype).reshape(bias_shape)
    if bias_norm.dim() == 1:
        return bias_grad(d_x, bias_norm).reshape(bias_shape)
    acc = torch.float64 if d_x.dtype == torch.float64 else torch.float32
    return d_x.reshape(y_shape).to(acc).sum_to_size(bias_shape).to(dtype)


def graph_recorded(ctx: Any) -> bool:
    """Whether autograd records the Function call whose forward holds ``ctx``, so that a backward
    can run: grad mode on and an input requiring grad. ``ctx.needs_input_grad`` reads only the
    inputs' flags (True for a parameter under no_grad); the node gets its edges to the inputs'
    gradient functions, one per tensor argument, before the forward runs, and none where nothing
    is recorded. Under torch.compile the graph is traced, not recorded here: True."""
    return torch.compiler.is_compiling() or len(ctx.next_functions) > 0


def checked_call(
    fn: str,
    impl: ActivationImpl,
    y: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor | None,
    fp8_input_store: Any,
    clamp_value: Any,
    interleaved: Any,
    params: Sequence[Any],
    traced: bool = False,
) -> tuple[Rows, float | None, tuple[float, ...], bool, bool]:
    """The checks of one activation call, on the kernels' path (function_forward) and the transforms'
    (eager_gated, ``traced``: see scalar) alike: (rows, clamp_value, params, fp8_input_store, interleaved)."""
    rows = prepare(fn, y, bias, weights)
    clamp_value = check_clamp(fn, clamp_value, traced)
    params = scalars(fn, impl, params, traced)
    if traced:
        clamp_value, params = traced_on(rows.x.device, clamp_value, params)
    return rows, clamp_value, params, fp8_flag(fn, fp8_input_store), check_flag(fn, "interleaved", interleaved)


def function_forward(
    ctx: Any,
    impl: ActivationImpl,
    fn: str,
    y: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor | None,
    fp8_input_store: bool,
    clamp_value: float | None,
    interleaved: bool,
    params: Sequence[float],
) -> torch.Tensor:
    """Body of every generated autograd Function's forward.

    A constant torch.compile traces (traced_constant: a tensor, or a numpy number, which dynamo traces
    as an array) takes the spec's math in PyTorch ops here and in the backward, with the constant as a
    0-d tensor, as the functional forms do (apply_gated): no host read, so no graph break, and
    Inductor fuses the ops."""
    ctx.dtensor = needs_grad = None
    mesh = dtensor_mesh(fn, ("input", "bias", "weights"), y, bias, weights)
    if mesh is not None:
        # DTensors (the functional forms take them before the Function, in DTensor's autograd): the
        # kernels on each rank's rows, as there; the backward makes DTensors of the local gradients.
        # The local rows do not require grad: the DTensors' flags are read first.
        needs_grad = tuple(t is not None and t.requires_grad for t in (y, bias, weights))
        args = _local_rows(fn, y, bias, weights, interleaved)
        ctx.dtensor = LocalGradients.of(mesh, args, y, bias, weights)
        y, bias, weights = args.y, args.bias, args.weights
    traced = traced_constants(clamp_value, params)
    rows, clamp_value, params, fp8_input_store, interleaved = checked_call(
        fn, impl, y, bias, weights, fp8_input_store, clamp_value, interleaved, params, traced
    )
    # Which of (y, bias, weights) require grad, read here rather than from ctx.needs_input_grad, whose
    # positions differ between the Functions that call this (fn comes first in the generic one).
    ctx.needs_grad = needs_grad or tuple(t is not None and t.requires_grad for t in (y, bias, weights))
    # The fp8 copy serves the backward alone: where autograd records no graph of this call (no
    # input requires grad, or grad mode is off: evaluation under no_grad or inference_mode, even
    # with a bias parameter that requires grad) none runs, so the forward does not write it (with
    # bf16 input, a quarter of the forward's traffic; session 35, grad mode session 37).
    fp8_input_store = fp8_input_store and any(ctx.needs_grad) and graph_recorded(ctx)
    ctx.impl = impl
    # The gradients read the input (and bias) nonlinearly: a graph of them is needed wherever either
    # requires grad. With only the weights requiring grad, d_weights is linear in the incoming gradient.
    ctx.reads_inputs = ctx.needs_grad[0] or ctx.needs_grad[1]
    constants: list[torch.Tensor] = []
    if traced:
        math_fn = _eager_math(impl, fn, impl.eager_forward)
        out = eager_forward_rows(math_fn, rows.x, rows.bias, rows.weight, clamp_value, interleaved, params)
        saved_x = eager_fp8_copy(rows.x) if fp8_input_store else rows.x
        # The 0-d tensors travel to the backward as saved tensors; ctx.traced marks their places,
        # which hold None in ctx.meta.
        values = (clamp_value, *params)
        ctx.traced = tuple(isinstance(v, torch.Tensor) for v in values)
        constants = [v for v in values if isinstance(v, torch.Tensor)]
        kept = [None if t else v for t, v in zip(ctx.traced, values, strict=True)]
        clamp_value, params = kept[0], tuple(kept[1:])
    else:
        ctx.traced = None
        out, x_fp8 = impl.forward(rows.x, rows.bias, rows.weight, fp8_input_store, clamp_value, interleaved, params)
        # Only what the backward reads: the fp8 copy instead of the input when asked for.
        saved_x = x_fp8.view(torch.float8_e4m3fn) if fp8_input_store else rows.x
    ctx.save_for_backward(saved_x, rows.bias, rows.weight, *constants)
    ctx.meta = (
        fn,
        tuple(y.shape),
        y.dtype,
        None if bias is None else (tuple(bias.shape), bias.dtype),
        None if weights is None else tuple(weights.shape),
        clamp_value,
        interleaved,
        params,
    )
    out = out.view(rows.out_shape)
    return out if ctx.dtensor is None else ctx.dtensor.output(out)


#: first_order_only's hint for the routing ops, whose fused=False path is plain PyTorch.
FUSED_ONLY_HINT = ", or fused=False (plain PyTorch, differentiable twice)"


def first_order_only(fn: str, grads: Sequence[torch.Tensor | None], reads_inputs: bool, hint: str = "") -> None:
    """Refuse to build a graph of a kernel backward (create_graph=True, the only time autograd runs a
    backward in grad mode): kernel outputs carry no graph, so a second derivative through them would
    be silently missing, or wrong where the incoming gradient carries a graph.

    reads_inputs: the gradients depend on the forward's differentiable inputs, not only linearly on
    the incoming gradients (which alone make the result a constant when they carry no graph).
    Under torch.compile the check is left to AOTAutograd, which refuses double backward itself.
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return
    if reads_inputs or any(g is not None and g.requires_grad for g in grads):
        raise RuntimeError(
            f"{fn}: backward called with create_graph=True (double backward: a gradient penalty, a "
            "Hessian-vector product); moe_utils' kernels give first derivatives only, so a second "
            f"derivative through them would be lost. Expected create_graph=False{hint}."
        )


def function_backward(ctx: Any, grad_out: torch.Tensor):
    """Body of every generated autograd Function's backward: (d_input, d_bias, d_weights); with
    DTensors (function_forward) on the local rows, made DTensors at the end."""
    if ctx.dtensor is not None:
        grad_out = ctx.dtensor.local_g(ctx.meta[0], grad_out)
    impl = ctx.impl
    first_order_only(ctx.meta[0], (grad_out,), ctx.reads_inputs)
    x_saved, bias, weight, *constants = ctx.saved_tensors
    fn, y_shape, y_dtype, bias_meta, w_shape, clamp_value, interleaved, params = ctx.meta
    n_rows = x_saved.shape[0]
    grad_out = plain(fn, "the incoming gradient", grad_out)
    g = _last_dim_contiguous(grad_out.reshape(n_rows, x_saved.shape[1] // 2))
    # d_x is written only where something reads it: the input's gradient, or the bias's (a sum of it).
    # With only the routing weights requiring grad (the router trained alone) the kernel stores
    # d_weights alone (4H of its 10H bytes a row with 16-bit input, 4H of 8H from the fp8 copy) and
    # allocates no T x 2H buffer.
    needs_y, needs_bias, _ = ctx.needs_grad
    if ctx.traced is not None:  # traced constants: the spec's backward in PyTorch ops (function_forward)
        saved = iter(constants)
        values = [next(saved) if t else v for t, v in zip(ctx.traced, (clamp_value, *params), strict=True)]
        clamp_value, params = values[0], tuple(values[1:])
        store_dx, mode, summed = backward_plan(clamp_value, bias, needs_y, needs_bias, n_rows, in_kernel=False)
        math_fn = _eager_math(impl, fn, impl.eager_backward)
        args = (clamp_value, interleaved, params, y_dtype, mode, store_dx)
        d_x, d_w, d_b = eager_backward_rows(math_fn, g, x_saved, bias, weight, *args)
    else:
        # A shared [2H] bias's gradient is summed in the kernel (bias_sum, from BIAS_SUM_MIN_ROWS rows):
        # d_x is then the input's alone.
        store_dx, mode, summed = backward_plan(clamp_value, bias, needs_y, needs_bias, n_rows)
        args = (clamp_value, interleaved, y_dtype, params, store_dx, mode, summed)
        d_x, d_w, d_b = impl.backward(g, x_saved, bias, weight, *args)
    d_x, d_x_bias = split_dx(d_x, mode, n_rows)
    d_bias = None
    if needs_bias:
        d_bias = _reduce_bias_grad(d_x_bias, d_b if summed else None, bias, y_shape, bias_meta[0], bias_meta[1])
    grads = (d_x.view(y_shape) if needs_y else None, d_bias, d_w.view(w_shape) if weight is not None else None)
    return grads if ctx.dtensor is None else ctx.dtensor.wrap(*grads)


# -- torch.func transforms and forward-mode AD ---------------------------------------------------


def transforms_active() -> bool:
    """Whether a torch.func transform (grad, vjp, jvp, vmap, jacrev, hessian, ...) runs this call, or a
    forward-mode AD level (torch.autograd.forward_ad.dual_level) is open. The autograd Functions, whose
    kernels read memory, run under neither (PyTorch refuses them); the reference's functional forms
    are PyTorch ops and run under both. Dynamo traces both reads (a transform inside a compiled
    function takes the PyTorch ops too, and Inductor fuses them)."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def _eager_math(impl: ActivationImpl, fn: str, math_fn: Callable[..., Any] | None) -> Callable[..., Any]:
    if math_fn is None:
        module = getattr(impl.launch_forward, "__module__", impl.name)
        raise RuntimeError(
            f"{fn}: called under a torch.func transform or forward-mode AD, which needs the spec's eager "
            f"math; {module} was generated before moe_utils passed it on. Regenerate it "
            "(regenerate-kernels with the same --spec, --out and --namespace)."
        )
    return math_fn


def eager_gated(
    impl: ActivationImpl,
    fn: str,
    y: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor | None,
    fp8_input_store: bool,
    clamp_value: float | None,
    interleaved: bool,
    params: Sequence[Any],
) -> torch.Tensor:
    """A functional form in PyTorch ops from the spec's eager forward, for torch.func transforms and
    forward-mode AD: they differentiate it as they do the reference's PyTorch functions (any order,
    batched by vmap). Same checks and shapes as the kernels' path; slower (unfused). Also the path
    of constants torch.compile traces (traced_constant), as 0-d tensors: Inductor fuses it.

    With fp8_input_store the value is the forward of the input, as the kernels', and the derivatives
    are taken at the saturated fp8 copy, as the kernels' backward takes them:
    ``value(f(x)) + f(copy + x - x.detach()) - value(f(copy))``."""
    math_fn = _eager_math(impl, fn, impl.eager_forward)
    rows, clamp_value, params, fp8_input_store, interleaved = checked_call(
        fn, impl, y, bias, weights, fp8_input_store, clamp_value, interleaved, params, traced=True
    )

    def forward(x: torch.Tensor) -> torch.Tensor:
        return eager_forward_rows(math_fn, x, rows.bias, rows.weight, clamp_value, interleaved, params)

    out = forward(rows.x)
    if fp8_input_store:
        x_value = rows.x.detach()
        at_copy = forward(eager_fp8_copy(x_value).to(x_value.dtype) + (rows.x - x_value))
        out = out.detach() + (at_copy - at_copy.detach())
    return out.view(rows.out_shape)


def apply_gated(
    function: type[torch.autograd.Function],
    impl: ActivationImpl,
    fn: str,
    y: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor | None,
    fp8_input_store: bool,
    clamp_value: float | None,
    interleaved: bool,
    *params: Any,
) -> torch.Tensor:
    """A functional form's call of its autograd Function, or of eager_gated under a torch.func
    transform or forward-mode AD (where the Function cannot run), or with a constant torch.compile
    traces (traced_constants: the kernels take numbers)."""
    if transforms_active() or traced_constants(clamp_value, params):
        return eager_gated(impl, fn, y, bias, weights, fp8_input_store, clamp_value, interleaved, params)
    mesh = dtensor_mesh(fn, ("input", "bias", "weights"), y, bias, weights)
    if mesh is not None:
        local = functools.partial(apply_gated, function, impl, fn)
        return _gated_on_local_rows(
            fn, mesh, y, bias, weights, local, fp8_input_store, clamp_value, interleaved, params
        )
    return function.apply(fn, y, bias, weights, fp8_input_store, clamp_value, interleaved, *params)


def dtensor_mesh(fn: str, names: tuple[str, ...], *args: Any) -> Any:
    """The device mesh of the DTensors among an activation's tensor arguments, or None where there
    are none. As in DTensor's own operators, a plain tensor beside a DTensor, or DTensors on two
    meshes, are refused with a TypeError naming them. Under torch.compile too: dynamo traces the
    redistributions and the local calls (without this, the trace failed inside DTensor)."""
    for t in args:  # the common case first, in half a microsecond: plain tensors (or None)
        if t is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            break
    else:
        return None
    given = {name: t for name, t in zip(names, args, strict=True) if isinstance(t, torch.Tensor)}
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    dtensors = {name: t for name, t in given.items() if isinstance(t, DTensor)}
    if not dtensors:
        return None
    plain_ones = [name for name in given if name not in dtensors]
    if plain_ones:
        raise TypeError(
            f"{fn}: {', '.join(dtensors)} {'is a DTensor' if len(dtensors) == 1 else 'are DTensors'} but "
            f"{', '.join(plain_ones)} {'is' if len(plain_ones) == 1 else 'are'} not; expected every tensor argument "
            "as a DTensor on one mesh (distribute_tensor, or DTensor.from_local), as DTensor's operators do"
        )
    meshes = {name: t.device_mesh for name, t in dtensors.items()}
    first = next(iter(meshes.values()))
    if any(mesh != first for mesh in meshes.values()):
        raise TypeError(f"{fn}: the DTensor arguments are on different device meshes ({meshes}); expected one mesh")
    return first


@dataclass
class RowPlacements:
    """Where an activation of DTensors runs (_row_placements), per mesh dimension."""

    x: list[Any]  # input's [..., 2H] (and a per-row bias's, and the output's and g's [..., H])
    weights: list[Any]  # the weights' [..., 1]: x's, with a column shard replicated
    weights_grad: list[Any]  # their local gradient's: Partial where the columns are sharded
    bias: list[Any]  # a shared bias's, of its last dimension (Shard(-1) written as bias.dim() - 1)
    bias_grad: list[Any]  # its local gradient's: Partial where the rows are sharded


def _row_placements(y: Any, interleaved: bool) -> RowPlacements:
    """The placements an activation of DTensors runs in (input y [..., 2H]).

    Each mesh dimension that shards a row dimension (any but the last) keeps its Shard. In the
    interleaved layout the last dimension's Shard is kept too where H divides evenly over the mesh
    dimensions that shard it: each rank then holds whole (gate, up) pairs, and its output columns
    are its share of the output's. Every other placement (the split layout's columns: gate and up
    would fall on different ranks; Partial: the activation is not linear; a strided shard) is
    gathered to Replicate. The weights are replicated over a column shard and their local
    gradients, sums over the local columns, are Partial there; a shared bias follows the columns and
    is replicated over the rows, its local gradient (a sum over the local rows) Partial there."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    last = y.dim() - 1
    half = y.shape[-1] // 2
    column_dims = [i for i, p in enumerate(y.placements) if type(p) is Shard and p.dim == last]
    keep_columns = interleaved and column_dims and half % math.prod(y.device_mesh.size(i) for i in column_dims) == 0
    per_dim = []  # (x, weights, weights_grad, bias, bias_grad) of each mesh dimension
    for p in y.placements:
        if type(p) is Shard and p.dim < last:
            per_dim.append((p, p, p, Replicate(), Partial()))
        elif type(p) is Shard and p.dim == last and keep_columns:
            per_dim.append((p, Replicate(), Partial(), Shard(-1), Shard(-1)))
        else:
            per_dim.append((Replicate(),) * 5)
    return RowPlacements(*(list(column) for column in zip(*per_dim, strict=True)))


def _last_dim(placements: list[Any], ndim: int) -> list[Any]:
    """placements with Shard(-1) as the Shard of the last of ndim dimensions."""
    from torch.distributed.tensor import Shard

    return [Shard(ndim - 1) if type(p) is Shard and p.dim == -1 else p for p in placements]


def _like_rows(t: Any, shape: tuple[int, ...], placements: list[Any]) -> Any:
    """A DTensor of ``shape`` (t's, or one t reshapes or broadcasts to) in ``placements``: directly
    where t has that shape, else through Replicate (DTensor cannot flatten or unflatten an unevenly
    sharded dimension), then sliced locally."""
    if not shapes_differ(t.shape, shape):
        return t.redistribute(placements=placements)
    from torch.distributed.tensor import DTensor, Replicate

    # Reshaped as a local tensor: gathering an unevenly sharded dimension can leave the local tensor
    # a narrowed view, which torch 2.11's DTensor then failed to reshape ("view size is not
    # compatible"; session 50, on the H200 machine).
    replicated = [Replicate() for _ in placements]
    full = t.redistribute(placements=replicated).to_local()
    full = full.reshape(shape) if t.numel() == math.prod(shape) else full.expand(shape)
    return DTensor.from_local(full, t.device_mesh, replicated, run_check=False).redistribute(placements=placements)


@dataclass
class LocalRows:
    """The local tensors of an activation's DTensor arguments (_local_rows)."""

    placements: RowPlacements
    shared_bias: bool  # one bias row shared by every row
    y: torch.Tensor
    bias: torch.Tensor | None
    weights: torch.Tensor | None


def _local_rows(fn: str, y: Any, bias: Any, weights: Any, interleaved: Any) -> LocalRows:
    """The local shards of DTensor arguments (input [..., 2H]) in _row_placements: the weights and a
    per-row bias brought to input's rows (and columns), a shared bias to its columns. The shapes are
    checked first, as prepare checks them, with the global shapes in the messages."""
    _check_input_shape(fn, y)
    _check_row_shapes(fn, y, bias, weights)
    lead, two_h = tuple(y.shape[:-1]), y.shape[-1]
    where = _row_placements(y, interleaved is True)
    w = b = None
    if weights is not None:
        w = _like_rows(weights, (*lead, 1), where.weights).to_local(grad_placements=where.weights_grad)
    shared = bias is not None and bias.numel() == two_h and bias.shape[-1] == two_h
    if bias is not None:
        if shared:
            placements, grads = (_last_dim(p, bias.dim()) for p in (where.bias, where.bias_grad))
            b = bias.redistribute(placements=placements).to_local(grad_placements=grads)
        else:
            b = _like_rows(bias, tuple(y.shape), where.x).to_local()
    return LocalRows(where, shared, y.redistribute(placements=where.x).to_local(), b, w)


def _from_local(t: torch.Tensor, mesh: Any, placements: Sequence[Any], shape: tuple[int, ...]) -> Any:
    """A contiguous DTensor of global ``shape`` from its local shard (DTensor.from_local)."""
    from torch.distributed.tensor import DTensor

    stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    return DTensor.from_local(t, mesh, placements, run_check=False, shape=shape, stride=stride)


def _gated_on_local_rows(
    fn: str,
    mesh: Any,
    y: Any,
    bias: Any,
    weights: Any,
    local: Callable[..., torch.Tensor],
    fp8_input_store: Any,
    clamp_value: Any,
    interleaved: Any,
    params: Sequence[Any],
) -> Any:
    """An activation of DTensors: the kernels on each rank's rows, the result a DTensor.

    The activations work row by row, so with the rows sharded (Shard of any dimension of input but
    the last, on any mesh dimension) or replicated, each rank's local rows give its rows of the
    result, in input's placements; other placements are gathered first (_row_placements), the
    communication DTensor's operators would do. Everything is in DTensor's autograd, so the
    gradients come back in the arguments' placements, a shared bias's summed over the ranks."""
    args = _local_rows(fn, y, bias, weights, interleaved)
    out = local(args.y, args.bias, args.weights, fp8_input_store, clamp_value, interleaved, *params)
    return _from_local(out, mesh, args.placements.x, (*y.shape[:-1], y.shape[-1] // 2))


class _KernelGradients(torch.autograd.Function):
    """A *_back helper called on tensors that require grad: its results raise when differentiated."""

    @staticmethod
    def forward(ctx, fn, body, g, y, bias, weights):
        ctx.fn = fn
        return body(g, y, bias, weights)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{ctx.fn}: its gradients are computed by kernels and are not differentiable again; "
            "got a backward through them, expected none (the autograd Functions give first derivatives)."
        )


def backward_helper(
    impl: ActivationImpl,
    fn: str,
    g: torch.Tensor,
    y: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor | None,
    params: Sequence[float],
    clamp_value: float | None = None,
    interleaved: bool = False,
):
    """The *_back helpers: gradients without autograd. Returns (d_y, d_bias or None, d_weights or None).

    Their results are not differentiable; called on tensors that require grad (grad mode on), they
    come from _KernelGradients (whose forward calls this again, without grad mode), whose backward
    says so instead of giving no gradient."""
    tensors = (g, y, bias, weights)
    # Under a torch.func transform or forward-mode AD: the spec's eager backward in PyTorch ops, which
    # the transforms differentiate (as they do the reference's helpers); the same with a constant
    # torch.compile traces (the kernels take numbers).
    functional = transforms_active() or traced_constants(clamp_value, params)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not functional:
        if any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
            kwargs = {"params": params, "clamp_value": clamp_value, "interleaved": interleaved}
            return _KernelGradients.apply(fn, functools.partial(backward_helper, impl, fn, **kwargs), *tensors)
    mesh = None if functional else dtensor_mesh(fn, ("g", "input", "bias", "weights"), g, y, bias, weights)
    if mesh is not None:
        local = functools.partial(
            backward_helper, impl, fn, params=params, clamp_value=clamp_value, interleaved=interleaved
        )
        return _back_on_local_rows(fn, mesh, local, g, y, bias, weights, interleaved)
    interleaved = check_flag(fn, "interleaved", interleaved)
    y = lift_1d(y, weights)
    rows = prepare(fn, y, bias, weights)
    g = plain(fn, "g", g)
    _check_float(fn, "g", g)
    _check_device(fn, "g", g, y)
    if shapes_differ(g.shape, rows.out_shape):
        raise ValueError(f"{fn}: g has shape {tuple(g.shape)}; expected {rows.out_shape} (input {tuple(y.shape)})")
    params = scalars(fn, impl, params, functional)
    n_rows = rows.x.shape[0]
    g2 = _last_dim_contiguous(g.reshape(n_rows, rows.x.shape[1] // 2))
    clamp_value = check_clamp(fn, clamp_value, functional)
    if functional:
        clamp_value, params = traced_on(rows.x.device, clamp_value, params)
    # Under a transform the bias's sum is taken in PyTorch ops (differentiable); else a shared [2H]
    # bias's is summed in the kernel (bias_sum).
    _, mode, summed = backward_plan(clamp_value, rows.bias, True, bias is not None, n_rows, not functional)
    if functional:
        math_fn = _eager_math(impl, fn, impl.eager_backward)
        args = (clamp_value, interleaved, params, y.dtype, mode)
        d_x, d_w, d_b = eager_backward_rows(math_fn, g2, rows.x, rows.bias, rows.weight, *args)  # d_b None
    else:
        args = (clamp_value, interleaved, y.dtype, params, True, mode, summed)
        d_x, d_w, d_b = impl.backward(g2, rows.x, rows.bias, rows.weight, *args)
    d_x, d_x_bias = split_dx(d_x, mode, n_rows)
    d_bias = None
    if bias is not None:
        d_bias = _reduce_bias_grad(
            d_x_bias, d_b if summed else None, rows.bias, tuple(y.shape), tuple(bias.shape), bias.dtype
        )
    d_w = d_w.view(weights.shape) if weights is not None else None
    return d_x.view(y.shape), d_bias, d_w


@dataclass(frozen=True)
class LocalGradients:
    """How the gradients computed on a DTensor activation's local rows (_local_rows) become DTensors
    in the arguments' placements: what the seed Functions' backward and the *_back helpers need of
    the forward's DTensors (their metadata only; no tensor is kept)."""

    mesh: Any
    placements: RowPlacements
    shared_bias: bool  # one bias row shared by every row
    y_shape: tuple[int, ...]  # the global shapes and the placements of input, bias and weights
    y_placements: tuple[Any, ...]
    bias_shape: tuple[int, ...] | None
    bias_placements: tuple[Any, ...] | None
    weights_shape: tuple[int, ...] | None
    weights_placements: tuple[Any, ...] | None

    @staticmethod
    def of(mesh: Any, args: LocalRows, y: Any, bias: Any, weights: Any) -> LocalGradients:
        def meta(t: Any) -> tuple[Any, Any]:
            return (None, None) if t is None else (tuple(t.shape), tuple(t.placements))

        return LocalGradients(mesh, args.placements, args.shared_bias, *meta(y), *meta(bias), *meta(weights))

    def output(self, out: torch.Tensor) -> Any:
        """The output's local rows as the DTensor of its global shape [..., H]."""
        return _from_local(out, self.mesh, self.placements.x, (*self.y_shape[:-1], self.y_shape[-1] // 2))

    def local_g(self, fn: str, g: Any) -> torch.Tensor:
        """The local rows of an incoming gradient g of the output, a DTensor of its global shape."""
        from torch.distributed.tensor import DTensor

        out_shape = (*self.y_shape[:-1], self.y_shape[-1] // 2)
        if not isinstance(g, DTensor):
            raise TypeError(
                f"{fn}: the incoming gradient is a {type(g).__name__}; expected a DTensor of shape {out_shape}, "
                "as the output is"
            )
        if shapes_differ(g.shape, out_shape):
            raise ValueError(f"{fn}: g has shape {tuple(g.shape)}; expected {out_shape} (input {self.y_shape})")
        return _like_rows(g, out_shape, self.placements.x).to_local()

    def wrap(self, d_y: Any, d_bias: Any, d_w: Any) -> tuple[Any, Any, Any]:
        """The local gradients (d_y, d_bias, d_weights; None where not computed) as DTensors: each in
        its argument's placements, a bias's summed over the rows it broadcasts along and the ranks."""
        mesh, where = self.mesh, self.placements
        if d_y is not None:
            d_y = _from_local(d_y, mesh, where.x, self.y_shape).redistribute(placements=self.y_placements)
        if d_w is not None:
            d_w = _from_local(d_w, mesh, where.weights_grad, (*self.y_shape[:-1], 1))
            d_w = _like_rows(d_w, self.weights_shape, list(self.weights_placements))
        if d_bias is not None:
            bias_dim = len(self.bias_shape)
            if self.shared_bias:
                d_bias = _from_local(d_bias, mesh, _last_dim(where.bias_grad, bias_dim), self.bias_shape)
            else:  # per-row gradients, summed over the dimensions bias broadcasts along
                d_bias = _from_local(d_bias, mesh, where.x, self.y_shape)
                if d_bias.dim() > bias_dim:
                    d_bias = d_bias.sum(dim=tuple(range(d_bias.dim() - bias_dim)))
                pairs = zip(d_bias.shape, self.bias_shape, strict=True)
                dims = [i for i, (a, b) in enumerate(pairs) if b == 1 and a != 1]
                d_bias = d_bias.sum(dim=dims, keepdim=True) if dims else d_bias
            d_bias = d_bias.redistribute(placements=self.bias_placements)
        return d_y, d_bias, d_w


def _back_on_local_rows(
    fn: str, mesh: Any, local: Callable[..., Any], g: Any, y: Any, bias: Any, weights: Any, interleaved: Any
):
    """A *_back helper of DTensors (_local_rows): the kernels on each rank's rows; each gradient a
    DTensor in its argument's placements (LocalGradients)."""
    args = _local_rows(fn, y, bias, weights, interleaved)
    grads = LocalGradients.of(mesh, args, y, bias, weights)
    return grads.wrap(*local(grads.local_g(fn, g), args.y, args.bias, args.weights))


def fake_forward(x: torch.Tensor, fp8_store: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta function of every <name>_fwd op."""
    n_rows, two_h = x.shape
    out = x.new_empty((n_rows, two_h // 2))
    x_fp8 = x.new_empty((n_rows, two_h) if fp8_store else (0,), dtype=torch.uint8)
    return out, x_fp8


def fake_backward(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    x_dtype: torch.dtype,
    store_dx: bool = True,
    clamped_dx: str = "zero",
    bias_sum: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Meta function of every <name>_bwd op (clamped_dx "zero" without a clamp)."""
    check_bias_sum(bias, clamped_dx, bias_sum)
    n_rows, two_h = x.shape
    d_x = x.new_empty(((2 * n_rows if clamped_dx == "both" else n_rows), two_h) if store_dx else (0,), dtype=x_dtype)
    d_w = weight.new_empty(weight.shape) if weight is not None else x.new_empty((0,), dtype=torch.float32)
    d_b = x.new_empty((two_h,) if bias_sum else (0,), dtype=sum_dtype(x_dtype))
    return d_x, d_w, d_b


def register_op_autograd(forward_op: Any, backward_op: Any, n_params: int) -> None:
    """Make <name>_fwd differentiable through <name>_bwd, so the op alone works under autograd."""
    op_name = getattr(forward_op, "_qualname", "moe_utils op")  # e.g. moe_utils::swiglu_fwd

    def setup_context(ctx, inputs, output):
        x, bias, weight, fp8_store, clamp_value, interleaved, *params = inputs
        ctx.mark_non_differentiable(output[1])  # the fp8 copy is storage, not a result
        # Else autograd hands backward zeros of the fp8 copy's size for it: a fill of [N, 2H] bytes.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1] if fp8_store else x, bias, weight)
        ctx.x_dtype = x.dtype
        ctx.clamp_value = clamp_value
        ctx.interleaved = interleaved
        ctx.params = params
        ctx.reads_inputs = x.requires_grad or (bias is not None and bias.requires_grad)  # as function_forward

    def backward(ctx, grad_out, _grad_x_fp8):
        first_order_only(op_name, (grad_out,), ctx.reads_inputs)
        x_saved, bias, weight = ctx.saved_tensors
        needs_bias = bias is not None and ctx.needs_input_grad[1]
        plan = backward_plan(ctx.clamp_value, bias, ctx.needs_input_grad[0], needs_bias, grad_out.shape[0])
        store_dx, mode, summed = plan
        args = (ctx.clamp_value, ctx.interleaved, ctx.x_dtype, *ctx.params, store_dx, mode, summed)
        d_x, d_w, d_b = backward_op(grad_out, x_saved, bias, weight, *args)
        d_x, d_x_bias = split_dx(d_x, mode, grad_out.shape[0])
        d_bias = None
        if summed:
            d_bias = d_b.to(bias.dtype)
        elif needs_bias:
            d_bias = bias_grad(d_x_bias, bias)
        d_x = d_x if ctx.needs_input_grad[0] else None
        return (d_x, d_bias, d_w if weight is not None else None, None, None, None) + (None,) * n_params

    forward_op.register_autograd(backward, setup_context=setup_context)


def row_stride(bias: torch.Tensor | None) -> int:
    """Elements between bias rows: 0 for one row shared by every row of the input."""
    return bias.stride(0) if bias is not None and bias.dim() == 2 else 0


def eager_fp8_copy(x: torch.Tensor) -> torch.Tensor:
    """The saved copy of fp8_input_store on the eager path."""
    return to_fp8_saturated(x)
