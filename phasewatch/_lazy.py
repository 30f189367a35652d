"""Lazy re-exports for package ``__init__`` modules.

A package lists its public names and the module that defines each; a name's module is
imported on first use. This keeps ``import phasewatch`` (and ``phasewatch.hooks``,
``phasewatch.grams``) cheap: no torch, TRL or embedding model is loaded until a name that
needs it is touched.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(
    package: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public names map to modules in
    ``exports``. A loaded name is cached in ``namespace`` (the package's ``globals()``), so
    the module-level ``__getattr__`` runs once per name."""
    names = sorted(set(exports) | {n for n in namespace.get("__all__", ())})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
