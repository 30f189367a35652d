"""Offline confirmation and localisation of a change, on a bounded window.

The online layer (CUSUMs) says *that* something may have changed; this module refits the last
values of a series to say *where* it began and how large it is. It runs on candidates only.

* :class:`TrendChangeConfirmer`: the least-squares continuous piecewise-linear fit with one
  knot (a "hinge"), searched exactly over every knot in O(n) with prefix sums
  (:func:`hinge_search`). Planning signals *turn upward* rather than jump, so the onset of the
  planning phase is a change of slope, not of mean. (ruptures' own continuous-linear cost,
  ``CostCLinear``, draws each segment's line through two single samples, so one noisy sample
  moves the knot; its ``Dynp`` search also costs ~8 ms for 256 values against ~0.1 ms here.
  ``benchmarks/bench_detect.py`` measures both.)
* :class:`MeanShiftConfirmer`: the last mean shift, with ruptures
  (``KernelCPD(kernel="linear")``, in C, a fresh estimator per fit since reused estimators
  can return stale results, ruptures#372; ``jump=1``, since the default 5 rounds breakpoints
  to multiples of 5). Used to localise health level shifts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ruptures as rpt

from phasewatch.detect.robust import NoiseModel, hampel


@dataclass(frozen=True)
class TrendChange:
    """A one-knot continuous piecewise-linear fit of a window.

    ``knot`` indexes the window; ``rise`` is the fitted increase from the knot to the last
    value, ``rise_sd`` the same in noise standard deviations, ``relative_rise`` divided by the
    level at the knot. ``t_after`` is the t statistic of the slope after the knot and
    ``t_change`` that of the change of slope, both with AR(1)-aware (long-run) errors.
    """

    knot: int
    level: float
    slope_before: float
    slope_after: float
    span: int
    rise: float
    rise_sd: float
    relative_rise: float
    t_after: float
    t_change: float


def _slope_se(long_run_sd: float, points: int) -> float:
    """Standard error of an OLS slope over ``points`` equally spaced AR(1) values."""
    points = max(points, 2)
    return long_run_sd * math.sqrt(12.0 / (points ** 3 - points))


def hinge_fit(y: np.ndarray, knot: int, noise: NoiseModel) -> TrendChange:
    """Least-squares continuous piecewise-linear fit of ``y`` with its knot at ``knot``."""
    n = y.size
    knot = min(max(int(knot), 0), n - 2)
    t = np.arange(n, dtype=float)
    design = np.column_stack([np.ones(n), t - knot, np.maximum(t - knot, 0.0)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    level, before, change = (float(c) for c in coef)
    after = before + change
    span = n - 1 - knot
    rise = after * span
    se_after = _slope_se(noise.long_run_sd, span + 1)
    se_before = _slope_se(noise.long_run_sd, knot + 1) if knot >= 2 else math.inf
    se_change = math.sqrt(se_after ** 2 + (se_before ** 2 if math.isfinite(se_before) else 0.0))
    return TrendChange(
        knot=knot,
        level=level,
        slope_before=before,
        slope_after=after,
        span=span,
        rise=rise,
        rise_sd=rise / noise.sd,
        relative_rise=rise / abs(level) if level != 0 else math.inf,
        t_after=after / se_after,
        t_change=change / se_change,
    )


def hinge_search(y: np.ndarray, min_size: int = 5, direction: int = 0) -> int | None:
    """The knot (index) minimising the residual sum of squares of a continuous
    piecewise-linear least-squares fit with one knot, over knots ``min_size..n-min_size``.

    ``direction=+1`` only considers upward bends (slope after > slope before), ``-1`` only
    downward ones; None when there is none. A rise that has already levelled off has two
    bends, up at its start and down at its end; the phase shift is the first.

    Profile trick: with ``r`` the residual of ``y`` on ``[1, t]`` and ``h_k = (t - k)+``,
    ``RSS(k) = RSS_line - (r . h_k)^2 / |h_k - proj h_k|^2``; every term is a suffix sum, so
    all knots cost O(n) together.
    """
    y = np.asarray(y, dtype=float)
    n = y.size
    if n < 2 * min_size + 1:
        raise ValueError(f"hinge_search: need at least {2 * min_size + 1} values, got {n}")
    t = np.arange(n, dtype=float)
    tc = t - t.mean()
    stt = float(tc @ tc)
    r = y - y.mean() - tc * (float(tc @ y) / stt)

    def suffix(a: np.ndarray) -> np.ndarray:
        return np.cumsum(a[::-1])[::-1]

    k = np.arange(min_size, n - min_size + 1)
    kf = k.astype(float)
    cnt = suffix(np.ones(n))[k]
    s_t = suffix(t)[k]
    s_tt = suffix(t * t)[k]
    s_r = suffix(r)[k]
    s_rt = suffix(r * t)[k]
    h_sum = s_t - kf * cnt                                   # sum (t-k)+
    h_sq = s_tt - 2.0 * kf * s_t + kf * kf * cnt            # sum (t-k)+^2
    h_t = s_tt - kf * s_t                                    # sum (t-k)+ * t
    h_tc = h_t - t.mean() * h_sum                            # sum (t-k)+ * (t - mean t)
    resid_sq = h_sq - h_sum * h_sum / n - h_tc * h_tc / stt
    cross = s_rt - kf * s_r  # sign of the slope change at each knot
    gain = cross * cross / np.maximum(resid_sq, 1e-12)
    if direction:
        gain = np.where(np.sign(cross) == direction, gain, -1.0)
    best = int(np.argmax(gain))
    if gain[best] < 0:
        return None
    return int(k[best])


class TrendChangeConfirmer:
    """Locate the upward turn of a window (:func:`hinge_search`) and measure it
    (:func:`hinge_fit`). Spikes are removed first (Hampel filter), because a least-squares
    fit would chase a spike at the end of the window."""

    def __init__(self, min_size: int = 5) -> None:
        self.min_size = int(min_size)
        self.drift_detected = False
        self.last: TrendChange | None = None

    def reset(self) -> None:
        self.drift_detected = False
        self.last = None

    def fit(self, values: np.ndarray, noise: NoiseModel, *, from_start: bool = False) -> TrendChange | None:
        """Fit the upward turn of one window (time order, finite values); None if the window
        is too short or bends nowhere upward. ``from_start``: the window begins at the start
        of the run, so "rising all along" (knot 0) is a candidate too."""
        y = np.asarray(values, dtype=float)
        if y.size < 3 * self.min_size:
            return None
        y = hampel(y, noise.sd)
        knot = hinge_search(y, self.min_size, direction=1)
        best = None if knot is None else hinge_fit(y, knot, noise)
        if from_start:
            line = hinge_fit(y, 0, noise)
            if best is None or line.t_after > best.t_after:
                best = line
        self.last = best
        return best


class MeanShiftConfirmer:
    """Localise the last mean shift of a window with ``KernelCPD(kernel="linear")``; the
    penalty scales with the noise variance, so it needs no per-series tuning."""

    def __init__(self, *, penalty: float = 12.0, min_size: int = 3) -> None:
        self.penalty = float(penalty)
        self.min_size = int(min_size)
        self.drift_detected = False

    def reset(self) -> None:
        self.drift_detected = False

    def last_shift(self, values: np.ndarray, noise: NoiseModel) -> int | None:
        """Index in ``values`` at which the last mean shift begins, or None."""
        y = np.asarray(values, dtype=float)
        if y.size < 2 * self.min_size + 1:
            return None
        algo = rpt.KernelCPD(kernel="linear", min_size=self.min_size, jump=1)
        bkps = [int(b) for b in algo.fit(y.reshape(-1, 1)).predict(pen=self.penalty * noise.long_run_sd ** 2)]
        inner = [b for b in bkps if b < y.size]
        if not inner:
            return None
        self.drift_detected = True
        return inner[-1]
