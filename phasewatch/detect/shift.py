"""The execution-to-planning shift: planning signals turn upward while execution stays put.

Online layer, every step, O(1): each planning series (semantic entropy, planning-token
entropy, planning-token NLL) has a :class:`~phasewatch.detect.rise.RiseDetector`, and their
standardised departures are fused (:class:`~phasewatch.detect.fusion.EvidenceFusion`) into
one more sensitive CUSUM. When any of these crosses its (deliberately low) threshold, a
candidate is raised; the online layer only decides *when to look*.

Confirmation, on candidates only, on the last ``confirm_window`` values of each series:

1. onset candidates: each series' best upward bend (exact least-squares hinge search,
   :func:`~phasewatch.detect.confirm.hinge_search`); failing those, the first step of the run
   (a run without an execution phase rises from the start);
2. for each candidate, every planning series is fitted with its knot there, and the t
   statistics of their slopes after it are summed and divided by the standard deviation of
   the sum under their estimated correlation (a series that does *not* rise pulls the sum
   down, so one series wandering on its own rarely passes). The AR(1) coefficient behind
   every standard error is an upper confidence bound pooled over the planning series;
3. the shift is confirmed when that joint t passes ``confirm_t`` and at least one series
   rises on its own (``confirm_t_single``, a significant change of slope, enough noise
   standard deviations and enough relative rise, clearing the level before the turn);
4. and vetoed when the evidence conflicts (another planning signal fell significantly) or
   the rise is not specific to planning (execution entropy/NLL rose by a comparable relative
   amount since the same step: the whole policy is heating up, which is a health problem).

A rejected candidate re-arms the online layer.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from phasewatch.detect.config import EXECUTION_SERIES, PLANNING_SERIES, DetectionConfig
from phasewatch.detect.confirm import TrendChange, TrendChangeConfirmer, hinge_fit, hinge_search
from phasewatch.detect.cusum import Cusum
from phasewatch.detect.fusion import EvidenceFusion
from phasewatch.detect.rise import RiseDetector
from phasewatch.detect.robust import NoiseModel, SeriesWindow, hampel, pool_phi, with_phi


@dataclass(frozen=True)
class ShiftFinding:
    """A confirmed shift: where it began, which series carried it, and the evidence."""

    onset: int
    series: str
    statistic: float
    threshold: float
    detail: dict = field(default_factory=dict)


class PhaseShiftDetector:
    """``update(values, step)`` -> a :class:`ShiftFinding` once, when the shift is confirmed."""

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()
        cfg = self.config
        self.rise = {
            name: RiseDetector(drift=cfg.shift_drift, threshold=cfg.shift_threshold, clip=cfg.clip,
                               warmup=cfg.warmup_steps, window=cfg.window,
                               calibrate_every=cfg.calibrate_every, offset=i)
            for i, name in enumerate(PLANNING_SERIES)
        }
        self.fusion = EvidenceFusion(PLANNING_SERIES, window=min(cfg.window, 128),
                                     calibrate_every=cfg.calibrate_every)
        self.fused = Cusum(cfg.shift_drift, cfg.shift_threshold, clip=cfg.clip)
        self.confirmer = TrendChangeConfirmer()
        self.confirm_window = min(cfg.window, cfg.confirm_window)
        # confirmation windows plus the values just before them (levels before an onset)
        self.history = {name: deque(maxlen=self.confirm_window + _PRE)
                        for name in PLANNING_SERIES + EXECUTION_SERIES}
        first = len(PLANNING_SERIES)
        self.exec_noise = {name: SeriesWindow(cfg.window, cfg.calibrate_every, offset=first + i)
                           for i, name in enumerate(EXECUTION_SERIES)}
        self.found: ShiftFinding | None = None
        self.last_rejection: dict | None = None
        self._cooldown = 0
        self._first_step: int | None = None

    @property
    def statistic(self) -> float:
        return max([self.fused.statistic] + [d.statistic for d in self.rise.values()])

    def candidate(self) -> bool:
        return self.fused.drift_detected or any(d.drift_detected for d in self.rise.values())

    def update(self, values: Mapping[str, float], step: int, *, blocked: bool = False) -> ShiftFinding | None:
        if self._first_step is None:
            self._first_step = step
        zs: dict[str, float] = {}
        raw: dict[str, float] = {}
        for name, det in self.rise.items():
            x = values.get(name)
            if x is None or not math.isfinite(x):
                continue
            det.update(x, step)
            self.history[name].append((step, x))
            zs[name] = det.z
            raw[name] = x
        for name in EXECUTION_SERIES:
            x = values.get(name)
            if x is not None and math.isfinite(x):
                self.history[name].append((step, x))
                self.exec_noise[name].push(x)
        z = self.fusion.update(zs, raw)
        if z == z:
            self.fused.update(z, step)
        hold = self.fused.statistic >= 0.5 * self.fused.threshold
        for det in self.rise.values():
            det.standardiser.hold = det.standardiser.hold or hold
        if self.found is not None or not self.candidate():
            return None
        if self._cooldown > 0:
            self._cooldown -= 1
            return None
        if blocked:
            self._rearm({"reason": "health alarm active", "step": step})
            return None
        return self._confirm(step)

    # -- confirmation ----------------------------------------------------------------
    def _windows(self) -> dict[str, tuple[np.ndarray, np.ndarray, NoiseModel]]:
        """Each planning series' confirmation window: steps, spike-filtered values, noise."""
        ready = [n for n in PLANNING_SERIES if self.rise[n].noise is not None
                 and len(self.history[n]) >= 3 * self.confirmer.min_size]
        # one AR(1) coefficient for the planning series of the run, pooled (see pool_phi)
        phi = pool_phi(self.rise[n].noise for n in ready)
        out = {}
        for name in ready:
            noise = with_phi(self.rise[name].noise, max(phi, 0.0))
            hist = self.history[name]
            steps = np.fromiter((s for s, _ in hist), dtype=np.int64, count=len(hist))
            y = np.fromiter((v for _, v in hist), dtype=float, count=len(hist))
            out[name] = (steps, hampel(y, noise.sd), noise)
        return out

    @staticmethod
    def _recent(window: tuple, size: int) -> tuple:
        steps, y, noise = window
        return steps[-size:], y[-size:], noise

    def _fits_at(self, windows: dict, onset: int) -> dict[str, TrendChange]:
        fits = {}
        for name, window in windows.items():
            steps, y, noise = self._recent(window, self.confirm_window)
            knot = int(np.searchsorted(steps, onset))
            if knot > y.size - self.config.shift_min_span - 1:
                continue
            fits[name] = hinge_fit(y, knot, noise)
        return fits

    def _joint_t(self, fits: dict[str, TrendChange]) -> float:
        """Sum of the series' t statistics (all of them: a series that does not rise pulls the
        sum down) divided by its standard deviation under the estimated correlation."""
        if not fits:
            return -math.inf
        idx = [self.fusion.index[n] for n in fits]
        corr = self.fusion.correlation[np.ix_(idx, idx)]
        return sum(f.t_after for f in fits.values()) / math.sqrt(max(float(corr.sum()), 1.0))

    def _confirm(self, step: int) -> ShiftFinding | None:
        cfg = self.config
        windows = self._windows()
        # candidate onsets: each series' upward bend; failing those, the start of the run
        # while the windows still reach back to it (a run without an execution phase rises
        # at once). The start is only a fallback: a line from step 0 through a flat stretch
        # and a late rise has a long span, hence a large t, but it is the wrong onset.
        bends: set[int] = set()
        starts: set[int] = set()
        for window in windows.values():
            steps, y, _ = self._recent(window, self.confirm_window)
            knot = hinge_search(y, self.confirmer.min_size, direction=1)
            if knot is not None:
                bends.add(int(steps[knot]))
            if int(steps[0]) == self._first_step:
                starts.add(int(steps[0]))
        outcome = None
        for candidates in (bends, starts):
            outcome = self._best_onset(windows, candidates)
            if outcome is not None and outcome[3]:
                break
        if outcome is None:
            self._rearm({"reason": "too little data", "step": step})
            return None
        t_joint, onset, fits, rising = outcome
        detail: dict = {"onset": onset, "t_joint": t_joint,
                        "fits": {n: _summary(f) for n, f in fits.items()}}
        if not rising:
            self._rearm({"reason": "no significant upward turn", "step": step, **detail})
            return None
        lead = max(rising, key=lambda n: rising[n].t_after)
        changes = [_relative_change(windows[n][0], windows[n][1], onset)[0] for n in rising]
        changes = [c for c in changes if c == c]
        if not changes:
            self._rearm({"reason": "no level before the onset to compare with", "step": step, **detail})
            return None
        planning_rel = float(np.median(changes))
        conflict = self._falling_planning(rising, onset)
        if conflict:
            self._rearm({"reason": "other planning signals fell (conflicting evidence)", "step": step,
                         "falling": conflict, **detail})
            return None
        exec_rel = self._execution_rise(onset)
        if exec_rel is not None and exec_rel >= cfg.execution_veto * planning_rel:
            self._rearm({"reason": "execution rose too (not planning-specific)", "step": step,
                         "execution_relative_rise": exec_rel, "planning_relative_rise": planning_rel})
            return None
        detail.update(series=sorted(rising), planning_relative_rise=planning_rel,
                      execution_relative_rise=exec_rel)
        need = cfg.confirm_t if len(fits) > 1 else cfg.confirm_t_alone
        self.found = ShiftFinding(onset=min(onset, step), series=lead, statistic=t_joint,
                                  threshold=need, detail=detail)
        return self.found

    def _best_onset(self, windows: dict, candidates: set[int]):
        """(t_joint, onset, fits, rising series) for the candidate with the largest joint t;
        ``rising`` is empty unless that candidate passes the significance bar."""
        best = None
        for onset in sorted(candidates):
            fits = self._fits_at(windows, onset)
            t_joint = self._joint_t(fits)
            if best is None or t_joint > best[0]:
                best = (t_joint, onset, fits)
        if best is None:
            return None
        t_joint, onset, fits = best
        need = self.config.confirm_t if len(fits) > 1 else self.config.confirm_t_alone
        rising = {}
        if t_joint >= need:
            rising = {n: f for n, f in fits.items()
                      if self._rises(n, self._recent(windows[n], self.confirm_window), f, onset)}
        return t_joint, onset, fits, rising

    def _rises(self, name: str, window: tuple, fit: TrendChange, onset: int) -> bool:
        """Does this planning series turn upward at ``onset``, significantly and by enough?"""
        cfg = self.config
        steps, y, noise = window
        if fit.span < cfg.shift_min_span:
            return False
        # a rise from the very first step has no "before" to differ from (no execution phase)
        from_start = fit.knot == 0 and onset == self._first_step
        change_ok = fit.t_change >= cfg.confirm_t_single or from_start
        if not (fit.slope_after > 0 and fit.t_after >= cfg.confirm_t_single and change_ok
                and fit.rise_sd >= cfg.shift_min_rise and fit.relative_rise >= cfg.shift_min_relative):
            return False
        # the end of the rise must clear the recent level before the turn (not a dip recovering)
        before = y[max(0, fit.knot - 30):fit.knot + 1]
        end_level = fit.level + fit.slope_after * fit.span
        return end_level >= float(np.median(before)) + cfg.shift_min_rise * noise.sd

    def _falling_planning(self, rising: dict, onset: int) -> list[str]:
        """Planning series that fell significantly since ``onset`` while others rose."""
        out = []
        for name in PLANNING_SERIES:
            if name in rising:
                continue
            hist = self.history[name]
            noise = self.rise[name].noise
            if noise is None or len(hist) < 10:
                continue
            steps = np.fromiter((s for s, _ in hist), dtype=np.int64, count=len(hist))
            y = np.fromiter((v for _, v in hist), dtype=float, count=len(hist))
            rel, z = _relative_change(steps, y, onset, noise.long_run_sd)
            if rel == rel and z <= -2.0 and rel <= -self.config.shift_min_relative:
                out.append(name)
        return out

    def _execution_rise(self, onset: int) -> float | None:
        """Largest relative rise of an execution series since ``onset`` that stands out of
        its noise (one standard error: this is a veto, so it leans toward vetoing)
        (0.0 when none is significant; None when there is no execution data)."""
        out = None
        for name in EXECUTION_SERIES:
            hist = self.history[name]
            noise = self.exec_noise[name].noise
            if noise is None or len(hist) < 10:
                continue
            steps = np.fromiter((s for s, _ in hist), dtype=np.int64, count=len(hist))
            y = np.fromiter((v for _, v in hist), dtype=float, count=len(hist))
            rel, z = _relative_change(steps, y, onset, noise.long_run_sd)
            if rel != rel:
                continue
            rel = rel if z >= 1.0 else 0.0
            out = rel if out is None else max(out, rel)
        return out

    def _rearm(self, why: dict) -> None:
        self.last_rejection = why
        self.fused.reset()
        for det in self.rise.values():
            det.rearm()
        self._cooldown = self.config.confirm_cooldown


