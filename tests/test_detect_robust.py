"""Robust noise models: the calibration every detector's thresholds rest on."""

import numpy as np
import pytest

from phasewatch.detect.robust import (
    NoiseModel,
    SeriesWindow,
    Standardiser,
    detrended_differences,
    hampel,
    noise_model,
    pool_phi,
)
from phasewatch.synthetic import ar1_noise


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8])
def test_noise_model_recovers_scale_and_errs_on_the_autocorrelated_side(phi):
    rng = np.random.default_rng(3)
    models = [noise_model(ar1_noise(rng, 256, phi, 2.0)) for _ in range(60)]
    sds = np.median([m.sd for m in models])
    phis = np.median([m.phi for m in models])
    assert 1.7 < sds < 2.8
    # the coefficient used is an upper bound: never far below the truth
    assert phis >= phi - 0.05
    assert phis <= phi + 0.3


def test_noise_model_ignores_trends_and_spikes():
    rng = np.random.default_rng(4)
    t = np.arange(256)
    x = 5.0 * np.exp(-t / 30.0) + rng.normal(0, 0.1, 256)
    x[[40, 90, 200]] += 5.0
    model = noise_model(x)
    assert model.sd < 0.2  # neither the decay nor the spikes read as noise
    assert model.phi < 0.5


def test_noise_model_needs_eight_values_and_drops_nan():
    assert noise_model([1.0] * 7) is None
    model = noise_model([1.0, float("nan"), 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.1, 0.95])
    assert model is not None and np.isfinite(model.sd)


def test_detrended_differences_remove_a_curved_trend():
    t = np.arange(200, dtype=float)
    d = detrended_differences(np.exp(-t / 20.0))
    assert np.abs(d[10:-10]).max() < 0.01


def test_hampel_removes_spikes_but_keeps_steps():
    x = np.concatenate([np.zeros(30), np.ones(30)])
    x[10] = 50.0
    x[-1] = -40.0  # a spike in the last value is caught too
    out = hampel(x, sd=0.1)
    assert out[10] == 0.0 and out[-1] == 1.0
    assert np.all(out[31:-1] == 1.0) and np.all(out[:10] == 0.0)


def test_series_window_is_bounded():
    win = SeriesWindow(64, calibrate_every=16)
    for i in range(10_000):
        win.push(float(i % 7))
    assert len(win.values) == 64 and win.count == 10_000
    assert win.noise is not None


def test_standardiser_measures_departures_from_a_lagged_reference():
    std = Standardiser(warmup=10, lag=8, tau=8)
    rng = np.random.default_rng(5)
    for v in 1.0 + rng.normal(0, 0.01, 60):
        std.update(v)
    assert abs(std.z) < 4
    z = std.update(1.5)  # a jump is measured against the level before it
    assert z > 10


def test_pool_phi_is_robust_to_one_wild_estimate():
    def model(phi_hat, n):
        return NoiseModel(level=1.0, sd=0.1, phi=phi_hat, long_run_sd=0.1, phi_hat=phi_hat, n=n, diff_sd=0.1)

    wild = [model(0.2, 100), model(0.25, 100), model(0.9, 100)]
    # without the prior: the median, plus the margin
    assert pool_phi(wild, prior_weight=0.0) == pytest.approx(0.25 + 1.5 / np.sqrt(300))
    # two series: sample-size weighted mean
    assert pool_phi([model(0.2, 300), model(0.6, 100)], prior_weight=0.0) == pytest.approx(0.3 + 1.5 / np.sqrt(400))
    # the wild estimate does not move the pooled value: same as a third sane estimate
    assert pool_phi(wild) == pytest.approx(pool_phi([model(0.2, 100), model(0.25, 100), model(0.25, 100)]))
    # with the prior, a few values are shrunk toward it; many values let the data decide
    few = pool_phi([model(0.0, 10), model(0.0, 10)], prior=0.3, prior_weight=48.0)
    assert few == pytest.approx(48 * 0.3 / 68 + 1.5 / np.sqrt(68))
    many = pool_phi([model(0.0, 5000), model(0.0, 5000)], prior=0.3, prior_weight=48.0)
    assert many < 0.03
    assert pool_phi([]) == pytest.approx(0.9)  # nothing known: assume the worst
