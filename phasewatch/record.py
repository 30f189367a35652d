"""The flat per-step record: the one input type of the monitor.

Hooks build it from a :class:`~phasewatch.stats.StepStats`, ``phasewatch replay`` reads it
from a CSV or JSON-lines row, and ``phasewatch serve`` parses it from an HTTP body. Keeping a
single flat shape (``{"step": 12, "entropy/planning": 0.61, ...}``) means every source feeds the
same detectors and every sink (store, Prometheus, replay output) reads the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: Field names every part of phasewatch agrees on. Entropies and NLLs are in nats.
CANONICAL_FIELDS: tuple[str, ...] = (
    "entropy",  # mean token entropy over all completion tokens
    "entropy/planning",  # mean token entropy over planning tokens
    "entropy/execution",  # mean token entropy over execution tokens
    "semantic_entropy",  # Shannon entropy (nats) of the strategic-gram frequency distribution
    "nll/planning",  # mean negative log-likelihood of planning tokens
    "nll/execution",  # mean negative log-likelihood of execution tokens
    "planning_frac",  # planning tokens / all completion tokens
    "reward",  # mean reward of the step's rollouts
    "response_length",  # mean completion length in tokens
)


def _as_float(name: str, value: Any) -> float | None:
    """Coerce one field value; ``None``/NaN mean "missing" (real logs have gaps)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"field {name!r}: expected a number, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        if text == "" or text.lower() in {"nan", "none", "null"}:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"field {name!r}: {value!r} is not a number") from None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"field {name!r}: expected a number, got {type(value).__name__}") from None
    if math.isnan(out):
        return None
    return out


@dataclass(frozen=True)
class StepRecord:
    """One training step's statistics, keyed by flat field names.

    ``values`` holds the canonical fields present for this step plus any extra numeric
    fields (e.g. ``"entropy/planning/success"``, ``"tokens/planning"``); a missing field
    is simply absent, never NaN. ``stats`` optionally keeps the mergeable sums the record
    was built from (``StepStats.to_json()``), so a store can keep full fidelity.
    """

    step: int
    values: Mapping[str, float] = field(default_factory=dict)
    stats: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int):
            raise ValueError(f"step: expected an integer, got {type(self.step).__name__}")
        if self.step < 0:
            raise ValueError(f"step: must be >= 0, got {self.step}")

    def get(self, name: str) -> float | None:
        """The value of ``name`` at this step, or ``None`` when it is missing."""
        return self.values.get(name)

    def to_json(self) -> dict[str, Any]:
        """The flat JSON form: ``{"step": ..., <field>: <value>, ...}`` (+ ``"stats"``)."""
        out: dict[str, Any] = {"step": self.step}
        out.update(self.values)
        if self.stats is not None:
            out["stats"] = dict(self.stats)
        return out

    @classmethod
    def from_flat(cls, mapping: Mapping[str, Any], *, step: int | None = None) -> "StepRecord":
        """Parse the flat form. Non-numeric values raise ``ValueError`` naming the field;
        ``None``/NaN/empty values are dropped as missing. ``inf`` is kept (an exploding
        entropy is information, and detectors decide what to do with it)."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"record: expected a JSON object, got {type(mapping).__name__}")
        raw_step = mapping.get("step", step) if step is None else step
        if raw_step is None:
            raise ValueError("step: missing")
        step_f = _as_float("step", raw_step)
        if step_f is None or not math.isfinite(step_f) or step_f != int(step_f):
            raise ValueError(f"step: expected a non-negative integer, got {raw_step!r}")
        values: dict[str, float] = {}
        for name, value in mapping.items():
            if name in ("step", "stats", "run"):
                continue
            if not isinstance(name, str) or not name:
                raise ValueError(f"field names must be non-empty strings, got {name!r}")
            v = _as_float(name, value)
            if v is not None:
                values[name] = v
        stats = mapping.get("stats")
        if stats is not None and not isinstance(stats, Mapping):
            raise ValueError("stats: expected a JSON object")
        return cls(step=int(step_f), values=values, stats=stats)