#: Values kept before each confirmation window, for the level before an onset.
_PRE = 15


def _relative_change(steps: np.ndarray, y: np.ndarray, onset: int,
                     long_run_sd: float | None = None) -> tuple[float, float]:
    """How far the current level (median of the last 5 values) is above the level before
    ``onset`` (median of the 15 values before it; at the very start of a run, of the first
    5), relative to the latter, and that change in standard errors. Medians make it
    indifferent to spikes and to the shape of any trend (a least-squares line through a
    decaying curve can invent a rise). NaN when there is too little data."""
    cut = int(np.searchsorted(steps, onset))
    pre = y[max(0, cut - _PRE):cut]
    if pre.size < 3 and cut == 0:
        pre = y[:5]
    post = y[max(cut, y.size - 5):]
    if pre.size < 3 or post.size < 2:
        return math.nan, math.nan
    a, b = float(np.median(pre)), float(np.median(post))
    rel = (b - a) / abs(a) if a != 0 else math.inf
    if long_run_sd is None:
        return rel, math.nan
    se = 1.25 * long_run_sd * math.sqrt(1.0 / pre.size + 1.0 / post.size)
    return rel, (b - a) / se if se > 0 else math.inf


def _summary(fit: TrendChange) -> dict:
    return {"t_after": round(fit.t_after, 3),
            "t_change": round(fit.t_change, 3), "rise_sd": round(fit.rise_sd, 3),
            "relative_rise": round(fit.relative_rise, 4)}
