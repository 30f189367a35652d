"""``phasewatch serve``: the monitor as an HTTP service for many runs.

Any trainer or script, in any language, posts step records and reads back the decision::

    POST /v1/runs/{run}/steps     one record or a JSON array of records -> the run's decision
                                  (and "duplicates": records for steps already stored, ignored)
    PUT  /v1/runs/{run}           {"schedule": {...}}: the run's HICRA schedule
    GET  /v1/runs                 the runs, with their phase and alpha
    GET  /v1/runs/{run}           one run: records stored, last step, phase, alpha, events
    GET  /v1/runs/{run}/records   stored records (?start=&end=&limit=)
    GET  /v1/schema               the JSON Schema of the request bodies
    GET  /metrics                 Prometheus (the exporter's registry plus HTTP metrics)
    GET  /healthz                 liveness; never needs the token

Design choices, and why:

- **Acknowledged means durable.** A POST is answered only after the transaction holding its
  records has been committed (fsynced with the default ``synchronous=full``). Ingest is
  idempotent by (run, step), so a client may retry anything it has no answer for.
- **Validate before touching the store.** The whole body is decoded and checked against
  :mod:`phasewatch.schema` first; a rejected request changes nothing and gets a 4xx whose
  JSON names the field. Bodies over ``max_body_bytes`` are refused from the
  ``Content-Length`` header, or as soon as the streamed body passes the limit, without
  buffering the rest.
- **Group commit.** Every POST is parsed and validated on the event loop, then handed to one
  writer thread (:class:`GroupCommitter`) that ingests whatever requests are waiting, of
  any runs, and commits all their records in one SQLite transaction (one fsync) before it
  answers each of them. While one group is being fsynced the next one gathers, so the disk
  stops being the limit and a request costs one hand-over to the writer, not one thread
  hop and one fsync of its own. Reads run in worker threads; the event loop never waits
  on SQLite, so ``/healthz`` and ``/metrics`` answer during a commit.
- **A short path for ingest.** ``POST /v1/runs/{run}/steps`` is answered by a plain ASGI
  handler in front of Starlette (the other routes go through Starlette as before): the
  hot path pays for no routing table, middleware stack or request object.
- **Bearer token, constant time, never echoed.** With a token, every route but
  ``/healthz`` requires ``Authorization: Bearer <token>``, compared with
  :func:`hmac.compare_digest`. Binding a non-loopback address without a token is refused
  (:func:`check_bind`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

from phasewatch.events import Decision
from phasewatch.store import StoreError
from phasewatch.schema import API_SCHEMA, MAX_BATCH, PayloadError, StepsParser, decode_json, validate_run

log = logging.getLogger("phasewatch.server")

#: Default request body limit. A record is ~300 bytes flat and a few KB with ``stats``;
#: 4 MiB holds a client's full batch with room to spare.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Most records ``GET /v1/runs/{run}/records`` returns per call.
MAX_RECORDS_PER_PAGE = 10_000
#: Request header in which :class:`~phasewatch.client.MonitorClient` reports how many records
#: it has dropped so far (cumulative), so the loss shows on the server's dashboard.
DROPPED_HEADER = "phasewatch-client-dropped"
#: Most records one group commit takes in (a group gathers while the previous one commits; the
#: cap only bounds how long the first request of a very large group waits).
MAX_GROUP_RECORDS = 4096
#: Route template of the ingest endpoint (metrics label).
STEPS_ROUTE = "/v1/runs/{run}/steps"

ASGIApp = Callable[[Mapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything: treat it as exposed


def check_token(token: str | None) -> str | None:
    """A token must fit in an HTTP header unchanged: printable ASCII, no spaces."""
    if token is None:
        return None
    if not isinstance(token, str) or not token:
        raise ValueError("token: must be a non-empty string")
    if any(not (33 <= ord(c) <= 126) for c in token):
        raise ValueError("token: use printable ASCII without spaces (it travels in an HTTP header)")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the API beyond this machine without authentication."""
    if not is_loopback(host) and not token:
        raise ValueError(
            f"refusing to listen on {host!r} without a token: anyone who can reach it could write "
            "records and change schedules. Pass --token (or set PHASEWATCH_TOKEN), or bind 127.0.0.1."
        )


