"""The Prometheus exporter: values, labels, self-monitoring, and serving /metrics over real HTTP.

Each test builds its own exporter (own CollectorRegistry) and reads values back with
``registry.get_sample_value``; serving tests bind real sockets on 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from phasewatch.events import (
    ENTROPY_EXPLOSION,
    EVENT_KINDS,
    EXECUTION,
    PHASE_SHIFT,
    PLANNING,
    WARMUP,
    Decision,
    DetectorReading,
    Event,
    Observation,
)
from phasewatch.exporter import DROP_REASONS, PHASE_CODES, PrometheusExporter, metric_names
from phasewatch.record import StepRecord

FULL = {
    "entropy": 0.9,
    "entropy/planning": 1.4,
    "entropy/execution": 0.7,
    "semantic_entropy": 2.1,
    "nll/planning": 1.1,
    "nll/execution": 0.3,
    "planning_frac": 0.08,
    "reward": 0.55,
    "response_length": 412.0,
}


def obs(step, values=None, *, run="run-a", phase=EXECUTION, alpha=0.0, shift=None, events=(), readings=(),
        duplicate=False, latency=0.002, decision_step=None):
    decision = Decision(step=step if decision_step is None else decision_step, phase=phase, alpha=alpha,
                        shift_step=shift, events=tuple(events))
    return Observation(run=run, record=StepRecord(step, dict(FULL if values is None else values)),
                       decision=decision, readings=tuple(readings), duplicate=duplicate, latency_s=latency)


def value(exporter, name, **labels):
    return exporter.registry.get_sample_value(name, labels)


def test_gauges_carry_the_latest_record_in_base_units():
    ex = PrometheusExporter()
    ex(obs(3))
    ex(obs(4, {**FULL, "entropy/planning": 1.6, "planning_frac": 0.1}))
    assert value(ex, "phasewatch_step", run="run-a") == 4
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="all") == 0.9
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="planning") == 1.6
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="execution") == 0.7
    assert value(ex, "phasewatch_token_nll_nats", run="run-a", token_class="planning") == 1.1
    assert value(ex, "phasewatch_token_nll_nats", run="run-a", token_class="execution") == 0.3
    assert value(ex, "phasewatch_tokens_ratio", run="run-a", token_class="planning") == pytest.approx(0.1)
    assert value(ex, "phasewatch_tokens_ratio", run="run-a", token_class="execution") == pytest.approx(0.9)
    assert value(ex, "phasewatch_semantic_entropy_nats", run="run-a") == 2.1
    assert value(ex, "phasewatch_reward", run="run-a") == 0.55
    assert value(ex, "phasewatch_response_length_tokens", run="run-a") == 412.0


def test_a_field_missing_from_a_step_becomes_a_gap_not_a_stale_value():
    ex = PrometheusExporter()
    ex(obs(1))
    partial = {k: v for k, v in FULL.items() if k not in ("entropy/planning", "semantic_entropy", "planning_frac")}
    ex(obs(2, partial))
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="planning") is None
    assert value(ex, "phasewatch_semantic_entropy_nats", run="run-a") is None
    assert value(ex, "phasewatch_tokens_ratio", run="run-a", token_class="planning") is None
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="execution") == 0.7
    ex(obs(3))  # the field comes back
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="planning") == 1.4


@pytest.mark.parametrize("phase", [WARMUP, EXECUTION, PLANNING, "mystery"])
def test_phase_is_exported_as_its_code(phase):
    ex = PrometheusExporter()
    ex(obs(7, phase=phase, alpha=0.15, shift=5 if phase == PLANNING else None))
    assert value(ex, "phasewatch_phase", run="run-a") == PHASE_CODES.get(phase, -1)
    assert value(ex, "phasewatch_reweight_alpha", run="run-a") == 0.15
    expected_shift = 5 if phase == PLANNING else None
    assert value(ex, "phasewatch_shift_step", run="run-a") == expected_shift


def test_events_are_counted_by_kind_with_every_kind_created_at_zero():
    ex = PrometheusExporter()
    ex(obs(1))
    # counters exist at 0 before any event, so increase() in the dashboard sees the first one
    for kind in EVENT_KINDS:
        assert value(ex, "phasewatch_events_total", run="run-a", kind=kind) == 0
        assert value(ex, "phasewatch_last_event_step", run="run-a", kind=kind) is None
    shift = Event(PHASE_SHIFT, 40, 31, "semantic_entropy", "cusum_up", 12.5, 10.0)
    boom = Event(ENTROPY_EXPLOSION, 40, 39, "entropy", "explosion", 6.0, 4.0)
    ex(obs(40, phase=PLANNING, shift=40, events=[shift, boom]))
    ex(obs(55, events=[Event(ENTROPY_EXPLOSION, 55, 54, "entropy", "explosion", 7.0, 4.0)]))
    assert value(ex, "phasewatch_events_total", run="run-a", kind=PHASE_SHIFT) == 1
    assert value(ex, "phasewatch_events_total", run="run-a", kind=ENTROPY_EXPLOSION) == 2
    assert value(ex, "phasewatch_last_event_step", run="run-a", kind=PHASE_SHIFT) == 40
    assert value(ex, "phasewatch_last_event_step", run="run-a", kind=ENTROPY_EXPLOSION) == 55


def test_detector_statistic_and_threshold_share_labels():
    ex = PrometheusExporter()
    readings = [DetectorReading("cusum_up", "semantic_entropy", 3.5, 10.0),
                DetectorReading("cusum_up", "entropy/planning", 7.25, 10.0),
                DetectorReading("explosion", "entropy", 1.2, 4.0)]
    ex(obs(9, readings=readings))
    for r in readings:
        labels = dict(run="run-a", detector=r.detector, series=r.series)
        assert value(ex, "phasewatch_detector_statistic", **labels) == r.statistic
        assert value(ex, "phasewatch_detector_threshold", **labels) == r.threshold


def test_duplicates_and_late_records_do_not_roll_values_back():
    ex = PrometheusExporter()
    ex(obs(10))
    ex(obs(10, {**FULL, "entropy": 5.0}, duplicate=True))
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="all") == 0.9
    assert value(ex, "phasewatch_records_duplicate_total", run="run-a") == 1
    assert value(ex, "phasewatch_records_ingested_total", run="run-a") == 1
    # a late record (step 8 after step 10): counted, but the gauges keep step 10's values
    ex(obs(8, {**FULL, "entropy": 3.0}, decision_step=10, phase=PLANNING))
    assert value(ex, "phasewatch_records_ingested_total", run="run-a") == 2
    assert value(ex, "phasewatch_step", run="run-a") == 10
    assert value(ex, "phasewatch_token_entropy_nats", run="run-a", token_class="all") == 0.9
    assert value(ex, "phasewatch_phase", run="run-a") == PHASE_CODES[PLANNING]


def test_self_monitoring_latency_and_drops():
    ex = PrometheusExporter()
    ex(obs(1, latency=0.0004))
    ex(obs(2, latency=0.03))
    assert value(ex, "phasewatch_update_latency_seconds_count", run="run-a") == 2
    assert value(ex, "phasewatch_update_latency_seconds_sum", run="run-a") == pytest.approx(0.0304)
    assert value(ex, "phasewatch_update_latency_seconds_bucket", run="run-a", le="0.001") == 1
    assert value(ex, "phasewatch_last_record_timestamp_seconds", run="run-a") > 1.6e9
    ex.record_dropped("run-a", 3)
    ex.record_dropped("run-a", 2, reason="send_failed")
    ex.record_dropped("run-a", 1, reason="made-up reason")
    ex.record_dropped("run-a", 0)
    assert value(ex, "phasewatch_records_dropped_total", run="run-a", reason="buffer_full") == 3
    assert value(ex, "phasewatch_records_dropped_total", run="run-a", reason="send_failed") == 2
    assert value(ex, "phasewatch_records_dropped_total", run="run-a", reason="other") == 1
    assert {s.labels["reason"] for f in ex.registry.collect() if f.name == "phasewatch_records_dropped"
            for s in f.samples} <= set(DROP_REASONS)


def test_series_count_does_not_grow_with_steps_and_labels_stay_bounded():
    ex = PrometheusExporter()
    readings = [DetectorReading("cusum_up", "semantic_entropy", 1.0, 10.0)]

    def count_samples():
        return sum(len(f.samples) for f in ex.registry.collect())

    for step in range(10):
        ex(obs(step, readings=readings))
    after_10 = count_samples()
    for step in range(10, 300):
        ex(obs(step, readings=readings))
    assert count_samples() == after_10
    allowed = {"run", "token_class", "detector", "series", "kind", "reason", "le", "version"}
    for family in ex.registry.collect():
        assert family.name.startswith("phasewatch_")
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (sample.name, sample.labels)


def test_exporters_do_not_share_state_and_runs_can_be_forgotten():
    a, b = PrometheusExporter(), PrometheusExporter()
    a(obs(1, run="run-a"))
    a(obs(5, run="run-b"))
    assert value(b, "phasewatch_step", run="run-a") is None
    assert a.runs() == ["run-a", "run-b"]
    a.forget_run("run-a")
    assert a.runs() == ["run-b"]
    assert "run-a" not in a.render().decode()
    assert value(a, "phasewatch_step", run="run-b") == 5


def test_metric_names_cover_every_family_with_conventional_suffixes():
    names = metric_names()
    assert "phasewatch_events_total" in names and "phasewatch_events" not in names
    assert "phasewatch_update_latency_seconds_bucket" in names
    assert {n for n in names if not n.startswith("phasewatch_")} == set()


# -- serving -----------------------------------------------------------------------------


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_serve_on_loopback_and_shut_down_cleanly():
    ex = PrometheusExporter()
    ex(obs(12))
    server = ex.serve(port=0, announce=False)
    try:
        assert server.host == "127.0.0.1"
        assert server._server.socket.getsockname()[0] == "127.0.0.1"
        status, body = _get(server.url)
        assert status == 200
        assert 'phasewatch_step{run="run-a"} 12.0' in body
    finally:
        server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _get(server.url)


def _taken_port(blocker: socket.socket) -> int:
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    return blocker.getsockname()[1]


def test_taken_port_falls_back_to_a_free_one_and_says_so_once(capsys, caplog):
    caplog.set_level(logging.INFO)
    ex = PrometheusExporter()
    ex(obs(1))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        taken = _taken_port(blocker)
        server = ex.serve(port=taken)
        try:
            assert server.port != taken
            said = [r.getMessage() for r in caplog.records] + capsys.readouterr().err.splitlines()
            assert [m for m in said if server.url in m] == [
                f"phasewatch: port {taken} is taken; serving Prometheus metrics at {server.url}"]
            assert [r.levelname for r in caplog.records if server.url in r.getMessage()] == ["WARNING"]
            status, body = _get(server.url)
            assert status == 200 and "phasewatch_step" in body
        finally:
            server.close()


def test_a_taken_port_is_on_stderr_once_with_or_without_logging_configured():
    """A real process, as a user's script: Python shows the warning on stderr by itself when
    logging is not configured, and once more is not added when it is (at INFO)."""
    script = textwrap.dedent("""
        import logging, socket, sys
        from phasewatch.exporter import PrometheusExporter
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        for configure in (False, True):
            if configure:
                logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            server = PrometheusExporter().serve(port=taken)
            print(server.url, flush=True)
            sys.stderr.flush()
            server.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    urls = done.stdout.split()
    assert len(urls) == 2
    for url in urls:
        assert [line for line in done.stderr.splitlines() if url in line and "is taken" in line] != []
        assert sum(url in line for line in done.stderr.splitlines()) == 1, done.stderr


