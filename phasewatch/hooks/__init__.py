"""Trainer hooks: where phasewatch meets a training loop.

``torch`` holds :class:`Watcher`, the trainer-agnostic core; ``trl`` and ``verl`` adapt it to
one trainer each. Importing this package imports no trainer: each name is loaded on first use,
so ``phasewatch.hooks.Watcher`` works without TRL or verl installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Watcher": "phasewatch.hooks.torch",
    "WatchResult": "phasewatch.hooks.torch",
    "FailOpen": "phasewatch.hooks.torch",
    "PhaseWatchGRPOTrainer": "phasewatch.hooks.trl",
    "PhaseWatchMixin": "phasewatch.hooks.trl",
    "attach": "phasewatch.hooks.trl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'phasewatch.hooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
