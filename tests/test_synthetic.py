"""The seeded generator: reproducible, with the truths the benchmark scores against."""

import math

import numpy as np
import pytest

from phasewatch.synthetic import FIELDS, SHIFT_SITUATIONS, SITUATIONS, generate, suite


def test_a_run_is_a_pure_function_of_situation_and_seed():
    a = generate("clear_shift", 3)
    b = generate("clear_shift", 3)
    c = generate("clear_shift", 4)
    assert a.length == b.length and a.shift_onset == b.shift_onset
    for name in FIELDS:
        np.testing.assert_array_equal(a.series[name], b.series[name])
    assert not np.array_equal(a.series["entropy"], c.series["entropy"], equal_nan=True)


@pytest.mark.parametrize("situation", SITUATIONS)
def test_every_situation_has_consistent_truth(situation):
    run = generate(situation, 1)
    assert set(run.series) == set(FIELDS)
    assert all(arr.shape == (run.length,) for arr in run.series.values())
    if situation in SHIFT_SITUATIONS:
        assert run.shift_onset is not None and 0 <= run.shift_onset < run.length // 2 + 100
    else:
        assert run.shift_onset is None
    for step in run.health_onsets.values():
        assert 0 < step < run.length


def test_shift_runs_rise_after_the_onset_and_not_before():
    run = generate("clear_shift", 2, noise_scale=0.0)
    sem = run.series["semantic_entropy"]
    on = run.shift_onset
    assert np.nanmean(sem[-10:]) > 1.2 * np.nanmean(sem[max(0, on - 10):on])
    ex = run.series["entropy/execution"]
    assert np.nanmean(ex[:5]) > np.nanmean(ex[on - 5:on])  # execution consolidated first


def test_records_drop_missing_values_and_skip_gaps():
    run = generate("stationary", 5)
    records = list(run.records())
    assert len(records) == int(run.steps_present.sum())
    assert all(not math.isnan(v) for r in records for v in r.values.values())
    steps = [r.step for r in records]
    assert steps == sorted(set(steps))


def test_noise_scale_scales_the_noise():
    quiet = generate("stationary", 6, noise_scale=0.5).series["semantic_entropy"]
    loud = generate("stationary", 6, noise_scale=2.0).series["semantic_entropy"]
    assert np.nanstd(np.diff(loud)) > 3 * np.nanstd(np.diff(quiet))


def test_suite_and_arguments_are_validated():
    runs = suite(2, seed=1, situations=("stationary", "collapse"))
    assert [r.situation for r in runs] == ["stationary", "stationary", "collapse", "collapse"]
    with pytest.raises(ValueError, match="situation"):
        generate("sideways", 1)
    with pytest.raises(ValueError, match="seed"):
        generate("stationary", -1)
    with pytest.raises(ValueError, match="length"):
        generate("stationary", 1, length=10)
    with pytest.raises(ValueError, match="runs_per_situation"):
        suite(0)
