"""Execution consolidation: execution-token entropy falling, then flattening (phase 1).

The HICRA paper's two-phase dynamic begins with the model consolidating its procedural
skills: execution-token entropy falls (Qwen3-4B-Base: 0.27 -> 0.14 by step ~25; Qwen2.5-7B:
0.5 -> 0.1 by steps 50-100) and then stays flat. The planning phase *follows* it. This
tracker says where a run stands, which the shift detector uses as context:

* ``fell``: the series has dropped, at some point, by at least ``min_drop`` of its early
  level and by ``min_z`` long-run standard errors (sticky: once consolidated, always so);
* ``falling``: its slope over the last ``slope_window`` observations is significantly
  negative (consolidation still under way: a planning signal drifting up *now* is not yet
  the planning phase);
* ``consolidated``: it fell and is no longer falling;
* a run whose execution entropy never fell has no execution phase at all (instruct and VL
  models in the paper): the shift detector then looks for a rise from the start instead.

The early level is the highest 5-value median among the first ``head`` observations
(spikes out), so a decay that is fast (most of it within the first ten steps) is still
measured from its top. The noise scale comes from the last ``window`` observations'
detrended first differences (robust, spikes out), which after consolidation are the flat
part. State is bounded (``head`` + ``window`` values); statistics are recomputed lazily, at
most once per observation, when asked for.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from phasewatch.detect.robust import MAX_PHI, detrended_differences, hampel, robust_sd


@dataclass(frozen=True)
class ConsolidationState:
    """Where the execution series stands (see the module docstring)."""

    fell: bool
    falling: bool
    drop: float  # relative drop from the early level to the recent median
    drop_z: float  # the same drop in long-run standard errors
    slope_t: float  # t statistic of the recent slope (negative: still falling)

    @property
    def consolidated(self) -> bool:
        return self.fell and not self.falling


class ConsolidationTracker:
    """``update(x)`` per execution value; ``state(phi)`` the current :class:`ConsolidationState`
    (None before ``head`` values). ``fell`` is sticky, as the phase it marks has happened."""

    def __init__(self, *, head: int = 12, window: int = 32, recent: int = 10, slope_window: int = 20,
                 min_drop: float = 0.20, min_z: float = 6.0, falling_t: float = 2.5) -> None:
        self.head_size = int(head)
        self.window_size = int(window)
        self.recent = int(recent)
        self.slope_window = int(slope_window)
        if head < 5 or recent < 3 or slope_window < recent:
            raise ValueError("head must be >= 5, recent >= 3 and slope_window >= recent")
        self.min_drop = float(min_drop)
        self.min_z = float(min_z)
        self.falling_t = float(falling_t)
        self.reset()

    def reset(self) -> None:
        self.head: list[float] = []
        self.early: float | None = None
        self.values: deque[float] = deque(maxlen=self.window_size)
        self.steps: deque[int] = deque(maxlen=self.window_size)
        self.count = 0
        self.fell = False
        self._cache: tuple[int, float, ConsolidationState] | None = None

    @property
    def drift_detected(self) -> bool:
        return self.fell

    def update(self, x: float, step: int) -> None:
        if not math.isfinite(x):
            return
        self.count += 1
        if len(self.head) < self.head_size:
            self.head.append(float(x))
            if len(self.head) == self.head_size:
                self.early = _early_level(self.head)
        self.values.append(float(x))
        self.steps.append(int(step))

    def state(self, phi: float = 0.5) -> ConsolidationState | None:
        """The state now, given the run's AR(1) coefficient ``phi`` (for the long-run scale)."""
        if self.early is None:
            return None
        if self._cache is not None and self._cache[0] == self.count and self._cache[1] == phi:
            return self._cache[2]
        phi = min(max(phi, 0.0), MAX_PHI)
        y = np.fromiter(self.values, dtype=float, count=len(self.values))
        t = np.fromiter(self.steps, dtype=float, count=len(self.steps))
        d = detrended_differences(y, 5)
        sd = robust_sd(d) / math.sqrt(2.0 * (1.0 - phi))
        sd = max(sd, 1e-3 * abs(self.early), 1e-12)
        long_run = sd * math.sqrt((1.0 + phi) / (1.0 - phi))
        tail = hampel(y[-self.slope_window:], sd)
        tt = t[-self.slope_window:]
        recent = float(np.median(tail[-self.recent:]))
        early = self.early
        drop = (early - recent) / abs(early) if early != 0 else 0.0
        drop_z = (early - recent) / (long_run * math.sqrt(1.0 / 5 + 1.0 / self.recent))
        tc = tt - tt.mean()
        stt = float(tc @ tc)
        slope_t = 0.0
        if stt > 0:
            slope = float(tc @ (tail - tail.mean())) / stt
            slope_t = slope / (long_run / math.sqrt(stt))
        if drop >= self.min_drop and drop_z >= self.min_z:
            self.fell = True
        out = ConsolidationState(self.fell, slope_t <= -self.falling_t, drop, drop_z, slope_t)
        self._cache = (self.count, phi, out)
        return out


def _early_level(head: list[float]) -> float:
    """The highest median of 5 consecutive values among the first ones, after replacing
    spikes (values more than 5 robust standard deviations of the differences from the
    median of their neighbours): the top of a consolidating series, however fast it falls."""
    x = np.asarray(head, dtype=float)
    scale = robust_sd(np.diff(x)) / math.sqrt(2.0)
    x = hampel(x, scale, k=5.0) if scale > 0 else x
    return max(_median5(list(x[i:i + 5])) for i in range(x.size - 4))


def _median5(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]
