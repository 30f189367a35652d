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
* :func:`hinge_scan_many`: the same one-knot fit for *every* candidate knot of a window at once,
  for several series observed on the same steps,
  each fitted on a local stretch (``pre`` steps before its knot to the end), vectorised with
  prefix sums and batched 3x3 solves. Local, because a long stretch before the knot makes a
  straight "before" line cut through the curve of a consolidating (decaying) series, and the
  continuity constraint then tilts the "after" line upward: a fall that flattens would look
  like a rise. Observations may sit at irregular steps (gaps).
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


@dataclass(frozen=True)
class HingeScan:
    """One-knot fits of one window at every knot of ``knots`` (arrays aligned with it).

    ``t_after``/``t_change``: t statistics (long-run, AR(1)-aware errors) of the slope after
    the knot and of the change of slope (NaN where the knot has fewer than 3 observations on
    either side); ``relative_rise``: fitted rise from the knot to ``end`` divided by the
    fitted level at the knot; ``rise_sd`` the same rise in noise standard deviations.
    """

    knots: np.ndarray
    level: np.ndarray
    slope_before: np.ndarray
    slope_after: np.ndarray
    t_after: np.ndarray
    t_change: np.ndarray
    relative_rise: np.ndarray
    rise_sd: np.ndarray


def hinge_scan_many(steps: np.ndarray, ys: np.ndarray, knots: np.ndarray, long_run_sd: np.ndarray,
                    sd: np.ndarray, *, pre: float = 24.0, end: float | None = None) -> HingeScan:
    """Least-squares fits ``y ~ a + b (t - k) + c (t - k)+`` on ``t >= k - pre`` for every knot
    ``k`` in ``knots`` (steps, any spacing), all at once, O(len(knots) + len(steps)), for
    several series observed on the same steps: ``ys`` is (series, steps) with NaN where a series has no value; ``long_run_sd`` and ``sd`` give each
    series' noise. The fields of the result are (series, knots) arrays (``knots`` 1-d).

    Missing values are zero-weighted in every sum, so each series is fitted on its own
    observations; steps are centred on the first one before squaring (long runs reach steps
    in the hundreds of thousands)."""
    t0 = float(steps[0]) if len(steps) else 0.0
    t = np.asarray(steps, dtype=float) - t0
    k = np.asarray(knots, dtype=float) - t0
    ys = np.asarray(ys, dtype=float)
    end_t = (float(t[-1]) if len(t) else 0.0) if end is None else float(end) - t0
    w = np.isfinite(ys)
    y = np.where(w, ys, 0.0)
    wf = w.astype(float)
    m, n = ys.shape
    # the five running sums every fit needs (count, t, t^2, y, t*y), one cumulative pass
    sums = np.zeros((5, m, n + 1))
    np.cumsum(np.stack([wf, wf * t, wf * (t * t), y, y * t]), axis=2, out=sums[:, :, 1:])
    first = np.searchsorted(t, k - pre, side="left")
    after = np.searchsorted(t, k, side="right")
    total = sums[:, :, n:]
    cnt, s_t, s_tt, s_y, s_ty = total - sums[:, :, first]
    cnt_p, s_tp, s_ttp, s_yp, s_typ = total - sums[:, :, after]
    x1 = s_t - cnt * k
    x11 = s_tt - 2.0 * k * s_t + cnt * k * k
    x2 = s_tp - cnt_p * k
    x22 = s_ttp - 2.0 * k * s_tp + cnt_p * k * k
    ok = (cnt_p >= 3) & (cnt - cnt_p >= 3)
    # symmetric 3x3 normal equations [[a b c] [b d e] [c e f]] (here e == f: (t-k)(t-k)+ is
    # (t-k)+^2), inverted in closed form by cofactors: much cheaper than a batched solver
    a, b, c, d, e = cnt, x1, x2, x11, x22
    f = e
    i11 = d * f - e * e
    i12 = c * e - b * f
    i13 = b * e - c * d
    i22 = a * f - c * c
    i23 = b * c - a * e
    i33 = a * d - b * b
    det = a * i11 + b * i12 + c * i13
    ok &= det > 1e-9 * np.maximum(a * d * f, 1e-300)
    det = np.where(ok, det, 1.0)
    r0, r1, r2 = s_y, s_ty - k * s_y, s_typ - k * s_yp
    level = (i11 * r0 + i12 * r1 + i13 * r2) / det
    slope_before = (i12 * r0 + i22 * r1 + i23 * r2) / det
    change = (i13 * r0 + i23 * r1 + i33 * r2) / det
    var_after = (i22 + 2.0 * i23 + i33) / det
    var_change = i33 / det
    slope_after = slope_before + change
    lr = np.asarray(long_run_sd, dtype=float)[:, None]
    sdv = np.asarray(sd, dtype=float)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_after = np.where(ok, slope_after / (lr * np.sqrt(np.maximum(var_after, 1e-300))), np.nan)
        t_change = np.where(ok, change / (lr * np.sqrt(np.maximum(var_change, 1e-300))), np.nan)
        rise = slope_after * (end_t - k)
        relative = np.where(ok, rise / np.maximum(np.abs(level), 1e-300), np.nan)
        rise_sd = np.where(ok, rise / sdv, np.nan)
    return HingeScan(k + t0, level, slope_before, slope_after, t_after, t_change, relative, rise_sd)


