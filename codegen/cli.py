"""``regenerate-kernels``: render generated/ from the specs, or check that it is in step.

regenerate-kernels                      # built-in specs -> moe_utils/generated
regenerate-kernels --check              # exit 1 with a diff when generated/ is stale
regenerate-kernels --spec my_mod:MY_SPEC --out my_pkg/generated --namespace my_pkg
regenerate-kernels --spec path/to/acts.py:MY_SPEC --out my_pkg/generated --namespace my_pkg
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .derive import derive
from .render import check, render_package, write
from .spec import ActivationSpec, SpecError, make_registry

#: generated/ beside codegen/: the repository folder in an editable install, the package folder
#: moe_utils/generated in a regular one.
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "generated"


def _import(module_name: str, ref: str):
    """A module by dotted name (the current directory is searched first, as with ``python -m``) or
    by file path (``path/to/acts.py``)."""
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            path = Path(module_name).resolve()
            if not path.is_file():
                raise ImportError(f"no such file: {path}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules.setdefault(path.stem, module)
            loader_spec.loader.exec_module(module)
            return module
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"regenerate-kernels: cannot import {module_name!r} for --spec {ref}: {exc}") from exc


def _load_spec(ref: str) -> list[ActivationSpec]:
    module_name, _, attr = ref.rpartition(":")
    if not module_name or not attr:
        raise SystemExit(f"regenerate-kernels: --spec wants module:NAME or path/to/file.py:NAME, got {ref!r}")
    module = _import(module_name, ref)
    if not hasattr(module, attr):
        raise SystemExit(f"regenerate-kernels: module {module_name!r} has no attribute {attr!r}")
    value = getattr(module, attr)
    specs = list(value) if isinstance(value, (list, tuple)) else [value]
    for spec in specs:
        if not isinstance(spec, ActivationSpec):
            raise SystemExit(
                f"regenerate-kernels: {ref} is a {type(spec).__name__}, not a moe_utils.codegen.ActivationSpec"
            )
    return specs


def _short(expr: object, width: int = 60) -> str:
    text = str(expr)
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="regenerate-kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="render in memory; exit 1 with a diff if stale")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="render these specs (an ActivationSpec or a list of them) instead of the built-in ones",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="torch.library namespace of the ops (default: moe_utils; required with --spec)",
    )
    args = parser.parse_args(argv)

    if args.spec:
        if args.out is None or args.namespace is None:
            parser.error("--spec needs --out and --namespace (ops of your package must not clash with ours)")
        specs_in = [s for ref in args.spec for s in _load_spec(ref)]
        source = " ".join(args.spec)
    else:
        from .specs import REGISTRY

        specs_in = list(REGISTRY)
        source = "codegen/specs.py"
    out_dir = args.out or DEFAULT_OUT
    try:
        specs = make_registry(specs_in)
        namespace = "moe_utils" if args.namespace is None else args.namespace  # "" is an error, not ours
        files = render_package(specs, source=source, op_namespace=namespace)
    except SpecError as exc:
        print(f"regenerate-kernels: {exc}", file=sys.stderr)
        return 2

    if args.check:
        diffs = check(out_dir, files)
        if diffs:
            sys.stdout.write("".join(diffs))
            print(f"regenerate-kernels --check: {out_dir} is stale ({len(diffs)} file(s)); run regenerate-kernels")
            return 1
        print(f"regenerate-kernels --check: {out_dir} is in step with {len(specs)} spec(s)")
        return 0

    try:
        statuses = dict(write(out_dir, files))
    except FileExistsError as exc:
        print(f"regenerate-kernels: {exc}", file=sys.stderr)
        return 2
    print(f"{'activation':<14} {'derived':<70} file")
    for spec in specs:
        d = derive(spec)
        name = f"{spec.name}.py"
        print(f"{spec.name:<14} {'f = ' + _short(d.act):<70} {name} ({statuses.get(name, '?')})")
        print(f"{'':<14} {'df/dgate = ' + _short(d.d_gate):<70}")
        print(f"{'':<14} {'df/dup = ' + _short(d.d_up):<70}")
    for name, status in sorted(statuses.items()):
        if name.removesuffix(".py") not in {s.name for s in specs}:
            print(f"{'':<14} {'':<70} {name} ({status})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