def json_safe(value: Any) -> Any:
    """Non-finite floats become the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``: the body
    stays standard JSON for any language, and Python's ``float()`` reads them back."""
    kind = type(value)  # exact types first: this runs on every response
    if kind is dict:
        return {str(k): json_safe(v) for k, v in value.items()}
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is list:
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars in an event's detail
    if callable(item) and type(value).__module__ == "numpy":
        return json_safe(item())
    return value


def _decision_with(decisions: list[Decision]) -> Decision:
    """The decision after a batch, carrying every event the batch raised."""
    last = decisions[-1]
    events = tuple(e for d in decisions for e in d.events)
    return Decision(step=last.step, phase=last.phase, alpha=last.alpha, shift_step=last.shift_step, events=events)


class _BodyTooLarge(Exception):
    pass


class _HttpMetrics:
    """Request counters of the service itself, in the exporter's registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter(
            "phasewatch_http_requests",
            "HTTP requests served by phasewatch serve, by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "phasewatch_http_request_duration_seconds",
            "Time to answer an HTTP request of phasewatch serve, by route template.",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request (label children cached: ``labels()`` is slow)."""
        key = (route, method, str(status))
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.requests.labels(*key)
        counter.inc()
        timer = self._children.get((route,))
        if timer is None:
            timer = self._children[(route,)] = self.duration.labels(route)
        timer.observe(seconds)


