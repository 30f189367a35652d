"""Monitor: ingest, decisions, restore from a store, duplicates, late records, listeners.

Detection is the real ``RunDetector`` on seeded synthetic runs (``phasewatch.synthetic``,
known shift onsets) and on a real GRPO log; the store is a real SQLite file.
"""

from __future__ import annotations

import json
import threading

import pytest

from phasewatch.detect import RunDetector
from phasewatch.events import ENTROPY_EXPLOSION, PHASE_SHIFT, Decision
from phasewatch.monitor import Monitor
from phasewatch.record import StepRecord
from phasewatch.replay import read_csv
from phasewatch.reweight import ReweightSchedule
from phasewatch.store import Store
from phasewatch.synthetic import generate

from conftest import shared_path


@pytest.fixture
def open_store():
    """Stores for monitors under test: synchronous=NORMAL (durable across a process crash,
    no fsync per commit) keeps these tests fast; FULL durability is covered in test_store."""
    opened: list[Store] = []

    def factory(path) -> Store:
        store = Store(path, synchronous="normal")
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def _records(situation: str = "clear_shift", seed: int = 0) -> list[StepRecord]:
    return list(generate(situation, seed).records())


def _keys(events) -> list[tuple]:
    return [(e.kind, e.step, e.onset, e.series, e.detector) for e in events]


def _as_json(events) -> list[str]:
    """Full event contents, compared in JSON form (NaN == NaN there, tuples are lists)."""
    return [json.dumps(e.to_json(), sort_keys=True) for e in events]


def _feed(monitor: Monitor, run: str, records) -> list[Decision]:
    return [monitor.observe(run, r.step, r) for r in records]


@pytest.fixture(scope="module")
def shift_run() -> list[StepRecord]:
    records = _records("clear_shift", 0)
    detector = RunDetector()
    kinds = [e.kind for r in records for e in detector.update(r)]
    assert PHASE_SHIFT in kinds, "fixture run must contain a detected phase shift"
    return records


def test_decisions_follow_the_detector_and_the_schedule(shift_run):
    schedule = ReweightSchedule("auto", alpha=0.2, ramp_steps=5)
    reference = RunDetector()
    with Monitor(schedule=schedule) as monitor:
        phases_seen = []
        for rec in shift_run:
            expected_events = reference.update(rec)
            d = monitor.observe("run-1", rec.step, rec)
            assert _keys(d.events) == _keys(expected_events)
            assert d.step == rec.step and d.phase == reference.phase
            assert d.shift_step == reference.shift_step
            assert d.alpha == schedule.alpha_at(rec.step, reference.shift_step)
            phases_seen.append(d.phase)
        assert phases_seen[0] == "warmup" and phases_seen[-1] == "planning"
        assert "execution" in phases_seen
        assert monitor.decision("run-1").alpha == pytest.approx(0.2)
        assert _keys(monitor.events("run-1")) == _keys(reference.events)
        assert monitor.runs() == ["run-1"]
        assert [r.step for r in monitor.records("run-1")] == [r.step for r in shift_run]
        summary = monitor.summary("run-1")
        assert summary["records"] == len(shift_run) and summary["last_step"] == shift_run[-1].step


def test_accepts_mappings_and_stepstats_like_objects():
    class Stats:  # StepStats' contract: to_record(step) -> StepRecord
        def to_record(self, step):
            return StepRecord(step, {"entropy": 0.4})

    with Monitor() as monitor:
        assert monitor.observe("r", 0, {"step": 0, "entropy": "0.5", "reward": None}).step == 0
        assert monitor.observe("r", 1, Stats()).step == 1
        assert monitor.observe("r", None, StepRecord(2, {"entropy": 0.3})).step == 2
        assert [r.values for r in monitor.records("r")] == [{"entropy": 0.5}, {"entropy": 0.4}, {"entropy": 0.3}]


@pytest.mark.parametrize(
    "run, step, record, message",
    [
        ("bad run", 0, {"entropy": 1.0}, "run id"),
        ("r", 3, StepRecord(4, {"entropy": 1.0}), "step 3 but the record is for step 4"),
        ("r", 3, {"step": 5, "entropy": 1.0}, "record says step 5"),
        ("r", -1, {"entropy": 1.0}, "step"),
        ("r", 0, {"entropy": "high"}, "'entropy'"),
        ("r", 0, [1.0, 2.0], "expected a StepRecord"),
    ],
)
def test_bad_input_is_named(run, step, record, message):
    with Monitor() as monitor:
        with pytest.raises(ValueError, match=message):
            monitor.observe(run, step, record)
        with pytest.raises(KeyError, match="unknown run"):
            monitor.decision("never-seen")


