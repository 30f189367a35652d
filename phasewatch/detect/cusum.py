"""One-sided CUSUM on standardised values (Page 1954), river-style.

``S_t = max(0, S_{t-1} + clip(z_t) * sign - drift)``; the detector fires when ``S_t`` exceeds
``threshold``. The step after which ``S`` last sat at zero is the classic estimate of when
the change began. Values are clipped to ``+-clip`` before they enter the sum, so one spike
can raise the statistic by at most ``clip - drift``: spikes in real training logs must not
fire alarms on their own.
"""

from __future__ import annotations

import math


class Cusum:
    """Upward (``direction=+1``) or downward (``-1``) CUSUM of standardised values.

    ``update(z, step)`` returns ``drift_detected``. After a detection the statistic keeps
    accumulating (it is a reading for dashboards); call :meth:`reset` to re-arm.
    """

    def __init__(self, drift: float = 0.5, threshold: float = 8.0, *, direction: int = 1,
                 clip: float = math.inf) -> None:
        if direction not in (1, -1):
            raise ValueError(f"direction: expected +1 or -1, got {direction!r}")
        if drift < 0 or threshold <= 0 or clip <= 0:
            raise ValueError("drift must be >= 0, threshold and clip > 0")
        self.drift = float(drift)
        self.threshold = float(threshold)
        self.direction = direction
        self.clip = float(clip)
        self.reset()

    def reset(self) -> None:
        self.statistic = 0.0
        self.drift_detected = False
        self.onset: int | None = None  # last step at which the statistic was zero
        self.detected_at: int | None = None
        self._n = 0

    def update(self, z: float, step: int | None = None) -> bool:
        """Add one standardised value (NaN is ignored); return whether a change is detected."""
        if step is None:
            step = self._n
        self._n += 1
        if math.isnan(z):
            return self.drift_detected
        z = max(-self.clip, min(self.clip, z * self.direction))
        if self.statistic <= 0.0:
            self.onset = step
        self.statistic = max(0.0, self.statistic + z - self.drift)
        if self.statistic == 0.0:
            self.onset = step
        if not self.drift_detected and self.statistic > self.threshold:
            self.drift_detected = True
            self.detected_at = step
        return self.drift_detected
