"""Dashboard push and phase-event annotations, through the real grafana-client library.

No Grafana server can run here (no package carries it), so these tests run a local fake: a
real HTTP server on 127.0.0.1 that records every request and checks it against Grafana's
documented HTTP API (grafana.com/docs/grafana/latest/developers/http_api/ : dashboard.md and
annotations.md):

- auth: ``Authorization: Bearer <service-account token>`` or ``Basic base64(user:password)``;
  anything else gets 401 ``{"message": "Unauthorized"}``.
- ``GET /api/dashboards/uid/:uid`` -> 200 ``{"dashboard": {...}, "meta": {...}}`` or 404.
- ``POST /api/dashboards/db`` with JSON ``{"dashboard": {...}, "folderUid"?, "message"?,
  "overwrite"?}``; the dashboard needs a ``title``, a ``uid`` of at most 40 characters, and
  ``id`` null (create) or a number; an existing uid without ``overwrite`` gets 412. Answers
  ``{"id", "uid", "url", "status": "success", "version", "slug"}``.
- ``POST /api/annotations`` with JSON ``{"dashboardUID"?, "panelId"?, "time", "timeEnd"?,
  "tags", "text"}``: ``time``/``timeEnd`` are epoch milliseconds, ``text`` is required.
  Answers ``{"message": "Annotation added", "id": n}``.

Requests that break these rules are recorded in ``fake.violations`` (and answered 400);
every test asserts there are none.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from phasewatch.dashboard import DASHBOARD_UID, build_dashboard
from phasewatch.events import ENTROPY_COLLAPSE, PHASE_SHIFT, Decision, Event, Observation
from phasewatch.grafana import GrafanaAnnotator, GrafanaError, push_dashboard
from phasewatch.record import StepRecord

TOKEN = "glsa_test_token_0123456789"
USER, PASSWORD = "admin", "s3cret"
ANNOTATION_KEYS = {"dashboardUID", "dashboardId", "panelId", "time", "timeEnd", "tags", "text", "data"}
DASHBOARD_POST_KEYS = {"dashboard", "folderId", "folderUid", "message", "overwrite"}


class FakeGrafana(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.violations: list[str] = []
        self.dashboards: dict[str, dict] = {}
        self.annotations: list[dict] = []
        self.annotation_statuses: list[int] = []  # answers to give before succeeding
        self.gate = threading.Event()
        self.gate.set()  # clear it to hold annotation requests open
        self.arrived = threading.Semaphore(0)  # released when an annotation request arrives
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeGrafana":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.shutdown()
        self.server_close()

    def posts(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _violation(self, message: str) -> None:
        with self.server.lock:
            self.server.violations.append(f"{self.command} {self.path}: {message}")
        self._reply(400, {"message": message})

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header == f"Bearer {TOKEN}":
            return True
        if header.startswith("Basic "):
            return base64.b64decode(header[6:]).decode() == f"{USER}:{PASSWORD}"
        return False

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = None
        if raw:
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                return self._violation("body without Content-Type: application/json")
            body = json.loads(raw)
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": self.path,
                                         "headers": dict(self.headers), "body": body})
        if not self._authorised():
            return self._reply(401, {"message": "Unauthorized"})
        if self.command == "GET" and self.path.startswith("/api/dashboards/uid/"):
            uid = self.path.rsplit("/", 1)[1]
            stored = self.server.dashboards.get(uid)
            if stored is None:
                return self._reply(404, {"message": "Dashboard not found"})
            return self._reply(200, stored)
        if self.command == "POST" and self.path == "/api/dashboards/db":
            return self._save_dashboard(body)
        if self.command == "POST" and self.path == "/api/annotations":
            return self._add_annotation(body)
        return self._reply(404, {"message": "Not found"})

    do_GET = do_POST = _handle

    def _save_dashboard(self, body) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
            return self._violation("expected {'dashboard': {...}}")
        if set(body) - DASHBOARD_POST_KEYS:
            return self._violation(f"unknown keys {set(body) - DASHBOARD_POST_KEYS}")
        model = body["dashboard"]
        uid, title = model.get("uid"), model.get("title")
        if not isinstance(title, str) or not title:
            return self._violation("dashboard.title is required")
        if not isinstance(uid, str) or not 1 <= len(uid) <= 40:
            return self._violation("dashboard.uid must be a string of at most 40 characters")
        if model.get("id") is not None and not isinstance(model["id"], int):
            return self._violation("dashboard.id must be null or a number")
        existing = self.server.dashboards.get(uid)
        if existing is not None and not body.get("overwrite"):
            return self._reply(412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"})
        version = (existing["meta"]["version"] + 1) if existing else 1
        slug = title.lower().replace(" ", "-").replace(":", "")
        folder = body.get("folderUid", "")
        stored_id = existing["dashboard"]["id"] if existing else len(self.server.dashboards) + 1
        self.server.dashboards[uid] = {
            "dashboard": {**model, "id": stored_id, "version": version},
            "meta": {"folderUid": folder, "version": version, "slug": slug, "url": f"/d/{uid}/{slug}"},
        }
        self._reply(200, {"id": stored_id, "uid": uid, "url": f"/d/{uid}/{slug}", "status": "success",
                          "version": version, "slug": slug})

    def _add_annotation(self, body) -> None:
        self.server.arrived.release()
        self.server.gate.wait(timeout=30)
        with self.server.lock:
            status = self.server.annotation_statuses.pop(0) if self.server.annotation_statuses else 200
        if status != 200:
            return self._reply(status, {"message": f"scripted failure {status}"})
        if not isinstance(body, dict) or set(body) - ANNOTATION_KEYS:
            return self._violation(f"unknown annotation keys {set(body or {}) - ANNOTATION_KEYS}")
        if not isinstance(body.get("text"), str) or not body["text"]:
            return self._violation("text is required")
        t = body.get("time")
        if not isinstance(t, int) or t < 10**12:
            return self._violation(f"time must be epoch milliseconds, got {t!r}")
        if body.get("timeEnd") is not None and (not isinstance(body["timeEnd"], int) or body["timeEnd"] < t):
            return self._violation("timeEnd must be epoch milliseconds >= time")
        if not isinstance(body.get("tags"), list) or not all(isinstance(x, str) for x in body["tags"]):
            return self._violation("tags must be a list of strings")
        if "dashboardUID" in body and not isinstance(body["dashboardUID"], str):
            return self._violation("dashboardUID must be a string")
        if body.get("panelId") is not None and not isinstance(body["panelId"], int):
            return self._violation("panelId must be a number")
        with self.server.lock:
            self.server.annotations.append(body)
            annotation_id = len(self.server.annotations)
        self._reply(200, {"message": "Annotation added", "id": annotation_id})


@pytest.fixture
def grafana():
    with FakeGrafana() as fake:
        yield fake
        assert fake.violations == []


# -- dashboard push ------------------------------------------------------------------------


def test_push_creates_the_dashboard_with_a_bearer_token(grafana):
    result = push_dashboard(grafana.url, token=TOKEN)
    assert result.status == "created" and result.uid == DASHBOARD_UID and result.version == 1
    assert result.url == f"{grafana.url}/d/{DASHBOARD_UID}/phasewatch-rl-training-phases"
    get, post = grafana.requests
    assert (get["method"], get["path"]) == ("GET", f"/api/dashboards/uid/{DASHBOARD_UID}")
    assert (post["method"], post["path"]) == ("POST", "/api/dashboards/db")
    assert post["headers"]["Authorization"] == f"Bearer {TOKEN}"
    sent = post["body"]
    assert sent["overwrite"] is True and "folderUid" not in sent
    expected = build_dashboard()
    assert sent["dashboard"] == {**expected, "id": None}


def test_push_updates_in_place_and_keeps_the_folder(grafana):
    push_dashboard(grafana.url, token=TOKEN, folder_uid="ml-runs")
    first_id = grafana.dashboards[DASHBOARD_UID]["dashboard"]["id"]
    result = push_dashboard(grafana.url, token=TOKEN, datasource_uid="their-prom")
    assert result.status == "updated" and result.version == 2
    stored = grafana.dashboards[DASHBOARD_UID]
    assert stored["dashboard"]["id"] == first_id and len(grafana.dashboards) == 1
    assert stored["meta"]["folderUid"] == "ml-runs"  # Grafana would move it to the root without folderUid
    assert stored["dashboard"]["templating"]["list"][0]["current"]["value"] == "their-prom"


def test_push_with_basic_auth(grafana):
    push_dashboard(grafana.url, user=USER, password=PASSWORD)
    header = grafana.posts("/api/dashboards/db")[0]["headers"]["Authorization"]
    assert header == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def test_rejected_credentials_give_an_actionable_error(grafana):
    with pytest.raises(GrafanaError, match=r"401.*--token"):
        push_dashboard(grafana.url, token="wrong")
    assert grafana.posts("/api/dashboards/db") == []


@pytest.mark.parametrize("kwargs, message", [
    ({"token": TOKEN, "user": USER, "password": PASSWORD}, "not both"),
    ({"user": USER}, "both a user and a password"),
])
def test_ambiguous_credentials_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        push_dashboard("http://127.0.0.1:9", **kwargs)


def test_unreachable_grafana_is_a_clear_error():
    with FakeGrafana() as fake:
        url = fake.url
    with pytest.raises(GrafanaError, match="cannot reach Grafana"):
        push_dashboard(url, token=TOKEN, timeout=2)


def test_cli_push(grafana, capsys, monkeypatch):
    from phasewatch.cli import main

    assert main(["dashboards", "push", "--url", grafana.url, "--token", TOKEN]) == 0
    assert "created dashboard 'phasewatch'" in capsys.readouterr().out
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    assert main(["dashboards", "push", "--url", grafana.url, "--folder-uid", "f1"]) == 0
    assert "updated" in capsys.readouterr().out
    assert main(["dashboards", "push", "--url", grafana.url, "--token", "nope"]) == 1
    assert "401" in capsys.readouterr().err
    assert main(["dashboards", "push", "--url", "grafana.local:3000", "--token", TOKEN]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err


def test_cli_push_takes_the_password_from_the_environment(grafana, capsys, monkeypatch):
    """A password on the command line shows in `ps`; $GRAFANA_PASSWORD keeps it out."""
    from phasewatch.cli import main

    monkeypatch.setenv("GRAFANA_PASSWORD", PASSWORD)
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert main(["dashboards", "push", "--url", grafana.url, "--user", USER]) == 0
    header = grafana.posts("/api/dashboards/db")[-1]["headers"]["Authorization"]
    assert header == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def test_cli_export_writes_the_dashboard(tmp_path):
    from phasewatch.cli import main

    out = tmp_path / "d.json"
    assert main(["dashboards", "export", "-o", str(out), "--uid", "abc"]) == 0
    assert json.loads(out.read_text()) == build_dashboard(uid="abc")


def test_cli_export_to_an_unwritable_path_names_it(tmp_path, capsys):
    """Before: `-o SOME_DIRECTORY` ended in an IsADirectoryError traceback."""
    from phasewatch.cli import main

    assert main(["dashboards", "export", "-o", str(tmp_path)]) == 2
    assert f"--output {tmp_path}: cannot write (Is a directory)" in capsys.readouterr().err
    assert main(["dashboards", "export", "-o", str(tmp_path / "missing" / "d.json")]) == 2
    assert "cannot write (No such file or directory)" in capsys.readouterr().err
    out = tmp_path / "d.json"
    assert main(["dashboards", "export", "--out", str(out)]) == 0  # the spelling `grams mine` uses too
    assert json.loads(out.read_text())["uid"] == "phasewatch"


# -- annotations ---------------------------------------------------------------------------


def _observation(run: str, *events: Event) -> Observation:
    step = max(e.step for e in events)
    return Observation(run, StepRecord(step, {"entropy": 1.0}), Decision(step, "planning", 0.1, step, tuple(events)))


SHIFT = Event(PHASE_SHIFT, 120, 97, "semantic_entropy", "cusum_up", 12.5, 10.0)
COLLAPSE = Event(ENTROPY_COLLAPSE, 130, 126, "entropy/execution", "collapse", 0.01, 0.02)


def test_each_event_becomes_one_documented_annotation(grafana):
    annotator = GrafanaAnnotator(grafana.url, token=TOKEN)
    before = int(time.time() * 1000)
    annotator(_observation("run-7", SHIFT))
    annotator(_observation("run-7", COLLAPSE))
    annotator(Observation("run-7", StepRecord(131, {}), Decision(131)))  # no events: nothing to post
    assert annotator.flush(10)
    after = int(time.time() * 1000)
    annotator.close()
    assert annotator.stats["sent"] == 2 and annotator.stats["failed"] == 0
    first, second = grafana.annotations
    assert first["dashboardUID"] == DASHBOARD_UID
    assert before <= first["time"] <= after and first["timeEnd"] == first["time"]
    assert {"phasewatch", PHASE_SHIFT, "run:run-7"} <= set(first["tags"])
    assert "step 120" in first["text"] and "onset step 97" in first["text"] and "run-7" in first["text"]
    assert ENTROPY_COLLAPSE in second["tags"] and "step 130" in second["text"]
    assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in grafana.posts("/api/annotations"))


def test_transient_failures_are_retried_with_backoff(grafana):
    grafana.annotation_statuses = [503, 500]
    annotator = GrafanaAnnotator(grafana.url, token=TOKEN, backoff_s=0.01)
    annotator(_observation("r", SHIFT))
    assert annotator.flush(10)
    annotator.close()
    assert annotator.stats["sent"] == 1 and annotator.stats["retried"] == 2
    bodies = [r["body"] for r in grafana.posts("/api/annotations")]
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]  # same annotation, same time


def test_client_errors_are_not_retried_and_logged_once(grafana, caplog):
    grafana.annotation_statuses = [403, 403]
    annotator = GrafanaAnnotator(grafana.url, token=TOKEN, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="phasewatch.grafana"):
        annotator(_observation("r", SHIFT))
        annotator(_observation("r", COLLAPSE))
        assert annotator.flush(10)
    annotator.close()
    assert annotator.stats["failed"] == 2 and annotator.stats["retried"] == 0
    assert len(grafana.posts("/api/annotations")) == 2
    warnings = [r for r in caplog.records if "403" in r.getMessage()]
    assert len(warnings) == 1


def test_a_stalled_grafana_never_blocks_the_caller_and_overflow_is_counted(grafana):
    grafana.gate.clear()  # Grafana accepts the connection but does not answer
    annotator = GrafanaAnnotator(grafana.url, token=TOKEN, queue_size=2, timeout_s=30)
    annotator(_observation("r", SHIFT))
    assert grafana.arrived.acquire(timeout=10)  # the worker is now stuck inside the first request

    results: list[bool] = []
    caller = threading.Thread(target=lambda: results.extend(annotator.submit("r", COLLAPSE) for _ in range(5)))
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive(), "submit blocked while Grafana was stalled"
    assert results == [True, True, False, False, False]
    assert annotator.stats["dropped"] == 3 and annotator.stats["pending"] == 2

    grafana.gate.set()
    assert annotator.flush(10)
    annotator.close()
    assert annotator.stats["sent"] == 3 and len(grafana.annotations) == 3


def test_unreachable_grafana_fails_quietly_and_close_stops_the_worker(caplog):
    with FakeGrafana() as fake:
        url = fake.url  # closed on exit: nothing listens there any more
    annotator = GrafanaAnnotator(url, token=TOKEN, max_attempts=2, backoff_s=0.01, timeout_s=2)
    with caplog.at_level(logging.WARNING, logger="phasewatch.grafana"):
        for _ in range(3):
            annotator(_observation("r", SHIFT))
        assert annotator.flush(20)
    annotator.close()
    assert annotator.stats["failed"] == 3 and annotator.stats["sent"] == 0
    assert annotator.stats["retried"] == 3
    assert len([r for r in caplog.records if "cannot reach Grafana" in r.getMessage()]) == 1
    assert not annotator._thread.is_alive()
    assert annotator.submit("r", SHIFT) is False  # closed: counted as dropped, never raises


def test_annotator_is_a_monitor_listener(grafana):
    from phasewatch.config import Config
    from phasewatch.monitor import Monitor

    assert GrafanaAnnotator.from_config(Config(run="r")) is None
    annotator = GrafanaAnnotator.from_config(Config(run="r", grafana_url=grafana.url, grafana_token=TOKEN))
    with Monitor(listeners=[annotator]) as monitor:
        monitor.observe("r", 0, {"entropy": 1.0})
        assert monitor.flush(10)
        assert monitor.listener_errors == 0
    assert annotator.flush(10)
    annotator.close()
    # the records carried no event: nothing may be posted
    assert grafana.posts("/api/annotations") == [] and annotator.stats["queued"] == 0
