"""The trainer-side clients: MonitorClient over real HTTP to a real server on 127.0.0.1, and
InProcessClient over a real Monitor."""

from __future__ import annotations

import logging
import socket

import pytest
from serve_helpers import ThreadServer, free_port, request, shift_records, wait_until

from phasewatch.client import InProcessClient, MonitorClient, client_for
from phasewatch.config import Config
from phasewatch.monitor import Monitor
from phasewatch.record import StepRecord
from phasewatch.reweight import ReweightSchedule
from phasewatch.server import create_app
from phasewatch.store import Store

FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2}


@pytest.fixture
def monitor(tmp_path):
    with Monitor(store=Store(tmp_path / "client.db")) as m:
        yield m


@pytest.fixture
def server(monitor):
    with ThreadServer(create_app(monitor)) as srv:
        yield srv


def counts(c):
    k = c.counters()
    return k.sent, k.rejected, k.dropped, k.pending


def test_records_arrive_in_order_and_the_decision_follows_the_server(server, monitor):
    records = shift_records(seed=1)
    client = MonitorClient(server.url, "c1", max_batch=16, **FAST)
    for record in records:
        client.submit(record)
    assert client.close(timeout=30)
    assert counts(client) == (len(records), 0, 0, 0)
    assert monitor.store.steps("c1") == [r.step for r in records]
    server_decision = monitor.decision("c1")
    assert client.decision.step == server_decision.step == records[-1].step
    assert (client.decision.phase, client.decision.alpha, client.decision.shift_step) == (
        server_decision.phase, server_decision.alpha, server_decision.shift_step)
    assert client.decision.shift_step is not None


def test_schedule_reaches_the_server_so_both_report_the_same_alpha(server, monitor):
    schedule = ReweightSchedule(mode="always", alpha=0.3, ramp_steps=0)
    client = MonitorClient(server.url, "c-sched", schedule=schedule, **FAST)
    # before any answer the client already applies what the schedule says for "always"
    assert client.decision.alpha == pytest.approx(0.3)
    for record in shift_records(seed=2)[:20]:
        client.submit(record)
    assert client.flush(timeout=30)
    assert monitor.schedule("c-sched") == schedule
    _, run = request(server.url, "GET", "/v1/runs/c-sched")
    assert client.decision.alpha == pytest.approx(run["alpha"]) == pytest.approx(0.3)
    client.close()

    off = MonitorClient(server.url, "c-off", schedule={"mode": "off"}, **FAST)
    for record in shift_records(seed=1):
        off.submit(record)
    assert off.close(timeout=30)
    assert monitor.decision("c-off").shift_step is not None  # shifted, yet reweighting is off
    assert off.decision.alpha == 0.0 and monitor.decision("c-off").alpha == 0.0


def test_submit_never_waits_on_the_network():
    """A server that accepts connections but never answers: the sender thread is stuck in a
    request, and submit() keeps returning. We assert on the sender's state, not on timing."""
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)  # the kernel completes the handshake; nobody ever reads or replies
    url = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
    client = MonitorClient(url, "stuck", timeout_s=60, max_buffer=1_000, **FAST)
    try:
        client.submit({"step": 0, "entropy": 0.5})
        wait_until(lambda: client.counters().in_flight == 1, what="the sender to block in a request")
        for step in range(1, 301):
            client.submit({"step": step, "entropy": 0.5})
        during = client.counters()
        assert during.in_flight == 1 and during.sent == 0  # still inside that one request
        assert during.submitted == 301 and during.pending == 301
        assert client.decision.step == -1  # the initial decision is kept
    finally:
        blackhole.close()
    assert not client.close(timeout=0.5)  # nothing can be delivered: close gives up and says so
    wait_until(lambda: client.counters().pending == 0, what="the abandoned batch to be counted")
    after = client.counters()
    assert after.dropped == 301 and after.sent == 0


def test_server_away_for_many_steps_then_back_loses_nothing(tmp_path):
    port = free_port()
    store_path = tmp_path / "away.db"
    records = shift_records(seed=3)[:80]
    monitor = Monitor(store=Store(store_path))
    srv = ThreadServer(create_app(monitor, metrics=False), port=port).__enter__()
    client = MonitorClient(f"http://127.0.0.1:{port}", "away", max_buffer=1_000, **FAST)
    for record in records[:20]:
        client.submit(record)
    assert client.flush(timeout=30)
    srv.stop()
    monitor.close()
    for record in records[20:]:  # the server is down for these 60 steps
        client.submit(record)
    wait_until(lambda: client.counters().failed_attempts >= 2, what="failed attempts while the server is down")
    assert client.counters().sent == 20
    assert client.decision.step == records[19].step  # the last decision is kept meanwhile
    monitor = Monitor(store=Store(store_path))  # the server comes back on the same store
    with ThreadServer(create_app(monitor, metrics=False), port=port):
        assert client.close(timeout=30)
        assert monitor.store.steps("away") == [r.step for r in records]
        assert client.decision.step == records[-1].step
    monitor.close()
    assert counts(client) == (80, 0, 0, 0)