class GroupCommitter:
    """The single writer of ``phasewatch serve``: group commit for concurrent requests.

    :meth:`ingest` (called on the event loop) queues a request's parsed records and returns a
    future. One daemon thread takes every request waiting, up to ``max_group_records``
    records, hands them to :meth:`Monitor.observe_batches` (one transaction, one fsync for
    the whole group) and then resolves the futures of the group with one wake-up of the
    event loop. A request is therefore answered only after its records are committed, and
    requests that arrive during a commit share the next one. Records of one run keep their
    arrival order (one thread, FIFO).

    ``groups``/``grouped_requests``/``taken_requests``/``pending`` say what the writer did and
    has queued (for tests and tuning).
    """

    def __init__(self, monitor: Any, *, max_group_records: int = MAX_GROUP_RECORDS) -> None:
        if int(max_group_records) < 1:
            raise ValueError(f"max_group_records: must be >= 1, got {max_group_records!r}")
        self.monitor = monitor
        self.max_group_records = int(max_group_records)
        self._jobs: deque[tuple[str, Sequence[Any], asyncio.Future, asyncio.AbstractEventLoop]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self.groups = 0  # groups committed (or refused as a whole)
        self.grouped_requests = 0  # requests in those groups
        self.taken_requests = 0  # requests the writer has taken from the queue so far

    def ingest(self, run: str, records: Sequence[Any]) -> "asyncio.Future[Ingested]":
        """Queue one request's records; once committed, the future gives an :class:`Ingested`
        (their decisions, and how many were duplicates), or the exception that refused them."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._closed:
                raise ValueError("monitor: the server is shutting down")
            self._jobs.append((run, records, future, loop))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="phasewatch-group-commit", daemon=True)
                self._thread.start()
            self._cond.notify()
        return future

    @property
    def pending(self) -> int:
        """Requests queued for the next group (not yet taken by the writer)."""
        with self._cond:
            return len(self._jobs)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _next_group(self) -> list[tuple[str, Sequence[Any], asyncio.Future, asyncio.AbstractEventLoop]]:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            group = []
            size = 0
            while self._jobs and (not group or size + len(self._jobs[0][1]) <= self.max_group_records):
                job = self._jobs.popleft()
                group.append(job)
                size += len(job[1])
            self.taken_requests += len(group)
            return group

    def _commit(self, group: list) -> list[Any]:
        """An :class:`Ingested` or an exception, per request of the group."""
        stored_before = [_stored_steps(self.monitor, run, records) for run, records, _, _ in group]
        try:
            results = self.monitor.observe_batches([(run, records) for run, records, _, _ in group])
        except Exception as exc:  # noqa: BLE001 - the commit failed: no request of the group is stored
            return [exc] * len(group)
        # A step is a duplicate when it was stored before the group, or by an earlier request
        # of the same group (the monitor keeps the first record of a step and ignores the rest).
        added: dict[str, set[int]] = {}
        out: list[Any] = []
        for (run, records, _, _), before, result in zip(group, stored_before, results):
            if isinstance(result, BaseException):
                out.append(result)
                continue
            earlier = added.setdefault(run, set())
            steps = [record.step for record in records]
            duplicates = sum(1 for step in steps if step in before or step in earlier)
            earlier.update(steps)
            out.append(Ingested(result, duplicates))
        return out

    def _loop(self) -> None:
        group: list = []
        try:
            while True:
                group = self._next_group()
                if not group:
                    return  # closed, nothing left
                results = self._commit(group)
                self.groups += 1
                self.grouped_requests += len(group)
                by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
                for (_, _, future, loop), result in zip(group, results):
                    by_loop.setdefault(loop, []).append((future, result))
                for loop, settled in by_loop.items():
                    try:
                        loop.call_soon_threadsafe(_settle, settled)
                    except RuntimeError:  # that event loop is closed: nobody is waiting
                        pass
                group = []
        except BaseException as exc:  # a bug here must not leave requests waiting forever
            log.exception("phasewatch serve: the group-commit writer failed")
            with self._cond:
                self._closed = True
                left = group + list(self._jobs)
                self._jobs.clear()
            failure = RuntimeError(f"group commit writer failed: {type(exc).__name__}")
            for _, _, future, loop in left:
                try:
                    loop.call_soon_threadsafe(_settle, [(future, failure)])
                except RuntimeError:
                    pass
            raise


class Ingested:
    """What the writer did with one request: the decision after each of its records, and how
    many of them were for a step the run already had (ignored: the first record of a step wins)."""

    __slots__ = ("decisions", "duplicates")

    def __init__(self, decisions: list[Decision], duplicates: int) -> None:
        self.decisions = decisions
        self.duplicates = duplicates


def _stored_steps(monitor: Any, run: str, records: Sequence[Any]) -> frozenset[int]:
    """The steps of ``records`` that ``run`` has already stored.

    Only steps up to the run's last step can be stored already, and records normally arrive
    in order, so the usual request costs one look-up of the run's decision; the stored
    records are read only for a request that reaches back (a retry, a late record)."""
    if not records:
        return frozenset()
    try:
        last = monitor.decision(run).step  # 0 for a run without records: step 0 is then checked
    except KeyError:  # a new run has nothing stored
        return frozenset()
    except Exception:  # noqa: BLE001 - the run cannot be restored: the ingest itself reports it
        return frozenset()
    candidates = [record.step for record in records if record.step <= last]
    if not candidates:
        return frozenset()
    try:
        stored = monitor.records(run, min(candidates), max(candidates) + 1)
    except Exception:  # noqa: BLE001 - as above
        return frozenset()
    wanted = set(candidates)
    return frozenset(r.step for r in stored if r.step in wanted)


def _settle(settled: list[tuple[asyncio.Future, Any]]) -> None:
    """On the event loop: answer the futures of one group."""
    for future, result in settled:
        if future.done():  # the request was cancelled (client gone, server stopping)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def error_for(exc: BaseException, max_body_bytes: int) -> tuple[int, str, str | None]:
    """(status, message, field) for an exception raised while answering a request: bad
    input is the client's (4xx), a store that cannot write is temporary (503: retry), the
    rest is a bug (500)."""
    if isinstance(exc, PayloadError):
        return exc.status, str(exc), exc.field
    if isinstance(exc, _BodyTooLarge):
        return 413, f"request body larger than {max_body_bytes} bytes", None
    if isinstance(exc, (sqlite3.Error, OSError, StoreError)):  # disk full, store gone: retry later
        return 503, f"store unavailable: {type(exc).__name__}", None
    if isinstance(exc, ValueError):
        if str(exc).startswith(("store:", "monitor:")):  # closed store or monitor
            return 503, f"monitor unavailable: {exc}", None
        return 422, str(exc), None  # the monitor refused a record that passed the schema
    if isinstance(exc, KeyError):
        return 404, str(exc.args[0]) if exc.args else "not found", None
    return 500, f"internal error: {type(exc).__name__}", None


async def _asgi_body(receive: Any) -> AsyncIterator[bytes]:
    """The chunks of an ASGI request body, as ``receive`` delivers them."""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away mid-body
            raise PayloadError("body", "the client disconnected before the body was complete", status=400)
        yield message.get("body", b"")
        more = message.get("more_body", False)


def _json_bytes(data: Any) -> bytes:
    return json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")


def create_app(
    monitor: Any,
    token: str | None = None,
    *,
    exporter: Any = None,
    metrics: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = MAX_BATCH,
    worker_threads: int = 4,
    max_group_records: int = MAX_GROUP_RECORDS,
) -> "ServeApp":
    """The ASGI app of ``phasewatch serve`` around ``monitor``.

    token: when set, required as ``Authorization: Bearer <token>`` on every route except
        ``/healthz``.
    exporter: a :class:`~phasewatch.exporter.PrometheusExporter` already listening to the
        monitor; by default (``metrics=True``) one is created and added as a listener.
    max_body_bytes: larger request bodies get 413 before they are read.
    worker_threads: threads that answer the read endpoints (``GET /v1/runs...``); ``0``
        answers them on the event loop. Ingest always goes through the one group-commit
        writer thread (:class:`GroupCommitter`).
    max_group_records: most records one group commit takes in.

    The returned app has ``close()`` (commit what is queued, stop the writer thread) and
    ``state.monitor``/``state.exporter``/``state.committer``.
    """
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    check_token(token)
    if int(max_body_bytes) < 1:
        raise ValueError(f"max_body_bytes: must be positive, got {max_body_bytes!r}")
    max_body_bytes = int(max_body_bytes)
    parser = StepsParser(max_batch=max_batch)
    committer = GroupCommitter(monitor, max_group_records=max_group_records)
    inline = int(worker_threads) == 0
    limiter = anyio.CapacityLimiter(max(1, int(worker_threads)))
    if metrics and exporter is None:
        from phasewatch.exporter import PrometheusExporter

        exporter = PrometheusExporter()
        monitor.add_listener(exporter)
    http_metrics = _HttpMetrics(exporter.registry) if exporter is not None else None
    expected = None if token is None else token.encode("ascii")
    client_dropped: dict[str, int] = {}  # run -> last cumulative count a client reported

    def respond(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return Response(_json_bytes(data), status_code=status, media_type="application/json",
                        headers=dict(headers or {}))

    def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"error": message}
        if field is not None:
            data["field"] = field
        return data

    def error(status: int, message: str, field: str | None = None) -> Response:
        return respond(error_body(status, message, field), status)

    def log_failure(method: str, route: str, exc: BaseException, status: int) -> None:
        if status == 500:
            log.error("phasewatch serve: %s %s failed", method, route, exc_info=exc)
        elif status == 503:
            log.error("phasewatch serve: %s %s: store unavailable (%s)", method, route, exc)

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        if inline:
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    def check_length(declared: str | bytes | None) -> None:
        if declared is None:
            return
        try:
            size = int(declared)
        except ValueError:
            shown = declared.decode("latin-1") if isinstance(declared, bytes) else declared
            raise PayloadError("Content-Length", f"not an integer: {shown[:40]!r}", status=400) from None
        if size > max_body_bytes:
            raise _BodyTooLarge()

    async def collect_body(chunks: AsyncIterator[bytes]) -> bytes:
        """The whole body, refused as soon as it grows past ``max_body_bytes``."""
        parts: list[bytes] = []
        received = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > max_body_bytes:
                raise _BodyTooLarge()
            parts.append(chunk)
        return b"".join(parts)

    async def read_body(request: Request) -> bytes:
        check_length(request.headers.get("content-length"))
        return await collect_body(request.stream())

    async def read_json(request: Request) -> Any:
        return decode_json(await read_body(request))

    def known_run(run: str) -> str | None:
        validate_run(run)
        return run if run in set(monitor.runs()) else None

    # -- ingest: the hot path ---------------------------------------------------------------

    async def ingest(run: str, body: bytes, dropped: str | None) -> dict[str, Any]:
        """Validate, then wait for the group commit that makes the records durable."""
        records = parser.parse_steps(decode_json(body), run).records
        ingested = await committer.ingest(run, records)
        note_client_dropped(run, dropped)
        decision = _decision_with(ingested.decisions)
        # "duplicates": records for steps the run already had; they changed nothing (a retry
        # is harmless, but a client re-posting a step with new values learns it was ignored)
        return {"run": run, "received": len(records), "duplicates": ingested.duplicates,
                "decision": decision.to_json()}

    async def ingest_asgi(scope: Mapping[str, Any], receive: Any, send: Any, raw_run: str) -> None:
        """``POST /v1/runs/{run}/steps`` as a plain ASGI handler (no Starlette on this path)."""
        started = time.perf_counter()
        try:
            run = validate_run(raw_run)
            length = dropped = None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = value
                elif name == _DROPPED_HEADER_BYTES:
                    dropped = value.decode("latin-1")
            check_length(length)
            status, data = 200, await ingest(run, await collect_body(_asgi_body(receive)), dropped)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
            status, message, field = error_for(exc, max_body_bytes)
            log_failure("POST", STEPS_ROUTE, exc, status)
            data = error_body(status, message, field)
        body = _json_bytes(data)
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
        if http_metrics is not None:
            http_metrics.observe(STEPS_ROUTE, "POST", status, time.perf_counter() - started)

    # -- endpoints ------------------------------------------------------------------------

    async def healthz(request: Request) -> Response:
        return respond({"status": "ok"})

    async def schema(request: Request) -> Response:
        return respond(API_SCHEMA)

    def run_overview(run: str) -> dict[str, Any]:
        summary = monitor.summary(run)
        decision = summary["decision"]
        return {
            "run": run,
            "steps": summary["records"],
            "first_step": summary["first_step"],
            "last_step": summary["last_step"],
            "phase": decision["phase"],
            "alpha": decision["alpha"],
            "shift_step": decision["shift_step"],
        }

    async def list_runs(request: Request) -> Response:
        def collect() -> list[dict[str, Any]]:
            return [run_overview(run) for run in monitor.runs()]

        return respond({"runs": await in_thread(collect)})

    async def get_run(request: Request) -> Response:
        run = request.path_params["run"]

        def collect() -> dict[str, Any] | None:
            if known_run(run) is None:
                return None
            out = run_overview(run)
            out["schedule"] = monitor.schedule(run).to_json()
            out["events"] = [e.to_json() for e in monitor.events(run)]
            return out

        data = await in_thread(collect)
        return error(404, f"unknown run {run!r}", "run") if data is None else respond(data)

    async def get_records(request: Request) -> Response:
        run = request.path_params["run"]
        bounds: dict[str, int | None] = {}
        for name in ("start", "end", "limit"):
            raw = request.query_params.get(name)
            if raw is None:
                bounds[name] = None
                continue
            try:
                bounds[name] = int(raw)
            except ValueError:
                raise PayloadError(name, f"expected an integer, got {raw[:40]!r}") from None
            if bounds[name] < 0:  # type: ignore[operator]
                raise PayloadError(name, f"must be >= 0, got {raw}")
        limit = MAX_RECORDS_PER_PAGE if bounds["limit"] is None else min(bounds["limit"], MAX_RECORDS_PER_PAGE)

        def collect() -> list[dict[str, Any]] | None:
            if known_run(run) is None:
                return None
            records = monitor.records(run, bounds["start"], bounds["end"])
            return [r.to_json() for r in records[:limit]]

        data = await in_thread(collect)
        if data is None:
            return error(404, f"unknown run {run!r}", "run")
        return respond({"run": run, "records": data})

    async def put_run(request: Request) -> Response:
        run = validate_run(request.path_params["run"])
        schedule = parser.parse_run_config(await read_json(request))
        decision = await in_thread(monitor.set_schedule, run, schedule)
        return respond({"run": run, "schedule": schedule.to_json(), "decision": decision.to_json()})

    async def post_steps(request: Request) -> Response:
        # reached only when the short path in front of Starlette did not take the request
        run = validate_run(request.path_params["run"])
        body = await read_body(request)
        return respond(await ingest(run, body, request.headers.get(DROPPED_HEADER)))

    def note_client_dropped(run: str, raw: str | None) -> None:
        if raw is None or exporter is None:
            return
        try:
            total = int(raw)
        except ValueError:
            return
        if total < 0:
            return
        previous = client_dropped.get(run, 0)
        delta = total - previous if total >= previous else total  # a smaller count: a new client
        client_dropped[run] = total
        if delta > 0:
            exporter.record_dropped(run, delta, "buffer_full")

    # -- error mapping --------------------------------------------------------------------

    Endpoint = Callable[[Request], Awaitable[Response]]

    def guarded(route: str, endpoint: Endpoint) -> Endpoint:
        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await endpoint(request)
            except Exception as exc:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
                status, message, field = error_for(exc, max_body_bytes)
                log_failure(request.method, route, exc, status)
                response = error(status, message, field)
            if http_metrics is not None:
                http_metrics.observe(route, request.method, response.status_code, time.perf_counter() - started)
            return response

        return handle

    routes = [
        Route("/healthz", guarded("/healthz", healthz), methods=["GET"]),
        Route("/v1/schema", guarded("/v1/schema", schema), methods=["GET"]),
        Route("/v1/runs", guarded("/v1/runs", list_runs), methods=["GET"]),
        Route("/v1/runs/{run}", guarded("/v1/runs/{run}", get_run), methods=["GET"]),
        Route("/v1/runs/{run}", guarded("/v1/runs/{run}", put_run), methods=["PUT"]),
        Route(STEPS_ROUTE, guarded(STEPS_ROUTE, post_steps), methods=["POST"]),
        Route("/v1/runs/{run}/records", guarded("/v1/runs/{run}/records", get_records), methods=["GET"]),
    ]
    if exporter is not None:
        routes.append(Route("/metrics", _AsgiEndpoint(exporter.asgi_app()), methods=["GET"]))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", None) or "error"
        return error(status, str(detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("phasewatch serve: unhandled error on %s %s", request.method, request.url.path)
        return error(500, "internal error")

    starlette = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    starlette.state.monitor = monitor
    starlette.state.exporter = exporter
    starlette.state.committer = committer
    return ServeApp(starlette, ingest_asgi, committer, expected)


_DROPPED_HEADER_BYTES = DROPPED_HEADER.encode("ascii")
_STEPS_PREFIX = "/v1/runs/"
_STEPS_SUFFIX = "/steps"


class ServeApp:
    """The ASGI app :func:`create_app` returns: bearer-token check, then the short ingest path
    for ``POST /v1/runs/{run}/steps``, then Starlette for every other route."""

    def __init__(self, starlette: Any, ingest: Callable[..., Awaitable[None]], committer: GroupCommitter,
                 expected_token: bytes | None) -> None:
        self.starlette = starlette
        self.state = starlette.state
        self.committer = committer
        self._ingest = ingest
        self._expected = expected_token

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued and stop the group-commit writer (after the server stopped)."""
        self.committer.close(timeout)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
                return
            await self.starlette(scope, receive, send)
            return
        path = scope["path"]
        if self._expected is not None and path != "/healthz" and not _authorized(scope, self._expected):
            await _denied(send)
            return
        if scope["method"] == "POST" and path.startswith(_STEPS_PREFIX) and path.endswith(_STEPS_SUFFIX):
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            raw_run = path[len(_STEPS_PREFIX):-len(_STEPS_SUFFIX)]
            if raw_run and "/" not in raw_run:
                await self._ingest(scope, receive, send, raw_run)
                return
        await self.starlette(scope, receive, send)

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer uvicorn's lifespan protocol; on shutdown, commit what is queued."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _authorized(scope: Mapping[str, Any], expected: bytes) -> bool:
    presented = b""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer":
                presented = credentials.strip()
            break
    # compare_digest takes time independent of where the bytes differ
    return hmac.compare_digest(presented, expected)


async def _denied(send: Callable[[Any], Awaitable[None]]) -> None:
    body = b'{"error":"missing or invalid bearer token"}'
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="phasewatch"'),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class _AsgiEndpoint:
    """Wraps an ASGI callable so Starlette's ``Route`` hands it the raw scope (a plain
    function would be treated as a request/response endpoint). Used to serve the exporter's
    app at exactly ``/metrics`` (a ``Mount`` would answer only ``/metrics/``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "GroupCommitter",
    "Ingested",
    "ServeApp",
    "check_bind",
    "check_token",
    "create_app",
    "is_loopback",
    "json_safe",
]
