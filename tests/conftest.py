"""Shared test setup.

Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET=1 must be set before
triton is imported, so it is set here, before any test module imports moe_utils. With a GPU the
same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import math
import os
import tempfile

# torch.compile tests compile into an Inductor cache of their own. Inductor's on-disk cache keys a
# graph by its code, not by the fake kernels of our custom ops: a cache left by another checkout
# (another routing-plan length) replayed a graph compiled against the old output sizes.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="moe_utils-tests-inductor-")

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One of several test processes (pytest -n): one intra-op thread each, so that the workers do
    # not contend for the CPUs with torch's thread pools.
    torch.set_num_threads(1)

import pytest

from moe_utils import _runtime as rt


def pytest_collection_modifyitems(items: list) -> None:
    """Tests marked slow (a minute or more each under the interpreter) run first. With two test
    processes (pytest -n 2 --dist worksteal) a long test collected last ran alone at the end while
    the other process idled: the CPU suite took 11.4-14.6 min for the same 23 CPU-minutes of tests
    (session 27, the six slow tests 59-163 s each)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


#: Where kernels run in this session.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
#: The Triton path is testable here (GPU, or CPU under the interpreter).
TRITON = ON_GPU or rt.INTERPRET

#: Relative error bound ||out - ref|| / ||ref|| per storage dtype, against float64 references.
REL_TOL = {torch.float64: 1e-12, torch.float32: 3e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
#: Elementwise (rtol, atol) per storage dtype; atol is relative to the reference's max magnitude.
ELEM_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (4e-3, 2e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def assert_close_to_ref(
    out: torch.Tensor,
    ref: torch.Tensor,
    dtype: torch.dtype,
    what: str = "",
    bound: torch.Tensor | None = None,
    rel_tol: float | None = None,
) -> None:
    """out (any dtype) against a float64 reference, with a tolerance tied to the storage dtype.

    For reductions (the weight gradient), ``bound`` is the sum of absolute terms: cancellation makes
    the error relative to it, not to the result. ``rel_tol`` replaces the dtype's bound on the
    relative error of the norm (REL_TOL), where a caller says why.
    """
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out64 = out.detach().to(torch.float64).cpu()
    ref64 = ref.detach().to(torch.float64).cpu()
    assert not torch.isnan(out64).any(), f"{what}: NaN in output (unwritten element or bad math)"
    if ref64.numel() == 0:
        return
    if bound is not None:
        err = (out64 - ref64).abs()
        # plus the spacing of the dtype's subnormals: fp16 stores values below 6.1e-5 to 6e-8 absolute
        subnormal = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
        limit = ELEM_TOL[dtype][0] * bound.detach().to(torch.float64).cpu() + subnormal
        assert torch.all(err <= limit), f"{what}: error {err.max().item():.3g} beyond {ELEM_TOL[dtype][0]} x sum|terms|"
        return
    scale = ref64.abs().max().item() or 1.0
    rel = (out64 - ref64).norm().item() / (ref64.norm().item() or 1.0)
    rel_tol = REL_TOL[dtype] if rel_tol is None else rel_tol
    assert rel <= rel_tol, f"{what}: relative error {rel:.3g} > {rel_tol:.3g} ({dtype})"
    rtol, atol = ELEM_TOL[dtype]
    torch.testing.assert_close(out64, ref64, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every output of our kernels starts as NaN / garbage, so an unwritten element fails a test."""
    with rt.poisoned_outputs():
        yield


@pytest.fixture(params=["triton", "eager"])
def backend(request):
    """Run a test on the Triton path and on the generated eager path."""
    if request.param == "triton":
        if not TRITON:
            pytest.skip("no GPU and TRITON_INTERPRET is not 1")
        yield "triton"
    else:
        with rt.eager_backend():
            yield "eager"


class FactoryLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Every tensor the code under it allocates or fills: (op name, shape, dtype) in .made."""

    KINDS = ("empty", "zeros", "zero_", "fill", "full")

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(kind in func.__name__ for kind in self.KINDS) and isinstance(out, torch.Tensor):
            self.made.append((func.__name__, tuple(out.shape), out.dtype))
        return out

    def nonempty(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [made for made in self.made if math.prod(made[1])]


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t one element into its storage: a base address that is not a multiple
    of 16 bytes (Triton specialises pointers on that; the kernels must not assume it)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0 and torch.equal(out, t)
    return out
