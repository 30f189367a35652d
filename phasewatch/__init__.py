"""phasewatch: watch RL fine-tuning of language models for the execution-to-planning shift.

The public API is re-exported here lazily, so ``import phasewatch`` stays cheap (no torch,
no TRL) for the CLI and the ``phasewatch serve`` service; each name is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Config": "phasewatch.config",
    "StepRecord": "phasewatch.record",
    "CANONICAL_FIELDS": "phasewatch.record",
    "Event": "phasewatch.events",
    "Decision": "phasewatch.events",
    "Observation": "phasewatch.events",
    "DetectorReading": "phasewatch.events",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'phasewatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
