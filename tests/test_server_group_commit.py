"""Group commit in ``phasewatch serve``: concurrent requests share one SQLite transaction, and
each is still answered only once its records are committed. Real HTTP on 127.0.0.1 (uvicorn
in a thread), a real Monitor, real SQLite files; the store's own ``transaction()`` is used to
hold the writer back, so nothing here depends on timing."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading

import pytest
from serve_helpers import ThreadServer, request, shift_records, wait_until

from phasewatch.events import Decision, DetectorReading, Observation
from phasewatch.exporter import PrometheusExporter
from phasewatch.monitor import Monitor
from phasewatch.record import StepRecord
from phasewatch.server import create_app
from phasewatch.store import Store


class Poster(threading.Thread):
    """Posts one request on its own connection and keeps the answer."""

    def __init__(self, port: int, run: str, body: object) -> None:
        super().__init__(daemon=True)
        self.port, self.run_id, self.body = port, run, body
        self.status: int | None = None
        self.answer: dict | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", f"/v1/runs/{self.run_id}/steps", body=json.dumps(self.body),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            self.status, self.answer = response.status, json.loads(response.read())
        finally:
            conn.close()


def test_requests_waiting_on_a_commit_share_the_next_one_and_none_is_answered_early(tmp_path):
    records = shift_records(seed=3)[:40]
    store = Store(tmp_path / "group.db")
    monitor = Monitor(store=store)
    app = create_app(monitor)
    committer = app.state.committer
    hold, held = threading.Event(), threading.Event()

    def hold_the_writer() -> None:  # an open transaction keeps every other writer waiting
        with store.transaction():
            held.set()
            hold.wait(60)

    holder = threading.Thread(target=hold_the_writer, daemon=True)
    with ThreadServer(app) as server:
        holder.start()
        try:
            assert held.wait(10)
            first = Poster(server.port, "run-0", records[0].to_json())
            first.start()
            # the writer took the first request and now waits for the store
            wait_until(lambda: committer.taken_requests == 1, what="the first group to be taken")
            others = [Poster(server.port, f"run-{i}", [r.to_json() for r in records[i * 4:i * 4 + 4]])
                      for i in range(1, 10)]
            for poster in others:
                poster.start()
            wait_until(lambda: committer.pending == len(others), what="nine requests queued behind the commit")
            # nothing can be committed, so nothing may be acknowledged
            assert first.status is None and all(p.status is None for p in others)
            assert store.count("run-0") == 0 and committer.groups == 0
        finally:
            hold.set()
        for poster in [first, *others]:
            poster.join(30)
        assert first.status == 200 and all(p.status == 200 for p in others), [p.answer for p in others]
        # the first request's group, then all nine waiting requests in a single transaction
        assert committer.groups == 2 and committer.grouped_requests == 10
        for i, poster in enumerate(others, start=1):
            assert store.steps(f"run-{i}") == [r.step for r in records[i * 4:i * 4 + 4]]
            assert poster.answer["decision"]["step"] == records[i * 4 + 3].step
    app.close()
    monitor.close()
    store.close()


def test_every_acknowledged_record_is_already_readable_from_another_connection(tmp_path):
    """Many runs posting concurrently, one record per request: whenever a POST is answered,
    a separate read-only connection to the file already sees that record."""
    path = tmp_path / "ack.db"
    records = shift_records(seed=4)[:25]
    monitor = Monitor(store=Store(path))
    app = create_app(monitor)
    failures: list[str] = []

    def post_run(port: int, run: str) -> None:
        reader = Store(path, readonly=True)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for record in records:
                conn.request("POST", f"/v1/runs/{run}/steps", body=json.dumps(record.to_json()),
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"{run} step {record.step}: HTTP {response.status}")
                elif record.step not in reader.steps(run):
                    failures.append(f"{run} step {record.step}: acknowledged before it was committed")
        finally:
            conn.close()
            reader.close()

    with ThreadServer(app) as server:
        threads = [threading.Thread(target=post_run, args=(server.port, f"c-{i}"), daemon=True) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert all(monitor.store.count(f"c-{i}") == len(records) for i in range(12))
    # every request went through the group-commit writer
    assert app.state.committer.grouped_requests == 12 * len(records)
    app.close()
    monitor.close()


def test_a_refused_batch_leaves_the_rest_of_its_group_intact(tmp_path):
    run = shift_records(seed=1)
    other = shift_records(seed=2)[:10]
    unstorable = StepRecord(run[11].step, dict(run[11].values), stats={"x": object()})
    with Monitor(Store(tmp_path / "refuse.db")) as monitor:
        results = monitor.observe_batches([
            ("r", run[:10]),
            ("r", [run[10], unstorable]),  # cannot be stored: refused as a whole
            ("-bad run", other[:2]),  # refused before anything
            ("r", run[12:40]),  # continues after the refused batch, from what is committed
            ("s", other),
        ])
        assert isinstance(results[1], ValueError) and "cannot be stored" in str(results[1])
        assert isinstance(results[2], ValueError) and "run" in str(results[2])
        assert [len(r) for i, r in enumerate(results) if i in (0, 3, 4)] == [10, 28, 10]
        assert monitor.store.steps("r") == [r.step for r in run[:10] + run[12:40]]
        assert monitor.store.steps("s") == [r.step for r in other]
        assert "-bad run" not in monitor.runs()
        # the same outcome as feeding what was accepted, in order, one by one
        with Monitor() as reference:
            expected = [reference.observe("r", r.step, r) for r in run[:10] + run[12:40]]
        assert results[0] + results[3] == expected
        assert monitor.decision("r") == reference.decision("r")


def test_a_full_disk_fails_the_whole_group_with_503_and_the_runs_recover(tmp_path):
    """SQLite's own page limit stands in for a full disk: an INSERT fails with SQLITE_FULL,
    which rolls the whole group's transaction back. Every request of the group must get a
    503 (nothing acknowledged that is not stored), and once there is room again the same
    requests, retried, give exactly the in-order outcome."""
    run = shift_records(seed=1)
    store = Store(tmp_path / "full.db")
    with Monitor(store) as monitor:
        monitor.observe_many("r", run[:10])
        pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
        store._writer.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow
        with pytest.raises(sqlite3.OperationalError, match="rolled back by SQLite"):
            monitor.observe_batches([("r", run[10:120]), ("new-run", run[:100])])
        assert store.steps("r") == [r.step for r in run[:10]] and "new-run" not in store.runs()
        app = create_app(monitor)
        with ThreadServer(app) as server:
            posters = [Poster(server.port, "r", [x.to_json() for x in run[10:120]]),
                       Poster(server.port, "new-run", [x.to_json() for x in run[:100]])]
            for poster in posters:
                poster.start()
                poster.join(30)
            assert [p.status for p in posters] == [503, 503], [p.answer for p in posters]
            store._writer.execute("PRAGMA max_page_count = 1073741823")  # room again
            for poster in [Poster(server.port, "r", [x.to_json() for x in run[10:]]),
                           Poster(server.port, "new-run", [x.to_json() for x in run[:100]])]:
                poster.start()
                poster.join(30)
                assert poster.status == 200, poster.answer
        app.close()
        assert store.steps("r") == [r.step for r in run]
        assert store.runs() == ["r", "new-run"]
        assert monitor.decision("r") == _reference(run)
        assert monitor.events("r") == _reference_events(run)


def _reference(records: list[StepRecord]) -> Decision:
    with Monitor() as monitor:
        for record in records:
            monitor.observe("x", record.step, record)
        return monitor.decision("x")


def _reference_events(records: list[StepRecord]) -> list:
    with Monitor() as monitor:
        monitor.observe_many("x", records)
        return monitor.events("x")


def test_store_transaction_is_one_commit_and_a_failed_write_undoes_only_itself(tmp_path):
    path = tmp_path / "tx.db"
    with Store(path) as store:
        with store.transaction():
            assert store.append("a", StepRecord(0, {"entropy": 0.5}))
            with pytest.raises(ValueError, match="cannot be stored"):
                store.append_many("a", [(StepRecord(1, {"entropy": 0.4}), ()),
                                        (StepRecord(2, {}, stats={"x": object()}), ())])
            store.append_many("b", [(StepRecord(5, {"reward": 1.0}), ())])
            with Store(path, readonly=True) as reader:  # nothing is visible before the commit
                assert reader.runs() == []
        assert store.steps("a") == [0] and store.steps("b") == [5]
        with pytest.raises(KeyError):
            with store.transaction():
                store.append("c", StepRecord(0, {"entropy": 0.5}))
                raise KeyError("abort")
        assert "c" not in store.runs() and store.count("c") == 0
        store.append("c", StepRecord(1, {"entropy": 0.5}))  # the run row must be created now
        assert store.runs() == ["a", "b", "c"]


def test_exporter_publishes_at_collection_what_every_observation_would_have_set():
    """Gauges are set when the registry is collected; readings of a detector absent from
    the latest observation keep their latest earlier value, as with eager updates."""
    ex = PrometheusExporter()
    a = DetectorReading("phase_shift_rise", "entropy/planning", 1.0, 5.0)
    b = DetectorReading("entropy_collapse", "entropy", 0.2, 5.0)
    decision = Decision(step=1, phase="execution", alpha=0.0)
    ex(Observation("r", StepRecord(1, {"entropy": 0.9}), decision, readings=(a, b)))
    ex(Observation("r", StepRecord(2, {"entropy/planning": 0.7}), Decision(step=2, phase="planning", alpha=0.1),
                   readings=(DetectorReading("phase_shift_rise", "entropy/planning", 6.0, 5.0),)))

    def value(name, **labels):
        return ex.registry.get_sample_value(name, {"run": "r", **labels})

    assert value("phasewatch_detector_statistic", detector="phase_shift_rise", series="entropy/planning") == 6.0
    assert value("phasewatch_detector_statistic", detector="entropy_collapse", series="entropy") == 0.2
    assert value("phasewatch_token_entropy_nats", token_class="all") is None  # step 2 lacks it: a gap
    assert value("phasewatch_token_entropy_nats", token_class="planning") == 0.7
    assert value("phasewatch_reweight_alpha") == 0.1 and value("phasewatch_records_ingested_total") == 2
    ex(Observation("r", StepRecord(3, {"entropy": 1.5}), Decision(step=3, phase="planning", alpha=0.2)))
    assert b"phasewatch_step{run=\"r\"} 3.0" in ex.render()


def test_only_the_ingest_route_takes_the_short_path(tmp_path):
    with Monitor(Store(tmp_path / "routes.db")) as monitor, ThreadServer(create_app(monitor)) as server:
        assert request(server.url, "POST", "/v1/runs/a/b/steps", {"step": 0})[0] == 404
        assert request(server.url, "GET", "/v1/runs/a/steps")[0] == 405
        code, answer = request(server.url, "POST", "/v1/runs/a/steps", {"step": 0, "entropy": 0.5})
        assert code == 200 and answer["received"] == 1 and monitor.store.steps("a") == [0]
        code, answer = request(server.url, "POST", "/v1/runs/a/steps", raw=b"[" * 10 + b"]",
                               headers={"Content-Length": "x"})
        assert code == 400


def test_duplicates_are_counted_within_a_group_and_against_earlier_commits(tmp_path):
    """Three requests of one run committed in one group: a step posted by an earlier request
    of the same group, or stored by an earlier group, is reported as a duplicate (the first
    record of a step wins)."""
    store = Store(tmp_path / "dups.db")
    monitor = Monitor(store=store)
    app = create_app(monitor, metrics=False)
    committer = app.state.committer
    hold, held = threading.Event(), threading.Event()

    def hold_the_writer() -> None:
        with store.transaction():
            held.set()
            hold.wait(60)

    def body(*steps: int, entropy: float = 0.5) -> list:
        return [{"step": s, "entropy": entropy} for s in steps]

    with ThreadServer(app) as server:
        first = Poster(server.port, "d", body(0, 1, 2, 3))
        first.start()
        first.join(30)
        assert first.answer["duplicates"] == 0
        holder = threading.Thread(target=hold_the_writer, daemon=True)
        holder.start()
        try:
            assert held.wait(10)
            taken = Poster(server.port, "other", body(0))  # the writer takes it, then waits for the store
            taken.start()
            wait_until(lambda: committer.taken_requests == 2, what="the writer to wait for the store")
            posters = []
            for steps, entropy in (((4, 5), 0.5), ((5, 6), 0.9), ((2,), 0.9)):
                posters.append(Poster(server.port, "d", body(*steps, entropy=entropy)))
                posters[-1].start()  # one at a time, so the queue (and the group) keeps this order
                wait_until(lambda n=len(posters): committer.pending == n, what=f"request {len(posters)} queued")
        finally:
            hold.set()
        for poster in [taken, *posters]:
            poster.join(30)
    assert [p.status for p in posters] == [200, 200, 200], [p.answer for p in posters]
    assert committer.groups == 3 and committer.grouped_requests == 5  # the three shared one commit
    assert [p.answer["duplicates"] for p in posters] == [0, 1, 1]
    # the first record of each step was kept: 5 from the first request of the group, 2 from the first group
    assert [(r.step, r.get("entropy")) for r in store.records("d")] == [(s, 0.5) for s in range(6)] + [(6, 0.9)]
    app.close()
    monitor.close()
    store.close()
