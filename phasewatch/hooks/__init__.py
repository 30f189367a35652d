"""Trainer hooks: where phasewatch meets a training loop.

``torch`` holds :class:`Watcher`, the trainer-agnostic core; ``trl`` and ``verl`` adapt it to
one trainer each. Importing this package imports no trainer: each name is loaded on first use,
so ``phasewatch.hooks.Watcher`` works without TRL or verl installed.
"""

from __future__ import annotations

from phasewatch._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Watcher": "phasewatch.hooks.torch",
    "WatchResult": "phasewatch.hooks.torch",
    "FailOpen": "phasewatch.hooks.torch",
    "PhaseWatchGRPOTrainer": "phasewatch.hooks.trl",
    "PhaseWatchMixin": "phasewatch.hooks.trl",
    "attach": "phasewatch.hooks.trl",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