def test_a_watcher_with_a_taken_metrics_port_says_where_the_metrics_are_once(capsys, caplog):
    """The trainer-side path (finding: the same line appeared three times: exporter log,
    exporter print, hooks log)."""
    import phasewatch
    from phasewatch.hooks.torch import Watcher
    from phasewatch.tiny import train_tokenizer

    caplog.set_level(logging.INFO)
    tokenizer = train_tokenizer(["wait, let me check the sum again."] * 10, vocab_size=100, kind="metaspace")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        taken = _taken_port(blocker)
        watch = Watcher(phasewatch.Config(run="taken", metrics_port=taken), tokenizer, strict=True)
        try:
            url = watch._metrics_server.url
            said = [r.getMessage() for r in caplog.records] + capsys.readouterr().err.splitlines()
            assert len([m for m in said if url in m]) == 1, said
        finally:
            watch.close()


def test_no_created_series_are_exposed_by_phasewatchs_registry():
    """prometheus_client adds ``<counter>_created`` to every counter/histogram child; on
    phasewatch's registry they would double the counter series, and no dashboard reads them.
    A registry the user passes in keeps prometheus_client's behaviour."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    ex = PrometheusExporter()
    ex(obs(3, events=[Event(PHASE_SHIFT, 3, 2, "semantic_entropy", "cusum_up", 12.5, 10.0)]))
    ex.record_dropped("run-a", 2)
    text = ex.render().decode()
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert "phasewatch_events_total" in names and "phasewatch_update_latency_seconds_count" in names
    assert [n for n in names if n.endswith("_created")] == []
    assert value(ex, "phasewatch_events_created", run="run-a", kind=PHASE_SHIFT) is None
    assert value(ex, "phasewatch_events_total", run="run-a", kind=PHASE_SHIFT) == 1
    # filtered scrapes (/metrics?name[]=...) go through the same registry
    restricted = generate_latest(ex.registry.restricted_registry(
        ["phasewatch_events_total", "phasewatch_events_created"])).decode()
    assert "phasewatch_events_total{" in restricted and "_created" not in restricted
    assert {n for n in metric_names() if n.endswith("_created")} == set()

    own = PrometheusExporter(registry=CollectorRegistry())
    own(obs(3))
    created_by_default = "phasewatch_records_ingested_created" in own.render().decode()
    assert created_by_default == ("phasewatch_records_ingested_created" in metric_names(own))


def test_bad_port_is_a_clear_error():
    with pytest.raises(ValueError, match="port"):
        PrometheusExporter().serve(port=70000)


def test_asgi_and_wsgi_apps_serve_the_same_registry():
    from starlette.testclient import TestClient
    from wsgiref.util import setup_testing_defaults

    ex = PrometheusExporter()
    ex(obs(21))
    # not used as a context manager: that would send a lifespan event, which a mounted
    # /metrics app never receives (Starlette's Mount does not forward it)
    response = TestClient(ex.asgi_app()).get("/")
    assert response.status_code == 200
    assert 'phasewatch_step{run="run-a"} 21.0' in response.text

    environ: dict = {}
    setup_testing_defaults(environ)
    captured = {}
    body = b"".join(ex.wsgi_app()(environ, lambda status, headers: captured.setdefault("status", status)))
    assert captured["status"].startswith("200")
    assert b'phasewatch_step{run="run-a"} 21.0' in body


def test_monitor_feeds_the_exporter_through_its_listener_thread():
    from phasewatch.monitor import Monitor

    ex = PrometheusExporter()
    with Monitor(listeners=[ex]) as monitor:
        for step in range(25):
            monitor.observe("run-m", step, {**FULL, "entropy": 1.0 + 0.01 * step})
        monitor.observe("run-m", 24, FULL)  # a duplicate
        assert monitor.flush(10.0)
        decision = monitor.decision("run-m")
        assert monitor.listener_errors == 0
    assert value(ex, "phasewatch_step", run="run-m") == 24
    assert value(ex, "phasewatch_records_ingested_total", run="run-m") == 25
    assert value(ex, "phasewatch_records_duplicate_total", run="run-m") == 1
    assert value(ex, "phasewatch_token_entropy_nats", run="run-m", token_class="all") == pytest.approx(1.24)
    assert value(ex, "phasewatch_phase", run="run-m") == PHASE_CODES[decision.phase]
    assert value(ex, "phasewatch_update_latency_seconds_count", run="run-m") == 26


def test_restore_publishes_runs_of_a_reopened_store(tmp_path):
    from phasewatch.monitor import Monitor
    from phasewatch.synthetic import generate

    records = list(generate("explosion", 1).records())
    with Monitor(tmp_path / "runs.sqlite") as first:
        for record in records:
            first.observe("old-run", record.step, record)
        decision, history = first.decision("old-run"), first.events("old-run")
    assert history, "the explosion run raised no event to restore"

    ex = PrometheusExporter()
    with Monitor(tmp_path / "runs.sqlite", listeners=[ex]) as reopened:
        assert ex.restore_from(reopened) == 1
        assert ex.restore_from(reopened) == 1  # idempotent: counters must not double
    assert value(ex, "phasewatch_step", run="old-run") == decision.step
    assert value(ex, "phasewatch_phase", run="old-run") == PHASE_CODES[decision.phase]
    assert value(ex, "phasewatch_reweight_alpha", run="old-run") == decision.alpha
    for kind in EVENT_KINDS:
        of_kind = [e for e in history if e.kind == kind]
        assert value(ex, "phasewatch_events_total", run="old-run", kind=kind) == len(of_kind)
        expected_last = max((e.step for e in of_kind), default=None)
        assert value(ex, "phasewatch_last_event_step", run="old-run", kind=kind) == expected_last