@pytest.mark.parametrize("split", [0.4, 0.8])
def test_reopen_restores_exactly(tmp_path, shift_run, split, caplog):
    """Feed half, close, reopen, feed the rest: same events and decisions as one run."""
    with Monitor() as uninterrupted:
        expected = _feed(uninterrupted, "r", shift_run)
        expected_events = uninterrupted.events("r")
    cut = int(len(shift_run) * split)
    path = tmp_path / "runs.db"
    with Monitor(path) as first:
        got = _feed(first, "r", shift_run[:cut])
    announced: list = []
    with Monitor(path, listeners=[announced.append]) as second:
        assert second.decision("r") == replace_events(expected[cut - 1], ())
        got += _feed(second, "r", shift_run[cut:])
        second.flush()
        assert _keys(second.events("r")) == _keys(expected_events)
        assert _as_json(second.store.events("r")) == _as_json(second.events("r"))
        assert _as_json(second.events("r")) == _as_json(expected_events)
    assert not [r for r in caplog.records if "differ" in r.getMessage()], "restore re-derived other events"
    assert [json.dumps(d.to_json(), sort_keys=True) for d in got] == [
        json.dumps(d.to_json(), sort_keys=True) for d in expected
    ]
    # events found again while restoring were not announced a second time
    announced_events = [e for o in announced for e in o.decision.events]
    assert _keys(announced_events) == _keys(e for d in expected[cut:] for e in d.events)
    assert [o.record.step for o in announced] == [r.step for r in shift_run[cut:]]


def test_duplicate_changes_nothing(tmp_path, shift_run, open_store):
    seen: list = []
    with Monitor(open_store(tmp_path / "s.db"), listeners=[seen.append]) as monitor:
        decisions = _feed(monitor, "r", shift_run)
        shift = next(d for d in decisions if d.events and d.events[0].kind == PHASE_SHIFT)
        again = monitor.observe("r", shift.step, {"entropy": 99.0})
        assert again == Decision(
            step=shift_run[-1].step, phase="planning", alpha=decisions[-1].alpha,
            shift_step=decisions[-1].shift_step, events=(),
        )
        assert monitor.store.count("r") == len(shift_run)
        assert monitor.records("r")[-1] == shift_run[-1]
        assert {r.step: r for r in monitor.records("r")}[shift.step].values.get("entropy") != 99.0
        assert _keys(monitor.events("r")) == _keys(e for d in decisions for e in d.events)
        monitor.flush()
        assert [o.duplicate for o in seen].count(True) == 1 and seen[-1].duplicate


@pytest.mark.parametrize(
    "with_store, snapshot_every", [(False, 0), (True, 0), (False, 8), (True, 8)],
    ids=["memory-full-replay", "store-full-replay", "memory-from-snapshot", "store-from-snapshot"],
)
def test_late_record_gives_the_in_order_outcome(tmp_path, shift_run, with_store, snapshot_every, open_store):
    with Monitor() as ordered:
        expected = _feed(ordered, "r", shift_run)
        expected_events = ordered.events("r")
    shift_at = next(d.step for d in expected if any(e.kind == PHASE_SHIFT for e in d.events))
    # hold back a record from just before the shift and deliver it last
    held = max(i for i, r in enumerate(shift_run) if r.step < shift_at - 2)
    order = shift_run[:held] + shift_run[held + 1 :] + [shift_run[held]]
    store = open_store(tmp_path / "late.db") if with_store else None
    with Monitor(store, snapshot_every=snapshot_every, snapshots_kept=1000) as monitor:
        got = _feed(monitor, "r", order)
        run_state = monitor._runs["r"]
        if snapshot_every:  # snapshots from before the late step survive, later ones are gone
            assert run_state.snapshots and max(s.step for s in run_state.snapshots) < shift_run[held].step
        assert got[-1] == replace_events(expected[-1], got[-1].events)
        assert _keys(monitor.events("r")) == _keys(expected_events)
        assert [r.step for r in monitor.records("r")] == [r.step for r in shift_run]
        if with_store:
            assert _keys(monitor.store.events("r")) == _keys(expected_events)
    if with_store:  # and the store reopens to the same state
        with Monitor(open_store(tmp_path / "late.db")) as reopened:
            assert reopened.decision("r") == replace_events(expected[-1], ())
            assert _keys(reopened.events("r")) == _keys(expected_events)


