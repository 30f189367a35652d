"""Fusing the standardised departures of several series into one piece of evidence.

When planning turns into the bottleneck, several planning signals rise together (semantic
entropy, planning-token entropy, planning-token NLL). Summing their standardised departures
gains up to sqrt(m) in signal-to-noise over any single one, which is what cuts detection
delay, but only if the sum is divided by its true standard deviation: planning-token entropy
and NLL are strongly correlated, and treating them as independent would double-count noise
and false-alarm. The correlation matrix is therefore estimated on a bounded window, at a
cadence, from first differences of the raw series (free of slow trends, and available from
the first step, before the departures are), shrunk toward 0.5 while few pairs are known, with
negative correlations clipped to zero (the conservative side).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class EvidenceFusion:
    """``update(zs, raw)`` -> ``sum(z) / sqrt(1' R 1)`` over the names with a departure
    (NaN if none); ``raw`` (the untransformed values) feeds the correlation estimate."""

    def __init__(self, names: tuple[str, ...], *, window: int = 128, calibrate_every: int = 8,
                 min_pairs: int = 6, prior_weight: float = 10.0, prior: float = 0.5) -> None:
        self.names = tuple(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.window = window
        self.calibrate_every = max(1, int(calibrate_every))
        self.min_pairs = min_pairs
        self.prior_weight = prior_weight
        self.prior = prior
        self.reset()

    def reset(self) -> None:
        m = len(self.names)
        self.correlation = np.ones((m, m))  # conservative until estimated
        self._corr_rows = self.correlation.tolist()
        self._rows: deque[np.ndarray] = deque(maxlen=self.window)
        self._since = 0
        self.z = math.nan

    def update(self, zs: dict[str, float], raw: dict[str, float] | None = None) -> float:
        # plain Python on a handful of series: a numpy round trip per step costs more than
        # the arithmetic (this runs on every training step)
        names = self.names
        source = zs if raw is None else raw
        self._rows.append(tuple(_finite_or_nan(source.get(n)) for n in names))
        self._since += 1
        if self._since >= self.calibrate_every:
            self._calibrate()
        present = [i for i, n in enumerate(names) if _finite(zs.get(n))]
        if not present:
            self.z = math.nan
            return self.z
        corr = self._corr_rows
        total = sum(corr[i][j] for i in present for j in present)
        self.z = float(sum(zs[names[i]] for i in present) / math.sqrt(max(total, 1.0)))
        return self.z

    def _calibrate(self) -> None:
        self._since = 0
        rows = np.array(self._rows, dtype=float)
        if rows.shape[0] < self.min_pairs + 1:
            return
        diffs = np.diff(rows, axis=0)
        m = len(self.names)
        corr = np.eye(m)
        for i in range(m):
            for j in range(i + 1, m):
                ok = ~np.isnan(diffs[:, i]) & ~np.isnan(diffs[:, j])
                pairs = int(ok.sum())
                if pairs < self.min_pairs:
                    corr[i, j] = corr[j, i] = 1.0  # unknown: assume the worst
                    continue
                a = _clipped(diffs[ok, i])
                b = _clipped(diffs[ok, j])
                den = math.sqrt(float(a @ a) * float(b @ b))
                r = float(a @ b) / den if den > 0 else 1.0
                r = (pairs * r + self.prior_weight * self.prior) / (pairs + self.prior_weight)
                corr[i, j] = corr[j, i] = min(max(r, 0.0), 1.0)
        self.correlation = corr
        self._corr_rows = corr.tolist()


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _finite_or_nan(x: float | None) -> float:
    return float(x) if x is not None and math.isfinite(x) else math.nan


def _clipped(d: np.ndarray) -> np.ndarray:
    """Centre on the median and clip at 4 robust standard deviations (spikes weigh little)."""
    med = float(np.median(d))
    scale = 1.4826 * float(np.median(np.abs(d - med))) or 1.0
    return np.clip(d - med, -4.0 * scale, 4.0 * scale)
