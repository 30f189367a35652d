"""Reliability of ``phasewatch serve`` with real processes on 127.0.0.1: SIGKILL mid-stream,
an outage of many steps, and fuzzed payloads. Every wait is bounded."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from serve_helpers import ServeProcess, ThreadServer, free_port, reference_state, request, shift_records, wait_until

from phasewatch.client import MonitorClient
from phasewatch.monitor import Monitor
from phasewatch.record import CANONICAL_FIELDS
from phasewatch.schema import RECORD_SCHEMA, is_plain_flat_record
from phasewatch.server import create_app, json_safe
from phasewatch.store import Store

FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2}


def run_state(url: str, run: str) -> dict:
    code, body = request(url, "GET", f"/v1/runs/{run}")
    assert code == 200, body
    return {k: body[k] for k in ("steps", "last_step", "phase", "alpha", "shift_step", "events")}


class AckingPoster(threading.Thread):
    """Posts records one per request, as a minimal trainer in another language would, and
    remembers exactly which steps the server acknowledged. Retries until acknowledged."""

    def __init__(self, url: str, run: str, records: list, deadline_s: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.url, self.run_id, self.records = url, run, records
        self.acked: list[int] = []
        self.failures = 0
        self.deadline = time.monotonic() + deadline_s

    def run(self) -> None:
        for record in self.records:
            while time.monotonic() < self.deadline:
                try:
                    code, _ = request(self.url, "POST", f"/v1/runs/{self.run_id}/steps", record.to_json(), timeout=5)
                except OSError:
                    code = None
                if code == 200:
                    self.acked.append(record.step)
                    break
                self.failures += 1
                time.sleep(0.02)


def test_sigkill_mid_stream_loses_no_acknowledged_record_and_detection_is_unchanged(tmp_path):
    records = shift_records(seed=1)
    expected = reference_state(records)
    assert expected["shift_step"] is not None
    db, port = tmp_path / "kill.db", free_port()
    first = ServeProcess(db, port).start()
    url = first.url
    second = ServeProcess(db, port)
    try:
        poster = AckingPoster(url, "raw", records)
        client = MonitorClient(url, "batched", max_batch=3, **FAST)
        poster.start()
        for record in records:
            client.submit(record)
        wait_until(lambda: len(poster.acked) >= 30 and client.counters().sent >= 30, timeout=30,
                   what="30 acknowledged records on both runs")
        first.kill()  # SIGKILL: no shutdown code, requests in flight
        acked_before_kill = list(poster.acked)
        assert len(acked_before_kill) < len(records), "the stream should still be running at the kill"
        second.start()
        # everything acknowledged before the kill is in the store of the restarted server
        code, page = request(url, "GET", "/v1/runs/raw/records")
        assert code == 200
        stored = {r["step"] for r in page["records"]}
        assert set(acked_before_kill) <= stored
        poster.join(timeout=60)
        assert client.close(timeout=60)
        assert poster.acked == [r.step for r in records]
        assert poster.failures > 0 and client.counters().failed_attempts > 0  # the outage was seen
        assert client.counters().sent == len(records) and client.dropped == 0
        want = {**expected, "events": json_safe(expected["events"])}
        assert run_state(url, "raw") == want
        assert run_state(url, "batched") == want
    finally:
        first.kill()
        second.kill()


def test_server_down_for_many_steps_buffered_records_arrive_afterwards(tmp_path):
    records = shift_records(seed=2)
    db, port = tmp_path / "down.db", free_port()
    server = ServeProcess(db, port).start()
    try:
        client = MonitorClient(server.url, "down", max_buffer=500, max_batch=16, **FAST)
        for record in records[:25]:
            client.submit(record)
        assert client.flush(timeout=30)
        last_decision = client.decision
        server.kill()
        for record in records[25:]:  # the trainer keeps stepping while the monitor is away
            client.submit(record)
        wait_until(lambda: client.counters().failed_attempts >= 3, what="retries while down")
        during = client.counters()
        assert during.sent == 25 and during.pending == len(records) - 25 and during.dropped == 0
        assert client.decision == last_decision
        server = ServeProcess(db, port).start()
        assert client.close(timeout=60)
        assert client.counters().sent == len(records) and client.dropped == 0
        expected = reference_state(records)
        assert run_state(server.url, "down") == {**expected, "events": json_safe(expected["events"])}
        assert client.decision.step == records[-1].step
        assert server.terminate() == 0  # a graceful stop on SIGTERM
        # the store is named by its absolute path, and a server that ran says it stopped
        listening = next(line for line in server.output if "listening on" in line)
        assert f"(store: {db.resolve()} (synchronous=full)" in listening
        wait_until(lambda: "phasewatch serve: stopped\n" in server.output, what="the server to say it stopped")
    finally:
        server.kill()


# -- fuzzing ----------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=20,
)
field_names = st.one_of(st.sampled_from(CANONICAL_FIELDS + ("step", "stats", "run")), st.text(max_size=210))


@st.composite
def mutated_records(draw):
    """A valid-looking record with one to three fields broken."""
    record = {"step": draw(st.integers(0, 10_000))}
    record.update({name: draw(st.floats(0, 5)) for name in draw(st.sets(st.sampled_from(CANONICAL_FIELDS)))})
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "delete", "stats"]))
        if action == "set":
            record[draw(field_names)] = draw(json_values)
        elif action == "delete" and record:
            record.pop(draw(st.sampled_from(sorted(record))))
        else:
            record["stats"] = draw(st.one_of(json_values, st.fixed_dictionaries(
                {"cells": st.dictionaries(st.sampled_from(["planning", "execution", "x"]), json_values, max_size=2)})))
    return record


payloads = st.one_of(
    json_values,
    mutated_records(),
    st.lists(mutated_records(), min_size=1, max_size=4),
)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    with Monitor(store=Store(tmp_path_factory.mktemp("fuzz") / "fuzz.db")) as monitor:
        with ThreadServer(create_app(monitor, max_body_bytes=64_000)) as server:
            request(server.url, "POST", "/v1/runs/fuzz/steps", {"step": 0, "entropy": 0.5})
            yield server, monitor


def snapshot(monitor: Monitor, run: str = "fuzz") -> tuple:
    return monitor.store.count(run), monitor.store.steps(run)[-3:], monitor.decision(run), len(monitor.events(run))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=payloads)
def test_fuzzed_json_bodies_never_5xx_and_rejections_change_nothing(fuzz_target, body):
    server, monitor = fuzz_target
    before = snapshot(monitor)
    raw = json.dumps(body, allow_nan=True).encode()
    code, answer = request(server.url, "POST", "/v1/runs/fuzz/steps", raw=raw)
    assert code < 500, answer
    if code != 200:
        assert code in (400, 413, 422), answer
        assert isinstance(answer, dict) and answer["error"] and "field" in answer
        assert snapshot(monitor) == before


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
       run=st.one_of(st.just("fuzz"), st.text(max_size=20)))
def test_fuzzed_bytes_and_run_ids_never_5xx(fuzz_target, raw, run):
    server, monitor = fuzz_target
    before = snapshot(monitor)
    path = "/v1/runs/" + urllib.parse.quote(run, safe="") + "/steps"
    code, answer = request(server.url, "POST", path, raw=raw)
    assert code < 500, answer
    if code != 200:
        assert snapshot(monitor) == before


RECORD_VALIDATOR = Draft202012Validator(RECORD_SCHEMA)


@settings(max_examples=300, deadline=None)
@given(record=st.dictionaries(field_names, json_scalars, max_size=8))
def test_the_validators_shortcut_accepts_nothing_the_schema_rejects(record):
    if is_plain_flat_record(record):
        assert RECORD_VALIDATOR.is_valid(record)


@settings(max_examples=300, deadline=None)
@given(record=st.dictionaries(field_names, json_scalars, max_size=8))
def test_the_shortcut_parses_a_record_exactly_as_the_full_path(record):
    """Records the shortcut accepts skip ``StepRecord.from_flat``; they must come out equal."""
    from phasewatch.record import StepRecord
    from phasewatch.schema import PayloadError, StepsParser

    if not is_plain_flat_record(record):
        return
    try:
        expected = StepRecord.from_flat(record)
    except OverflowError:  # an integer beyond the float range: the shortcut refuses it by name
        with pytest.raises(PayloadError):
            StepsParser().parse_record(record, "fuzz")
        return
    assert StepsParser().parse_record(record, "fuzz") == expected