def replace_events(decision: Decision, events) -> Decision:
    return Decision(decision.step, decision.phase, decision.alpha, decision.shift_step, tuple(events))


def test_concurrent_runs_and_racing_workers_match_sequential(shift_run):
    """Threads feed two runs in order while two more race on a third run, the way two
    server workers take requests off one connection: each takes the next record in order,
    but either may call observe first, so steps arrive slightly out of order."""
    other = _records("clear_shift", 1)
    with Monitor() as monitor:
        _feed(monitor, "seq-a", shift_run)
        _feed(monitor, "seq-b", other)
        expected = {"a": monitor.events("seq-a"), "b": monitor.events("seq-b")}
        expected_decision = monitor.decision("seq-a")
    with Monitor(snapshot_every=8) as monitor:
        errors: list[BaseException] = []
        pending = iter(shift_run)
        take = threading.Lock()

        def feed(run, records):
            try:
                _feed(monitor, run, records)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def race():
            try:
                while True:
                    with take:
                        record = next(pending, None)
                    if record is None:
                        return
                    monitor.observe("mixed", record.step, record)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=feed, args=("a", shift_run)),
                   threading.Thread(target=feed, args=("b", other)),
                   threading.Thread(target=race), threading.Thread(target=race)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert _keys(monitor.events("a")) == _keys(expected["a"])
        assert _keys(monitor.events("b")) == _keys(expected["b"])
        assert _keys(monitor.events("mixed")) == _keys(expected["a"])
        assert replace_events(monitor.decision("mixed"), ()) == replace_events(expected_decision, ())


def test_schedule_per_run_is_persisted(tmp_path, shift_run, open_store):
    path = tmp_path / "s.db"
    always = ReweightSchedule("always", alpha=0.3)
    with Monitor(open_store(path), schedule="off") as monitor:
        assert monitor.configure_run("custom", always).alpha == 0.3  # before any record
        _feed(monitor, "custom", shift_run[:20])
        monitor.observe("remote", 0, shift_run[0], schedule={"mode": "always", "alpha": 0.1})
        _feed(monitor, "default", shift_run)
        assert monitor.decision("default").alpha == 0.0  # monitor default is "off"
        monitor.store.close()
    with Monitor(open_store(path), schedule="off") as monitor:
        assert monitor.schedule("custom") == always
        assert monitor.decision("custom").alpha == 0.3
        assert monitor.decision("remote").alpha == 0.1
        assert monitor.decision("default").alpha == 0.0
        assert monitor.configure_run("default", "always").alpha == 0.2
        assert monitor.configure_run("default", None).alpha == 0.0


def test_entropy_explosion_pauses_reweighting_on_a_real_log():
    """rasbt/reasoning-from-scratch 7_5: entropy explodes around step 56 and never recovers."""
    source = read_csv(shared_path("rl-logs/reasoning-from-scratch/7_5_plus_kl_metrics.csv"))
    with Monitor(schedule=ReweightSchedule("always", alpha=0.2)) as monitor:
        decisions = _feed(monitor, "kl", source.records)
        explosions = [e for e in monitor.events("kl") if e.kind == ENTROPY_EXPLOSION]
        assert explosions, "the explosion in this log must be detected"
        first = explosions[0].step
        assert all(d.alpha == 0.2 for d in decisions if d.step < first)
        assert all(d.alpha == 0.0 for d in decisions if d.step >= first)
        # a schedule that does not pause keeps reweighting on
        assert monitor.configure_run("kl", ReweightSchedule("always", alpha=0.2, pause_on=())).alpha == 0.2


