"""The execution-to-planning shift: execution consolidates, then planning signals turn upward.

Every step, O(1): each planning series (semantic entropy, planning-token entropy,
planning-token NLL) feeds a :class:`~phasewatch.detect.rise.RiseDetector`, their standardised
departures are fused (:class:`~phasewatch.detect.fusion.EvidenceFusion`) into one CUSUM, the
execution series feeds a :class:`~phasewatch.detect.consolidation.ConsolidationTracker`, and
aligned, spike-filtered windows of every series are kept. The CUSUMs are the cheap gate and
the dashboard readings; the decision is a *scan*, every ``scan_every_open`` steps while the
gate is open, every ``scan_every`` steps once execution has consolidated, every
``start_scan_every`` steps while the run is young (and on the very next step after a scan
passed: ``confirm_scans`` scans in a row must agree).

**Bend.** Every candidate knot of the last ``confirm_window`` steps is fitted at once on every
series (:func:`~phasewatch.detect.confirm.hinge_scan_many`: a one-knot line on a local
stretch). Three candidate knots (the best slope after it, the sharpest change of slope, the
best compromise) are judged again with the noise of their own fits' residuals (a rise
inflates a series' running noise estimate exactly when it matters), and one passes when:

1. the planning series' t statistics of the slope after the knot, summed and divided by the
   standard deviation of the sum under their estimated correlation (a series that does not
   rise pulls the sum down), reach the bar, and so does the change of slope
   (``confirm_t_change``); one series rises on its own (``confirm_t_single``) by at least
   ``shift_min_relative`` of its level;
2. the bar is ``confirm_t`` once execution has consolidated (fell, then flattened; the
   paper's phase 2 follows phase 1) and both planning families (semantic entropy; planning-
   token entropy and NLL) rise; ``confirm_t_alone`` when one family carries it alone;
   ``confirm_t_unconsolidated`` when execution never consolidated; ``confirm_t_with_length``
   when response length jumps at the turn (the paper's Qwen3-4B-Base run lengthens ~3x
   within 15 steps of its shift);
3. execution is not falling after the knot by a comparable relative amount
   (``execution_falling_t``, ``execution_falling_ratio``: a planning signal drifting up
   while execution entropy still falls as fast is phase 1), no planning signal falls
   (``conflict_t``), and execution does not rise by a comparable relative amount
   (``execution_veto``: everything heating up is instability, not a phase shift).

**No execution phase** (instruct and VL models "rise almost at once"). While the run is young
(``start_window`` steps) and execution entropy has neither fallen nor is falling, a straight
line through each planning series from the first step, and a turn within the first
``start_knots`` steps, are held to ``start_t`` instead, with the same other checks.

Noise (scale and AR(1) coefficient) comes from :mod:`~phasewatch.detect.robust`, the AR(1)
coefficient pooled over the planning series. Everything is bounded by
``window``/``confirm_window``, so the cost of a scan does not grow with the run.
"""

from __future__ import annotations

import math
from collections import deque
import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from phasewatch.detect.config import (EXECUTION_SERIES, LENGTH_SERIES, PLANNING_FAMILIES, PLANNING_SERIES,
                                      DetectionConfig)
from phasewatch.detect.confirm import hinge_scan_many, line_fit, residual_noise
from phasewatch.detect.consolidation import ConsolidationState, ConsolidationTracker
from phasewatch.detect.cusum import Cusum
from phasewatch.detect.fusion import EvidenceFusion
from phasewatch.detect.rise import RiseDetector
from phasewatch.detect.robust import (MAX_PHI, PHI_MARGIN, PRIOR_PHI, NoiseModel, SeriesWindow,
                                      hampel, pool_phi, with_phi)


@dataclass(frozen=True)
class ShiftFinding:
    """A confirmed shift: where it began, which series carried it, and the evidence."""

    onset: int
    series: str
    statistic: float
    threshold: float
    detail: dict = field(default_factory=dict)


