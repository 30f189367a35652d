"""Hand step records from a trainer to a monitor without ever holding up a training step.

Two clients share one interface, so the hooks have a single code path:

- :class:`MonitorClient` talks HTTP to ``phasewatch serve``. ``submit`` only appends to a
  bounded in-memory buffer; a background thread sends batches, retries with exponential
  backoff while the server is away, replays the buffer when it returns, and counts what it
  had to drop when the buffer overflowed. The trainer keeps applying the last decision it
  received in the meantime.
- :class:`InProcessClient` wraps a local :class:`~phasewatch.monitor.Monitor`: by default it
  observes synchronously (the decision for a step is available at once), or, with
  ``background=True``, through the same buffer and sender thread as the HTTP client.

Both expose ``submit(record)``, ``decision``, ``dropped``, ``counters()``, ``flush(timeout)``
and ``close(timeout)``; :func:`client_for` builds the right one from a
:class:`~phasewatch.config.Config`. Failures are logged once per kind and counted; nothing
here raises into the training loop after construction.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from phasewatch.config import validate_run_id
from phasewatch.events import WARMUP, Decision
from phasewatch.record import StepRecord

log = logging.getLogger("phasewatch.client")

#: Longest response body the client reads (a decision is a few hundred bytes).
_MAX_RESPONSE_BYTES = 1 << 20
#: Request header carrying the client's cumulative dropped-record count (see server.py).
DROPPED_HEADER = "Phasewatch-Client-Dropped"


@dataclass(frozen=True)
class ClientCounters:
    """A snapshot of what a client did with the records it was given.

    Every submitted record ends in exactly one of ``sent``, ``rejected`` or ``dropped``, or
    is still ``pending`` (buffered, or in a request not yet answered).
    """

    submitted: int = 0  # records handed to submit()
    sent: int = 0  # acknowledged by the monitor (stored, or already stored: idempotent)
    rejected: int = 0  # refused as invalid (by submit() or by the server with a 4xx)
    dropped: int = 0  # lost: buffer overflow, submitted after close, or unsent when close() gave up
    pending: int = 0  # buffered or in flight
    failed_attempts: int = 0  # sends that failed and were retried
    in_flight: int = 0  # 1 while the sender is inside a network call, else 0
    connected: bool = False  # the last send attempt reached the monitor


class MonitorUnavailable(Exception):
    """The monitor could not be reached or answered 5xx/408/429: retry later."""


class ServerFailed(MonitorUnavailable):
    """HTTP 500: the server hit a bug on this batch. Retried a few times, then given up on,
    so one poisonous batch cannot hold back every record behind it."""


class RecordsRejected(Exception):
    """The monitor refused the records (4xx): retrying the same bytes cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class BatchTooLarge(RecordsRejected):
    """HTTP 413: the batch exceeds the server's size limit; send smaller batches."""


class Transport(Protocol):
    """Where a sender delivers batches. ``send`` returns the decision after the batch."""

    def send(self, records: list[StepRecord]) -> Decision | None: ...

    def close(self) -> None: ...


def _coerce_schedule(schedule: Any) -> Any:
    if schedule is None:
        return None
    from phasewatch.reweight import ReweightSchedule

    if isinstance(schedule, ReweightSchedule):
        return schedule
    if isinstance(schedule, Mapping):
        return ReweightSchedule.from_json(schedule)
    raise ValueError(f"schedule: expected a ReweightSchedule or a mapping, got {type(schedule).__name__}")


def initial_decision(schedule: Any) -> Decision:
    """What a client reports before the monitor has answered: no shift yet, so the alpha the
    schedule gives without one (``always`` mode applies alpha from step 0)."""
    alpha = 0.0 if schedule is None else float(schedule.alpha_at(0, None))
    return Decision(step=-1, phase=WARMUP, alpha=alpha, shift_step=None, events=())


