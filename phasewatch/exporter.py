"""Prometheus metrics for phasewatch: a monitor listener that keeps its own registry.

Prometheus scrapes at its own pace (every few seconds) while a trainer may take many steps
in between, so this exporter publishes the *latest* state of each run as gauges and counts
what happened as counters; the full-resolution history lives in phasewatch's SQLite store.

Every metric starts with ``phasewatch_``, is in base units (entropies and NLLs in nats,
fractions as ratios, durations in seconds) and carries only labels from bounded sets:
``run``, ``token_class`` (``all``/``planning``/``execution``), ``detector`` and ``series``
(fixed by the detection configuration), ``kind`` (the event kinds of
:mod:`phasewatch.events`) and ``reason`` (:data:`DROP_REASONS`). The step number is a value,
never a label.

Use it in-process::

    exporter = PrometheusExporter()
    monitor.add_listener(exporter)
    server = exporter.serve(port=9811)      # http://127.0.0.1:9811/metrics (or a free port)
    ...
    server.close()

or mount ``exporter.asgi_app()`` / ``exporter.wsgi_app()`` inside another server
(``phasewatch serve`` does).
"""

from __future__ import annotations

import errno
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import make_wsgi_app, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import RestrictedRegistry

from phasewatch.events import EVENT_KINDS, PHASE_CODES, Observation

log = logging.getLogger(__name__)

#: Port the shipped ``dashboards/prometheus.yml`` scrapes for an in-process trainer.
DEFAULT_METRICS_PORT = 9811

#: ``phasewatch_phase`` carries ``events.PHASE_CODES`` (the dashboard maps them back to names);
#: ``-1`` stands for a phase name this version does not know.
UNKNOWN_PHASE_CODE = -1

#: Why a record can be lost before it reaches the monitor (label ``reason`` of
#: ``phasewatch_records_dropped_total``). Anything else is counted as ``other``.
DROP_REASONS: tuple[str, ...] = ("buffer_full", "send_failed", "invalid", "other")

#: Record field -> token class, for the per-class gauges.
ENTROPY_FIELDS: dict[str, str] = {
    "entropy": "all",
    "entropy/planning": "planning",
    "entropy/execution": "execution",
}
NLL_FIELDS: dict[str, str] = {"nll/planning": "planning", "nll/execution": "execution"}

#: Update-latency buckets (seconds): a monitor update costs from tens of microseconds (online
#: detectors only) to a second or so (a ruptures confirmation on a long window).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP server; :meth:`close` stops it and frees the port."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the socket. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Metric types for which prometheus_client adds a ``<name>_created`` sample to every series.
_TYPES_WITH_CREATED = frozenset({"counter", "histogram", "summary"})


def _without_created(families: Iterable[Metric]) -> Iterator[Metric]:
    """The families with their ``_created`` samples left out (copies; the originals may be
    a collector's own objects)."""
    for family in families:
        if family.type in _TYPES_WITH_CREATED:
            created = family.name + "_created"
            if any(sample.name == created for sample in family.samples):
                trimmed = Metric(family.name, family.documentation, family.type, family.unit)
                trimmed.samples = [sample for sample in family.samples if sample.name != created]
                family = trimmed
        yield family


class _RestrictedWithoutCreated(RestrictedRegistry):
    def collect(self) -> Iterator[Metric]:
        return _without_created(super().collect())


class PhasewatchRegistry(CollectorRegistry):
    """A :class:`~prometheus_client.CollectorRegistry` that exposes no ``*_created`` samples.

    prometheus_client gives every counter and histogram series a ``<name>_created`` sample
    (the time the series was created). Prometheus stores it as one more series per child
    (with 2.x scraping), which roughly doubles ``phasewatch_events_total`` and the
    ``phasewatch_records_*`` counters, and no phasewatch dashboard reads them (``rate()``
    and ``increase()`` handle counter resets without them). prometheus_client can only turn
    them off for the whole process (``disable_created_metrics()``), which would also change
    the metrics of the trainer that hosts phasewatch; this registry leaves them out of its
    own collections only: scrapes, ``generate_latest``, ``get_sample_value`` and filtered
    (``name[]``) scrapes alike.
    """

    def collect(self) -> Iterator[Metric]:
        return _without_created(super().collect())

    def restricted_registry(self, names: Iterable[str]) -> RestrictedRegistry:
        return _RestrictedWithoutCreated(names, self)


