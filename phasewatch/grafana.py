"""Grafana: push the phasewatch dashboard, and post an annotation for every phase event.

Both go through ``grafana-client`` (the maintained fork of the archived ``grafana-api``), which
speaks Grafana's HTTP API: ``GET /api/dashboards/uid/:uid`` and ``POST /api/dashboards/db`` for
the dashboard, ``POST /api/annotations`` (time in epoch milliseconds, ``dashboardUID``, ``tags``,
``text``) for events. Authentication is a service-account token (``Authorization: Bearer``) or
a user and password (HTTP basic).

Annotations are a second route for marking events: the shipped dashboard already marks them
from Prometheus without any token. When a Grafana URL is configured, :class:`GrafanaAnnotator`
adds exact, clickable markers with the step, detector and evidence in their text. It never
blocks or fails training: the monitor thread only puts the event on a bounded queue; a
background thread posts it, retrying with exponential backoff, and anything that does not fit
or finally fails is counted (``annotator.stats``) and logged once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from phasewatch.events import EVENT_KINDS, PHASE_SHIFT, Event, Observation

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


class GrafanaError(RuntimeError):
    """A Grafana request failed; the message says what to change."""


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError("url: expected the Grafana base URL, e.g. http://127.0.0.1:3000")
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"url: {url!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:3000")
    return url.strip().rstrip("/")


def _credential(token: str | None, user: str | None, password: str | None) -> str | tuple[str, str] | None:
    if token and (user or password):
        raise ValueError("give either a token or a user and password, not both")
    if token:
        return token
    if user or password:
        if not (user and password):
            raise ValueError("basic authentication needs both a user and a password")
        return (user, password)
    return None


def connect(
    url: str,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """A ``grafana_client.GrafanaApi`` for ``url`` with a token or basic credentials."""
    from grafana_client import GrafanaApi

    return GrafanaApi.from_url(_check_url(url), credential=_credential(token, user, password), timeout=timeout)


def _request_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a grafana-client call can raise: its own, plus transport errors of niquests
    (grafana-client wraps timeouts and HTTP errors but lets connection errors through)."""
    from grafana_client.client import GrafanaException

    try:
        from niquests.exceptions import RequestException
    except ImportError:  # pragma: no cover - grafana-client always brings niquests
        return (GrafanaException, OSError)
    return (GrafanaException, RequestException, OSError)