def test_close_does_not_wait_out_its_timeout_for_an_unreachable_monitor(caplog):
    """Nothing listens on the port: every attempt is refused. close() tries once more and
    gives up, instead of retrying with backoff until its timeout (which held scripts 10 s at
    exit). Asserted on the attempts made, not on time: retrying until the timeout would make
    dozens of attempts with this backoff."""
    caplog.set_level(logging.WARNING, logger="phasewatch.client")
    client = MonitorClient(f"http://127.0.0.1:{free_port()}", "gone", **FAST)
    for step in range(3):
        client.submit(StepRecord(step, {"entropy": 0.5}))
    wait_until(lambda: client.counters().failed_attempts >= 2, what="refused attempts")
    before = client.counters().failed_attempts
    assert not client.close(timeout=5)
    after = client.counters()
    assert after.failed_attempts - before <= 1  # the one attempt close() makes (or the one in flight)
    assert (after.sent, after.dropped, after.pending) == (0, 3, 0)
    assert "unavailable at close" in caplog.text and "3 unsent records dropped" in caplog.text
    client.submit(StepRecord(3, {"entropy": 0.5}))  # after close: dropped and counted, never raises
    assert client.counters().dropped == 4


def test_buffer_overflow_drops_the_oldest_and_counts_them(tmp_path):
    port = free_port()
    client = MonitorClient(f"http://127.0.0.1:{port}", "over", max_buffer=20, max_batch=8, **FAST)
    records = [StepRecord(step, {"entropy": 0.5}) for step in range(50)]
    for record in records:  # nothing listens on the port yet
        client.submit(record)
    monitor = Monitor(store=Store(tmp_path / "over.db"))
    with ThreadServer(create_app(monitor), port=port) as srv:
        assert client.close(timeout=30)
        k = client.counters()
        stored = monitor.store.steps("over")
        assert k.sent + k.dropped == 50 and k.pending == 0 and k.rejected == 0
        assert len(stored) == k.sent
        assert 50 - 20 - 8 <= k.dropped <= 50 - 20  # at most one batch was already in hand
        assert stored[-20:] == list(range(30, 50))  # the newest records all arrived
        # the loss is visible on the server's dashboard too
        _, text = request(srv.url, "GET", "/metrics")
        assert f'phasewatch_records_dropped_total{{reason="buffer_full",run="over"}} {float(k.dropped)}' in text
    monitor.close()


def test_rejected_records_are_counted_and_later_ones_still_arrive(server, monitor, caplog):
    caplog.set_level(logging.ERROR, logger="phasewatch.client")
    client = MonitorClient(server.url, "rej", max_batch=1, **FAST)
    client.submit(StepRecord(0, {"entropy": 0.5}))
    client.submit(StepRecord(1, {"x" * 300: 0.5}))  # field name too long for the schema
    client.submit(StepRecord(2, {"x" * 300: 0.5}))
    client.submit("not a record")  # refused inside submit(), without raising
    client.submit(StepRecord(3, {"entropy": 0.4}))
    assert client.close(timeout=30)
    assert counts(client) == (2, 3, 0, 0)
    assert monitor.store.steps("rej") == [0, 3]
    assert caplog.text.count("HTTP 422") == 1  # logged once, however often it happens


def test_too_large_batches_are_split(monitor):
    with ThreadServer(create_app(monitor, max_body_bytes=3_000)) as srv:
        # the server's 413 makes the client halve its batches
        client = MonitorClient(srv.url, "split", max_batch=256, **FAST)
        # a client told the limit splits before sending
        capped = MonitorClient(srv.url, "split2", max_batch=256, max_request_bytes=3_000, **FAST)
        for step in range(120):
            client.submit(StepRecord(step, {"entropy": 0.5, "reward": 1.0}))
            capped.submit(StepRecord(step, {"entropy": 0.5, "reward": 1.0}))
        assert client.close(timeout=30) and capped.close(timeout=30)
        _, text = request(srv.url, "GET", "/metrics")
    assert counts(client) == counts(capped) == (120, 0, 0, 0)
    assert monitor.store.count("split") == monitor.store.count("split2") == 120
    assert 'route="/v1/runs/{run}/steps",status="413"' in text