def _new_registry() -> CollectorRegistry:
    """phasewatch's registry: no ``_created`` samples (see :class:`PhasewatchRegistry`), and
    collectors without metric names also run on filtered scrapes (``/metrics?name[]=...``),
    so those publish the noted gauges too (where prometheus_client supports that)."""
    try:
        return PhasewatchRegistry(auto_describe=True, support_collectors_without_names=True)
    except TypeError:  # an older prometheus_client: filtered scrapes show the last full one
        return PhasewatchRegistry(auto_describe=True)


class _PendingRun:
    """What the exporter noted for one run since the registry was last collected."""

    __slots__ = ("received_at", "duplicates", "ingested", "latest", "readings", "values")

    def __init__(self) -> None:
        self.received_at = 0.0
        self.duplicates = 0
        self.ingested = 0
        self.latest: Observation | None = None  # the latest new (non-duplicate) observation
        self.readings: dict[tuple[str, str], tuple[float, float]] = {}  # newest per (detector, series)
        self.values: Any = None  # the record of the latest in-order observation


class _PublishPending:
    """A collector without metrics of its own: registered first in the exporter's registry,
    its collection publishes the gauge values noted since the last one, so every
    ``registry.collect()`` (a scrape, ``generate_latest``, ``get_sample_value``) sees them."""

    def __init__(self, exporter: "PrometheusExporter") -> None:
        self._exporter = exporter

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        self._exporter._apply_pending()
        return []


