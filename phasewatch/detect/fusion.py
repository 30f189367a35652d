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
        self._rows: deque[np.ndarray] = deque(maxlen=self.window)
        self._since = 0
        self.z = math.nan

    def update(self, zs: dict[str, float], raw: dict[str, float] | None = None) -> float:
        row = np.full(len(self.names), np.nan)
        for name, z in zs.items():
            i = self.index.get(name)
            if i is not None and z == z:
                row[i] = z
        raw_row = row.copy() if raw is None else np.full(len(self.names), np.nan)
        if raw is not None:
            for name, x in raw.items():
                i = self.index.get(name)
                if i is not None and x == x:
                    raw_row[i] = x
        self._rows.append(raw_row)
        self._since += 1
        if self._since >= self.calibrate_every:
            self._calibrate()
        present = np.flatnonzero(~np.isnan(row))
        if present.size == 0:
            self.z = math.nan
            return self.z
        sub = self.correlation[np.ix_(present, present)]
        self.z = float(row[present].sum() / math.sqrt(max(float(sub.sum()), 1.0)))
        return self.z

    def _calibrate(self) -> None:
        self._since = 0
        rows = np.array(self._rows)
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


def _clipped(d: np.ndarray) -> np.ndarray:
    """Centre on the median and clip at 4 robust standard deviations (spikes weigh little)."""
    med = float(np.median(d))
    scale = 1.4826 * float(np.median(np.abs(d - med))) or 1.0
    return np.clip(d - med, -4.0 * scale, 4.0 * scale)
