"""Page-Hinkley test for a rise (or fall) of the mean, river-style.

Unlike :class:`~phasewatch.detect.cusum.Cusum` it needs no reference level: it compares each
value with the running mean of all values since the last reset, so it suits series whose
level is unknown in advance (a health alarm armed right after warm-up). ``alpha`` < 1 makes
that mean exponentially forgetting, which keeps the state O(1) and lets the reference follow
slow drifts instead of treating them as a change.
"""

from __future__ import annotations

import math


class PageHinkley:
    """``m_t = sum (x_i - mean_i - delta)``; fires when ``m_t - min m > threshold``
    (``direction=+1``) or ``max m - m_t > threshold`` (``-1``). Inputs are standardised values.
    """

    def __init__(self, delta: float = 0.5, threshold: float = 10.0, *, alpha: float = 1.0,
                 direction: int = 1, min_instances: int = 8, clip: float = math.inf) -> None:
        if direction not in (1, -1):
            raise ValueError(f"direction: expected +1 or -1, got {direction!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha: expected a value in (0, 1], got {alpha}")
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.direction = direction
        self.min_instances = int(min_instances)
        self.clip = float(clip)
        self.reset()

    def reset(self) -> None:
        self.statistic = 0.0
        self.drift_detected = False
        self.onset: int | None = None
        self.detected_at: int | None = None
        self._mean = 0.0
        self._weight = 0.0
        self._cum = 0.0
        self._extreme = 0.0
        self._n = 0

    def update(self, x: float, step: int | None = None) -> bool:
        if step is None:
            step = self._n
        if math.isnan(x):
            self._n += 1
            return self.drift_detected
        self._n += 1
        x = self.direction * x
        if self._weight > 0.0:
            x = max(self._mean - self.clip, min(self._mean + self.clip, x))
        self._weight = self.alpha * self._weight + 1.0
        self._mean += (x - self._mean) / self._weight
        self._cum += x - self._mean - self.delta
        if self._cum <= self._extreme:
            self._extreme = self._cum
            self.onset = step
        self.statistic = self._cum - self._extreme
        if (not self.drift_detected and self._n >= self.min_instances
                and self.statistic > self.threshold):
            self.drift_detected = True
            self.detected_at = step
        return self.drift_detected
