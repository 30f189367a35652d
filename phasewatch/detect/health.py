"""Health alarms on one entropy series: collapse, explosion, level shift.

Each alarm compares recent values with a *baseline*: the values of this series that are at
least ``lag`` observations old (so the change being tested never contaminates its own
reference), after the first ``warmup_steps`` values (the first steps of RL training are a
transient, not a baseline: entropy often halves within five steps).

* ``entropy_explosion``: the value has climbed ``explosion_fraction`` of the way from the
  baseline to ln|V| (the entropy of a uniform policy over the vocabulary) and sits at least
  ``explosion_sd`` robust standard deviations above the baseline, on ``persist_steps``
  consecutive observations. One odd batch is a spike, not an explosion.
* ``entropy_collapse``: the median of the last ``recent`` values has fallen below
  ``collapse_ratio`` times the baseline (the larger of the current baseline and the one
  right after warm-up, so a slow slide to zero counts too), on ``persist_steps``
  consecutive observations.
* ``level_shift``: the whole distribution moved: the median of the last ``recent`` values is
  ``level_ratio`` times above (or below) the baseline median *and* at least
  ``level_fraction`` of those values lie beyond the baseline's 90th (10th) percentile. The
  second condition is a sign test: it ignores a run that merely becomes spikier (the stable
  ``7_4_plus_clip_ratio`` log ends with single-step spikes to 10-40x its level, but its
  lower values stay where they were).

Statistics are reported so that each alarm fires when ``statistic >= threshold`` (explosion:
progress toward ln|V|; collapse: baseline / recent median; level shift: |log ratio|).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from phasewatch.detect.config import DetectionConfig
from phasewatch.detect.robust import NoiseModel, SeriesWindow
from phasewatch.events import ENTROPY_COLLAPSE, ENTROPY_EXPLOSION, LEVEL_SHIFT

#: Alarms that freeze the baseline while their condition holds (the new state is the
#: problem, not a new normal).
_FREEZING = (ENTROPY_EXPLOSION, ENTROPY_COLLAPSE)


@dataclass(frozen=True)
class HealthAlarm:
    """What :class:`HealthMonitor` concluded on one observation."""

    kind: str
    onset: int
    statistic: float
    threshold: float
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Baseline:
    median: float
    low: float  # 10th percentile
    high: float  # 90th percentile
    noise: NoiseModel

    @property
    def spread(self) -> float:
        """Robust marginal standard deviation: (p90 - p10) / 2.563 for a normal sample.
        (The noise model's ``sd`` carries a deliberately pessimistic AR(1) bound, right for
        sums of many values but not for how far a single value may stray.)"""
        return (self.high - self.low) / 2.563


def _median_small(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


class HealthMonitor:
    """Collapse / explosion / level-shift alarms on one entropy series (values in nats).

    ``update(x, step, vocab_size)`` returns the alarms newly raised. Each kind fires once,
    and re-arms after its condition has been clear for ``rearm_steps`` observations.
    """

    def __init__(self, config: DetectionConfig | None = None, *, lag: int = 10, recent: int = 9,
                 rearm_steps: int = 50, offset: int = 0) -> None:
        self.config = config or DetectionConfig()
        self.lag = int(lag)
        self.recent_size = int(recent)
        self.rearm_steps = int(rearm_steps)
        self.offset = int(offset)
        self.reset()

    def reset(self) -> None:
        cfg = self.config
        self.count = 0
        self.window = SeriesWindow(cfg.window, cfg.calibrate_every, offset=self.offset)
        self.baseline: _Baseline | None = None
        self.early_median: float | None = None
        self._noise_seen: NoiseModel | None = None
        self._recent: deque[tuple[int, float]] = deque(maxlen=self.recent_size)
        self._delayed: deque[float] = deque(maxlen=self.lag)
        self._runs: dict[str, list[int]] = {k: [] for k in (ENTROPY_EXPLOSION, ENTROPY_COLLAPSE, LEVEL_SHIFT)}
        self._armed = {k: True for k in self._runs}
        self._clear = {k: 0 for k in self._runs}
        self.statistics = {k: 0.0 for k in self._runs}
        self.thresholds = {
            ENTROPY_EXPLOSION: cfg.explosion_fraction,
            ENTROPY_COLLAPSE: 1.0 / cfg.collapse_ratio,
            LEVEL_SHIFT: math.log(cfg.level_ratio),
        }
        self._details: dict[str, dict] = {}
        self.drift_detected = False

    @property
    def unhealthy(self) -> bool:
        """An explosion or collapse is in progress or has not cleared since it fired."""
        return self.unhealthy_in(_FREEZING)

    def unhealthy_in(self, kinds: tuple[str, ...]) -> bool:
        """An alarm of one of ``kinds`` is in progress or has not cleared since it fired."""
        return any(self._runs[k] or not self._armed[k] for k in kinds)

    # -- readings ----------------------------------------------------------------------
    @property
    def statistic(self) -> float:
        return self.statistics[LEVEL_SHIFT]

    @property
    def threshold(self) -> float:
        return self.thresholds[LEVEL_SHIFT]

    # -- update ------------------------------------------------------------------------
    def update(self, x: float, step: int, vocab_size: int | None = None) -> list[HealthAlarm]:
        """Feed one value; return the alarms newly raised at this step."""
        if math.isnan(x):
            return []
        if x == math.inf:
            x = 1e12  # an infinite entropy is an explosion, not a missing value
        elif not math.isfinite(x):
            return []
        cfg = self.config
        self.count += 1
        if self.count <= cfg.warmup_steps:
            return []
        self._recent.append((step, x))
        alarms: list[HealthAlarm] = []
        base = self.baseline
        if base is not None:
            conditions = {
                ENTROPY_EXPLOSION: self._explosion(x, base, vocab_size),
                ENTROPY_COLLAPSE: self._collapse(base),
                LEVEL_SHIFT: self._level(base),
            }
            # an explosion or collapse is also a level shift: report the specific alarm only
            if conditions[ENTROPY_EXPLOSION] or conditions[ENTROPY_COLLAPSE]:
                conditions[LEVEL_SHIFT] = False
            for kind, holds in conditions.items():
                alarm = self._track(kind, holds, step, base)
                if alarm is not None:
                    alarms.append(alarm)
        frozen = any(self._runs[k] for k in _FREEZING)
        if len(self._delayed) == self._delayed.maxlen and not frozen:
            self._push_baseline(self._delayed[0])
        self._delayed.append(x)
        self.drift_detected = self.drift_detected or bool(alarms)
        return alarms

    def _push_baseline(self, value: float) -> None:
        self.window.push(value)
        noise = self.window.noise
        if noise is None or noise is self._noise_seen:
            return
        self._noise_seen = noise
        arr = self.window.array()
        low, med, high = (float(q) for q in np.quantile(arr, (0.1, 0.5, 0.9)))
        self.baseline = _Baseline(med, low, high, noise)
        if self.early_median is None or self.window.count <= 32:
            self.early_median = med

    def _track(self, kind: str, holds: bool, step: int, base: _Baseline) -> HealthAlarm | None:
        run = self._runs[kind]
        if holds:
            run.append(step)
            self._clear[kind] = 0
        else:
            run.clear()
            self._clear[kind] += 1
            if not self._armed[kind] and self._clear[kind] >= self.rearm_steps:
                self._armed[kind] = True
        if not self._armed[kind] or len(run) < self.config.persist_steps:
            return None
        self._armed[kind] = False
        onset = run[0]
        if kind != ENTROPY_EXPLOSION and self._recent:
            # a median-based condition starts to hold a few values after the change began
            onset = min(onset, self._recent[len(self._recent) // 2][0])
        detail = {"baseline": base.median, "baseline_p10": base.low, "baseline_p90": base.high}
        detail.update(self._details.get(kind, {}))
        return HealthAlarm(kind, onset, self.statistics[kind], self.thresholds[kind], detail)

    # -- conditions ----------------------------------------------------------------------
    def _explosion(self, x: float, base: _Baseline, vocab_size: int | None) -> bool:
        cfg = self.config
        uniform = math.log(vocab_size or cfg.assumed_vocab_size)
        gap = max(uniform - base.median, 1e-12)
        progress = (x - base.median) / gap
        self.statistics[ENTROPY_EXPLOSION] = progress
        self._details_set(ENTROPY_EXPLOSION, uniform_entropy=uniform,
                          vocab_size_known=vocab_size is not None)
        return progress >= cfg.explosion_fraction and x >= base.median + cfg.explosion_sd * base.spread

    def _collapse(self, base: _Baseline) -> bool:
        cfg = self.config
        if len(self._recent) < self._recent.maxlen:
            return False
        reference = max(base.median, self.early_median or 0.0)
        recent = _median_small([v for _, v in self._recent])
        ratio = reference / recent if recent > 0 else math.inf
        self.statistics[ENTROPY_COLLAPSE] = ratio
        self._details_set(ENTROPY_COLLAPSE, recent_median=recent, reference=reference)
        return ratio >= 1.0 / cfg.collapse_ratio

    def _level(self, base: _Baseline) -> bool:
        cfg = self.config
        if len(self._recent) < self._recent.maxlen or base.median <= 0:
            return False
        values = [v for _, v in self._recent]
        recent = _median_small(values)
        if recent <= 0:
            return False
        log_ratio = math.log(recent / base.median)
        self.statistics[LEVEL_SHIFT] = abs(log_ratio)
        if log_ratio > 0:
            beyond = sum(v > base.high for v in values)
        else:
            beyond = sum(v < base.low for v in values)
        self._details_set(LEVEL_SHIFT, direction="up" if log_ratio > 0 else "down",
                          recent_median=recent, fraction_beyond=beyond / len(values))
        return abs(log_ratio) >= math.log(cfg.level_ratio) and beyond >= cfg.level_fraction * len(values)

    def _details_set(self, kind: str, **values) -> None:
        self._details[kind] = values
