"""The self-contained GRPO demo behind ``phasewatch demo``.

One module per concept: :mod:`~phasewatch.demo.corpus` (problems, plans, warm-up traces),
:mod:`~phasewatch.demo.task` (prompts and the verifier), :mod:`~phasewatch.demo.warmup`
(tokenizer, tiny model, supervised warm-up), :mod:`~phasewatch.demo.run` (the GRPO run with
phasewatch attached) and :mod:`~phasewatch.demo.report` (PNG/HTML/JSON report from the store).
Importing this package is cheap; torch, TRL and matplotlib load when the demo runs.
"""

from __future__ import annotations

from phasewatch._lazy import lazy_exports

_EXPORTS: dict[str, str] = {name: "phasewatch.demo.run" for name in ("DemoConfig", "DemoResult", "run_demo")}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