def _to_record(record: Any, step: int | None) -> StepRecord:
    """Accept what the hooks have: a StepRecord, a flat mapping, or a StepStats plus its step."""
    if isinstance(record, StepRecord):
        return record
    if isinstance(record, Mapping):
        return StepRecord.from_flat(record, step=step)
    to_record = getattr(record, "to_record", None)
    if callable(to_record):
        if step is None:
            raise ValueError(f"submit: a {type(record).__name__} needs step=...")
        out = to_record(step)
        if not isinstance(out, StepRecord):
            raise ValueError(f"submit: {type(record).__name__}.to_record() did not return a StepRecord")
        return out
    raise ValueError(f"submit: expected a StepRecord, a mapping or a StepStats, got {type(record).__name__}")


class _OnceLogger:
    """Log each kind of trouble once (a training loop would otherwise drown in warnings)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, kind: str, level: int, message: str, *args: Any) -> None:
        with self._lock:
            if kind in self._seen:
                return
            self._seen.add(kind)
        log.log(level, message, *args)

    def reset(self, kind: str) -> None:
        with self._lock:
            self._seen.discard(kind)


def record_payload(record: StepRecord) -> dict[str, Any]:
    """The flat JSON form of a record as posted to the server. Non-finite field values are
    sent as JSON ``Infinity``/``-Infinity`` literals, which the server accepts (an exploding
    entropy is information); ``stats`` sums are always finite."""
    return record.to_json()


class HttpTransport:
    """POSTs batches to ``{url}/v1/runs/{run}/steps`` over one kept-alive connection.

    Before the first batch, and again after any failure (the server may have restarted),
    it PUTs the run's schedule so the alpha the server computes is the one this trainer
    asked for.
    """

    def __init__(self, url: str, run: str, token: str | None = None, *, schedule: Any = None,
                 timeout_s: float = 10.0, max_request_bytes: int = 4 * 1024 * 1024) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected http://host:port or https://host:port, got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"url: must not carry a query or fragment, got {url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self.run = validate_run_id(run)
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "phasewatch-client",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.schedule = schedule
        self.timeout_s = float(timeout_s)
        self.max_request_bytes = int(max_request_bytes)
        self._conn: http.client.HTTPConnection | None = None
        self._configured = schedule is None
        #: returns the client's cumulative dropped count, reported to the server in a header
        #: so the loss shows on the server's dashboard
        self.dropped_count: Callable[[], int] | None = None
        self.url = f"{parts.scheme}://{parts.netloc}{self._base}"  # no credentials kept in repr

    def __repr__(self) -> str:
        return f"HttpTransport(url={self.url!r}, run={self.run!r})"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken socket must not raise
                pass
            self._conn = None

    def request(self, method: str, path: str, body: Any = None,
                extra_headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """One request; a stale kept-alive connection is retried once on a fresh one (safe:
        every call here is idempotent). Raises :class:`MonitorUnavailable` when unreachable,
        and :class:`BatchTooLarge` without sending when the body exceeds
        ``max_request_bytes`` (a server refusing a large body may reset the connection
        before its 413 can be read, which would look like an outage and be retried forever)."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        if data is not None and len(data) > self.max_request_bytes:
            raise BatchTooLarge(413, f"request of {len(data)} bytes exceeds max_request_bytes={self.max_request_bytes}")
        headers = self._headers if not extra_headers else {**self._headers, **extra_headers}
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, self._base + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read(_MAX_RESPONSE_BYTES + 1)
                status = response.status
                if response.will_close or len(raw) > _MAX_RESPONSE_BYTES:
                    self._drop_connection()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if reused and attempt == 0:
                    continue
                self._configured = self.schedule is None
                raise MonitorUnavailable(f"{type(exc).__name__}: {exc}") from None
            try:
                payload = json.loads(raw.decode("utf-8")) if raw else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                payload = None
            return status, payload
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, status: int, payload: Any) -> Any:
        if 200 <= status < 300:
            return payload
        message = payload.get("error", "") if isinstance(payload, Mapping) else ""
        if status >= 500 or status in (408, 429):
            self._configured = self.schedule is None
            if status == 500:
                raise ServerFailed(f"HTTP 500 {message}".strip())
            raise MonitorUnavailable(f"HTTP {status} {message}".strip())
        if status == 413:
            raise BatchTooLarge(status, message or "request too large")
        raise RecordsRejected(status, message or "rejected")

    def configure(self) -> None:
        if self._configured:
            return
        status, payload = self.request("PUT", f"/v1/runs/{self.run}", {"schedule": self.schedule.to_json()})
        self._check(status, payload)
        self._configured = True

    def send(self, records: list[StepRecord]) -> Decision | None:
        self.configure()
        body = [record_payload(r) for r in records]
        headers = None if self.dropped_count is None else {DROPPED_HEADER: str(self.dropped_count())}
        status, payload = self.request("POST", f"/v1/runs/{self.run}/steps", body, headers)
        payload = self._check(status, payload)
        if isinstance(payload, Mapping) and isinstance(payload.get("decision"), Mapping):
            try:
                return Decision.from_json(payload["decision"])
            except (KeyError, TypeError, ValueError):
                return None
        return None

    def close(self) -> None:
        self._drop_connection()


