"""Online detector of a sustained rise (or fall) of one noisy, autocorrelated series.

A :class:`~phasewatch.detect.robust.Standardiser` turns each value into its departure from a
*lagged* reference, in long-run standard deviations (robust, AR(1)-aware); a clipped
one-sided :class:`~phasewatch.detect.cusum.Cusum` accumulates it. A series that is falling or
has flattened sits below (or at) its lagged reference and never accumulates evidence; a rise
that began less than ``lag`` steps ago is measured against the level before it, and the
reference is held while the CUSUM carries substantial evidence, so a slow rise is not
absorbed into it either.
"""

from __future__ import annotations

import math

from phasewatch.detect.cusum import Cusum
from phasewatch.detect.robust import NoiseModel, Standardiser


class RiseDetector:
    """``update(x, step)`` -> ``drift_detected``; ``statistic``/``threshold`` for readings;
    ``onset`` is the CUSUM's change-start estimate; ``noise`` the current noise model."""

    def __init__(self, *, direction: int = 1, drift: float = 0.5, threshold: float = 10.0,
                 clip: float = 3.0, warmup: int = 10, lag: int = 8, tau: float = 16.0,
                 window: int = 256, calibrate_every: int = 32, offset: int = 0) -> None:
        self.standardiser = Standardiser(warmup=warmup, lag=lag, tau=tau, window=window,
                                         calibrate_every=calibrate_every, offset=offset)
        self.cusum = Cusum(drift, threshold, direction=direction, clip=clip)

    @property
    def statistic(self) -> float:
        return self.cusum.statistic

    @property
    def threshold(self) -> float:
        return self.cusum.threshold

    @property
    def drift_detected(self) -> bool:
        return self.cusum.drift_detected

    @property
    def onset(self) -> int | None:
        return self.cusum.onset

    @property
    def noise(self) -> NoiseModel | None:
        return self.standardiser.noise

    @property
    def z(self) -> float:
        return self.standardiser.z

    def reset(self) -> None:
        self.cusum.reset()
        self.standardiser.reset()

    def rearm(self) -> None:
        """Forget accumulated evidence but keep the calibration (after a rejected alarm)."""
        self.cusum.reset()
        self.standardiser.hold = False

    def update(self, x: float, step: int | None = None) -> bool:
        z = self.standardiser.update(x)
        if math.isnan(z):
            return self.drift_detected
        self.cusum.update(z, step)
        self.standardiser.hold = self.cusum.statistic >= 0.5 * self.cusum.threshold
        return self.drift_detected
