"""The SQLite store, against real SQLite files."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from phasewatch.events import Event
from phasewatch.record import StepRecord
from phasewatch.store import APPLICATION_ID, SCHEMA_VERSION, Store, StoreError, is_store_file


def _event(step: int, kind: str = "phase_shift", statistic: float = 12.5) -> Event:
    return Event(kind, step, step - 3, "entropy/planning", "rise_cusum", statistic, 10.0, {"rise": 0.4})


def test_round_trip_records_events_schedule(tmp_path):
    path = tmp_path / "runs.db"
    with Store(path) as store:
        rec = StepRecord(7, {"entropy": 0.5, "entropy/planning": math.inf}, stats={"tokens": [1, 2]})
        assert store.append("run-a", rec, [_event(7, statistic=math.nan)])
        assert store.append("run-a", StepRecord(3, {"entropy": 0.7}))
        assert store.append("run-b", StepRecord(0, {"reward": 1.0}))
        store.set_schedule("run-b", {"mode": "always", "alpha": 0.3})
    with Store(path) as store:
        assert store.runs() == ["run-a", "run-b"]
        assert store.steps("run-a") == [3, 7]
        records = store.records("run-a")
        assert [r.step for r in records] == [3, 7]
        assert records[1].values == {"entropy": 0.5, "entropy/planning": math.inf}
        assert records[1].stats == {"tokens": [1, 2]}
        (event,) = store.events("run-a")
        assert event.kind == "phase_shift" and event.step == 7 and event.onset == 4
        assert math.isnan(event.statistic) and event.detail == {"rise": 0.4}
        assert store.schedule("run-b") == {"mode": "always", "alpha": 0.3}
        assert store.schedule("run-a") is None
        assert store.count("run-a") == 2 and store.count("nope") == 0
        assert store.records("run-a", start=4) == [records[1]]
        assert store.records("run-a", end=7) == [records[0]]


def test_duplicate_step_is_refused_and_changes_nothing(tmp_path):
    with Store(tmp_path / "s.db") as store:
        assert store.append("r", StepRecord(1, {"entropy": 0.5}), [_event(1)])
        assert not store.append("r", StepRecord(1, {"entropy": 9.0}), [_event(1, "entropy_explosion")])
        assert store.records("r")[0].values == {"entropy": 0.5}
        assert [e.kind for e in store.events("r")] == ["phase_shift"]


def test_replace_events_on_append_and_alone(tmp_path):
    with Store(tmp_path / "s.db") as store:
        store.append("r", StepRecord(1, {"entropy": 0.5}), [_event(1), _event(1, "level_shift")])
        store.append("r", StepRecord(0, {"entropy": 0.5}), [_event(5)], replace_events=True)
        assert [(e.kind, e.step) for e in store.events("r")] == [("phase_shift", 5)]
        store.replace_events("r", [])
        assert store.events("r") == []


def test_wal_mode_synchronous_and_schema_tags(tmp_path):
    for mode, expected in (("full", 2), ("normal", 1)):
        path = tmp_path / f"{mode}.db"
        store = Store(path, synchronous=mode)
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == expected
        store.append("r", StepRecord(0, {"entropy": 1.0}))
        other = sqlite3.connect(path)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert other.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        other.close()
        store.close()
        assert is_store_file(path)
    with pytest.raises(ValueError, match="synchronous"):
        Store(tmp_path / "x.db", synchronous="off")


def test_committed_before_append_returns_survives_a_killed_writer(tmp_path):
    """A process that dies without closing the store must not lose acknowledged records."""
    path = tmp_path / "crash.db"
    script = textwrap.dedent(
        f"""
        import os
        from phasewatch.store import Store
        from phasewatch.record import StepRecord
        store = Store({str(path)!r})
        for step in range(50):
            store.append("r", StepRecord(step, {{"entropy": step / 10}}))
        os._exit(0)  # no close, no checkpoint
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with Store(path) as store:
        assert store.steps("r") == list(range(50))


def test_readonly_store_reads_and_refuses_writes(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.append("r", StepRecord(0, {"entropy": 1.0}))
    with Store(path, readonly=True) as ro:
        assert ro.runs() == ["r"]
        with pytest.raises(ValueError, match="read-only"):
            ro.append("r", StepRecord(1, {"entropy": 1.0}))
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "missing.db", readonly=True)


def test_foreign_and_future_databases_are_refused(tmp_path):
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a phasewatch store"):
        Store(foreign)
    future = tmp_path / "future.db"
    Store(future).close()
    conn = sqlite3.connect(future)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer phasewatch"):
        Store(future)
    text = tmp_path / "notes.db"
    text.write_text("this is not a database, just some text that is long enough " * 20)
    with pytest.raises(StoreError, match="not"):
        Store(text)
    assert not is_store_file(text)
    with pytest.raises(ValueError, match="file path"):
        Store(":memory:")


def test_bad_run_id_is_refused(tmp_path):
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(ValueError, match="run id"):
            store.append("bad run/../x", StepRecord(0, {"entropy": 1.0}))


def test_iter_records_crosses_batches(tmp_path):
    with Store(tmp_path / "s.db") as store:
        for step in range(0, 20, 2):
            store.append("r", StepRecord(step, {"entropy": step}))
        assert [r.step for r in store.iter_records("r", batch=3)] == list(range(0, 20, 2))
        assert [r.step for r in store.iter_records("r", 5, 13, batch=2)] == [6, 8, 10, 12]


def test_concurrent_writers_from_threads(tmp_path):
    with Store(tmp_path / "s.db", synchronous="normal") as store:
        errors: list[BaseException] = []

        def write(run: str) -> None:
            try:
                for step in range(40):
                    store.append(run, StepRecord(step, {"entropy": 1.0}), [_event(step)] if step % 10 == 0 else [])
                    store.records(run, start=step)  # reads interleave with the writes
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(f"run-{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for i in range(4):
            assert store.steps(f"run-{i}") == list(range(40))
            assert [e.step for e in store.events(f"run-{i}")] == [0, 10, 20, 30]
