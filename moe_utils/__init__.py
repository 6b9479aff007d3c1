"""moe_utils: fused Mixture-of-Experts kernels, a drop-in for Megatron-Core / NeMo Automodel's moe_utils.

The gated activations (swiglu, geglu, quick_geglu, ...) are generated from sympy specs into
``moe_utils.generated``; permute and unpermute are hand-written Triton kernels.

Submodules load on first use (PEP 562), so ``regenerate-kernels`` can import the code generator
even while ``generated/`` is being rewritten.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# Hand-written public names -> the submodule that defines them.
_HAND_WRITTEN = {
    "MoEAuxLossAutoScaler": "moe_utils.aux_loss",
    "permute": "moe_utils.permutation",
    "unpermute": "moe_utils.unpermutation",
    "quick_gelu": "moe_utils.gelu",
}


def _generated() -> Any:
    try:
        return importlib.import_module("moe_utils.generated")
    except ModuleNotFoundError as error:
        # The source tree's moe_utils/ holds the hand-written modules only; generated/, codegen/ and
        # templates/ sit beside it and join the namespace through the install (pyproject's
        # package-dir). Imported from the checkout's root without an editable install (`pip
        # install .`, then `python -m pytest` from the root), Python finds the folder first.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if error.name == "moe_utils.generated" and os.path.isfile(os.path.join(root, "generated", "__init__.py")):
            raise ModuleNotFoundError(
                f"moe_utils was imported from the source checkout {root} (the current directory or "
                "sys.path), where moe_utils.generated is not a subfolder: install the checkout with "
                "`pip install -e .`, or run from another directory to use the installed package",
                name=error.name,
            ) from error
        raise


def __getattr__(name: str) -> Any:
    if name == "__all__":
        value: Any = sorted([*_HAND_WRITTEN, *_generated().__all__])
    elif name in _HAND_WRITTEN:
        value = getattr(importlib.import_module(_HAND_WRITTEN[name]), name)
    elif not name.startswith("_") and name in _generated().__all__:
        value = getattr(_generated(), name)
    else:
        raise AttributeError(f"module 'moe_utils' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__getattr__("__all__")))