def test_slow_and_broken_listeners_never_reach_observe(shift_run):
    gate = threading.Event()
    slow_seen: list = []
    fast_seen: list = []

    def slow(observation):
        gate.wait(60)
        slow_seen.append(observation.record.step)

    def broken(observation):
        raise RuntimeError("exporter bug")

    records = shift_run[:40]
    with Monitor(listeners=[slow, broken, fast_seen.append]) as monitor:
        _feed(monitor, "r", records)  # returns although `slow` is stuck on its first item
        assert slow_seen == []
        gate.set()
        assert monitor.flush(timeout=30)
        assert slow_seen == [r.step for r in records]
        assert monitor.listener_errors == len(records)  # every call raised, every one caught
        assert [o.record.step for o in fast_seen] == [r.step for r in records]
        assert fast_seen[-1].readings == monitor.readings("r")
        assert fast_seen[-1].decision == monitor.decision("r")
        monitor.remove_listener(fast_seen.append)
        monitor.observe("r", 1000, {"entropy": 0.1})
        assert monitor.flush(timeout=30)
        assert fast_seen[-1].record.step != 1000 and slow_seen[-1] == 1000


def test_a_listener_that_falls_behind_loses_observations_not_time(shift_run):
    gate = threading.Event()
    seen: list = []

    def stuck(observation):
        gate.wait(60)
        seen.append(observation.record.step)

    records = shift_run[:40]
    with Monitor(listeners=[stuck], listener_queue=5) as monitor:
        _feed(monitor, "r", records)
        gate.set()
        assert monitor.flush(timeout=30)
        assert 0 < monitor.listener_dropped == len(records) - len(seen)
        assert seen == sorted(seen) and seen[0] == records[0].step


def test_observe_many_equals_one_by_one(tmp_path, shift_run, open_store):
    """A batch with a duplicate and a late step inside gives the decisions and events of
    observing the same records one by one, and commits its new records together."""
    batch = shift_run[:51] + [shift_run[10]] + shift_run[52:70] + [shift_run[51]] + shift_run[70:]
    with Monitor() as one_by_one:
        expected = [one_by_one.observe("r", r.step, r) for r in batch]
        expected_events = one_by_one.events("r")
    seen: list = []
    with Monitor(open_store(tmp_path / "s.db"), listeners=[seen.append]) as monitor:
        got = monitor.observe_many("r", batch[:40])
        got += monitor.observe_many("r", [r.to_json() for r in batch[40:]])  # flat JSON form
        assert [json.dumps(d.to_json(), sort_keys=True) for d in got] == [
            json.dumps(d.to_json(), sort_keys=True) for d in expected
        ]
        assert _as_json(monitor.events("r")) == _as_json(expected_events)
        assert _as_json(monitor.store.events("r")) == _as_json(expected_events)
        assert monitor.store.steps("r") == [r.step for r in shift_run]
        # records before the late one in the second batch share one commit time
        times = {monitor.store.received_at("r", r.step) for r in batch[40:50]}
        assert len(times) == 1
        monitor.flush()
        assert [o.duplicate for o in seen].count(True) == 1
        assert [o.record.step for o in seen] == [r.step for r in batch]
    with Monitor() as monitor, pytest.raises(ValueError, match="record 1: step"):
        monitor.observe_many("r", [{"step": 0, "entropy": 1.0}, {"entropy": 1.0}])


def test_failed_write_leaves_nothing_of_the_batch(tmp_path, shift_run, open_store):
    """A batch whose last record cannot be stored is not half-applied: neither the store nor
    the monitor keeps any of it, and the run continues exactly as if it never came."""
    with Monitor() as reference:
        _feed(reference, "r", shift_run)
        expected = reference.events("r")
    with Monitor(open_store(tmp_path / "s.db")) as monitor:
        _feed(monitor, "r", shift_run[:30])
        before = monitor.decision("r")
        unstorable = StepRecord(shift_run[33].step, dict(shift_run[33].values), stats={"x": object()})
        with pytest.raises(ValueError, match="cannot be stored"):
            monitor.observe_many("r", shift_run[30:33] + [unstorable])
        assert monitor.store.count("r") == 30
        assert monitor.decision("r") == before
        _feed(monitor, "r", shift_run[30:])
        assert _keys(monitor.events("r")) == _keys(expected)


def test_closed_monitor_refuses_records():
    monitor = Monitor()
    monitor.close()
    with pytest.raises(ValueError, match="closed"):
        monitor.observe("r", 0, {"entropy": 1.0})
