"""ConsolidationTracker, the multi-series hinge scan and the noise helpers the shift scan uses."""

import math

import numpy as np
import pytest

from phasewatch.detect.confirm import hinge_scan_many, residual_noise
from phasewatch.detect.consolidation import ConsolidationTracker
from phasewatch.detect.robust import despike, noise_model


def feed(tracker, values):
    for i, x in enumerate(values):
        tracker.update(float(x), i)
    return tracker.state(0.3)


def test_a_fall_then_flat_is_consolidated_and_stays_so():
    rng = np.random.default_rng(0)
    t = np.arange(200.0)
    y = 0.1 + 0.2 * np.exp(-t / 15) + rng.normal(0, 0.003, t.size)
    tracker = ConsolidationTracker()
    falling = feed(tracker, y[:20])
    assert falling.falling and not falling.consolidated
    state = feed(tracker, y)
    assert state.fell and not state.falling and state.consolidated
    assert state.drop > 0.5
    # a later rise does not undo it (the phase it marks has happened)
    later = ConsolidationTracker()
    feed(later, y)
    for i, x in enumerate(0.1 + 0.001 * np.arange(50) + rng.normal(0, 0.003, 50)):
        later.update(float(x), 200 + i)
    assert later.state(0.3).fell


def test_a_flat_or_noisy_series_never_consolidates():
    rng = np.random.default_rng(1)
    tracker = ConsolidationTracker()
    state = feed(tracker, 0.2 * (1 + rng.normal(0, 0.05, 300)))
    assert not state.fell and not state.consolidated
    # a single deep spike early on is not a fall either
    y = 0.2 * (1 + rng.normal(0, 0.02, 200))
    y[3] = 2.0
    assert not feed(ConsolidationTracker(), y).fell


def test_nan_values_are_skipped_and_state_is_bounded():
    tracker = ConsolidationTracker(window=32)
    for i in range(5000):
        tracker.update(math.nan if i % 7 == 0 else 0.2, i)
    assert len(tracker.values) <= 32 and len(tracker.head) <= tracker.head_size
    assert tracker.count == 5000 - len(range(0, 5000, 7))


def test_hinge_scan_many_matches_one_series_at_a_time_and_finds_the_knot():
    rng = np.random.default_rng(2)
    steps = np.arange(100.0)
    rising = 1.0 + 0.02 * np.maximum(steps - 60, 0) + rng.normal(0, 0.01, steps.size)
    flat = 2.0 + rng.normal(0, 0.01, steps.size)
    flat[10] = np.nan
    knots = np.arange(30.0, 95.0)
    both = hinge_scan_many(steps, np.stack([rising, flat]), knots, np.array([0.01, 0.01]),
                           np.array([0.01, 0.01]), pre=24)
    alone = hinge_scan_many(steps, flat[None, :], knots, np.array([0.01]), np.array([0.01]), pre=24)
    np.testing.assert_allclose(both.t_after[1], alone.t_after[0], equal_nan=True)
    at = int(np.flatnonzero(knots == 60)[0])  # at the true knot the fit recovers both slopes
    assert both.slope_before[0, at] == pytest.approx(0.0, abs=0.002)
    assert both.slope_after[0, at] == pytest.approx(0.02, abs=0.002)
    assert np.nanmax(both.t_after[0]) > 10 and np.nanmax(np.abs(both.t_after[1])) < 5


def test_despike_removes_isolated_spikes_and_keeps_steps():
    rng = np.random.default_rng(3)
    x = 1.0 + rng.normal(0, 0.01, 100)
    x[50] = 2.0
    x[70:] += 0.5  # a real level change stays
    out = despike(x)
    assert abs(out[50] - 1.0) < 0.05
    assert np.all(out[71:] > 1.4)
    # a spike inflates the noise estimate unless removed first
    assert noise_model(x[:60]).sd < 0.02


def test_residual_noise_measures_scale_and_autocorrelation():
    rng = np.random.default_rng(4)
    e = np.zeros(2000)
    for i in range(1, e.size):
        e[i] = 0.6 * e[i - 1] + rng.normal(0, 0.1)
    fit = residual_noise(e)
    assert fit.sd == pytest.approx(0.1 / math.sqrt(1 - 0.36), rel=0.1)
    assert fit.rho == pytest.approx(0.6, abs=0.08)
    assert residual_noise(np.array([1.0, 2.0, np.nan])) is None
