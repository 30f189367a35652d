"""Confirmation and localisation: the exact hinge search and the ruptures mean-shift step."""

import numpy as np
import pytest

from phasewatch.detect import MeanShiftConfirmer, TrendChangeConfirmer
from phasewatch.detect.confirm import hinge_fit, hinge_search
from phasewatch.detect.robust import noise_model


def _brute_force_knot(y, min_size=5):
    n = y.size
    t = np.arange(n)
    best = None
    for k in range(min_size, n - min_size + 1):
        design = np.column_stack([np.ones(n), t, np.maximum(t - k, 0)])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        rss = float(((y - design @ coef) ** 2).sum())
        if best is None or rss < best[0] - 1e-12:
            best = (rss, k)
    return best[1]


def test_hinge_search_is_the_exact_least_squares_knot():
    rng = np.random.default_rng(7)
    for _ in range(25):
        n = int(rng.integers(20, 120))
        y = rng.normal(size=n) + 0.1 * np.maximum(np.arange(n) - n // 2, 0)
        assert hinge_search(y) == _brute_force_knot(y)


def test_direction_picks_the_bend_asked_for():
    rng = np.random.default_rng(8)
    t = np.arange(120, dtype=float)
    rise = np.clip((t - 40) / 40, 0, 1) + rng.normal(0, 0.02, 120)  # flat, then a rise
    assert abs(hinge_search(rise[:70], direction=1) - 40) <= 3
    fall_then_rise = np.abs(t - 60) / 60 + rng.normal(0, 0.02, 120)
    assert abs(hinge_search(fall_then_rise, direction=1) - 60) <= 3
    assert hinge_search(fall_then_rise, direction=-1) is None  # it never bends downward


def test_hinge_search_needs_enough_values():
    with pytest.raises(ValueError, match="at least"):
        hinge_search(np.zeros(8), min_size=5)


def test_confirmer_measures_a_rise_and_ignores_a_final_spike():
    rng = np.random.default_rng(9)
    t = np.arange(100, dtype=float)
    flat = 1.0 + rng.normal(0, 0.01, 100)
    flat[-1] += 1.0  # one spike at the end must not look like a turn
    model = noise_model(flat[:-1])
    fit = TrendChangeConfirmer().fit(flat, model)
    assert fit is None or fit.t_after < 2.5
    rising = 1.0 + 0.01 * np.maximum(t - 70, 0) + rng.normal(0, 0.01, 100)
    fit = TrendChangeConfirmer().fit(rising, noise_model(rising))
    assert fit is not None and abs(fit.knot - 70) <= 4 and fit.t_after > 5


def test_hinge_fit_reports_relative_rise():
    y = np.concatenate([np.full(50, 2.0), 2.0 + 0.02 * np.arange(1, 51)])
    fit = hinge_fit(y, 49, noise_model(y + np.random.default_rng(0).normal(0, 0.01, 100)))
    assert fit.relative_rise == pytest.approx(0.5, rel=0.05)


def test_mean_shift_confirmer_localises_a_step_with_ruptures():
    rng = np.random.default_rng(10)
    y = np.concatenate([rng.normal(0, 0.1, 80), rng.normal(1, 0.1, 40)])
    where = MeanShiftConfirmer().last_shift(y, noise_model(y))
    assert where is not None and abs(where - 80) <= 2
    assert MeanShiftConfirmer().last_shift(rng.normal(0, 0.1, 120), noise_model(rng.normal(0, 0.1, 120))) is None
