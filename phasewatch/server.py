"""``phasewatch serve``: the monitor as an HTTP service for many runs.

Any trainer or script, in any language, posts step records and reads back the decision::

    POST /v1/runs/{run}/steps     one record or a JSON array of records -> the run's decision
    PUT  /v1/runs/{run}           {"schedule": {...}}: the run's HICRA schedule
    GET  /v1/runs                 the runs, with their phase and alpha
    GET  /v1/runs/{run}           one run: records stored, last step, phase, alpha, events
    GET  /v1/runs/{run}/records   stored records (?start=&end=&limit=)
    GET  /v1/schema               the JSON Schema of the request bodies
    GET  /metrics                 Prometheus (the exporter's registry plus HTTP metrics)
    GET  /healthz                 liveness; never needs the token

Design choices, and why:

- **Acknowledged means durable.** A POST is answered after :meth:`Monitor.observe` returned
  for every record of it, and observe returns after the SQLite commit. Ingest is idempotent
  by (run, step), so a client may retry anything it has no answer for.
- **Validate before touching the store.** The whole body is decoded and checked against
  :mod:`phasewatch.schema` first; a rejected request changes nothing and gets a 4xx whose
  JSON names the field. Bodies over ``max_body_bytes`` are refused from the
  ``Content-Length`` header, or as soon as the streamed body passes the limit, without
  buffering the rest.
- **The event loop never waits on SQLite.** Ingest and reads run in worker threads (the
  Monitor is thread-safe: one lock per run, one writer lock in the store), so ``/healthz``
  and ``/metrics`` answer while a commit is being fsynced.
- **Bearer token, constant time, never echoed.** With a token, every route but
  ``/healthz`` requires ``Authorization: Bearer <token>``, compared with
  :func:`hmac.compare_digest`. Binding a non-loopback address without a token is refused
  (:func:`check_bind`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import sqlite3
import time
from typing import Any, Awaitable, Callable, Mapping

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


def create_app(
    monitor: Any,
    token: str | None = None,
    *,
    exporter: Any = None,
    metrics: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = MAX_BATCH,
    worker_threads: int = 4,
) -> ASGIApp:
    """The ASGI app of ``phasewatch serve`` around ``monitor``.

    token: when set, required as ``Authorization: Bearer <token>`` on every route except
        ``/healthz``.
    exporter: a :class:`~phasewatch.exporter.PrometheusExporter` already listening to the
        monitor; by default (``metrics=True``) one is created and added as a listener.
    max_body_bytes: larger request bodies get 413 before they are read.
    worker_threads: threads that call into the monitor (SQLite commits release the GIL, so a
        few threads overlap one run's fsync with another's parsing); ``0`` calls the monitor on
        the event loop itself (lowest overhead, but the loop waits for every commit).
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
    inline = int(worker_threads) == 0
    limiter = anyio.CapacityLimiter(max(1, int(worker_threads)))
    if metrics and exporter is None:
        from phasewatch.exporter import PrometheusExporter

        exporter = PrometheusExporter()
        monitor.add_listener(exporter)
    http_metrics = _HttpMetrics(exporter.registry) if exporter is not None else None
    expected = None if token is None else token.encode("ascii")
    client_dropped: dict[str, int] = {}  # run -> last cumulative count a client reported
    observe_many = getattr(monitor, "observe_many", None)

    def respond(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        body = json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False, default=str)
        return Response(body, status_code=status, media_type="application/json", headers=dict(headers or {}))

    def error(status: int, message: str, field: str | None = None) -> Response:
        data: dict[str, Any] = {"error": message}
        if field is not None:
            data["field"] = field
        return respond(data, status)

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        if inline:
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise PayloadError("Content-Length", f"not an integer: {declared[:40]!r}", status=400) from None
            if size > max_body_bytes:
                raise _BodyTooLarge()
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body_bytes:
                raise _BodyTooLarge()
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request) -> Any:
        return decode_json(await read_body(request))

    def known_run(run: str) -> str | None:
        validate_run(run)
        return run if run in set(monitor.runs()) else None

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
        run = validate_run(request.path_params["run"])
        body = await read_json(request)
        records = parser.parse_steps(body, run).records

        def ingest() -> list[Decision]:
            if observe_many is not None:  # one transaction (one fsync) for the whole request
                return list(observe_many(run, list(records)))
            return [monitor.observe(run, record.step, record) for record in records]

        decisions = await in_thread(ingest)
        note_client_dropped(run, request.headers.get(DROPPED_HEADER))
        decision = _decision_with(decisions)
        return respond({"run": run, "received": len(records), "decision": decision.to_json()})

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
            except PayloadError as exc:
                response = error(exc.status, str(exc), exc.field)
            except _BodyTooLarge:
                response = error(413, f"request body larger than {max_body_bytes} bytes")
            except (sqlite3.Error, OSError, StoreError) as exc:  # disk full, store gone: retry later
                log.error("phasewatch serve: %s %s: store unavailable (%s)", request.method, route, exc)
                response = error(503, f"store unavailable: {type(exc).__name__}")
            except ValueError as exc:
                if str(exc).startswith(("store:", "monitor:")):  # closed store or monitor
                    log.error("phasewatch serve: %s %s: %s", request.method, route, exc)
                    response = error(503, f"monitor unavailable: {exc}")
                else:  # the monitor refused a record that passed the schema
                    response = error(422, str(exc))
            except KeyError as exc:
                response = error(404, str(exc.args[0]) if exc.args else "not found")
            except Exception as exc:  # noqa: BLE001 - a bug: answer 500, keep serving
                log.exception("phasewatch serve: %s %s failed", request.method, route)
                response = error(500, f"internal error: {type(exc).__name__}")
            if http_metrics is not None:
                http_metrics.requests.labels(route, request.method, str(response.status_code)).inc()
                http_metrics.duration.labels(route).observe(time.perf_counter() - started)
            return response

        return handle

    routes = [
        Route("/healthz", guarded("/healthz", healthz), methods=["GET"]),
        Route("/v1/schema", guarded("/v1/schema", schema), methods=["GET"]),
        Route("/v1/runs", guarded("/v1/runs", list_runs), methods=["GET"]),
        Route("/v1/runs/{run}", guarded("/v1/runs/{run}", get_run), methods=["GET"]),
        Route("/v1/runs/{run}", guarded("/v1/runs/{run}", put_run), methods=["PUT"]),
        Route("/v1/runs/{run}/steps", guarded("/v1/runs/{run}/steps", post_steps), methods=["POST"]),
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

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.monitor = monitor
    app.state.exporter = exporter
    return _auth(app, expected) if expected is not None else app


class _AsgiEndpoint:
    """Wraps an ASGI callable so Starlette's ``Route`` hands it the raw scope (a plain
    function would be treated as a request/response endpoint). Used to serve the exporter's
    app at exactly ``/metrics`` (a ``Mount`` would answer only ``/metrics/``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _auth(app: ASGIApp, expected: bytes) -> ASGIApp:
    """Require ``Authorization: Bearer <token>`` on every HTTP route except ``/healthz``."""

    async def denied(send: Callable[[Any], Awaitable[None]]) -> None:
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

    async def authenticated(scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz":
            await app(scope, receive, send)
            return
        presented = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
                break
        # compare_digest takes time independent of where the bytes differ
        if not hmac.compare_digest(presented, expected):
            await denied(send)
            return
        await app(scope, receive, send)

    return authenticated


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "check_bind",
    "check_token",
    "create_app",
    "is_loopback",
    "json_safe",
]
