"""The self-contained GRPO demo behind ``phasewatch demo``.

One module per concept: :mod:`~phasewatch.demo.corpus` (problems, plans, warm-up traces),
:mod:`~phasewatch.demo.task` (prompts and the verifier), :mod:`~phasewatch.demo.warmup`
(tokenizer, tiny model, supervised warm-up), :mod:`~phasewatch.demo.run` (the GRPO run with
phasewatch attached) and :mod:`~phasewatch.demo.report` (PNG/HTML/JSON report from the store).
Importing this package is cheap; torch, TRL and matplotlib load when the demo runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from phasewatch.demo import run

        return getattr(run, name)
    raise AttributeError(f"module 'phasewatch.demo' has no attribute {name!r}")