class PrometheusExporter:
    """Monitor listener that turns each :class:`~phasewatch.events.Observation` into metrics.

    Holds its own registry (``self.registry``, a :class:`PhasewatchRegistry`: no ``*_created``
    series), so two exporters (or two tests) never share state. Pass ``registry=`` to use
    your own :class:`~prometheus_client.CollectorRegistry` instead (it then exposes
    ``*_created`` samples as prometheus_client's process-wide setting says). Calling it is cheap and never raises for a
    well-formed observation; the monitor catches and counts listener errors anyway.

    Hooks and clients that lose records before the monitor sees them report it with
    :meth:`record_dropped`, so the dashboard's ingest panel shows the loss.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else _new_registry()
        self._lock = threading.Lock()
        self._runs: set[str] = set()
        # run -> {(metric, labelvalues)} of every child created, so forget_run can remove them
        # (metric, labelvalues) -> child, for every series created; labels() is comparatively slow
        self._series: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._last_event: dict[tuple[str, str], int] = {}
        self._pending: dict[str, _PendingRun] = {}  # run -> gauge state noted since the last collection
        self._apply_lock = threading.Lock()  # one publisher at a time, so an older state never wins
        # registered before every metric, so a collection publishes the noted state first
        self.registry.register(_PublishPending(self))
        r = self.registry
        run, cls = ["run"], ["run", "token_class"]
        det = ["run", "detector", "series"]
        self.step = Gauge("phasewatch_step", "Last training step the monitor observed for the run.", run, registry=r)
        self.token_entropy = Gauge(
            "phasewatch_token_entropy_nats",
            "Mean token entropy of the last step, in nats, over all completion tokens or one token class.",
            cls,
            registry=r,
        )
        self.token_nll = Gauge(
            "phasewatch_token_nll_nats",
            "Mean negative log-likelihood of the last step's tokens of one class, in nats.",
            cls,
            registry=r,
        )
        self.tokens_ratio = Gauge(
            "phasewatch_tokens_ratio",
            "Share of the last step's completion tokens in each class (planning + execution = 1).",
            cls,
            registry=r,
        )
        self.semantic_entropy = Gauge(
            "phasewatch_semantic_entropy_nats",
            "Shannon entropy (nats) of the strategic-gram frequency distribution of the last step.",
            run,
            registry=r,
        )
        self.reward = Gauge("phasewatch_reward", "Mean reward of the last step's rollouts.", run, registry=r)
        self.response_length = Gauge(
            "phasewatch_response_length_tokens", "Mean completion length of the last step, in tokens.", run, registry=r
        )
        self.phase = Gauge(
            "phasewatch_phase",
            "Phase of the run: 0 = warmup, 1 = execution, 2 = planning (shift confirmed), -1 = unknown.",
            run,
            registry=r,
        )
        self.shift_step = Gauge(
            "phasewatch_shift_step",
            "Step at which the execution-to-planning shift was confirmed (absent before).",
            run,
            registry=r,
        )
        self.alpha = Gauge(
            "phasewatch_reweight_alpha",
            "HICRA strength applied at the last step: planning-token advantages become A + alpha*|A|.",
            run,
            registry=r,
        )
        self.detector_statistic = Gauge(
            "phasewatch_detector_statistic",
            "Current statistic of a detector on one series (alarm when it reaches the threshold).",
            det,
            registry=r,
        )
        self.detector_threshold = Gauge(
            "phasewatch_detector_threshold",
            "Alarm threshold of a detector on one series, in the statistic's units.",
            det,
            registry=r,
        )
        self.events = Counter(
            "phasewatch_events",
            "Events raised by the monitor, by kind (phase_shift and the health alarms).",
            ["run", "kind"],
            registry=r,
        )
        self.last_event_step = Gauge(
            "phasewatch_last_event_step",
            "Training step at which the last event of this kind was raised.",
            ["run", "kind"],
            registry=r,
        )
        self.records_ingested = Counter(
            "phasewatch_records_ingested",
            "Step records the monitor processed (new steps only; duplicates are counted apart).",
            run,
            registry=r,
        )
        self.records_duplicate = Counter(
            "phasewatch_records_duplicate",
            "Step records for a step the monitor had already seen (they change nothing).",
            run,
            registry=r,
        )
        self.records_dropped = Counter(
            "phasewatch_records_dropped",
            "Step records lost before reaching the monitor (hook buffer full, send failed, invalid).",
            ["run", "reason"],
            registry=r,
        )
        self.last_record_time = Gauge(
            "phasewatch_last_record_timestamp_seconds",
            "Unix time at which the monitor last received a record for the run.",
            run,
            registry=r,
        )
        self.update_latency = Histogram(
            "phasewatch_update_latency_seconds",
            "Time the monitor took to process one step record (detectors, store, decision).",
            run,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        from phasewatch import __version__

        Info("phasewatch_build", "phasewatch version serving these metrics.", registry=r).info(
            {"version": __version__}
        )

    # -- listener ------------------------------------------------------------------------

    def __call__(self, observation: Observation) -> None:
        """Take in one monitor observation.

        Counters, the latency histogram and events are updated at once; the gauges (the
        latest values of the run) are only noted here and published when the registry is
        collected (a scrape, :meth:`render`, ``get_sample_value``). A scrape every few seconds
        then costs one gauge update per run, not ~40 per record: under ``phasewatch serve``
        load that is most of the exporter's cost. What a scrape shows is exactly what
        updating every gauge on every observation would have shown."""
        run = observation.run
        self._ensure_run(run)
        self._child(self.update_latency, (run,)).observe(max(0.0, float(observation.latency_s)))
        for event in observation.decision.events:
            self._child(self.events, (run, event.kind)).inc()
            with self._lock:
                latest = max(event.step, self._last_event.get((run, event.kind), event.step))
                self._last_event[(run, event.kind)] = latest
            self._set(self.last_event_step, (run, event.kind), latest)
        now = time.time()
        with self._lock:
            pending = self._pending.get(run)
            if pending is None:
                pending = self._pending[run] = _PendingRun()
            pending.received_at = now
            if observation.duplicate:
                pending.duplicates += 1
                return
            pending.ingested += 1
            pending.latest = observation
            readings = pending.readings
            for reading in observation.readings:
                readings[(reading.detector, reading.series)] = (reading.statistic, reading.threshold)
            if observation.record.step >= observation.decision.step:
                pending.values = observation.record
            # else a late record: the gauges keep the later step's values

    def _apply_pending(self) -> None:
        """Publish what :meth:`__call__` noted since the last collection (called first on
        every collection of the registry, and before anything else writes gauges)."""
        with self._apply_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            for run, p in pending.items():
                self._apply_run(run, p)

    def _apply_run(self, run: str, p: "_PendingRun") -> None:
        self._set(self.last_record_time, (run,), p.received_at)
        if p.duplicates:
            self._child(self.records_duplicate, (run,)).inc(p.duplicates)
        if p.ingested:
            self._child(self.records_ingested, (run,)).inc(p.ingested)
        if p.latest is not None:
            record, decision = p.latest.record, p.latest.decision
            self._set(self.step, (run,), max(decision.step, record.step))
            self._set(self.phase, (run,), PHASE_CODES.get(decision.phase, UNKNOWN_PHASE_CODE))
            self._set(self.alpha, (run,), decision.alpha)
            self._set_or_clear(self.shift_step, (run,), decision.shift_step)
        for (detector, series), (statistic, threshold) in p.readings.items():
            key = (run, detector, series)
            self._set(self.detector_statistic, key, statistic)
            self._set(self.detector_threshold, key, threshold)
        record = p.values
        if record is None:
            return
        for name, token_class in ENTROPY_FIELDS.items():
            self._set_or_clear(self.token_entropy, (run, token_class), record.get(name))
        for name, token_class in NLL_FIELDS.items():
            self._set_or_clear(self.token_nll, (run, token_class), record.get(name))
        frac = record.get("planning_frac")
        self._set_or_clear(self.tokens_ratio, (run, "planning"), frac)
        self._set_or_clear(self.tokens_ratio, (run, "execution"), None if frac is None else 1.0 - frac)
        self._set_or_clear(self.semantic_entropy, (run,), record.get("semantic_entropy"))
        self._set_or_clear(self.reward, (run,), record.get("reward"))
        self._set_or_clear(self.response_length, (run,), record.get("response_length"))

    def restore_from(self, monitor: Any, runs: list[str] | None = None) -> int:
        """Publish the current state of runs a monitor already holds (e.g. ``phasewatch serve``
        restarted on an existing store, which does not re-announce old runs to listeners).

        Sets the last step, phase, alpha, shift step and detector readings, and starts each
        event counter at the number of events in the run's history, so ``increase()`` sees no
        spurious jump across the restart. Per-step values (entropies...) appear with the next
        record. Reading a restored run makes the monitor rebuild its detector from the store,
        so call this off the request path. Returns the number of runs published.
        """
        self._apply_pending()
        published = 0
        for run in monitor.runs() if runs is None else runs:
            decision = monitor.decision(run)
            self._ensure_run(run)
            self._set(self.step, (run,), decision.step)
            self._set(self.phase, (run,), PHASE_CODES.get(decision.phase, UNKNOWN_PHASE_CODE))
            self._set(self.alpha, (run,), decision.alpha)
            self._set_or_clear(self.shift_step, (run,), decision.shift_step)
            for reading in monitor.readings(run):
                key = (run, reading.detector, reading.series)
                self._set(self.detector_statistic, key, reading.statistic)
                self._set(self.detector_threshold, key, reading.threshold)
            counts: dict[str, int] = {}
            for event in monitor.events(run):
                counts[event.kind] = counts.get(event.kind, 0) + 1
                with self._lock:
                    latest = max(event.step, self._last_event.get((run, event.kind), event.step))
                    self._last_event[(run, event.kind)] = latest
                self._set(self.last_event_step, (run, event.kind), latest)
            for kind, n in counts.items():
                current = self.registry.get_sample_value("phasewatch_events_total", {"run": run, "kind": kind}) or 0
                if n > current:
                    self._child(self.events, (run, kind)).inc(n - current)
            published += 1
        return published

    def record_dropped(self, run: str, count: int = 1, reason: str = "buffer_full") -> None:
        """Count ``count`` records of ``run`` lost before the monitor saw them.

        For hooks and clients: call it when a bounded buffer overflows (``buffer_full``), a
        send finally fails (``send_failed``) or a record is rejected (``invalid``). Unknown
        reasons are counted as ``other`` so the label set stays bounded.
        """
        if count <= 0:
            return
        self._ensure_run(run)
        self._child(self.records_dropped, (run, reason if reason in DROP_REASONS else "other")).inc(count)

    def forget_run(self, run: str) -> None:
        """Remove every series of ``run`` (for long-lived servers that retire old runs)."""
        with self._apply_lock, self._lock:
            self._pending.pop(run, None)
            self._runs.discard(run)
            children = [key for key in self._series if key[1][0] == run]
            for key in children:
                del self._series[key]
            self._last_event = {k: v for k, v in self._last_event.items() if k[0] != run}
        for metric, labelvalues in children:
            metric.remove(*labelvalues)

    def runs(self) -> list[str]:
        """Runs that currently have series in this exporter."""
        with self._lock:
            return sorted(self._runs)

    # -- exposition ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The current metrics in Prometheus text format."""
        return generate_latest(self.registry)

    def wsgi_app(self) -> Callable:
        """A WSGI app serving this exporter's registry (any path; mount it at ``/metrics``)."""
        return make_wsgi_app(self.registry)

    def asgi_app(self) -> Callable:
        """An ASGI app serving this exporter's registry (for Starlette ``Mount('/metrics', ...)``)."""
        from prometheus_client import make_asgi_app

        return make_asgi_app(self.registry)

    def serve(
        self, port: int | None = DEFAULT_METRICS_PORT, host: str = "127.0.0.1", *, announce: bool = True
    ) -> MetricsServer:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread.

        ``port=0`` or ``None`` picks a free port. When ``port`` is taken, a free port is used
        instead (a second trainer on the same machine must not crash because the first holds
        the port). Bind to loopback unless Prometheus runs elsewhere: the metrics carry run
        names.

        Where the metrics are is said exactly once: a taken port as a warning of the
        ``phasewatch.exporter`` logger (Python prints warnings to stderr when logging is not
        configured); a free port picked for ``port=0`` on stderr when ``announce`` (else at
        INFO); the requested port at INFO. Callers should not repeat it.
        """
        requested = 0 if port is None else int(port)
        if not 0 <= requested <= 65535:
            raise ValueError(f"port: expected 0..65535, got {port!r}")
        try:
            server, thread = start_http_server(requested, addr=host, registry=self.registry)
        except OSError as exc:
            if requested == 0 or exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            server, thread = start_http_server(0, addr=host, registry=self.registry)
            bound = MetricsServer(host, int(server.server_port), server, thread)
            log.warning("phasewatch: port %d is taken; serving Prometheus metrics at %s", requested, bound.url)
            return bound
        bound = MetricsServer(host, int(server.server_port), server, thread)
        if announce and requested == 0:
            print(f"phasewatch: serving Prometheus metrics at {bound.url}", file=sys.stderr, flush=True)
        else:
            log.info("phasewatch: serving Prometheus metrics at %s", bound.url)
        return bound

    # -- internals -----------------------------------------------------------------------

    def _ensure_run(self, run: str) -> None:
        """Create a run's counters at zero on first sight, so ``increase()`` sees the first event."""
        if run in self._runs:  # the common case, without the lock (the locked check decides)
            return
        with self._lock:
            if run in self._runs:
                return
            self._runs.add(run)
        for kind in EVENT_KINDS:
            self._child(self.events, (run, kind))
        for reason in DROP_REASONS:
            self._child(self.records_dropped, (run, reason))
        for metric in (self.records_ingested, self.records_duplicate, self.update_latency):
            self._child(metric, (run,))

    def _child(self, metric: Any, labelvalues: tuple[str, ...]) -> Any:
        """The series of ``metric`` with these label values, created (and remembered) on first use."""
        key = (metric, labelvalues)
        child = self._series.get(key)
        if child is None:
            with self._lock:
                child = self._series.get(key)
                if child is None:
                    child = metric.labels(*labelvalues)
                    self._series[key] = child
        return child

    def _set(self, metric: Gauge, labelvalues: tuple[str, ...], value: float) -> None:
        self._child(metric, labelvalues).set(float(value))

    def _set_or_clear(self, metric: Gauge, labelvalues: tuple[str, ...], value: float | None) -> None:
        """Set the gauge, or remove the series when this step lacks the value (a gap, not a stale number)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            with self._lock:
                present = self._series.pop((metric, labelvalues), None) is not None
            if present:
                metric.remove(*labelvalues)
        else:
            self._set(metric, labelvalues, value)


def metric_names(exporter: PrometheusExporter | None = None) -> frozenset[str]:
    """Every sample name the exporter can emit (``_total``, ``_bucket``... included).

    The dashboard tests check each query against this set, so a renamed metric cannot leave
    a silently empty panel behind.
    """
    exporter = exporter or PrometheusExporter()
    created = () if isinstance(exporter.registry, PhasewatchRegistry) else ("_created",)
    names: set[str] = set()
    for family in exporter.registry.collect():
        base = family.name
        if family.type == "counter":
            names.update(base + s for s in ("_total", *created))
        elif family.type == "histogram":
            names.update(base + s for s in ("_bucket", "_count", "_sum", *created))
        elif family.type == "info":
            names.add(base + "_info")
        else:
            names.add(base)
    return frozenset(names)

