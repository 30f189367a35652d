"""Robust noise models for training-metric series.

Training metrics are autocorrelated (a step's policy is the previous step's plus a small
update) and carry single-step spikes (one odd batch). A detector calibrated on white noise
false-alarms constantly on such series, and one calibrated with plain standard deviations is
blinded by one spike. Everything here therefore uses medians and first differences:

* the innovation scale comes from the MAD of first differences, which ignores slow trends and
  level shifts (they move few differences) and spikes (they move two differences each);
* the AR(1) coefficient comes from the lag-1 autocorrelation of the (clipped) differences:
  for an AR(1) process ``corr(d_t, d_{t-1}) = -(1 - phi) / 2``, again free of slow trends;
* the *long-run* standard deviation ``sigma_e / (1 - phi)`` is what a sum of n standardised
  values scales with, so CUSUM statistics divided by it behave like their white-noise
  versions and keep white-noise thresholds meaningful.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable

import numpy as np

#: MAD of a normal sample times this is its standard deviation.
MAD_TO_SD = 1.4826
#: AR(1) coefficients are capped here: beyond it the long-run variance estimate explodes.
MAX_PHI = 0.9


@dataclass(frozen=True)
class NoiseModel:
    """Scale and autocorrelation of a series around its slowly moving level.

    ``sd``: marginal standard deviation of the noise; ``phi``: its AR(1) coefficient;
    ``long_run_sd``: standard deviation of the mean of n values times sqrt(n) (large n).
    ``phi_hat`` is the raw AR(1) estimate from ``n`` values and ``diff_sd`` the robust
    standard deviation of the detrended differences, kept so that models of several series
    can be pooled (:func:`pool_phi`).
    """

    level: float
    sd: float
    phi: float
    long_run_sd: float
    phi_hat: float = 0.0
    n: int = 0
    diff_sd: float = 0.0


def robust_sd(values: np.ndarray) -> float:
    """MAD-based standard deviation (0.0 for fewer than two values)."""
    if values.size < 2:
        return 0.0
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values))))


def detrended_differences(x: np.ndarray, width: int = 15) -> np.ndarray:
    """First differences minus their running mean: the noise part of the differences.

    A curved trend (a decaying entropy, a ramp that starts slowly) gives the differences a
    slowly varying mean, which would read as positive autocorrelation and as extra noise;
    subtracting a running mean of ``width`` differences removes it. (A running median does
    too, but biases the AR(1) estimate upward by about 0.1 on pure noise; the mean by 0.05.)
    """
    d = np.diff(np.asarray(x, dtype=float))
    if d.size < width:
        return d - np.median(d) if d.size else d
    half = width // 2
    padded = np.pad(d, half, mode="edge")
    return d - np.convolve(padded, np.full(width, 1.0 / width), mode="valid")


def ar1_from_differences(diffs: np.ndarray) -> float:
    """AR(1) coefficient from the lag-1 autocorrelation of first differences, in [0, MAX_PHI].

    For AR(1) noise ``corr(d_t, d_{t-1}) = -(1 - phi) / 2``. Differences are clipped at 3
    robust standard deviations first, so a spike (which makes the pattern +s, -s in the
    differences and pulls the estimate down) weighs little.
    """
    if diffs.size < 8:
        return 0.0
    scale = robust_sd(diffs)
    if scale <= 0.0:
        return 0.0
    centred = np.clip(diffs - np.median(diffs), -3.0 * scale, 3.0 * scale)
    head, tail = centred[:-1], centred[1:]
    denom = math.sqrt(float(head @ head) * float(tail @ tail))
    if denom <= 0.0:
        return 0.0
    rho = float(head @ tail) / denom
    return float(min(max(1.0 + 2.0 * rho, 0.0), MAX_PHI))


#: The AR(1) coefficient used is an upper confidence bound, ``phi_hat + PHI_MARGIN /
#: sqrt(n)``: the estimate is uncertain by about 1.6 / sqrt(n) (0.15 from 145 values, 0.3
#: from 30), and underestimating it is what makes alarms fire on autocorrelated noise, so
#: the detectors err on the slow side. The scale is inflated by (1 + SMALL_SAMPLE / n).
PHI_MARGIN = 1.5
SMALL_SAMPLE = 4.0


def despike(x: np.ndarray, k: float = 5.0) -> np.ndarray:
    """``x`` with single-step spikes replaced by the mean of their neighbours.

    A spike is a value that jumps away from *both* neighbours by more than ``k`` robust
    standard deviations of the first differences, in the same direction: it would read as
    noise (inflating the scale) and as strong negative autocorrelation. O(n), no sliding
    medians: noise models are refitted often, on every series."""
    x = np.asarray(x, dtype=float)
    if x.size < 5:
        return x
    d = np.diff(x)
    scale = robust_sd(d)
    if scale <= 0.0:
        return x
    left, right = d[:-1], -d[1:]  # x[i] - x[i-1] and x[i] - x[i+1] for the inner values
    spike = (np.abs(left) > k * scale) & (np.abs(right) > k * scale) & (np.sign(left) == np.sign(right))
    if not spike.any():
        return x
    out = x.copy()
    inner = np.flatnonzero(spike) + 1
    out[inner] = 0.5 * (x[inner - 1] + x[inner + 1])
    return out


def noise_model(values: Iterable[float] | np.ndarray, *, min_sd: float = 0.0) -> NoiseModel | None:
    """Fit a :class:`NoiseModel` to finite values in time order (None for fewer than 8).

    ``min_sd`` is a floor on the marginal standard deviation, so that a series that is
    constant for a while (quantised logs, a collapsed entropy) does not turn every later
    wiggle into an infinite z-score.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 8:
        return None
    x = despike(x)
    diffs = detrended_differences(x)
    n = x.size
    phi_hat = ar1_from_differences(diffs)
    diff_sd = robust_sd(diffs) * (1.0 + SMALL_SAMPLE / n)
    model = NoiseModel(level=float(np.median(x)), sd=0.0, phi=0.0, long_run_sd=0.0,
                       phi_hat=phi_hat, n=n, diff_sd=diff_sd)
    return with_phi(model, min(phi_hat + PHI_MARGIN / math.sqrt(n), MAX_PHI), min_sd=min_sd)