def _explain(exc: BaseException, url: str, action: str) -> GrafanaError:
    """Turn a grafana-client exception into an error a user can act on."""
    status = getattr(exc, "status_code", None)
    detail = str(getattr(exc, "message", "") or exc)
    if status == 401:
        hint = "Grafana rejected the credentials (401): pass --token with a service-account token, or --user and --password"
    elif status == 403:
        hint = "the credentials lack permission (403): the token's service account needs the Editor role (dashboards:write, annotations:create)"
    elif status == 404:
        hint = "not found (404): is the URL Grafana's base URL (no /api, no dashboard path)?"
    elif status == 412:
        hint = f"Grafana refused to overwrite (412): {detail}"
    elif status == 400:
        hint = f"Grafana rejected the request as invalid (400): {detail}"
    elif status and status >= 500:
        hint = f"Grafana failed ({status}): {detail}"
    else:
        hint = f"cannot reach Grafana: {detail}"
    return GrafanaError(f"{action} at {url}: {hint}")


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_dashboard` did: ``created`` or ``updated``, and where it lives."""

    status: str
    uid: str
    url: str
    version: int | None


def push_dashboard(
    url: str,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    dashboard: Mapping[str, Any] | None = None,
    folder_uid: str | None = None,
    datasource_uid: str | None = None,
    message: str = "pushed by phasewatch dashboards push",
    timeout: float = DEFAULT_TIMEOUT_S,
    api: Any = None,
) -> PushResult:
    """Create the dashboard, or update it in place if one with the same uid exists.

    ``dashboard`` defaults to the shipped one (:func:`phasewatch.dashboard.build_dashboard`),
    with its ``$datasource`` variable defaulting to ``datasource_uid`` when given. An existing
    dashboard stays in its folder unless ``folder_uid`` says otherwise (Grafana would
    otherwise move it to the root on update).
    """
    from grafana_client.client import GrafanaClientError

    from phasewatch.dashboard import DATASOURCE_UID, build_dashboard

    base = _check_url(url)
    if dashboard is None:
        model = build_dashboard(datasource_uid=datasource_uid or DATASOURCE_UID)
    else:
        model = dict(dashboard)
    uid = model.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ValueError("dashboard: needs a non-empty 'uid' so that pushes update it instead of duplicating it")
    api = api if api is not None else connect(base, token=token, user=user, password=password, timeout=timeout)

    existing: Mapping[str, Any] | None
    try:
        existing = api.dashboard.get_dashboard(uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise _explain(exc, base, f"reading dashboard {uid!r}") from None
        existing = None
    except _request_errors() as exc:
        raise _explain(exc, base, f"reading dashboard {uid!r}") from None

    model["id"] = None  # Grafana matches on uid; a numeric id from another instance would be wrong
    payload: dict[str, Any] = {"dashboard": model, "overwrite": True, "message": message}
    keep_folder = (existing or {}).get("meta", {}).get("folderUid") if existing else None
    if folder_uid or keep_folder:
        payload["folderUid"] = folder_uid or keep_folder
    try:
        response = api.dashboard.update_dashboard(payload)
    except _request_errors() as exc:
        raise _explain(exc, base, f"saving dashboard {uid!r}") from None
    response = response or {}
    return PushResult(
        status="updated" if existing else "created",
        uid=str(response.get("uid", uid)),
        url=base + str(response.get("url", f"/d/{uid}")),
        version=response.get("version"),
    )


# -- annotations -------------------------------------------------------------------------


def annotation_text(run: str, event: Event) -> str:
    """One line a person can read on the marker: what, when, and the evidence."""
    what = "execution-to-planning shift confirmed" if event.kind == PHASE_SHIFT else event.kind.replace("_", " ")
    return (
        f"{what} in run {run} at step {event.step} (onset step {event.onset}); "
        f"{event.detector} on {event.series}: statistic {event.statistic:.4g}, threshold {event.threshold:.4g}"
    )


def annotation_tags(run: str, event: Event) -> list[str]:
    return ["phasewatch", event.kind, f"run:{run}", f"series:{event.series}"]


@dataclass(frozen=True)
class _Pending:
    run: str
    event: Event
    time_ms: int


class GrafanaAnnotator:
    """Monitor listener that posts a Grafana annotation for each new event.

    ``__call__`` only enqueues (``put_nowait`` on a queue of ``queue_size``); a daemon thread
    posts. A failed post is retried up to ``max_attempts`` times with exponential backoff
    (``backoff_s``, doubling, capped at ``max_backoff_s``) when the failure is transient
    (connection error, timeout, 429, 5xx); 4xx answers are not retried. Events that do not fit
    in the queue are dropped and counted. Nothing here raises into the caller.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        dashboard_uid: str | None = None,
        kinds: Iterable[str] = EVENT_KINDS,
        queue_size: int = 256,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 5.0,
        api: Any = None,
    ) -> None:
        from phasewatch.dashboard import DASHBOARD_UID

        self.url = _check_url(url)
        if queue_size < 1:
            raise ValueError(f"queue_size: must be >= 1, got {queue_size}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {max_attempts}")
        self.dashboard_uid = dashboard_uid or DASHBOARD_UID
        self.kinds = frozenset(kinds)
        self.max_attempts = int(max_attempts)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._api = api if api is not None else connect(
            self.url, token=token, user=user, password=password, timeout=timeout_s
        )
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self._counts = {"queued": 0, "sent": 0, "failed": 0, "dropped": 0, "retried": 0}

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> "GrafanaAnnotator | None":
        """An annotator for ``Config.grafana_url``/``grafana_token``, or ``None`` when unset."""
        url = getattr(config, "grafana_url", None)
        if not url:
            return None
        return cls(url, token=getattr(config, "grafana_token", None), **kwargs)

    # -- listener ------------------------------------------------------------------------

    def __call__(self, observation: Observation) -> None:
        for event in observation.decision.events:
            if event.kind in self.kinds:
                self.submit(observation.run, event)

    def submit(self, run: str, event: Event, time_ms: int | None = None) -> bool:
        """Queue one annotation; ``False`` (and a count in ``stats['dropped']``) if it does not fit."""
        item = _Pending(run, event, int(time.time() * 1000) if time_ms is None else int(time_ms))
        if self._stop.is_set():
            self._count("dropped")
            return False
        self._ensure_thread()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count("dropped")
            self._warn_once("full", "Grafana annotation queue is full; dropping annotations (Grafana slow or down?)")
            return False
        self._count("queued")
        return True

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: queued, sent, failed (gave up), dropped (queue full/closed), retried, pending."""
        with self._lock:
            out = dict(self._counts)
        out["pending"] = self._queue.qsize()
        return out

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued annotation was sent or given up; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = self._counts["sent"] + self._counts["failed"] >= self._counts["queued"]
            if done:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker: pending annotations get ``timeout`` seconds, then are abandoned."""
        if self._thread is None:
            self._stop.set()
            return
        self.flush(timeout)
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=max(0.1, timeout))

    def __enter__(self) -> "GrafanaAnnotator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker --------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="phasewatch-grafana", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is None:
                return
            if self._stop.is_set():
                self._count("failed")
                continue
            self._post(item)

    def _post(self, item: _Pending) -> None:
        errors = _request_errors()
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                self._api.annotations.add_annotation(
                    dashboard_uid=self.dashboard_uid,
                    time_from=item.time_ms,
                    time_to=item.time_ms,
                    tags=annotation_tags(item.run, item.event),
                    text=annotation_text(item.run, item.event),
                )
            except errors as exc:
                status = getattr(exc, "status_code", 0) or 0
                transient = status == 0 or status == 429 or status >= 500
                if not transient or attempt == self.max_attempts:
                    self._count("failed")
                    self._warn_once(
                        f"failed-{status}",
                        str(_explain(exc, self.url, "posting a phase-event annotation"))
                        + ("" if transient else " (not retried)"),
                    )
                    return
            except Exception as exc:  # never let the worker die: a bug here must not stop later posts
                self._count("failed")
                self._warn_once("unexpected", f"posting a Grafana annotation failed unexpectedly: {exc!r}")
                return
            else:
                self._count("sent")
                return
            self._count("retried")
            if self._stop.wait(min(delay, self.max_backoff_s)):
                self._count("failed")
                return
            delay *= 2

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning("phasewatch: %s", message)