class MonitorTransport:
    """Delivers batches to a local Monitor (for :class:`InProcessClient` in background mode)."""

    def __init__(self, monitor: Any, run: str, *, schedule: Any = None) -> None:
        self.monitor = monitor
        self.run = validate_run_id(run)
        if schedule is not None:
            apply_schedule(monitor, self.run, schedule)

    def send(self, records: list[StepRecord]) -> Decision | None:
        observe_many = getattr(self.monitor, "observe_many", None)
        if observe_many is not None and len(records) > 1:  # one transaction for the batch
            decisions = list(observe_many(self.run, records))
            return decisions[-1] if decisions else None
        decision = None
        for record in records:
            decision = self.monitor.observe(self.run, record.step, record)
        return decision

    def close(self) -> None:
        pass


def apply_schedule(monitor: Any, run: str, schedule: Any) -> None:
    """Set a run's schedule on a Monitor (the one place that knows the Monitor's method)."""
    monitor.set_schedule(run, schedule)


class _Sender:
    """The bounded buffer and the background thread that drains it into a transport.

    Locking: ``_lock`` guards the buffer and the counters and is only ever held for a few
    list operations, never across a network call, so ``submit`` cannot wait on the network.
    """

    def __init__(self, transport: Transport, *, max_buffer: int, max_batch: int,
                 backoff_initial_s: float, backoff_max_s: float, name: str,
                 decision: Decision, describe: str, linger_s: float = 0.0) -> None:
        if int(max_buffer) < 1:
            raise ValueError(f"max_buffer: must be >= 1, got {max_buffer!r}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch!r}")
        if not (0 < float(backoff_initial_s) <= float(backoff_max_s)):
            raise ValueError("backoff: need 0 < backoff_initial_s <= backoff_max_s")
        if not float(linger_s) >= 0:
            raise ValueError(f"linger_s: must be >= 0, got {linger_s!r}")
        self.linger_s = float(linger_s)
        self._flushing = 0  # callers waiting in flush(): send without lingering
        self.transport = transport
        self.max_buffer = int(max_buffer)
        self.max_batch = int(max_batch)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._describe = describe
        self.max_server_failures = 5
        self._buffer: deque[StepRecord] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()  # set when there is work or when closing
        self._idle = threading.Condition(self._lock)  # notified when nothing is pending
        self._in_hand = 0  # records taken from the buffer and not yet settled
        self._closing = False
        self._abandon = False
        self._unsent_at_close = 0  # records close() could not deliver
        self._counts = {"submitted": 0, "sent": 0, "rejected": 0, "dropped": 0, "failed_attempts": 0}
        self._in_flight = 0
        self._connected = False
        self._rng = random.Random()
        self._once = _OnceLogger()
        self.decision = decision
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- trainer side ---------------------------------------------------------------------
    def submit(self, record: StepRecord) -> None:
        with self._lock:
            self._counts["submitted"] += 1
            if self._closing:
                self._counts["dropped"] += 1
                overflow = None
                closed = True
            else:
                closed = False
                overflow = self._buffer.popleft() if len(self._buffer) >= self.max_buffer else None
                if overflow is not None:
                    self._counts["dropped"] += 1
                self._buffer.append(record)
        if closed:
            self._once("closed", logging.WARNING, "phasewatch: record submitted after close(); dropped")
            return
        if overflow is not None:
            self._once(
                "overflow", logging.WARNING,
                "phasewatch: %s is not keeping up; buffer of %d records full, dropping the oldest "
                "(counted in client.dropped)", self._describe, self.max_buffer,
            )
        self._wakeup.set()

    def dropped_so_far(self) -> int:
        return self._counts["dropped"]

    def reject(self) -> None:
        with self._lock:
            self._counts["submitted"] += 1
            self._counts["rejected"] += 1

    def counters(self) -> ClientCounters:
        with self._lock:
            return ClientCounters(
                pending=len(self._buffer) + self._in_hand,
                in_flight=self._in_flight,
                connected=self._connected,
                **self._counts,
            )

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything submitted so far is settled (sent, rejected or dropped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
        self._wakeup.set()
        try:
            with self._lock:
                while self._buffer or self._in_hand:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._idle.wait(remaining if remaining is None else min(remaining, 0.5))
                return True
        finally:
            with self._lock:
                self._flushing -= 1

    def close(self, timeout: float | None) -> bool:
        """Deliver what is buffered, for up to ``timeout`` s, then stop. Returns at once
        (after one more attempt) when the monitor cannot be reached: waiting out the timeout
        would hold up the trainer's exit for nothing. True when everything was delivered."""
        with self._lock:
            self._closing = True
        self._wakeup.set()  # a sender sleeping in backoff retries now, once
        self._thread.join(timeout)
        if not self._thread.is_alive():
            with self._lock:
                return not self._buffer and not self._in_hand and not self._unsent_at_close
        with self._lock:  # timed out: the sender is inside a request (e.g. a server that never answers)
            self._abandon = True
            in_hand = self._in_hand
            lost = len(self._buffer)
            self._buffer.clear()
            self._counts["dropped"] += lost
            self._idle.notify_all()
        self._wakeup.set()
        log.warning("phasewatch: %s did not answer within close()'s %s s; %d buffered records dropped"
                    "%s (counted in client.dropped)", self._describe, timeout, lost,
                    f", {in_hand} more in an unanswered request" if in_hand else "")
        return False

    # -- sender thread --------------------------------------------------------------------
    def _take(self) -> list[StepRecord]:
        with self._lock:
            count = min(self.max_batch, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            self._in_hand = count
            return batch

    def _settle(self, batch: list[StepRecord], outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += len(batch)
            self._in_hand = 0
            if not self._buffer:
                self._idle.notify_all()

    def _sleep(self, seconds: float) -> None:
        """Back off, waking early when close() is called (to flush) or gives up."""
        end = time.monotonic() + seconds
        while not self._abandon:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            if self._wakeup.wait(remaining) and (self._closing or self._abandon):
                self._wakeup.clear()
                return
            self._wakeup.clear()

    def _linger(self) -> None:
        """Pace requests: after a send, wait up to ``linger_s`` for more records, so a fast
        loop sends one request per interval instead of one per step (each request costs the
        trainer's process some CPU). Cut short by a full batch, flush() or close()."""
        deadline = time.monotonic() + self.linger_s
        while True:
            with self._lock:
                if len(self._buffer) >= self.max_batch or self._flushing or self._closing or self._abandon:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.wait(remaining)
            self._wakeup.clear()

    def _next_batch(self) -> list[StepRecord]:
        """Wait for records; ``[]`` once closing with nothing left."""
        while True:
            self._wakeup.clear()
            batch = self._take()
            if batch or self._closing or self._abandon:
                return batch
            self._wakeup.wait(1.0)

    def _run(self) -> None:
        batch: list[StepRecord] = []
        delay = self.backoff_initial_s
        server_failures = 0  # consecutive HTTP 500s on the batch in hand
        while True:
            if not batch:
                batch = self._next_batch()
                server_failures = 0
                if not batch:
                    break
            if self._abandon:
                self._settle(batch, "dropped")
                break
            with self._lock:
                self._in_flight = 1
            try:
                decision = self.transport.send(batch)
            except BatchTooLarge:
                self._mark(connected=True)
                batch = self._split_or_reject(batch)
            except RecordsRejected as exc:
                self._mark(connected=True)
                self._once(f"rejected{exc.status}", logging.ERROR,
                           "phasewatch: %s rejected %d records (%s); they are dropped and counted in "
                           "client.counters().rejected", self._describe, len(batch), exc)
                self._settle(batch, "rejected")
                batch = []
            except Exception as exc:  # noqa: BLE001 - unreachable, or a server bug: retry later
                failed_on_server = isinstance(exc, ServerFailed)
                self._mark(connected=failed_on_server, failed=True)
                server_failures = server_failures + 1 if failed_on_server else 0
                if self._closing and not failed_on_server:
                    # close() is waiting and the monitor cannot be reached: retrying for the
                    # rest of close()'s timeout would only hold up the trainer's exit
                    self._give_up(batch, exc)
                    break
                if server_failures >= self.max_server_failures:
                    self._once("server_failed", logging.ERROR,
                               "phasewatch: %s failed %d times on the same %d records (%s); they are "
                               "dropped and counted in client.counters().rejected", self._describe,
                               server_failures, len(batch), exc)
                    self._settle(batch, "rejected")
                    batch = []
                    continue
                self._once("unavailable", logging.WARNING,
                           "phasewatch: %s unavailable (%s); buffering up to %d records and retrying "
                           "with backoff; training continues with the last decision",
                           self._describe, exc, self.max_buffer)
                self._sleep(delay * (0.5 + 0.5 * self._rng.random()))
                delay = min(self.backoff_max_s, delay * 2)
            else:
                was_down = self._mark(connected=True)
                if decision is not None:
                    self.decision = decision
                self._settle(batch, "sent")
                if was_down:
                    self._once.reset("unavailable")
                    log.info("phasewatch: %s reachable again; sending buffered records", self._describe)
                batch = []
                delay = self.backoff_initial_s
                if self.linger_s > 0:
                    self._linger()
        try:
            self.transport.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
        with self._lock:
            self._idle.notify_all()

    def _give_up(self, batch: list[StepRecord], exc: BaseException) -> None:
        """At close, with the monitor unreachable: count the batch in hand and everything
        buffered as dropped, say so once, and let close() return at once."""
        with self._lock:
            announced = self._abandon  # close() already gave up on its timeout and said so
            self._abandon = True
            lost = len(batch) + len(self._buffer)
            self._buffer.clear()
            self._counts["dropped"] += lost
            self._in_hand = 0
            self._unsent_at_close += lost
            self._idle.notify_all()
        if not announced:
            log.warning("phasewatch: %s unavailable at close (%s); %d unsent records dropped (counted in "
                        "client.dropped)", self._describe, exc, lost)

    def _mark(self, *, connected: bool, failed: bool = False) -> bool:
        """Record the outcome of a network call; True when it ends an outage."""
        with self._lock:
            self._in_flight = 0
            was_down = not self._connected and self._counts["failed_attempts"] > 0
            self._connected = connected
            if failed:
                self._counts["failed_attempts"] += 1
            return was_down and connected

    def _split_or_reject(self, batch: list[StepRecord]) -> list[StepRecord]:
        """HTTP 413: send smaller batches from now on; a single record that is too large is
        rejected (it can never fit)."""
        if len(batch) == 1:
            self._once("too_large", logging.ERROR,
                       "phasewatch: %s refused a single record as too large; dropped", self._describe)
            self._settle(batch, "rejected")
            return []
        half = len(batch) // 2
        self.max_batch = max(1, half)
        with self._lock:  # the second half goes back to the front of the buffer, in order
            self._buffer.extendleft(reversed(batch[half:]))
            self._in_hand = half
        return batch[:half]


class _ClientBase:
    """The shared surface of both clients (see the module docstring)."""

    run: str
    _sender: _Sender

    def submit(self, record: Any, *, step: int | None = None) -> None:
        """Queue one step's record; returns at once and never raises. ``record`` is a
        :class:`StepRecord`, a flat mapping, or a ``StepStats`` together with ``step=``."""
        try:
            converted = _to_record(record, step)
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop training
            self._sender.reject()
            self._sender._once("bad_record", logging.ERROR,
                               "phasewatch: could not use a submitted record (%s); counted as rejected", exc)
            return
        self._sender.submit(converted)

    @property
    def decision(self) -> Decision:
        """The latest decision the monitor returned (kept while the monitor is away)."""
        return self._sender.decision

    @property
    def dropped(self) -> int:
        """Records lost (buffer overflow, or unsent when close() gave up)."""
        return self.counters().dropped

    def counters(self) -> ClientCounters:
        return self._sender.counters()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait up to ``timeout`` s until every record submitted so far is settled."""
        return self._sender.flush(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Send what is buffered (for up to ``timeout`` s) and stop. Returns True when
        nothing was left unsent; what was left is counted in ``dropped``. A monitor that
        cannot be reached is tried once more and then given up on at once (close() does not
        wait out ``timeout`` for it); to wait for a monitor that is restarting, call
        :meth:`flush` with a timeout first."""
        return self._sender.close(timeout)

    def __enter__(self) -> "_ClientBase":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MonitorClient(_ClientBase):
    """Stream a run's step records to ``phasewatch serve`` at ``url``.

    ``schedule`` (a :class:`~phasewatch.reweight.ReweightSchedule` or its JSON) is sent to
    the server for this run, so the alpha in every decision follows the trainer's own
    settings. ``max_buffer`` bounds memory while the server is away (oldest records are
    dropped first, and counted); ``max_batch`` caps records per request and
    ``max_request_bytes`` its size (match the server's ``--max-body-bytes``); ``linger_s`` is the
    least time between two requests while records trickle in (a training step usually takes
    longer, so each step's record still goes out at once; a fast loop is batched instead).
    """

    def __init__(self, url: str, run: str, token: str | None = None, *, schedule: Any = None,
                 max_buffer: int = 10_000, max_batch: int = 256, timeout_s: float = 10.0,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 5.0, linger_s: float = 0.1,
                 max_request_bytes: int = 4 * 1024 * 1024) -> None:
        self.run = validate_run_id(run)
        self.schedule = _coerce_schedule(schedule)
        self.transport = HttpTransport(url, self.run, token, schedule=self.schedule, timeout_s=timeout_s,
                                       max_request_bytes=max_request_bytes)
        self.url = self.transport.url
        self._sender = _Sender(
            self.transport, max_buffer=max_buffer, max_batch=max_batch,
            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
            name=f"phasewatch-client-{self.run}", decision=initial_decision(self.schedule),
            describe=f"monitor {self.url}", linger_s=linger_s,
        )
        self.transport.dropped_count = self._sender.dropped_so_far

    def __repr__(self) -> str:
        return f"MonitorClient(url={self.url!r}, run={self.run!r})"


class InProcessClient(_ClientBase):
    """The same interface over a local Monitor.

    Synchronous by default: ``submit`` observes the record before returning, so
    ``decision`` is the decision for that very step (the monitor's work is in-memory
    detection plus one SQLite commit). ``background=True`` moves that work to a sender
    thread with a bounded buffer, exactly like :class:`MonitorClient`.
    """

    def __init__(self, monitor: Any, run: str, *, schedule: Any = None, background: bool = False,
                 max_buffer: int = 10_000, max_batch: int = 256, close_monitor: bool = False) -> None:
        self.run = validate_run_id(run)
        self.monitor = monitor
        self.schedule = _coerce_schedule(schedule)
        self.background = bool(background)
        self._close_monitor = close_monitor
        self.transport = MonitorTransport(monitor, self.run, schedule=self.schedule)
        decision = initial_decision(self.schedule)
        if self.background:
            self._sender = _Sender(
                self.transport, max_buffer=max_buffer, max_batch=max_batch,
                backoff_initial_s=0.05, backoff_max_s=1.0, name=f"phasewatch-monitor-{self.run}",
                decision=decision, describe="in-process monitor",
            )
        else:
            self._sender = _SyncSender(self.transport, decision)

    def close(self, timeout: float | None = 10.0) -> bool:
        done = super().close(timeout)
        if self._close_monitor:
            closer: Callable[[], Any] | None = getattr(self.monitor, "close", None)
            if closer is not None:
                closer()
        return done


class _SyncSender:
    """``_Sender``'s interface, observing on the caller's thread (InProcessClient default)."""

    def __init__(self, transport: MonitorTransport, decision: Decision) -> None:
        self.transport = transport
        self.decision = decision
        self._once = _OnceLogger()
        self._counts = {"submitted": 0, "sent": 0, "rejected": 0, "dropped": 0, "failed_attempts": 0}
        self._closed = False

    def submit(self, record: StepRecord) -> None:
        self._counts["submitted"] += 1
        if self._closed:
            self._counts["dropped"] += 1
            self._once("closed", logging.WARNING, "phasewatch: record submitted after close(); dropped")
            return
        try:
            decision = self.transport.send([record])
        except ValueError as exc:
            if str(exc).startswith(("store:", "monitor:")):  # the monitor's state, not the record
                self._fail(exc)
                return
            self._counts["rejected"] += 1
            self._once("rejected", logging.ERROR, "phasewatch: the monitor rejected a record (%s)", exc)
            return
        except Exception as exc:  # noqa: BLE001 - the monitor must not crash training
            self._fail(exc)
            return
        self._counts["sent"] += 1
        if decision is not None:
            self.decision = decision

    def _fail(self, exc: Exception) -> None:
        self._counts["dropped"] += 1
        self._counts["failed_attempts"] += 1
        self._once("failed", logging.ERROR, "phasewatch: the monitor failed on a record (%s: %s); "
                   "dropped and counted", type(exc).__name__, exc)

    def reject(self) -> None:
        self._counts["submitted"] += 1
        self._counts["rejected"] += 1

    def counters(self) -> ClientCounters:
        return ClientCounters(connected=True, **self._counts)

    def flush(self, timeout: float | None) -> bool:
        return True

    def close(self, timeout: float | None) -> bool:
        self._closed = True
        return True


def client_for(config: Any, *, monitor: Any = None) -> _ClientBase:
    """The client a :class:`~phasewatch.config.Config` asks for.

    ``config.monitor`` is ``None`` (a new in-process Monitor on ``config.store``), a Monitor
    object (shared, in-process) or the URL of ``phasewatch serve``. ``monitor=`` overrides
    ``config.monitor``. The schedule always comes from the config's reweight settings.
    """
    from phasewatch.reweight import ReweightSchedule

    schedule = ReweightSchedule.from_config(config)
    target = config.monitor if monitor is None else monitor
    if isinstance(target, str):
        return MonitorClient(target, config.run, config.server_token, schedule=schedule)
    if target is None:
        from phasewatch.monitor import Monitor

        return InProcessClient(Monitor(store=config.store), config.run, schedule=schedule, close_monitor=True)
    return InProcessClient(target, config.run, schedule=schedule)


__all__ = [
    "ClientCounters",
    "HttpTransport",
    "InProcessClient",
    "MonitorClient",
    "MonitorTransport",
    "MonitorUnavailable",
    "RecordsRejected",
    "client_for",
    "initial_decision",
]