def test_token_is_sent_and_a_wrong_one_is_rejected_not_retried_forever(monitor, caplog):
    with ThreadServer(create_app(monitor, token="right-token-0123456789")) as srv:
        good = MonitorClient(srv.url, "tok", "right-token-0123456789", **FAST)
        bad = MonitorClient(srv.url, "tok2", "wrong-token-0123456789", **FAST)
        for step in range(5):
            good.submit(StepRecord(step, {"entropy": 0.5}))
            bad.submit(StepRecord(step, {"entropy": 0.5}))
        assert good.close(timeout=30) and bad.close(timeout=30)
    assert counts(good) == (5, 0, 0, 0)
    assert counts(bad)[1] == 5 and "tok2" not in monitor.runs()
    assert "wrong-token" not in caplog.text and "wrong-token" not in repr(bad)


def test_in_process_client_gives_the_same_decisions_synchronously_or_in_background():
    records = shift_records(seed=1)
    schedule = ReweightSchedule(mode="auto", alpha=0.25, ramp_steps=3)
    with Monitor() as monitor:
        sync = InProcessClient(monitor, "sync", schedule=schedule)
        steps_seen = []
        for record in records:
            sync.submit(record)
            steps_seen.append(sync.decision.step)
        assert steps_seen == [r.step for r in records]  # synchronous: this step's decision at once
        background = InProcessClient(monitor, "bg", schedule=schedule, background=True)
        for record in records:
            background.submit(record)
        assert background.close(timeout=30) and sync.close()
        assert monitor.decision("sync") == monitor.decision("bg")
        assert sync.decision == background.decision
        assert sync.decision.alpha == pytest.approx(0.25) and monitor.schedule("bg") == schedule
        assert counts(sync) == counts(background) == (len(records), 0, 0, 0)
        sync.submit(records[0])  # after close: dropped and counted, not raised
        assert sync.dropped == 1


def test_in_process_client_fails_open_when_the_monitor_fails(tmp_path):
    store = Store(tmp_path / "fail.db")
    monitor = Monitor(store=store)
    client = InProcessClient(monitor, "f")
    client.submit(StepRecord(0, {"entropy": 0.3}))
    store.close()  # every further observe raises inside the monitor
    client.submit(StepRecord(1, {"entropy": 0.3}))
    k = client.counters()
    assert (k.sent, k.dropped) == (1, 1)
    assert client.decision.step == 0
    monitor.close()


def test_client_for_follows_the_config(server, tmp_path):
    remote = client_for(Config(run="cfg", monitor=server.url, reweight="always", alpha=0.4))
    assert isinstance(remote, MonitorClient) and remote.url == server.url
    assert remote.decision.alpha == pytest.approx(0.4)
    remote.close()
    local = client_for(Config(run="cfg", store=str(tmp_path / "local.db"), reweight="off"))
    assert isinstance(local, InProcessClient)
    local.submit(StepRecord(0, {"entropy": 0.3}))
    assert local.decision.step == 0 and local.decision.alpha == 0.0
    local.close()
    assert Store(tmp_path / "local.db", readonly=True).count("cfg") == 1


def test_bad_construction_fails_loudly():
    with pytest.raises(ValueError, match="url"):
        MonitorClient("ftp://127.0.0.1:1", "r")
    with pytest.raises(ValueError, match="run"):
        MonitorClient("http://127.0.0.1:1", "bad run")
    with pytest.raises(ValueError, match="max_buffer"):
        MonitorClient("http://127.0.0.1:1", "r", max_buffer=0)
    with pytest.raises(ValueError, match="mode"):
        MonitorClient("http://127.0.0.1:1", "r", schedule={"mode": "sometimes"})


def test_a_fast_loop_is_batched_into_few_requests(tmp_path):
    """After a send the client lingers for more records (here 30 s, cut short by flush), so
    200 quick steps cost at most two requests however the threads interleave."""
    with Monitor(store=Store(tmp_path / "linger.db")) as monitor:
        with ThreadServer(create_app(monitor)) as srv:
            client = MonitorClient(srv.url, "linger", linger_s=30, max_batch=1_000, **FAST)
            for step in range(200):
                client.submit(StepRecord(step, {"entropy": 0.5}))
            assert client.flush(timeout=30)
            _, text = request(srv.url, "GET", "/metrics")
            client.close()
        posts = [line for line in text.splitlines()
                 if line.startswith("phasewatch_http_requests_total") and 'method="POST"' in line]
        assert len(posts) == 1 and 1 <= float(posts[0].split()[-1]) <= 2
        assert monitor.store.count("linger") == 200
