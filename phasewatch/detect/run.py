"""RunDetector: every detector of one run behind one ``update(record)`` call.

It is a deterministic function of the sequence of records it has seen (no clocks, no
randomness), so the monitor restores it after a restart by replaying stored records through
a fresh instance. Every per-series state is bounded (windows of at most ``config.window``
values), so the cost of an update does not grow with the length of the run.
"""

from __future__ import annotations

import math
from typing import Mapping

from phasewatch.detect.config import EXECUTION_SERIES, HEALTH_SERIES, PLANNING_SERIES, DetectionConfig
from phasewatch.detect.health import HealthMonitor
from phasewatch.detect.phase import PhaseStateMachine
from phasewatch.detect.shift import PhaseShiftDetector
from phasewatch.events import (
    ENTROPY_COLLAPSE,
    ENTROPY_EXPLOSION,
    EXECUTION,
    PHASE_SHIFT,
    DetectorReading,
    Event,
)
from phasewatch.record import StepRecord

#: Health alarms that hold the phase shift back (see ``RunDetector._shift_blocked``).
_BLOCKING: tuple[str, ...] = (ENTROPY_EXPLOSION,)
_BLOCKING_IN_PLANNING: tuple[str, ...] = (ENTROPY_EXPLOSION, ENTROPY_COLLAPSE)

#: Record field carrying the policy's vocabulary size (optional).
VOCAB_FIELD = "vocab_size"


class RunDetector:
    """Phase-shift detection and health alarms for one run.

    ``update(record)`` takes records with strictly increasing steps (gaps allowed; any field
    may be missing) and returns the events newly raised. ``phase`` and ``shift_step`` give the
    current state; ``readings()`` each detector's statistic next to its threshold.
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        if config is not None and not isinstance(config, DetectionConfig):
            raise ValueError(f"config: expected a DetectionConfig, got {type(config).__name__}")
        self.config = config or DetectionConfig()
        self._machine = PhaseStateMachine(self.config.warmup_steps)
        self._shift = PhaseShiftDetector(self.config)
        self._health: dict[str, HealthMonitor] = {}
        self._last_step: int | None = None
        self._events: list[Event] = []

    # -- state -----------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return self._machine.phase

    @property
    def shift_step(self) -> int | None:
        return self._machine.shift_step

    @property
    def onset(self) -> int | None:
        """Estimated step at which the planning phase began (None before the shift)."""
        return self._machine.onset

    @property
    def stalled(self) -> bool:
        """In ``execution`` for a long time without a shift (a run that has not pivoted)."""
        return self._machine.stalled

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    @property
    def last_step(self) -> int | None:
        return self._last_step

    def readings(self) -> tuple[DetectorReading, ...]:
        out = []
        shift = self._shift
        if any(d.standardiser.ready for d in shift.rise.values()):
            out.append(DetectorReading("phase_shift_fused", "planning", shift.fused.statistic,
                                       shift.fused.threshold))
        for name, det in shift.rise.items():
            if det.standardiser.ready:
                out.append(DetectorReading("phase_shift_rise", name, det.statistic, det.threshold))
        for name, mon in self._health.items():
            if mon.baseline is None:
                continue
            for kind, value in mon.statistics.items():
                out.append(DetectorReading(kind, name, value, mon.thresholds[kind]))
        return tuple(out)

    # -- update ----------------------------------------------------------------------
    def update(self, record: StepRecord) -> list[Event]:
        if not isinstance(record, StepRecord):
            raise ValueError(f"record: expected a StepRecord, got {type(record).__name__}")
        step = record.step
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step {step}: steps must be strictly increasing (last was {self._last_step})")
        self._last_step = step
        values = record.values
        events = self._health_events(values, step)
        per_class = any(values.get(n) is not None for n in PLANNING_SERIES + EXECUTION_SERIES)
        self._machine.observe(step, per_class)
        blocked = self._shift_blocked()
        finding = self._shift.update(values, step, blocked=blocked or self._machine.phase != EXECUTION)
        if finding is not None and self._machine.shift(step, finding.onset):
            events.append(Event(PHASE_SHIFT, step, min(finding.onset, step), finding.series,
                                "phase_shift", float(finding.statistic), float(finding.threshold),
                                finding.detail))
        self._events.extend(events)
        return events

    def _shift_blocked(self) -> bool:
        """Whether a health alarm holds the phase shift back.

        An explosion anywhere does: a diverging policy is not planning taking over. A collapse
        does only on a planning series (a planning signal climbing out of a collapse is a
        recovery, not a new phase). A collapse of execution or all-token entropy does not:
        that is execution consolidating, which is what precedes the shift, and it never clears
        afterwards, so blocking on it would hide every later shift of the run.
        """
        for name, mon in self._health.items():
            kinds = _BLOCKING_IN_PLANNING if name in PLANNING_SERIES else _BLOCKING
            if mon.unhealthy_in(kinds):
                return True
        return False

    def _health_events(self, values: Mapping[str, float], step: int) -> list[Event]:
        events: list[Event] = []
        vocab = self._vocab(values)
        for name in HEALTH_SERIES:
            x = values.get(name)
            if x is None:
                continue
            mon = self._health.get(name)
            if mon is None:
                mon = self._health[name] = HealthMonitor(self.config, offset=11 + 3 * len(self._health))
            for alarm in mon.update(x, step, vocab):
                events.append(Event(alarm.kind, step, min(alarm.onset, step), name, "health",
                                    float(alarm.statistic), float(alarm.threshold), alarm.detail))
        return events

    def _vocab(self, values: Mapping[str, float]) -> int | None:
        v = values.get(VOCAB_FIELD)
        if v is not None and math.isfinite(v) and v >= 2:
            return int(v)
        return self.config.vocab_size
