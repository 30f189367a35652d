"""Health alarms, on real GRPO logs (../shared/data/rl-logs) and on constructed series."""

import csv
import math

import numpy as np
import pytest

from conftest import shared_path
from phasewatch.detect import DetectionConfig, HealthMonitor, RunDetector
from phasewatch.record import StepRecord

LOGS = "rl-logs/reasoning-from-scratch/"


def load_log(name):
    """A log as records: ``entropy_avg`` -> ``entropy`` etc.; the last run if steps restart."""
    with open(shared_path(LOGS + name), newline="") as fh:
        rows = list(csv.DictReader(fh))
    start = max([0] + [i for i in range(1, len(rows)) if int(rows[i]["step"]) <= int(rows[i - 1]["step"])])
    mapping = {"entropy_avg": "entropy", "reward_avg": "reward", "avg_response_len": "response_length"}
    return [StepRecord.from_flat({"step": r["step"], **{d: r[s] for s, d in mapping.items() if s in r}})
            for r in rows[start:]]


def run_events(records, config=None):
    det = RunDetector(config)
    return [e for rec in records for e in det.update(rec)]


def test_kl_log_explodes_at_step_56_and_not_at_its_earlier_spikes():
    events = run_events(load_log("7_5_plus_kl_metrics.csv"))
    explosions = [e for e in events if e.kind == "entropy_explosion"]
    assert explosions, "the entropy explosion of 7_5 (0.44 -> 1.51 -> 11.9) must be raised"
    first = explosions[0]
    assert abs(first.step - 56) <= 3
    assert first.series == "entropy"
    assert first.onset <= first.step and first.statistic >= first.threshold
    # the single-step spike to 4.75 at step 52 is not an alarm
    assert all(e.step >= 56 for e in events)


def test_stable_clip_ratio_log_raises_nothing():
    assert run_events(load_log("7_4_plus_clip_ratio_metrics.csv")) == []


def test_known_vocabulary_size_is_used_for_the_uniform_entropy():
    records = load_log("7_5_plus_kl_metrics.csv")
    with_vocab = [StepRecord(r.step, {**r.values, "vocab_size": 151936.0}) for r in records]
    events = [e for e in run_events(with_vocab) if e.kind == "entropy_explosion"]
    assert events and events[0].detail["vocab_size_known"] is True
    assert events[0].detail["uniform_entropy"] == pytest.approx(math.log(151936))


def _series(values, name="entropy"):
    return [StepRecord(i, {name: float(v)}) for i, v in enumerate(values) if not math.isnan(v)]


def test_collapse_toward_zero_is_raised_once():
    rng = np.random.default_rng(0)
    t = np.arange(300)
    x = 0.5 * np.where(t < 150, 1.0, np.exp(-(t - 150) / 5.0) + 0.01) * (1 + rng.normal(0, 0.03, 300))
    events = run_events(_series(x, "entropy/execution"))
    kinds = [e.kind for e in events]
    assert kinds.count("entropy_collapse") == 1
    collapse = next(e for e in events if e.kind == "entropy_collapse")
    assert 150 <= collapse.step <= 175 and collapse.series == "entropy/execution"


def test_single_spikes_nan_and_gaps_do_not_alarm():
    rng = np.random.default_rng(1)
    x = 0.3 * (1 + rng.normal(0, 0.05, 400))
    x[[60, 61, 200, 300]] = [3.0, 0.001, 8.0, 0.0005]  # spikes both ways, even two in a row
    x[rng.uniform(size=400) < 0.05] = np.nan
    records = [r for r in _series(x) if r.step % 17 != 0]  # missing steps
    assert run_events(records) == []


def test_infinite_entropy_counts_as_explosion():
    mon = HealthMonitor(DetectionConfig())
    alarms = []
    for i in range(60):
        alarms += mon.update(0.3 + 0.01 * (i % 3), i)
    alarms += mon.update(math.inf, 60) + mon.update(math.inf, 61)
    assert [a.kind for a in alarms] == ["entropy_explosion"]


def test_level_shift_needs_the_whole_distribution_to_move():
    rng = np.random.default_rng(2)
    base = 0.2 * (1 + rng.normal(0, 0.05, 300))
    spiky = base.copy()
    spiky[150::2] *= 6.0  # every other value spikes: median moves, lower values do not
    assert [e.kind for e in run_events(_series(spiky))] == []
    shifted = base.copy()
    shifted[150:] *= 3.0
    kinds = [e.kind for e in run_events(_series(shifted))]
    assert kinds == ["level_shift"]
