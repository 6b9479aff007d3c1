"""Every Triton kernel compiles for the H100 (sm_90), on any machine.

Triton's interpreter runs the kernels' Python but skips the compiler's checks (types that change
inside a loop, a name bound to tiles of different shapes in two branches, ...): a kernel can pass
every CPU test and still fail to compile on the GPU. Here each kernel goes through the whole
compiler for a CUDA sm_90 target (the Triton wheel carries ptxas; no GPU needed), with its
constexpr switches on and off. Each case runs in a child process without TRITON_INTERPRET (the
interpreter replaces the kernels by Python functions the compiler cannot take).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
from moe_utils.codegen.specs import REGISTRY

#: Element type of each pointer argument; any other pointer is bf16 data.
POINTERS = {
    "x_fp8_ptr": "*u8",
    "weight_ptr": "*fp32",
    "d_weight_ptr": "*fp32",
    "map_ptr": "*u8",
    "probs_ptr": "*fp32",
    "perm_probs_ptr": "*fp32",
    "d_probs_ptr": "*fp32",
    "row_grad_ptr": "*fp32",
    "counts_ptr": "*i32",
    "fits_ptr": "*i32",
}
#: Pointers into the int64 routing plan and its scratch tables.
INT64_POINTERS = {
    "total_ptr",
    "seg_expert_off_ptr",
    "expert_count_ptr",
    "marker_ptr",
    "src_token_ptr",
    "token_ptr_ptr",
    "entry_ptr",
}


def compile_sm90(
    kernel, constexprs: dict, floats: tuple[str, ...] = (), types: dict | None = None, options: dict | None = None
) -> None:
    """Compile kernel for sm_90; arguments not in constexprs or types are typed by name; options are
    compiler options as a launch passes them (debug, ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel.fn
    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif types and name in types:
            signature[name] = types[name]
        elif name.endswith("_ptr"):
            signature[name] = "*i64" if name in INT64_POINTERS else POINTERS.get(name, "*bf16")
        else:
            signature[name] = "fp32" if name in floats else "i32"
    missing = set(constexprs) - set(names)
    assert not missing, f"{fn.__name__} has no arguments {missing}"
    src = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


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
        compile_sm90(getattr(mod, f"_{name}_bwd"), dict(flags, LOAD_FP8=on), floats, saved)


def compile_routing() -> None:
    """permute / unpermute kernels, every switch off, then on."""
    from moe_utils import permutation, routing, unpermutation

    for on in (False, True):
        compile_routing_once(permutation, routing, unpermutation, on)


def compile_routing_once(permutation, routing, unpermutation, on: bool) -> None:
    pdl = dict(PDL=2 if on else 0)  # programmatic dependent launch: wait and trigger, or neither
    blocks = dict(BLOCK_T=16, BLOCK_E=256, **pdl)
    compile_sm90(routing._count_kernel, blocks)
    compile_sm90(routing._scan_experts_kernel, dict(BLOCK_S=1024, BLOCK_E=8, **pdl))
    # With CHECK the launch compiles the map kernel with debug=True for its device_assert.
    check = dict(debug=True, sanitize_overflow=False) if on else None
    map_flags = dict(DROP_AND_PAD=on, PADDED=on, CHECK=on, PREFETCH=on, GROUP=routing._map_group(256), **blocks)
    compile_sm90(routing._map_kernel, map_flags, options=check)
    scatter = dict(PAD=on, PAD_ROWS=16, PLAN_TOKENS=64, BLOCK_K=8, BLOCK_H=2048, **pdl)
    off = dict(WRITE_PLAN=False, HAS_PROBS=False, DROP_AND_PAD=False)
    compile_sm90(permutation._scatter_rows_kernel, dict(scatter, SCALE=on, **off))  # unpermute's backward
    plan = dict(WRITE_PLAN=True, HAS_PROBS=on, DROP_AND_PAD=on)
    compile_sm90(permutation._scatter_rows_kernel, dict(scatter, SCALE=False, **plan))  # permute
    compile_sm90(
        unpermutation._gather_rows_kernel,
        dict(SCALE=on, PROBS_GRAD=on, ORDERED=on, BLOCK_H=1024, BLOCK_E=256, BLOCK_K=2, **pdl),
    )
    dot = dict(PAD=on, PAD_ROWS=16, BLOCK_K=8, BLOCK_H=2048, BLOCK_E=1024, **pdl)
    compile_sm90(unpermutation._scatter_dot_kernel, dot)


def _run_child(what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, __file__, what], env=env, capture_output=True, text=True, timeout=600, cwd=os.getcwd()
    )
    assert proc.returncode == 0, f"{what} does not compile for sm_90:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}"


@pytest.mark.parametrize("name", sorted(s.name for s in REGISTRY))
def test_generated_kernels_compile_for_sm90(name):
    _run_child(name)


def test_routing_kernels_compile_for_sm90():
    _run_child("routing")


if __name__ == "__main__":
    compile_routing() if sys.argv[1] == "routing" else compile_activation(sys.argv[1])