def with_phi(model: NoiseModel, phi: float, *, min_sd: float = 0.0) -> NoiseModel:
    """``model`` with its AR(1) coefficient replaced, scales recomputed from its differences."""
    phi = min(max(phi, 0.0), MAX_PHI)
    # var(d) = 2 * var(x) * (1 - phi) for AR(1)
    sd = max(model.diff_sd / math.sqrt(2.0 * (1.0 - phi)), min_sd, model.level * 1e-9, 1e-12)
    long_run = sd * math.sqrt((1.0 + phi) / (1.0 - phi))
    return NoiseModel(level=model.level, sd=sd, phi=phi, long_run_sd=long_run,
                      phi_hat=model.phi_hat, n=model.n, diff_sd=model.diff_sd)


#: Prior for the AR(1) coefficient of a run's metrics, as if seen on PRIOR_WEIGHT values:
#: the real GRPO logs (``../shared/data/rl-logs``) show lag-1 autocorrelations of -0.06..+0.13
#: around their trends, up to +0.45 in an unstable stretch; larger batches make the slow policy
#: wander relatively larger. Estimates from a few dozen values scatter by +-0.25 (and trends
#: push them up), so early in a run the prior keeps one wild estimate from blunting, or
#: sharpening, every test; with hundreds of values the data decide.
PRIOR_PHI = 0.3
PRIOR_WEIGHT = 48.0


def pool_phi(models: Iterable[NoiseModel], *, prior: float = PRIOR_PHI,
             prior_weight: float = PRIOR_WEIGHT) -> float:
    """Upper confidence bound of an AR(1) coefficient shared by several series of one run.

    Series of one run move with the same training dynamics; pooling them narrows the bound,
    which matters early in a run. Three or more estimates are pooled by their median (one wild
    estimate must not decide for all), fewer by their sample-size-weighted mean; the result is
    shrunk toward ``prior`` with weight ``prior_weight`` and bounded ``PHI_MARGIN / sqrt(n)``
    above."""
    models = [m for m in models if m.n > 0]
    total = sum(m.n for m in models)
    if total == 0:
        return MAX_PHI
    if len(models) >= 3:
        phi_hat = float(np.median([m.phi_hat for m in models]))
    else:
        phi_hat = sum(m.n * m.phi_hat for m in models) / total
    shrunk = (total * phi_hat + prior_weight * prior) / (total + prior_weight)
    return min(shrunk + PHI_MARGIN / math.sqrt(total + prior_weight), MAX_PHI)


#: Observation counts at which a young window recalibrates (small arrays: cheap).
EARLY_CALIBRATIONS = frozenset({8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64})


