"""The HTTP API of ``phasewatch serve``, over real HTTP on 127.0.0.1 (uvicorn in a thread),
against a real Monitor with a real SQLite store."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import uuid

import pytest
from jsonschema import Draft202012Validator
from serve_helpers import ThreadServer, reference_state, request, shift_records

from phasewatch.cli import main as cli_main
from phasewatch.monitor import Monitor
from phasewatch.record import StepRecord
from phasewatch.schema import API_SCHEMA, RECORD_SCHEMA
from phasewatch.server import check_bind, create_app, is_loopback, json_safe
from phasewatch.store import Store

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def monitor(tmp_path_factory):
    with Monitor(store=Store(tmp_path_factory.mktemp("serve") / "serve.db")) as m:
        yield m


@pytest.fixture(scope="module")
def server(monitor):
    """One server for the module; each test writes its own runs."""
    with ThreadServer(create_app(monitor)) as srv:
        yield srv


@pytest.fixture
def run_id():
    return f"run-{uuid.uuid4().hex[:10]}"


def flat(record: StepRecord) -> dict:
    return record.to_json()


def test_streamed_run_matches_an_in_process_monitor(server):
    records = shift_records(seed=1)
    half = len(records) // 2
    # first half one record per request, second half in batches of 7
    for record in records[:half]:
        status, body = request(server.url, "POST", "/v1/runs/exp-1/steps", flat(record))
        assert status == 200, body
        assert body["decision"]["step"] == record.step
    for i in range(half, len(records), 7):
        status, body = request(server.url, "POST", "/v1/runs/exp-1/steps", [flat(r) for r in records[i:i + 7]])
        assert status == 200, body
        assert body["received"] == len(records[i:i + 7])

    status, run = request(server.url, "GET", "/v1/runs/exp-1")
    assert status == 200
    expected = reference_state(records)
    assert expected["shift_step"] is not None, "the synthetic run should contain a shift"
    assert run["run"] == "exp-1"
    assert run["steps"] == expected["steps"] and run["last_step"] == expected["last_step"]
    assert (run["phase"], run["alpha"], run["shift_step"]) == (expected["phase"], expected["alpha"],
                                                               expected["shift_step"])
    assert run["events"] == json_safe(expected["events"])
    assert {e["kind"] for e in run["events"]} >= {"phase_shift"}

    status, listing = request(server.url, "GET", "/v1/runs")
    assert status == 200
    (entry,) = [r for r in listing["runs"] if r["run"] == "exp-1"]
    assert entry["steps"] == len(records) and entry["shift_step"] == expected["shift_step"]


def test_batch_response_carries_every_event_the_batch_raised(server):
    records = shift_records(seed=1)
    status, body = request(server.url, "POST", "/v1/runs/b/steps", [flat(r) for r in records])
    assert status == 200
    _, run = request(server.url, "GET", "/v1/runs/b")
    assert body["decision"]["events"] == run["events"]
    assert body["decision"]["shift_step"] == run["shift_step"]


def test_ingest_is_idempotent_by_run_and_step(server, monitor):
    records = shift_records(seed=2)[:40]
    batch = [flat(r) for r in records]
    _, first = request(server.url, "POST", "/v1/runs/idem/steps", batch)
    _, again = request(server.url, "POST", "/v1/runs/idem/steps", batch)
    # a retried request with changed values must not overwrite what was acknowledged
    altered = [dict(r, **{"entropy/planning": 99.0}) for r in batch[:5]]
    status, _ = request(server.url, "POST", "/v1/runs/idem/steps", altered)
    assert status == 200
    assert monitor.store.count("idem") == 40
    assert again["decision"]["step"] == first["decision"]["step"] == records[-1].step
    assert again["decision"]["phase"] == first["decision"]["phase"]
    stored = monitor.records("idem", 0, 5)
    assert [r.get("entropy/planning") for r in stored] == [r.get("entropy/planning") for r in records[:5]]


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"entropy": 0.5}, 422, "body"),  # no step
        ({"step": -3}, 422, "step"),
        ({"step": 1.5}, 422, "step"),
        ({"step": "7"}, 422, "step"),
        ({"step": True}, 422, "step"),
        ({"step": 2 ** 60}, 422, "step"),
        ({"step": 1, "entropy/planning": "high"}, 422, "entropy/planning"),
        ({"step": 1, "entropy": [0.1]}, 422, "entropy"),
        ({"step": 1, "stats": 3}, 422, "stats"),
        ({"step": 1, "stats": {"cells": {"planning": {"success": {"tokens": -1}}}}}, 422, "stats"),
        ({"step": 1, "run": "other"}, 422, "run"),
        ([{"step": 1}, {"step": 2, "reward": {}}], 422, "[1].reward"),
        ([{"step": 3}, {"step": 2}], 422, "[1].step"),
        ([], 422, "body"),
        ("just a string", 422, "body"),
        (7, 422, "body"),
    ],
)
def test_bad_payload_gets_4xx_naming_the_field_and_changes_nothing(server, monitor, run_id, body, status, field):
    request(server.url, "POST", f"/v1/runs/{run_id}/steps", {"step": 0, "entropy": 0.4})
    before = monitor.decision(run_id)
    code, answer = request(server.url, "POST", f"/v1/runs/{run_id}/steps", body)
    assert code == status, answer
    assert answer["field"] == field
    assert answer["error"].startswith(field)
    assert monitor.store.count(run_id) == 1
    assert monitor.decision(run_id) == before


def test_body_that_is_not_json_is_a_400(server, monitor, run_id):
    for raw in (b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b""):
        code, answer = request(server.url, "POST", f"/v1/runs/{run_id}/steps", raw=raw)
        assert code == 400, answer
        assert answer["field"] == "body"
    code, answer = request(server.url, "POST", f"/v1/runs/{run_id}/steps", raw=b"null")
    assert code == 422 and "got null" in answer["error"]
    assert run_id not in monitor.runs()


def test_invalid_and_unknown_run_ids(server):
    code, answer = request(server.url, "POST", "/v1/runs/-bad/steps", {"step": 1})
    assert code == 422 and answer["field"] == "run"
    code, answer = request(server.url, "GET", "/v1/runs/nobody")
    assert code == 404 and answer["field"] == "run"
    code, _ = request(server.url, "GET", "/v1/runs/nobody/records")
    assert code == 404


def test_oversized_bodies_are_refused_before_they_are_read(monitor):
    with ThreadServer(create_app(monitor, max_body_bytes=2_000)) as srv:
        big = [{"step": i, "entropy": 0.5} for i in range(200)]
        code, answer = request(srv.url, "POST", "/v1/runs/big/steps", big)
        assert code == 413, answer
        # a chunked upload declares no length: it is cut off once it passes the limit
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        payload = json.dumps(big).encode()
        chunks = (payload[i:i + 500] for i in range(0, len(payload), 500))
        conn.request("POST", "/v1/runs/big/steps", body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413
        conn.close()
        # the same records in small requests are accepted
        for i in range(0, 200, 20):
            assert request(srv.url, "POST", "/v1/runs/big/steps", big[i:i + 20])[0] == 200
    assert monitor.store.count("big") == 200


def test_schedule_put_sets_the_alpha_the_server_reports(server, monitor):
    code, answer = request(server.url, "PUT", "/v1/runs/sched",
                           {"schedule": {"mode": "always", "alpha": 0.35, "ramp_steps": 0}})
    assert code == 200, answer
    assert answer["decision"]["alpha"] == pytest.approx(0.35)
    _, body = request(server.url, "POST", "/v1/runs/sched/steps", {"step": 0, "entropy": 0.3})
    assert body["decision"]["alpha"] == pytest.approx(0.35)
    _, run = request(server.url, "GET", "/v1/runs/sched")
    assert run["alpha"] == pytest.approx(0.35) and run["schedule"]["mode"] == "always"
    assert monitor.schedule("sched").alpha == pytest.approx(0.35)

    for bad, field in [({"schedule": {"mode": "sometimes"}}, "schedule.mode"),
                       ({"schedule": {"alpha": 3}}, "schedule.alpha"),
                       ({"schedule": {"alhpa": 0.2}}, "schedule.alhpa"),
                       ({"alpha": 0.2}, "body")]:
        code, answer = request(server.url, "PUT", "/v1/runs/sched", bad)
        assert code == 422 and answer["field"] == field, answer
    assert monitor.schedule("sched").alpha == pytest.approx(0.35)


def test_step_statistics_form_is_parsed_into_the_same_record(server, monitor):
    torch = pytest.importorskip("torch")
    from phasewatch.stats import StepStats

    gen = torch.Generator().manual_seed(0)
    entropies = torch.rand(4, 12, generator=gen)
    mask = torch.ones(4, 12, dtype=torch.bool)
    planning = torch.rand(4, 12, generator=gen) > 0.7
    stats = StepStats.from_batch(entropies, mask, planning, rewards=torch.tensor([1.0, 0.0, 1.0, 0.5]))
    expected = stats.to_record(5)
    code, answer = request(server.url, "POST", "/v1/runs/st/steps", {"step": 5, "stats": stats.to_json()})
    assert code == 200, answer
    (stored,) = monitor.records("st")
    assert stored.step == 5
    assert stored.values == pytest.approx(expected.values)
    assert stored.stats is not None
    _, page = request(server.url, "GET", "/v1/runs/st/records")
    assert page["records"][0]["entropy/planning"] == pytest.approx(expected.get("entropy/planning"))


def test_records_endpoint_pages_by_step(server):
    records = shift_records(seed=3)[:30]
    request(server.url, "POST", "/v1/runs/pg/steps", [flat(r) for r in records])
    _, page = request(server.url, "GET", "/v1/runs/pg/records?start=10&end=20&limit=4")
    assert [r["step"] for r in page["records"]] == [r.step for r in records if 10 <= r.step < 20][:4]
    code, answer = request(server.url, "GET", "/v1/runs/pg/records?start=x")
    assert code == 422 and answer["field"] == "start"


def test_token_is_required_compared_and_never_echoed(monitor, caplog):
    caplog.set_level(logging.DEBUG)
    with ThreadServer(create_app(monitor, token=TOKEN)) as srv:
        assert request(srv.url, "GET", "/healthz")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            code, answer = request(srv.url, "POST", "/v1/runs/t/steps", {"step": 0}, headers=headers)
            assert code == 401
            assert TOKEN not in json.dumps(answer)
        assert request(srv.url, "GET", "/metrics")[0] == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        code, answer = request(srv.url, "POST", "/v1/runs/t/steps", {"step": 0, "entropy": 0.2}, headers=good)
        assert code == 200 and TOKEN not in json.dumps(answer)
        assert request(srv.url, "GET", "/metrics", headers=good)[0] == 200
    assert monitor.store.count("t") == 1
    assert TOKEN not in caplog.text


def test_binding_beyond_loopback_needs_a_token(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    with pytest.raises(ValueError, match="without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "0", "--in-memory"]) == 2
    assert "without a token" in capsys.readouterr().err


def metric_samples(url: str, headers: dict | None = None) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    code, text = request(url, "GET", "/metrics", headers=headers)
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_ingest_requests_and_client_drops(server):
    ok = ("phasewatch_http_requests_total", (("method", "POST"), ("route", "/v1/runs/{run}/steps"), ("status", "200")))
    bad = ("phasewatch_http_requests_total", (("method", "POST"), ("route", "/v1/runs/{run}/steps"), ("status", "422")))
    before = metric_samples(server.url)
    records = shift_records(seed=4)[:12]
    request(server.url, "POST", "/v1/runs/m/steps", [flat(r) for r in records[:6]],
            headers={"Phasewatch-Client-Dropped": "3"})
    request(server.url, "POST", "/v1/runs/m/steps", [flat(r) for r in records[6:]],
            headers={"Phasewatch-Client-Dropped": "5"})
    request(server.url, "POST", "/v1/runs/m/steps", {"step": "bad"})
    after = metric_samples(server.url)
    assert after[ok] - before.get(ok, 0) == 2
    assert after[bad] - before.get(bad, 0) == 1
    # the client reports a cumulative count; the server adds only what is new
    assert after[("phasewatch_records_dropped_total", (("reason", "buffer_full"), ("run", "m")))] == 5


def test_metrics_follow_the_monitor(monitor, server):
    records = shift_records(seed=4)[:12]
    request(server.url, "POST", "/v1/runs/mm/steps", [flat(r) for r in records])
    assert monitor.flush(10)
    _, text = request(server.url, "GET", "/metrics")
    assert 'phasewatch_records_ingested_total{run="mm"} 12.0' in text


def test_published_schema_is_valid_and_matches_the_server(server):
    code, document = request(server.url, "GET", "/v1/schema")
    assert code == 200 and document == json_safe(API_SCHEMA)
    Draft202012Validator.check_schema(document)
    validator = Draft202012Validator(document)
    assert validator.is_valid({"step": 3, "entropy/planning": 0.6, "semantic_entropy": None})
    assert validator.is_valid([{"step": 3}, {"step": 4, "reward": 1}])
    assert not validator.is_valid({"step": 3, "entropy": "x"})
    assert not validator.is_valid([])
    assert RECORD_SCHEMA["properties"]["step"]["minimum"] == 0


def test_errors_of_the_store_are_503_not_crashes(tmp_path):
    store = Store(tmp_path / "closing.db")
    monitor = Monitor(store=store)
    with ThreadServer(create_app(monitor)) as srv:
        assert request(srv.url, "POST", "/v1/runs/s/steps", {"step": 0, "entropy": 0.3})[0] == 200
        store.close()  # the disk "goes away"
        code, answer = request(srv.url, "POST", "/v1/runs/s/steps", {"step": 1, "entropy": 0.3})
        assert code == 503, answer
        assert request(srv.url, "GET", "/healthz")[0] == 200
    monitor.close()


def test_cli_reads_the_token_from_env_or_file_and_refuses_ambiguity(tmp_path, monkeypatch):
    from phasewatch.cli import build_parser
    from phasewatch.cli.serve import _read_token

    parser = build_parser()
    monkeypatch.setenv("PHASEWATCH_TOKEN", "from-env-0123456789")
    assert _read_token(parser.parse_args(["serve"])) == "from-env-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text("from-file-0123456789\n")
    assert _read_token(parser.parse_args(["serve", "--token-file", str(token_file)])) == "from-file-0123456789"
    with pytest.raises(ValueError, match="not both"):
        _read_token(parser.parse_args(["serve", "--token", "a", "--token-file", str(token_file)]))
    token_file.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        _read_token(parser.parse_args(["serve", "--token-file", str(token_file)]))
    with pytest.raises(ValueError, match="printable ASCII"):
        create_app(Monitor(), token="has space")


# -- usability of `phasewatch serve` (QA findings) -------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_reposted_step_is_reported_as_a_duplicate_and_changes_nothing(tmp_path, store):
    """The monitor keeps the first record of a step; the reply says how many records of the
    request it ignored, so a client re-posting a step with new values can notice."""
    monitor = Monitor(store=Store(tmp_path / "dup.db") if store == "sqlite" else None)
    with ThreadServer(create_app(monitor, metrics=False)) as srv:
        def post(body):
            status, answer = request(srv.url, "POST", "/v1/runs/dup/steps", body)
            assert status == 200, answer
            return answer["received"], answer["duplicates"]

        assert post([{"step": s, "entropy": 0.5} for s in (10, 11, 12)]) == (3, 0)
        assert post({"step": 12, "entropy": 9.0}) == (1, 1)  # different values: still ignored
        assert post([{"step": 11, "entropy": 0.5}, {"step": 12, "entropy": 0.5}, {"step": 13, "entropy": 0.5}]) == (3, 2)
        assert post({"step": 5, "entropy": 0.5}) == (1, 0)  # a late step never seen is stored, not a duplicate
        assert post({"step": 5, "entropy": 0.7}) == (1, 1)
        assert [(r.step, r.get("entropy")) for r in monitor.records("dup")] == [
            (5, 0.5), (10, 0.5), (11, 0.5), (12, 0.5), (13, 0.5)]
    monitor.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "99999"], "argument --port: expected a port number 0..65535, got 99999"),
        (["--port", "http"], "argument --port: expected a port number 0..65535, got 'http'"),
        (["--db", "s.db", "--in-memory"], "argument --in-memory: not allowed with argument --db"),
        (["--max-body-bytes", "0"], "argument --max-body-bytes: must be >= 1, got 0"),
    ],
)
def test_cli_refuses_bad_options_with_the_usage_line(capsys, argv, message):
    from phasewatch.cli import build_parser

    with pytest.raises(SystemExit) as stop:  # argparse stops while parsing: nothing is opened or bound
        build_parser().parse_args(["serve", *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: phasewatch serve") and message in err


def test_cli_refuses_a_db_whose_directory_does_not_exist_and_creates_none(tmp_path, capsys):
    from phasewatch.cli import build_parser

    missing = tmp_path / "typo" / "runs.db"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--db", str(missing)])
    assert f"directory {str(missing.parent)!r} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--db", str(tmp_path)])
    assert "is a directory" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_cli_on_a_taken_port_prints_only_the_error(tmp_path):
    """A real `phasewatch serve` process: a server that never started says why, and neither
    prints "stopped" nor leaves a store file behind."""
    import subprocess
    import sys

    from serve_helpers import PROJECT_ROOT

    db = tmp_path / "never.db"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "phasewatch", "serve", "--port", str(taken), "--db", str(db)],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"phasewatch serve: error: cannot listen on 127.0.0.1:{taken} (Address already in use; "
        "choose another --port, or --port 0 for a free one)"]
    assert not db.exists()
