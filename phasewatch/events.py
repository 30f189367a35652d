"""Events and decisions: what the monitor says about a run.

Both are small, immutable and JSON-serialisable, because they travel: over HTTP from
``phasewatch serve``, into the SQLite store, into checkpoints, and (as a decision) from the
main process to every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from phasewatch.record import StepRecord

#: The execution-to-planning shift.
PHASE_SHIFT = "phase_shift"
#: Health alarms, raised on any entropy series.
ENTROPY_COLLAPSE = "entropy_collapse"
ENTROPY_EXPLOSION = "entropy_explosion"
LEVEL_SHIFT = "level_shift"
EVENT_KINDS: tuple[str, ...] = (PHASE_SHIFT, ENTROPY_COLLAPSE, ENTROPY_EXPLOSION, LEVEL_SHIFT)

#: Phases of a run. ``warmup``: too little history to judge. ``execution``: execution tokens
#: are still consolidating. ``planning``: the shift was confirmed; planning is the bottleneck.
WARMUP = "warmup"
EXECUTION = "execution"
PLANNING = "planning"
PHASES: tuple[str, ...] = (WARMUP, EXECUTION, PLANNING)
#: Numeric code of each phase wherever a phase must be a number: the ``phasewatch/phase``
#: trainer metric and Prometheus's ``phasewatch_phase`` (one table, so the two always agree).
PHASE_CODES: dict[str, int] = {WARMUP: 0, EXECUTION: 1, PLANNING: 2}
#: The phase name of each code.
PHASE_NAMES: dict[int, str] = {code: name for name, code in PHASE_CODES.items()}


@dataclass(frozen=True)
class Event:
    """Something a detector concluded, with the evidence for it.

    ``step`` is the step at which it was detected (the last step seen when it fired);
    ``onset`` is the estimated step at which the change began (``onset <= step``).
    """

    kind: str
    step: int
    onset: int
    series: str
    detector: str
    statistic: float
    threshold: float
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "step": self.step,
            "onset": self.onset,
            "series": self.series,
            "detector": self.detector,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Event":
        return cls(
            kind=str(data["kind"]),
            step=int(data["step"]),
            onset=int(data["onset"]),
            series=str(data.get("series", "")),
            detector=str(data.get("detector", "")),
            statistic=float(data.get("statistic", float("nan"))),
            threshold=float(data.get("threshold", float("nan"))),
            detail=dict(data.get("detail") or {}),
        )


@dataclass(frozen=True)
class Decision:
    """The monitor's answer after a step: the phase, and the reweighting alpha to apply.

    ``shift_step`` is the step at which the phase shift was confirmed (``None`` before);
    with it any rank or client can recompute the alpha schedule. ``events`` holds only the
    events newly raised by the observation that produced this decision.
    """

    step: int
    phase: str = WARMUP
    alpha: float = 0.0
    shift_step: int | None = None
    events: tuple[Event, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "phase": self.phase,
            "alpha": self.alpha,
            "shift_step": self.shift_step,
            "events": [e.to_json() for e in self.events],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Decision":
        shift = data.get("shift_step")
        return cls(
            step=int(data["step"]),
            phase=str(data.get("phase", WARMUP)),
            alpha=float(data.get("alpha", 0.0)),
            shift_step=None if shift is None else int(shift),
            events=tuple(Event.from_json(e) for e in data.get("events", ())),
        )


@dataclass(frozen=True)
class DetectorReading:
    """A detector's current statistic next to its alarm threshold, for dashboards."""

    detector: str
    series: str
    statistic: float
    threshold: float


@dataclass(frozen=True)
class Observation:
    """Everything the monitor hands its listeners (exporters, annotators) after one ingest.

    ``duplicate`` is true when ``(run, step)`` had been seen already, so the record changed
    nothing. ``latency_s`` is how long the monitor took to process it.
    """

    run: str
    record: StepRecord
    decision: Decision
    readings: tuple[DetectorReading, ...] = ()
    duplicate: bool = False
    latency_s: float = 0.0