class SeriesWindow:
    """The last ``size`` finite values of one series, with a noise model refreshed at
    :data:`EARLY_CALIBRATIONS` and then every ``calibrate_every`` pushes.

    ``offset`` staggers windows that are pushed in lockstep (the series of one run), so
    that recalibrations (a numpy pass over ``size`` values, ~0.1-0.4 ms) fall on different
    steps and most steps do none. Memory and per-step cost are bounded by ``size``.
    """

    def __init__(self, size: int, calibrate_every: int = 32, *, offset: int = 0,
                 rel_floor: float = 1e-3) -> None:
        if size < 8:
            raise ValueError(f"size: must be >= 8, got {size}")
        self.size = size
        self.calibrate_every = max(1, int(calibrate_every))
        self.offset = int(offset)
        self.rel_floor = rel_floor
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.noise: NoiseModel | None = None

    def push(self, x: float) -> None:
        self.values.append(x)
        self.count += 1
        c = self.count
        if c <= 64:
            if c in EARLY_CALIBRATIONS:
                self.recalibrate()
        elif (c + self.offset) % self.calibrate_every == 0:
            self.recalibrate()

    def recalibrate(self) -> None:
        arr = np.fromiter(self.values, dtype=float, count=len(self.values))
        floor = self.rel_floor * float(np.median(np.abs(arr))) if arr.size else 0.0
        model = noise_model(arr, min_sd=floor)
        if model is not None:
            self.noise = model

    def array(self) -> np.ndarray:
        return np.fromiter(self.values, dtype=float, count=len(self.values))

    def reset(self) -> None:
        self.values.clear()
        self.count = 0
        self.noise = None


def hampel(values: np.ndarray, sd: float, *, k: float = 4.0, half_width: int = 3) -> np.ndarray:
    """Replace values further than ``k * sd`` from their running median (``2*half_width+1``
    values) with that median: single-step spikes out, steps and ramps kept.

    The first and last ``half_width`` values are judged against the first and last full
    window (not a reflected or padded one): reflecting the end of a series duplicates a spike
    that sits there, so two spikes in the last three values would outvote the good ones and
    a normal last value would be "corrected" onto the spike. The end of the window is where
    a detector looks hardest, so up to ``half_width`` spikes among the last ``2*half_width+1``
    values are caught.
    """
    x = np.asarray(values, dtype=float)
    width = 2 * half_width + 1
    if x.size < width or sd <= 0:
        return x.copy()
    inner = np.median(np.lib.stride_tricks.sliding_window_view(x, width), axis=1)
    med = np.concatenate([np.full(half_width, inner[0]), inner, np.full(half_width, inner[-1])])
    return np.where(np.abs(x - med) > k * sd, med, x)


class Standardiser:
    """Turns a raw series into standardised departures from its own recent past.

    ``update(x)`` returns ``(x - reference) / long_run_sd`` (NaN during warm-up), where the
    reference is an exponentially weighted mean (time constant ``tau``) of the values as they
    were ``lag`` observations ago, spikes clipped. Set :attr:`hold` while a change is being
    accumulated, so the reference does not absorb it. Bounded state: ``window`` values.
    """

    def __init__(self, *, warmup: int = 10, lag: int = 8, tau: float = 16.0,
                 window: int = 256, calibrate_every: int = 32, offset: int = 0) -> None:
        self.warmup = max(int(warmup), 4)
        self.lag = max(int(lag), 1)
        self.tau = max(float(tau), 1.0)
        self.window = SeriesWindow(window, calibrate_every, offset=offset)
        self.reset()

    def reset(self) -> None:
        self.window.reset()
        self.reference: float | None = None
        self.hold = False
        self.z = math.nan
        self._delayed: deque[float] = deque(maxlen=self.lag)

    @property
    def noise(self) -> NoiseModel | None:
        return self.window.noise

    @property
    def ready(self) -> bool:
        return self.reference is not None

    def update(self, x: float) -> float:
        if not math.isfinite(x):
            self.z = math.nan
            return self.z
        self.window.push(x)
        noise = self.window.noise
        if self.window.count < self.warmup or noise is None:
            self._delayed.append(x)
            self.z = math.nan
            return self.z
        if self.reference is None:
            self.reference = noise.level
        self.z = (x - self.reference) / noise.long_run_sd
        if len(self._delayed) == self._delayed.maxlen and not self.hold:
            old = self._delayed[0]
            lo = self.reference - 3.0 * noise.sd
            hi = self.reference + 3.0 * noise.sd
            self.reference += (min(max(old, lo), hi) - self.reference) / self.tau
        self._delayed.append(x)
        return self.z
