"""CUSUM and Page-Hinkley: the online building blocks."""

import math

import numpy as np
import pytest

from phasewatch.detect import Cusum, PageHinkley


def test_cusum_detects_a_mean_shift_and_estimates_its_onset():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 1, 200), rng.normal(2, 1, 50)])
    det = Cusum(drift=0.5, threshold=8.0)
    fired = [t for t, v in enumerate(z) if det.update(v, t)]
    assert fired, "a 2-sigma shift must be detected"
    assert 200 <= det.detected_at <= 215
    assert 190 <= det.onset <= det.detected_at


def test_cusum_stays_quiet_on_white_noise():
    rng = np.random.default_rng(1)
    det = Cusum(drift=0.5, threshold=10.0)  # average run length ~1e5 white-noise steps
    for t, v in enumerate(rng.normal(0, 1, 5000)):
        det.update(v, t)
    assert not det.drift_detected


def test_one_spike_cannot_fire_a_clipped_cusum():
    det = Cusum(drift=0.5, threshold=4.0, clip=3.0)
    for t in range(50):
        det.update(0.0, t)
    det.update(1e9, 50)
    assert not det.drift_detected
    assert det.statistic == pytest.approx(2.5)
    unclipped = Cusum(drift=0.5, threshold=4.0)
    unclipped.update(1e9)
    assert unclipped.drift_detected


def test_cusum_downward_direction_and_reset():
    det = Cusum(drift=0.5, threshold=3.0, direction=-1)
    for v in [-2.0, -2.0, -2.0]:
        det.update(v)
    assert det.drift_detected
    det.reset()
    assert not det.drift_detected and det.statistic == 0.0


def test_cusum_ignores_nan():
    det = Cusum(threshold=1.0)
    det.update(math.nan)
    assert det.statistic == 0.0 and not det.drift_detected


def test_cusum_rejects_bad_arguments():
    with pytest.raises(ValueError, match="direction"):
        Cusum(direction=0)
    with pytest.raises(ValueError):
        Cusum(threshold=0.0)


def test_page_hinkley_detects_a_rise_without_a_reference_level():
    rng = np.random.default_rng(2)
    x = np.concatenate([5.0 + rng.normal(0, 1, 300), 8.0 + rng.normal(0, 1, 50)])
    det = PageHinkley(delta=0.5, threshold=15.0)
    for t, v in enumerate(x):
        det.update(v, t)
    assert det.drift_detected
    assert 300 <= det.detected_at <= 320
    quiet = PageHinkley(delta=0.5, threshold=15.0)
    for v in 5.0 + rng.normal(0, 1, 3000):
        quiet.update(v)
    assert not quiet.drift_detected


def test_page_hinkley_validates_alpha():
    with pytest.raises(ValueError, match="alpha"):
        PageHinkley(alpha=0.0)