@dataclass(frozen=True)
class LineFit:
    """Least-squares line through a window: slope, its t statistic (long-run errors), the
    fitted level at the first and last step, and the relative rise between them."""

    slope: float
    t: float
    start: float
    end: float
    relative_rise: float


def line_fit(steps: np.ndarray, y: np.ndarray, noise: NoiseModel) -> LineFit | None:
    """The straight line through ``(steps, y)``; None for fewer than 4 observations."""
    t = np.asarray(steps, dtype=float)
    y = np.asarray(y, dtype=float)
    if t.size < 4:
        return None
    tc = t - t.mean()
    stt = float(tc @ tc)
    if stt <= 0:
        return None
    slope = float(tc @ (y - y.mean())) / stt
    mean = float(y.mean())
    start = mean + slope * (float(t[0]) - float(t.mean()))
    end = mean + slope * (float(t[-1]) - float(t.mean()))
    t_stat = slope / (noise.long_run_sd / math.sqrt(stt))
    rel = (end - start) / abs(start) if start != 0 else math.inf
    return LineFit(slope, t_stat, start, end, rel)


@dataclass(frozen=True)
class ResidualNoise:
    """Noise seen in the residuals of a fit: marginal standard deviation, lag-1
    autocorrelation (small-sample bias corrected) and the number of residuals."""

    sd: float
    rho: float
    n: int


def residual_noise(residuals: np.ndarray) -> ResidualNoise | None:
    """Scale and lag-1 autocorrelation of a fit's residuals (time order; NaN = missing and
    breaks the lag pairs); None for fewer than 8. The scale is the root mean square (3 fitted
    parameters): the fit is least squares, so an outlier that the spike filter let through
    moves the fit as much as it moves this scale.

    The scale of the *trend-free* residuals is what a t statistic needs: noise estimated
    from raw values (even from their differences) is inflated, and its autocorrelation
    overestimated, by the very trend being tested. Lag-1 autocorrelation of regression
    residuals is biased toward -(1 + 3 rho) / n; that is added back."""
    r = np.asarray(residuals, dtype=float)
    ok = np.isfinite(r)
    n = int(ok.sum())
    if n < 8:
        return None
    rr = r[ok]
    sd = math.sqrt(float(rr @ rr) / max(n - 3, 1))
    if sd <= 0:
        return None
    c = np.where(ok, np.clip(r, -3.0 * sd, 3.0 * sd), np.nan)
    a, b = c[1:], c[:-1]
    pair = np.isfinite(a) & np.isfinite(b)
    a, b = a[pair], b[pair]
    denom = math.sqrt(float(a @ a) * float(b @ b))
    rho = float(a @ b) / denom if denom > 0 else 0.0
    rho = rho + (1.0 + 3.0 * max(rho, 0.0)) / n
    return ResidualNoise(sd, min(max(rho, -0.5), 0.95), n)


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
