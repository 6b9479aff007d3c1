"""Every Triton kernel compiles for the H100 (sm_90), on any machine.

Triton's interpreter runs the kernels' Python but skips the compiler's checks (types that change
inside a loop, a name bound to tiles of different shapes in two branches, ...): a kernel can pass
every CPU test and still fail to compile on the GPU. Here each kernel goes through the whole
compiler for a CUDA sm_90 target (the Triton wheel carries ptxas; no GPU needed), with its
constexpr switches on and off. Each case runs in a child process without TRITON_INTERPRET (the
interpreter replaces the kernels by Python functions the compiler cannot take).

It also holds the SASS of one loop to a property the GPU's speed depends on (the routing plan's
map kernel keeps its step in registers); ``benchmarks/sass_loop.py`` prints such counts.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import triton
import triton.language as tl
from moe_utils.codegen.specs import REGISTRY

from moe_utils import _kernel_lib
from moe_utils import _runtime as rt

#: Element type of each pointer argument; any other pointer is bf16 data.
POINTERS = {
    "x_fp8_ptr": "*u8",
    "weight_ptr": "*fp32",
    "d_weight_ptr": "*fp32",
    "d_bias_ptr": "*fp32",
    "map_ptr": "*u8",
    "probs_ptr": "*fp32",
    "perm_probs_ptr": "*fp32",
    "d_probs_ptr": "*fp32",
    "row_grad_ptr": "*fp32",
    "counts_ptr": "*i32",
    "seg_expert_off_ptr": "*i32",
    "fits_ptr": "*i32",
}
#: Pointers into the int64 routing plan and its scratch tables.
INT64_POINTERS = {
    "total_ptr",
    "expert_count_ptr",
    "src_token_ptr",
    "token_ptr_ptr",
    "entry_ptr",
    "rows_ptr",
}


def _signature(kernel, constexprs: dict, floats, types: dict | None) -> dict[str, str]:
    """Triton types of kernel's arguments: constexprs, types, then by name (POINTERS and
    INT64_POINTERS, other pointers bf16, floats fp32, the rest int32)."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif types and name in types:
            signature[name] = types[name]
        elif name.endswith("_ptr"):
            signature[name] = "*i64" if name in INT64_POINTERS else POINTERS.get(name, "*bf16")
        else:
            signature[name] = "fp32" if name in floats else "i32"
    return signature