class _AlignedWindows:
    """The steps of the last ``size`` records and, per series, its value at each of them (NaN
    where missing), spike-filtered as values arrive.

    The filter is a Hampel filter on each series' own values: a value further than ``k``
    noise standard deviations from the median of its ``2*half_width+1`` neighbours (its own
    series, missing steps skipped) is replaced by that median once ``half_width`` later values
    have arrived; the newest ``half_width`` are judged against the last full window when the
    arrays are read (:meth:`arrays`). Each value is judged once, in O(1): the scan that reads
    the windows does no filtering of its own. Bounded: ``size`` steps per series.
    """

    def __init__(self, names: tuple[str, ...], size: int, *, half_width: int = 3, k: float = 4.0) -> None:
        self.names = names
        self.size = size
        self.half_width = half_width
        self.k = k
        self.steps: deque[int] = deque(maxlen=size)
        self.clean = {n: deque(maxlen=size) for n in names}
        self.recent = {n: deque(maxlen=2 * half_width + 1) for n in names}  # (record index, value)
        self.count = 0
        # series whose values arrived before they had a noise scale (the first steps of a
        # run): those values are judged once, when the scale first appears (_catch_up)
        self.unjudged = set(names)

    def push(self, step: int, values: Mapping[str, float], scales: Mapping[str, float]) -> None:
        index = self.count
        self.count += 1
        self.steps.append(step)
        h = self.half_width
        for name in self.names:
            x = values.get(name)
            clean = self.clean[name]
            if x is None or not math.isfinite(x):
                clean.append(math.nan)
                continue
            clean.append(float(x))
            recent = self.recent[name]
            recent.append((index, float(x)))
            if len(recent) < recent.maxlen:
                continue
            scale = scales.get(name)
            if not scale:
                continue
            if name in self.unjudged:
                self.unjudged.discard(name)
                self._catch_up(name, scale)
            middle_index, middle = recent[h]
            window = [v for _, v in recent]
            # the median lies between the window's extremes: when the middle value is within
            # k * scale of both, it cannot be a spike (most steps end here, no sort)
            limit = self.k * scale
            if abs(middle - min(window)) <= limit and abs(middle - max(window)) <= limit:
                continue
            median = _median(window)
            back = self.count - middle_index
            if abs(middle - median) > limit and back <= len(clean):
                clean[-back] = median

    def _catch_up(self, name: str, scale: float) -> None:
        """Judge the values of ``name`` that arrived before it had a noise scale (once, O(size)).

        A spike in the first steps of a run would otherwise stay in the windows for good, and
        a least-squares line from the first step (a run without an execution phase) chases
        it: its residuals, hence its noise, come out several times too large. The first
        ``half_width`` values are judged against the first full neighbourhood; the newest
        ``half_width - 1`` are left to the running filter."""
        clean = self.clean[name]
        at = [i for i, v in enumerate(clean) if v == v]
        h = self.half_width
        if len(at) < 2 * h + 1:
            return
        filtered = hampel(np.array([clean[i] for i in at]), scale, k=self.k, half_width=h)
        # every value up to (excluding) the middle of the newest full neighbourhood, which
        # the running filter judges next
        for j in range(len(at) - h - 1):
            clean[at[j]] = float(filtered[j])

    def arrays(self, scales: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values (series x steps)), the newest values of each series filtered too."""
        steps = np.fromiter(self.steps, dtype=float, count=len(self.steps))
        values = np.array([np.fromiter(self.clean[n], dtype=float, count=len(self.clean[n]))
                           for n in self.names])
        h = self.half_width
        for row, name in enumerate(self.names):
            recent = self.recent[name]
            scale = scales.get(name)
            if len(recent) < recent.maxlen or not scale:
                continue
            median = _median([v for _, v in recent])
            for index, x in list(recent)[-h:]:
                back = self.count - index
                if abs(x - median) > self.k * scale and back <= steps.size:
                    values[row, -back] = median
        return steps, values


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


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
        self.names: tuple[str, ...] = PLANNING_SERIES + EXECUTION_SERIES + LENGTH_SERIES
        # noise models: the planning series' come with their rise detectors
        self.noise = {name: self.rise[name].standardiser.window if name in self.rise
                      else SeriesWindow(cfg.window, cfg.calibrate_every, offset=3 + 7 * i)
                      for i, name in enumerate(self.names)}
        self.windows = _AlignedWindows(self.names, min(cfg.window, cfg.confirm_window))
        self.consolidation = ConsolidationTracker(min_drop=cfg.consolidation_drop, min_z=cfg.consolidation_z,
                                                  falling_t=cfg.execution_falling_t)
        self._execution_name: str | None = None
        self.found: ShiftFinding | None = None
        self.last_scan: dict | None = None
        self._first_step: int | None = None
        self._last_scan_step: int | None = None
        self._streak = 0

    @property
    def statistic(self) -> float:
        return max([self.fused.statistic] + [d.statistic for d in self.rise.values()])

    def gate_open(self) -> bool:
        """Is there enough upward departure in the planning series to look closer?"""
        return self.statistic >= self.config.gate_level

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
            zs[name] = det.z
            raw[name] = x
        if self.found is None:
            # the windows, noise models and consolidation only serve the scans: once the
            # shift is found (final) only the CUSUM readings are kept up to date
            self._observe(values, step)
        z = self.fusion.update(zs, raw)
        if z == z:
            self.fused.update(z, step)
        hold = self.fused.statistic >= 0.5 * self.fused.threshold
        for det in self.rise.values():
            det.standardiser.hold = det.standardiser.hold or hold
        if self.found is not None:
            return None
        cfg = self.config
        young = step - self._first_step <= cfg.start_window
        gate_open = self.gate_open()
        if not (young or self.consolidation.fell or gate_open):
            self._streak = 0
            return None
        # a scan that passed is re-checked on the very next step (confirm_scans), others wait
        every = cfg.scan_every_open if gate_open else cfg.scan_every
        if young:
            # a run without an execution phase is judged from its first steps, where every
            # step of delay counts against a short tolerance and a scan costs little overall
            every = min(every, cfg.start_scan_every)
        due = (self._streak > 0 or self._last_scan_step is None or step - self._last_scan_step >= every)
        if not due:
            return None
        self._last_scan_step = step
        finding = self._scan(step)
        if finding is None or blocked:
            self._streak = 0
            if gate_open:
                self._rearm()
            if finding is not None:
                self.last_scan = {"reason": "health alarm active", "step": step}
            return None
        self._streak += 1
        if self._streak < cfg.confirm_scans:
            return None
        self.found = finding
        return finding

    def _observe(self, values: Mapping[str, float], step: int) -> None:
        """Feed the scan's inputs: noise windows of the execution and length series, the
        aligned spike-filtered windows, the consolidation tracker."""
        scales = {}
        for name, window in self.noise.items():
            if name not in self.rise:
                x = values.get(name)
                if x is not None and math.isfinite(x):
                    window.push(x)
            if window.noise is not None:
                scales[name] = window.noise.sd
        self.windows.push(step, values, scales)
        execution = self._execution_series(values)
        if execution is not None:
            x = values.get(execution)
            if x is not None and math.isfinite(x):
                self.consolidation.update(x, step)
                # look regularly, not only when scanning: the scans start once it fell
                if self.consolidation.count % 8 == 0 and not self.consolidation.fell:
                    self.consolidation.state(self._phi())

    def _rearm(self) -> None:
        """After a scan found no shift, the gate CUSUMs start accumulating afresh (their
        calibration is kept): the gate reopens on new evidence, not on the evidence that
        was just judged insufficient."""
        self.fused.reset()
        for det in self.rise.values():
            det.rearm()

    # -- helpers -----------------------------------------------------------------------
    def _execution_series(self, values: Mapping[str, float]) -> str | None:
        """The execution series the consolidation tracker follows: entropy if the run reports
        it, else NLL; the first one seen is kept for the rest of the run."""
        if self._execution_name is None:
            for name in EXECUTION_SERIES:
                x = values.get(name)
                if x is not None and math.isfinite(x):
                    self._execution_name = name
                    break
        return self._execution_name

    def _phi(self) -> float:
        """The run's AR(1) coefficient, pooled over the planning series (upper bound). Not
        over execution entropy or response length: their own trends (a decay within the
        first steps, a jump) leak into the estimate and would blunt every test."""
        models = [self.noise[n].noise for n in PLANNING_SERIES if self.noise[n].noise is not None]
        if not models:
            models = [w.noise for w in self.noise.values() if w.noise is not None]
        return pool_phi(models)

    # -- the scan ------------------------------------------------------------------------
    def _scan(self, step: int) -> ShiftFinding | None:
        cfg = self.config
        phi = self._phi()
        state = self.consolidation.state(phi)
        noise: dict[str, NoiseModel] = {}
        for name, window in self.noise.items():
            if window.noise is not None and window.count >= cfg.warmup_steps:
                noise[name] = with_phi(window.noise, phi)
        planning = [n for n in PLANNING_SERIES if n in noise]
        if not planning:
            self.last_scan = {"reason": "no planning series yet", "step": step}
            return None
        steps, values = self.windows.arrays({n: m.sd for n, m in noise.items()})
        rows = {n: values[self.names.index(n)] for n in noise}
        execution = self._execution_name if self._execution_name in noise else None
        length = LENGTH_SERIES[0] if LENGTH_SERIES[0] in noise else None
        finding = None
        if (state is not None and not state.fell and step - self._first_step <= cfg.start_window
                and steps[0] == self._first_step):
            finding = self._from_start(step, steps, rows, noise, planning, execution, state)
        if finding is None:
            finding = self._bend(step, steps, rows, noise, planning, execution, length, state)
        return finding

    def _joint_scale(self, names: list[str]) -> float:
        """Standard deviation of a sum of the named series' t statistics, under their
        estimated correlation (never below that of one series)."""
        idx = [self.fusion.index[n] for n in names]
        corr = self.fusion.correlation[np.ix_(idx, idx)]
        return math.sqrt(max(float(corr.sum()), 1.0))

    def _bend(self, step: int, steps: np.ndarray, rows: dict, noise: dict, planning: list[str],
              execution: str | None, length: str | None, state: ConsolidationState | None
              ) -> ShiftFinding | None:
        cfg = self.config
        lo = step - cfg.confirm_window + cfg.confirm_pre // 2
        knots = np.arange(max(lo, self._first_step + 3), step - cfg.shift_min_span + 1, dtype=float)
        if knots.size == 0:
            return None
        names = planning + [n for n in (execution, length) if n is not None]
        scan = hinge_scan_many(steps, np.stack([rows[n] for n in names]), knots,
                               np.array([noise[n].long_run_sd for n in names]),
                               np.array([noise[n].sd for n in names]), pre=cfg.confirm_pre, end=step)
        at = {n: i for i, n in enumerate(names)}
        p = [at[n] for n in planning]
        # NaN (too few observations around a knot) counts as no evidence at all
        t_after_all = np.where(np.isnan(scan.t_after), -math.inf, scan.t_after)
        t_change_all = np.where(np.isnan(scan.t_change), -math.inf, scan.t_change)
        scale = self._joint_scale(planning)
        t_after = t_after_all[p].sum(axis=0) / scale
        t_change = t_change_all[p].sum(axis=0) / scale
        falling = (t_after_all[p] <= -cfg.conflict_t).any(axis=0)
        consolidated = state is not None and state.consolidated
        length_t = None
        if length is not None and (consolidated or self._early_knot(self._first_step, step, state)):
            j = at[length]
            strength = np.minimum(t_change_all[j], t_after_all[j])
            # the length jump may start a few steps after the planning turn (or just before):
            # the strongest jump at any knot from 3 steps before this one on
            best_from = np.maximum.accumulate(strength[::-1])[::-1]
            length_t = best_from[np.maximum(np.arange(knots.size) - 3, 0)]
        exec_ok = np.ones(knots.size, dtype=bool)
        if execution is not None:
            # execution still falling vetoes a knot only when it falls by a comparable relative
            # amount: a planning signal that rises several times faster than execution falls
            # is no phase-1 drift (in real GRPO runs execution entropy keeps settling while
            # planning takes over)
            planning_rel = np.nanmax(np.where(np.isnan(scan.relative_rise[p]), -math.inf,
                                              scan.relative_rise[p]), axis=0)
            exec_fall = -np.nan_to_num(scan.relative_rise[at[execution]], nan=0.0)
            exec_ok = ((t_after_all[at[execution]] >= -cfg.execution_falling_t)
                       | (exec_fall < cfg.execution_falling_ratio * np.maximum(planning_rel, 0.0)))
        # candidate knots, judged again on their own residuals: the best-supported one (slope
        # after), the sharpest bend (change of slope) and the best compromise; a slow drift
        # since the start of the window makes the first an early knot that is no bend at all
        plausible = ~falling & exec_ok
        if not plausible.any():
            self.last_scan = {"step": step, "rule": "bend", "passed": False, "reason": "vetoed everywhere"}
            return None
        masked = lambda a: np.where(plausible, a, -math.inf)  # noqa: E731
        order = [int(np.argmax(masked(t_after))), int(np.argmax(masked(t_change))),
                 int(np.argmax(masked(np.minimum(t_after, t_change))))]
        best = None
        for i in dict.fromkeys(order):
            verdict = self._judge(i, int(knots[i]), steps, rows, planning, execution, scan, at, scale,
                                  consolidated, None if length_t is None else float(length_t[i]),
                                  early=self._early_knot(int(knots[i]), step, state))
            if best is None or (verdict["passed"], verdict["t_joint"]) > (best["passed"], best["t_joint"]):
                best = verdict
        self.last_scan = {"step": step, "rule": "bend", **{k: v for k, v in best.items() if k != "detail"}}
        if not best["passed"]:
            return None
        return ShiftFinding(onset=min(best["knot"], step), series=best["detail"]["lead"],
                            statistic=best["t_joint"], threshold=best["threshold"], detail=best["detail"])

    def _early_knot(self, knot: int, step: int, state: ConsolidationState | None) -> bool:
        """A turn within the first steps of a young run whose execution entropy never fell:
        a run without an execution phase, judged like a rise from the start."""
        cfg = self.config
        return (state is not None and not state.fell and not state.falling
                and step - self._first_step <= cfg.start_window
                and knot - self._first_step <= cfg.start_knots)

    def _judge(self, i: int, knot: int, steps: np.ndarray, rows: dict, planning: list[str],
               execution: str | None, scan, at: dict, scale: float, consolidated: bool,
               length_t: float | None, *, early: bool = False) -> dict:
        """Every test of the bend at knot ``i``, on the residual noise of its own fits."""
        cfg = self.config
        judged = planning + ([execution] if execution is not None else [])
        t_all, t_c = self._studentise(steps, rows, judged, scan, [at[n] for n in judged], i, knot)
        m = len(planning)
        t_a = t_all[:m]
        t_joint = float(t_a.sum()) / scale
        t_change = float(t_c[:m].sum()) / scale
        rel_all = np.array([scan.relative_rise[at[n], i] for n in planning])
        jumped = length_t is not None and length_t >= cfg.length_t
        need = cfg.confirm_t if consolidated else (cfg.start_t if early else cfg.confirm_t_unconsolidated)
        # one family of planning evidence alone (the other missing, or not rising with it)
        # needs the stricter bar, unless response length jumped with it
        if min(_families(dict(zip(planning, t_a)), cfg.agree_t)) < 2 and not jumped:
            need = max(need, cfg.confirm_t_alone)
        bar_single, bar_change = cfg.confirm_t_single, cfg.confirm_t_change
        if jumped and (consolidated or early):
            # a sharp length jump at the turn is corroboration enough for a planning signal
            # that is only starting to rise: every planning bar drops to confirm_t_with_length
            need = min(need, cfg.confirm_t_with_length)
            bar_single = min(bar_single, cfg.confirm_t_with_length)
            bar_change = min(bar_change, cfg.confirm_t_with_length)
        rising = t_a >= bar_single
        rel = float(np.max(np.where(rising, rel_all, -math.inf)))
        exec_rel = 0.0
        exec_ok = True
        if execution is not None:
            ex_t = float(t_all[-1])
            exec_rel = float(scan.relative_rise[at[execution], i]) if ex_t >= cfg.execution_veto_t else 0.0
            # compared with the typical rising planning series, not the steepest one
            typical = float(np.median(rel_all[rising])) if rising.any() else rel
            exec_fall = -float(scan.relative_rise[at[execution], i])
            still_falling = (ex_t < -cfg.execution_falling_t
                             and exec_fall >= cfg.execution_falling_ratio * max(rel, 0.0))
            exec_ok = (not still_falling and ex_t < cfg.execution_rise_t
                       and not exec_rel >= cfg.execution_veto * max(typical, 0.0))
        checks = {"joint": t_joint >= need, "change": t_change >= bar_change, "single": bool(rising.any()),
                  "relative": rel >= cfg.shift_min_relative, "execution": exec_ok,
                  "conflict": not bool((t_a <= -cfg.conflict_t).any())}
        passed = all(checks.values())
        verdict = {"knot": knot, "t_joint": t_joint, "t_change": t_change, "threshold": need,
                   "consolidated": consolidated, "length_t": length_t, "passed": passed, "checks": checks}
        if passed:
            names = [n for n, r in zip(planning, rising) if r]
            verdict["detail"] = {
                "rule": "bend", "onset": knot, "t_joint": t_joint, "t_change": t_change, "series": sorted(names),
                "lead": max(names, key=lambda n: t_a[planning.index(n)]),
                "fits": {n: {"t_after": _r(t_a[k]), "relative_rise": _r(rel_all[k], 4)}
                         for k, n in enumerate(planning)},
                "planning_relative_rise": rel, "execution_relative_rise": exec_rel,
                "execution_consolidated": consolidated,
            }
            if length_t is not None:
                verdict["detail"]["length_t"] = _r(length_t)
        return verdict

    def _studentise(self, steps: np.ndarray, rows: dict, planning: list[str], scan, index: list[int],
                    i: int, knot: int) -> tuple[np.ndarray, np.ndarray]:
        """t statistics (slope after, change of slope) of the named series at knot ``i``, with
        the noise measured on the residuals of those very fits.

        The scan's noise models come from each series' recent values, and a rise (or the
        fall before it) inflates both their scale and their AR(1) estimate, blunting the test
        exactly when the signal is there. At the knot being judged the fit has removed the
        trend, so its residuals show the noise itself. The AR(1) coefficient is pooled over
        the series and shrunk toward the prior as for the scan."""
        lo = knot - self.config.confirm_pre
        sel = steps >= lo
        t = steps[sel] - knot
        residual = []
        for name, j in zip(planning, index):
            fitted = (scan.level[j, i] + scan.slope_before[j, i] * t
                      + (scan.slope_after[j, i] - scan.slope_before[j, i]) * np.maximum(t, 0.0))
            residual.append(residual_noise(rows[name][sel] - fitted))
        return self._rescale(planning, residual, [scan.t_after[j, i] for j in index],
                             [scan.t_change[j, i] for j in index], max_gain=self.config.refit_max_gain)

    def _rescale(self, planning: list[str], residual: list, t_after: list[float], t_change: list[float],
                 *, max_gain: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
        """Rescale each series' t statistics from its scan noise to its residual noise, raising
        none by more than ``max_gain`` (the knots judged are the ones that looked best, so
        their residuals are biased low: over tens of thousands of scans an unbounded gain
        lets quiet stretches of a flat run pass)."""
        known = [r for r in residual if r is not None]
        total = sum(r.n for r in known)
        prior_weight = self.config.refit_prior_weight
        rho = sum(r.n * r.rho for r in known) / total if total else PRIOR_PHI
        weight = total + prior_weight
        # no residual fit at all (too few values around the knot) and no prior weight: the
        # prior alone stands in, with the widest margin
        rho = (total * rho + prior_weight * PRIOR_PHI) / weight if weight > 0 else PRIOR_PHI
        rho = rho + PHI_MARGIN / math.sqrt(max(weight, 1.0))
        # a short fit absorbs slow wander into its line, so its residuals understate strong
        # autocorrelation: never go below the running estimate from the series' own history
        # (a scan only runs with at least one planning series' noise known)
        phi = self._phi()
        rho = max(rho, self.config.refit_floor * phi)
        rho = min(max(rho, 0.0), MAX_PHI)
        factor = math.sqrt((1.0 + rho) / (1.0 - rho))
        out_a, out_c = [], []
        for name, r, ta, tc in zip(planning, residual, t_after, t_change):
            ta = -math.inf if ta != ta else ta
            tc = -math.inf if tc != tc else tc
            if r is not None:
                old = with_phi(self.noise[name].noise, phi).long_run_sd
                scale = min(old / max(r.sd * factor, 1e-300), max_gain)
                ta, tc = ta * scale, tc * scale
            out_a.append(ta)
            out_c.append(tc)
        return np.array(out_a), np.array(out_c)

    def _from_start(self, step: int, steps: np.ndarray, rows: dict, noise: dict, planning: list[str],
                    execution: str | None, state: ConsolidationState) -> ShiftFinding | None:
        cfg = self.config
        first = self._first_step
        fits = {}
        for name in planning:
            y = rows[name]
            ok = np.isfinite(y)
            fit = line_fit(steps[ok], y[ok], noise[name])
            if fit is not None:
                fits[name] = fit
        if not fits:
            return None
        names = list(fits)
        residual = []
        for name in names:
            y = rows[name]
            fit = fits[name]
            residual.append(residual_noise(y - (fit.start + fit.slope * (steps - steps[0]))))
        t_line, _ = self._rescale(names, residual, [fits[n].t for n in names], [fits[n].t for n in names])
        fits = {n: dataclasses.replace(f, t=float(tn)) for (n, f), tn in zip(fits.items(), t_line)}
        joint = sum(f.t for f in fits.values()) / self._joint_scale(names)
        need = cfg.start_t if len(fits) > 1 else max(cfg.start_t, cfg.confirm_t_alone)
        rising = sorted(n for n, f in fits.items() if f.t >= cfg.confirm_t_single)
        rel = max((fits[n].relative_rise for n in rising), default=-math.inf)
        falling = [n for n, f in fits.items() if f.t <= -cfg.conflict_t]
        families = _families({n: f.t for n, f in fits.items()}, cfg.agree_t)
        if min(families) < 2:
            need = max(need, cfg.confirm_t_alone)
        exec_rel = 0.0
        exec_ok = True
        if execution is not None:
            y = rows[execution]
            ok = np.isfinite(y)
            ex = line_fit(steps[ok], y[ok], noise[execution])
            if ex is not None:
                exec_rel = ex.relative_rise if ex.t >= cfg.execution_veto_t else 0.0
                exec_ok = ex.t > -cfg.execution_falling_t and not exec_rel >= cfg.execution_veto * max(rel, 0.0)
        self.last_scan = {"step": step, "rule": "from_start", "t_joint": joint, "threshold": need,
                          "passed": False,
                          "checks": {"joint": joint >= need, "single": bool(rising),
                                     "relative": rel >= cfg.shift_min_relative, "conflict": not falling,
                                     "execution": exec_ok, "not_falling": not state.falling}}
        if not (joint >= need and rising and rel >= cfg.shift_min_relative and not falling and exec_ok
                and not state.falling):
            return None
        self.last_scan["passed"] = True
        lead = max(rising, key=lambda n: fits[n].t)
        detail = {"rule": "from_start", "onset": first, "t_joint": joint, "series": rising,
                  "fits": {n: {"t": _r(f.t), "relative_rise": _r(f.relative_rise, 4)} for n, f in fits.items()},
                  "planning_relative_rise": float(rel), "execution_relative_rise": float(exec_rel),
                  "execution_consolidated": False}
        return ShiftFinding(onset=first, series=lead, statistic=joint, threshold=need, detail=detail)


def _families(t_stats: dict[str, float], at_least: float) -> tuple[int, int]:
    """(planning families present, families with a series rising by ``at_least`` standard
    errors): semantic entropy is one family, planning-token entropy and NLL (the same
    tokens, moving together) another."""
    present = rising = 0
    for family in PLANNING_FAMILIES:
        values = [t_stats[n] for n in family if n in t_stats]
        if values:
            present += 1
            rising += max(values) >= at_least
    return present, rising


def _r(x: float, digits: int = 3) -> float:
    x = float(x)
    return round(x, digits) if math.isfinite(x) else x