def compile_sm90(
    kernel,
    constexprs: dict,
    floats: tuple[str, ...] = (),
    types: dict | None = None,
    options: dict | None = None,
    aligned_ints=None,
):
    """Compile kernel for sm_90 and return it; arguments not in constexprs or types are typed by
    name; options are compiler options as a launch passes them (debug, ...), beside the
    _runtime.COMPILE_OPTIONS that every launch passes. With aligned_ints
    (sass()), pointers and those integer arguments are declared multiples of 16, as the JIT does
    at an aligned launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = _signature(kernel, constexprs, floats, types)
    missing = set(constexprs) - set(names)
    assert not missing, f"{kernel.fn.__name__} has no arguments {missing}"
    attrs = None
    if aligned_ints is not None:
        aligned = [i for i, n in enumerate(names) if signature[n].startswith("*") or n in aligned_ints]
        attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    options = {**rt.COMPILE_OPTIONS, **(options or {})}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


#: Integer arguments declared multiples of 16 in sass(), as the JIT declares them at a launch whose
#: tensors are aligned and whose widths and counts are multiples of 16 (the benchmarks' shapes).
ALIGNED_INTS = {"H", "x_row_stride", "grad_out_row_stride", "map_stride_t"}
SASS_LINE = re.compile(r"\s+/\*([0-9a-f]{4})\*/")


def sass(kernel, constexprs: dict, warps: int, floats=(), ints=frozenset(), types=None) -> tuple[list[str], int]:
    """kernel compiled for sm_90 and disassembled (cuobjdump from the Triton wheel): its SASS lines
    and registers per thread. Arguments are typed by name (floats: fp32; types: any), pointers,
    ALIGNED_INTS and ints declared multiples of 16: without that, loads and stores are not
    vectorised and the code is not the launch's."""
    import triton

    compiled = compile_sm90(kernel, constexprs, floats, types, dict(num_warps=warps), ALIGNED_INTS | set(ints))
    cubin = Path(f"/tmp/moe_utils_sass_{os.getpid()}.cubin")
    cubin.write_bytes(compiled.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    text = subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    cubin.unlink()
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    return [line for line in text.splitlines() if SASS_LINE.match(line)], regs


def loop_body(lines: list[str]) -> list[str]:
    """The longest span that ends in a branch back to its start; all lines if there is none."""
    addr = [int(SASS_LINE.match(line).group(1), 16) for line in lines]
    best = None
    for i, line in enumerate(lines):
        m = re.search(r"BRA 0x([0-9a-f]+)\s*;", line)
        if m and int(m.group(1), 16) < addr[i]:
            start = addr.index(int(m.group(1), 16)) if int(m.group(1), 16) in addr else 0
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
    return lines if best is None else lines[best[0] : best[1] + 1]


def map_step(
    block_t: int, block_e: int, prefetch: bool = True, words: bool = False, pairs: bool = False
) -> tuple[list[str], int]:
    """The map kernel's step (its loop) at a launch's specializations: the experts' stride 1, the
    token, row and segment counts multiples of 16, and E too where it is one (E = BLOCK_E >= 16);
    one warp up to 256 experts, as routing._map_warps gives. words: the word walk (one-token
    steps, or two with pairs; its loop holds both branches of each token's placement)."""
    from moe_utils import routing

    cx = dict(DROP_AND_PAD=False, CHECK=False, BLOCK_T=block_t, BLOCK_E=block_e, PREFETCH=prefetch)
    cx.update(SCAN=False, BLOCK_S=1, WORDS=words, WORDS_PAIRS=pairs)
    cx.update(PDL=1, map_stride_e=1, GROUP=routing._map_group(block_e))
    ints = {"T", "N", "seg_len"} | ({"E"} if block_e >= 16 else set())
    lines, regs = sass(routing._map_kernel, cx, routing._map_warps(block_t, block_e), ints=ints)
    return loop_body(lines), regs


def check_map_step() -> None:
    """With one warp per program the map kernel's step moves nothing through shared memory: its
    tiles are laid out so that the entry store (data-dependent addresses) needs no layout
    conversion (routing._map_kernel). Session 14's flat tiles spent 48 of 345 instructions a
    one-token step at E = 256 converting; the step is 201 since session 15."""
    # The word walk too (its per-expert branch stores a [groups, GROUP] tile). On Triton 3.7-3.9 both
    # walks took 19-49 shared-memory instructions a step until session 39 (routing._GROUP_AXIS_FIRST).
    walks = [(block_t, block_e, False, False) for block_t, block_e in ((1, 256), (2, 128), (4, 64), (32, 8), (64, 4))]
    walks += [(1, 256, True, False), (1, 256, True, True), (1, 64, True, True)]
    for block_t, block_e, words, pairs in walks:
        body, _ = map_step(block_t, block_e, words=words, pairs=pairs)
        shared = [line for line in body if re.search(r"\b(STS|LDS|BAR)\b", line)]
        what = f"map step [{block_t}, {block_e}]" + (" (word walk" + (", pairs)" if pairs else ")") if words else "")
        assert not shared, f"{what} goes through shared memory:\n" + "\n".join(shared)
    body, _ = map_step(1, 256)
    assert len(body) <= 240, f"map step [1, 256]: {len(body)} SASS instructions (201 in session 15)"


def check_activation_sass() -> None:
    """Two properties of the generated activations' SASS that their speed depends on (session 28).

    exact GEGLU's forward calls _kernel_lib.erf, both of erff's polynomials and a select: 616
    instructions at [8, 256] x 4 warps, where tl.erf (each coefficient picked per element) took 736
    and was 4% behind Inductor at 16384 x 768. In the interleaved layout the tiles that meet the
    split of x's pairs (_kernel_lib.half_columns) take its layout: the weighted backward and the
    forward go through shared memory no more than in the split layout (the backward had 8 shared
    loads, 8 stores and 9 barriers against 2, 2 and 3, and was 8-11% slower)."""
    exact = importlib.import_module("moe_utils.generated.exact_geglu")
    swiglu = importlib.import_module("moe_utils.generated.swiglu")
    flags = dict(HAS_BIAS=False, HAS_WEIGHT=True, CLAMP=False, NATIVE_FP8=True, BLOCK_R=8, BLOCK_H=256)
    fwd = dict(flags, STORE_FP8=False, INTERLEAVED=False, X_POLICY="")
    lines, _ = sass(exact._exact_geglu_fwd, fwd, 4, floats=("clamp_value",))
    assert len(lines) <= 650, f"exact GEGLU forward [8, 256] x 4: {len(lines)} SASS instructions (616 in session 28)"

    def shared(kernel, cx):
        lines, _ = sass(kernel, cx, 4, floats=("clamp_value",))
        return sum(1 for line in lines if re.search(r"\b(STS|LDS|BAR)\b", line))

    bwd = dict(flags, LOAD_FP8=False, STORE_DX=True, CLAMPED_DX="zero", BIAS_SUM=False, ROW_STEPS=1)
    bwd.update(BLOCK_R=1, BLOCK_H=1024)
    split, inter = (shared(swiglu._swiglu_bwd, dict(bwd, INTERLEAVED=on)) for on in (False, True))
    assert inter <= split, f"interleaved backward: {inter} shared-memory instructions, split {split}"
    # Without STORE_DX (only the weights require grad) the backward's one global store is d_weights'.
    for layout in (False, True):
        lines, _ = sass(swiglu._swiglu_bwd, dict(bwd, STORE_DX=False, INTERLEAVED=layout), 4, floats=("clamp_value",))
        stores = [line for line in lines if re.search(r"\bSTG\b", line)]
        assert len(stores) == 1, "backward without STORE_DX stores more than d_weights:\n" + "\n".join(stores)
    split, inter = (shared(swiglu._swiglu_fwd, dict(fwd, INTERLEAVED=on)) for on in (False, True))
    assert inter <= split, f"interleaved forward: {inter} shared-memory instructions, split {split}"
    # The forward that stores the fp8 copy issues every load (x's halves, the routing weight, the
    # bias) before its first store (session 48): the weight and the bias loaded after the copy's
    # stores, as until then, were a second memory round trip a program (ptxas cannot move a load
    # past a store that may alias it).
    for spec in REGISTRY:
        kernel = getattr(importlib.import_module(f"moe_utils.generated.{spec.name}"), f"_{spec.name}_fwd")
        for block_r, block_h, bias in ((8, 128, False), (1, 1024, False), (8, 128, True)):
            cx = dict(fwd, STORE_FP8=True, CLAMP=True, HAS_BIAS=bias, BLOCK_R=block_r, BLOCK_H=block_h)
            lines, _ = sass(kernel, cx, 4, floats=("clamp_value", "linear_offset", "alpha", "limit"))
            order = "".join("L" if " LDG" in line else "S" for line in lines if re.search(r"\b(LDG|STG)\b", line))
            what = f"{spec.name} fp8 forward [{block_r}, {block_h}]" + (" with a bias" if bias else "")
            assert "SL" not in order, f"{what}: loads after a store ({order})"


@triton.jit
def _tl_erf_kernel(x_ptr, out_ptr):
    offs = tl.program_id(0) * 128 + tl.arange(0, 128)
    tl.store(out_ptr + offs, tl.erf(tl.load(x_ptr + offs)))


@triton.jit
def _our_erf_kernel(x_ptr, out_ptr):
    offs = tl.program_id(0) * 128 + tl.arange(0, 128)
    tl.store(out_ptr + offs, _kernel_lib.erf(tl.load(x_ptr + offs)))


def check_erf_constants() -> None:
    """_kernel_lib.erf is libdevice's erff with the coefficients of the libdevice that this Triton
    links (_kernel_lib.ERF_CUDA13 picks them by version): every fp32 constant of tl.erf's PTX is one
    of its own. Triton 3.9's libdevice (CUDA 13's) took other far-branch coefficients, and on the GPU
    erf then missed tl.erf's bits at 7.3 million inputs (session 47); a Triton whose libdevice moves
    them again fails here, on the CPU, before any GPU run."""

    def constants(kernel) -> set[str]:
        ptx = compile_sm90(kernel, {}, types={"x_ptr": "*fp32", "out_ptr": "*fp32"}).asm["ptx"]
        return set(re.findall(r"\b0f[0-9A-F]{8}\b", ptx))

    theirs, ours = constants(_tl_erf_kernel), constants(_our_erf_kernel)
    assert len(theirs) >= 15, f"tl.erf's PTX has {len(theirs)} fp32 constants, expected erff's 14 and its switch"
    assert theirs <= ours, f"tl.erf's constants that _kernel_lib.erf lacks: {sorted(theirs - ours)}"


def compile_activation(name: str) -> None:
    """The forward and backward kernels of one generated activation, every switch off, then on."""
    spec = next(s for s in REGISTRY if s.name == name)
    mod = importlib.import_module(f"moe_utils.generated.{name}")
    floats = ("clamp_value", *(p.name for p in spec.params))
    for on in (False, True):
        flags = dict(HAS_BIAS=on, HAS_WEIGHT=on, CLAMP=on, NATIVE_FP8=True, INTERLEAVED=on, BLOCK_R=2, BLOCK_H=2048)
        fwd = dict(flags, STORE_FP8=on, X_POLICY="evict_first" if on else "")
        compile_sm90(getattr(mod, f"_{name}_fwd"), fwd, floats)
        saved = {"x_ptr": "*u8" if on else "*bf16"}  # the backward reads the fp8 copy's bits
        # with the clamp on, also d_x where it changed a value (the bias's gradient) in rows T to 2T
        bwd = dict(flags, LOAD_FP8=on, STORE_DX=True, CLAMPED_DX="both" if on else "zero", BIAS_SUM=False, ROW_STEPS=1)
        compile_sm90(getattr(mod, f"_{name}_bwd"), bwd, floats, saved)
        # d_weights alone (only the weights require grad)
        bwd = dict(bwd, HAS_WEIGHT=True, STORE_DX=False, CLAMPED_DX="zero")
        compile_sm90(getattr(mod, f"_{name}_bwd"), bwd, floats, saved)
        # the shared bias's gradient summed over 4 blocks of rows a program, with d_x or without
        bwd = dict(bwd, HAS_BIAS=True, HAS_WEIGHT=on, STORE_DX=on, BIAS_SUM=True, ROW_STEPS=4)
        compile_sm90(getattr(mod, f"_{name}_bwd"), bwd, floats, saved)


def compile_column_sums() -> None:
    """_kernel_lib.column_sums (the partial sums of the bias's gradient) at both column widths, in
    _runtime.column_sums_plan's shape (16 KB steps, two loaded ahead into 32 KB of shared memory) and
    in one step at a time."""
    from moe_utils import _kernel_lib

    types = {"src_ptr": "*fp32", "dst_ptr": "*fp32"}
    for block_c in (16, 32):
        for block_p, warps, stages in ((4096 // block_c, 4, 3), (128, 4, 1), (512, 8, 1)):
            constexprs = dict(BLOCK_P=block_p, BLOCK_C=block_c, STAGES=stages)
            compile_sm90(_kernel_lib.column_sums, constexprs, types=types, options=dict(num_warps=warps))


def compile_routing() -> None:
    """permute / unpermute kernels, every switch off, then on."""
    from moe_utils import permutation, routing, unpermutation

    for on in (False, True):
        compile_routing_once(permutation, routing, unpermutation, on)


def compile_routing_once(permutation, routing, unpermutation, on: bool) -> None:
    import triton.language as tl

    pdl = dict(PDL=2 if on else 0)  # programmatic dependent launch: wait and trigger, or neither
    blocks = dict(BLOCK_T=16, BLOCK_E=256, **pdl)
    compile_sm90(routing._count_kernel, blocks)
    compile_sm90(routing._scan_experts_kernel, dict(BLOCK_S=1024, BLOCK_E=8, **pdl))
    # With CHECK the launch compiles the map kernel with debug=True for its device_assert.
    check = dict(debug=True, sanitize_overflow=False) if on else None
    map_flags = dict(DROP_AND_PAD=on, CHECK=on, PREFETCH=on, GROUP=routing._map_group(256), WORDS=False)
    map_flags.update(WORDS_PAIRS=on)  # the word walk in two-token steps
    map_flags.update(SCAN=on, BLOCK_S=4 if on else 1, **blocks)
    compile_sm90(routing._map_kernel, map_flags, options=check)
    # the word walk's one-token steps (switches off), then its two-token steps (on)
    compile_sm90(routing._map_kernel, dict(map_flags, BLOCK_T=1, WORDS=True), options=check)
    acc = dict(ACC=tl.float64 if on else tl.float32)  # compute dtype: fp64 for fp64 data (routing.compute_dtype)
    scatter = dict(PAD=on, PAD_ROWS=64, PLAN_TOKENS=64, BLOCK_K=8, BLOCK_H=2048, **acc, **pdl)
    off = dict(WRITE_PLAN=False, HAS_PROBS=False, DROP_AND_PAD=False)
    # unpermute's backward without the probs gradient, then permute
    compile_sm90(permutation._scatter_rows_kernel, dict(scatter, SCALE=on, EARLY_SRC=False, STORE_CACHE="", **off))
    plan = dict(WRITE_PLAN=True, HAS_PROBS=on, DROP_AND_PAD=on, EARLY_SRC=on, STORE_CACHE=".cs" if on else "")
    compile_sm90(permutation._scatter_rows_kernel, dict(scatter, SCALE=False, **plan))  # permute
    # the gather on the 2-D grid at top-2, then in memory order at top-8 (its widest tile)
    gather = dict(ORDERED=on, BLOCK_H=2048, BLOCK_K=8) if on else dict(ORDERED=on, BLOCK_H=1024, BLOCK_K=2)
    flags = dict(SCALE=on, PROBS_GRAD=on, BLOCK_E=256, ROW_STORE=on)
    compile_sm90(unpermutation._gather_rows_kernel, dict(flags, **gather, **acc, **pdl))
    dot = dict(PAD=on, PAD_ROWS=64, BLOCK_K=8, BLOCK_H=2048, BLOCK_E=1024, **acc, **pdl)
    compile_sm90(unpermutation._scatter_dot_kernel, dot)


def _run_child(what: str, failure: str = "does not compile for sm_90") -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, __file__, what], env=env, capture_output=True, text=True, timeout=600, cwd=os.getcwd()
    )
    assert proc.returncode == 0, f"{what} {failure}:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}"


@pytest.mark.parametrize("name", sorted(s.name for s in REGISTRY))
def test_generated_kernels_compile_for_sm90(name):
    _run_child(name)


def test_routing_kernels_compile_for_sm90():
    _run_child("routing")


def test_column_sums_compiles_for_sm90():
    _run_child("column_sums")


def test_map_kernel_step_stays_in_registers():
    _run_child("map_step", "fails its SASS check")


def test_activation_kernels_keep_their_sass():
    _run_child("activation_sass", "fails its SASS check")


def test_kernel_lib_erf_has_the_constants_of_this_tritons_libdevice():
    _run_child("erf_constants", "differs from tl.erf")


if __name__ == "__main__":
    checks = {
        "routing": compile_routing,
        "column_sums": compile_column_sums,
        "map_step": check_map_step,
        "activation_sass": check_activation_sass,
        "erf_constants": check_erf_constants,
    }
    checks.get(sys.argv[1], lambda: compile_activation(sys.argv[1]))()
