"""The monitor: step records in, decisions out, one state per run.

``Monitor.observe(run, step, record)`` is the single entry point of every source (in-process
hooks, ``phasewatch serve``, ``phasewatch replay``). Per run it keeps a
:class:`~phasewatch.detect.RunDetector`, the run's events and its reweighting schedule, and
answers with a :class:`~phasewatch.events.Decision` (phase, alpha, new events).

Everything a decision depends on is the ordered record history plus the run's schedule, so:

- **Restore = replay.** Reopening a store feeds the stored records, in step order, through a
  fresh detector. The detector is deterministic, so its state (and every event) comes back
  exactly as if the process had never stopped. Events found again on restore were already
  announced: they are not sent to listeners a second time. Restoring is lazy (on a run's
  first use), so opening a store with many runs is instant.
- **Duplicates** (a retried request): a step already stored changes nothing; the current
  decision comes back and listeners see ``Observation(duplicate=True)``. The first record
  stored for a step wins.
- **Late records** (a step below the last one processed, e.g. a retry that overtook a newer
  step): the record is stored and the run's detector is rebuilt from the ordered history,
  so the outcome equals what an in-order feed would have produced. Events that the in-order
  history raises and that had not been announced are announced now; events that no longer
  follow from the history are dropped from the store (and logged). The rebuild starts from
  the newest pickled detector snapshot taken before the late step (one every
  ``snapshot_every`` records), so it replays a few hundred records, not the whole run;
  only a record older than every snapshot replays from step 0.
- **Alpha** is ``schedule.alpha_at(step, shift_step, pause_step)``, computed in one place
  (:meth:`Monitor._decide`) and handed to everyone (trainer, server, exporter) through the
  same Decision. A severe health alarm (by default ``entropy_explosion``) pauses reweighting;
  see :class:`~phasewatch.reweight.ReweightSchedule`.

Listeners (exporters, annotators) run on their own threads after the state update: a slow
listener only lets its own queue grow (bounded; overflow is dropped and counted), a broken
one has its exceptions caught, counted and logged once. Neither ever reaches ``observe``.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
from collections import deque
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from phasewatch.config import validate_run_id
from phasewatch.events import WARMUP, Decision, DetectorReading, Event, Observation
from phasewatch.record import StepRecord
from phasewatch.reweight import ReweightSchedule
from phasewatch.store import Store, _json_default

log = logging.getLogger("phasewatch.monitor")

Listener = Callable[[Observation], None]


def _event_key(event: Event) -> str:
    """Events are compared by value (their detail dicts make them unhashable), in the JSON
    form the store keeps, so an event read back from the store equals the one raised."""
    return json.dumps(event.to_json(), sort_keys=True, default=_json_default)


def coerce_record(step: int | None, record: Any) -> StepRecord:
    """Turn what a caller handed ``observe`` into a StepRecord for ``step``.

    Accepts a :class:`StepRecord`, a flat mapping (``{"entropy/planning": 0.6, ...}``) or
    anything with ``to_record(step)`` (``StepStats``). A step given twice must agree.
    """
    if isinstance(record, StepRecord):
        if step is not None and record.step != step:
            raise ValueError(f"step: observe() got step {step} but the record is for step {record.step}")
        return record
    if isinstance(record, Mapping):
        inner = record.get("step")
        if step is None:
            return StepRecord.from_flat(record)
        if inner is not None:
            parsed = StepRecord.from_flat({"step": inner}).step
            if parsed != step:
                raise ValueError(f"step: observe() got step {step} but the record says step {inner!r}")
        return StepRecord.from_flat(record, step=step)
    to_record = getattr(record, "to_record", None)
    if callable(to_record):
        if step is None:
            raise ValueError("step: required when observing a StepStats")
        out = to_record(step)
        if not isinstance(out, StepRecord):
            raise ValueError(f"record: to_record() returned {type(out).__name__}, not a StepRecord")
        return out
    raise ValueError(
        "record: expected a StepRecord, a mapping of field -> number, or an object with"
        f" to_record(step); got {type(record).__name__}"
    )


def coerce_schedule(schedule: Any) -> ReweightSchedule:
    if isinstance(schedule, ReweightSchedule):
        return schedule
    if isinstance(schedule, Mapping):
        return ReweightSchedule.from_json(schedule)
    if isinstance(schedule, str):
        return ReweightSchedule(mode=schedule)
    raise ValueError(
        f"schedule: expected a ReweightSchedule, its JSON form or a mode name, got {type(schedule).__name__}"
    )


@dataclass(frozen=True)
class _Snapshot:
    """The detector, pickled, right after ``step``; ``n_events`` events had been raised.

    A late record rebuilds from the newest snapshot before it instead of from step 0, so its
    cost is bounded by the snapshot spacing, not by the length of the run."""

    step: int
    n_events: int
    blob: bytes


@dataclass
class _RunState:
    """Everything the monitor holds for one run. Guarded by ``lock``."""

    run: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    detector: Any = None  # None = not restored yet (or invalidated by a failure)
    steps: set[int] = field(default_factory=set)
    last_step: int | None = None
    events: list[Event] = field(default_factory=list)
    last_event_step: dict[str, int] = field(default_factory=dict)
    schedule: ReweightSchedule | None = None  # None = the monitor's default
    records: dict[int, StepRecord] = field(default_factory=dict)  # in-memory mode only
    decision: Decision = field(default_factory=lambda: Decision(step=0))
    snapshots: list[_Snapshot] = field(default_factory=list)  # oldest first
    since_snapshot: int = 0

    def note_events(self, events: Iterable[Event]) -> None:
        for e in events:
            self.events.append(e)
            if e.step >= self.last_event_step.get(e.kind, -1):
                self.last_event_step[e.kind] = e.step


class _ListenerWorker:
    """One listener on its own daemon thread behind a bounded queue.

    Observations are handed over in batches (one lock round and at most one thread wake-up
    per ingest call, however many records it carried) and the thread takes everything queued
    at once: under load, the hand-over costs about a microsecond per observation."""

    def __init__(self, fn: Listener, maxsize: int) -> None:
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or repr(fn)
        self.errors = 0
        self.dropped = 0
        self._logged_error = False
        self._logged_drop = False
        self._maxsize = maxsize
        self._items: deque[Observation] = deque()
        self._unfinished = 0  # queued or being handled
        self._stopping = False
        lock = threading.Lock()
        self._has_work = threading.Condition(lock)
        self._all_done = threading.Condition(lock)
        self._thread = threading.Thread(
            target=self._loop, name=f"phasewatch-listener-{self.name}", daemon=True
        )
        self._thread.start()

    def submit_many(self, observations: Sequence[Observation]) -> None:
        """Queue observations in order; what does not fit in the bound is dropped (counted)."""
        with self._has_work:
            room = self._maxsize - len(self._items)
            accepted = observations if len(observations) <= room else observations[: max(0, room)]
            if accepted:
                self._items.extend(accepted)
                self._unfinished += len(accepted)
                self._has_work.notify()
        lost = len(observations) - len(accepted)
        if lost:
            self.dropped += lost
            if not self._logged_drop:
                self._logged_drop = True
                log.warning(
                    "phasewatch listener %s is too slow: its queue is full, observations are"
                    " being dropped (counted in Monitor.listener_dropped; logged once)",
                    self.name,
                )

    def _loop(self) -> None:
        while True:
            with self._has_work:
                while not self._items and not self._stopping:
                    self._has_work.wait()
                if not self._items:
                    return  # stopping, and everything queued before stop() was handled
                batch, self._items = self._items, deque()
            for item in batch:
                try:
                    self.fn(item)
                except Exception:  # a listener must never take the monitor down
                    self.errors += 1
                    if not self._logged_error:
                        self._logged_error = True
                        log.exception(
                            "phasewatch listener %s raised; the error is counted in"
                            " Monitor.listener_errors and not logged again",
                            self.name,
                        )
            with self._all_done:
                self._unfinished -= len(batch)
                if not self._unfinished:
                    self._all_done.notify_all()

    def flush(self, deadline: float) -> bool:
        with self._all_done:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._all_done.wait(left)
        return True

    def stop(self, deadline: float) -> None:
        """Let the thread finish what is queued, then end (up to ``deadline``; it is a
        daemon thread, so one stuck in a listener dies with the process)."""
        with self._has_work:
            self._stopping = True
            self._has_work.notify()
        self._thread.join(max(0.0, deadline - time.monotonic()))


class Monitor:
    """Per-run phase detection, decisions and listeners, optionally backed by a store.

    store: ``None`` (memory only), a path (opened, and closed by :meth:`close`) or a
        :class:`Store` (left open).
    detection: a ``phasewatch.detect.DetectionConfig`` for every run's detector.
    schedule: the default :class:`ReweightSchedule` (or its JSON form, or a mode name) for
        runs that did not set their own.
    listeners: callables receiving each :class:`Observation`.
    listener_queue: per-listener queue bound; a listener that falls this far behind loses
        observations (counted) instead of slowing ``observe``.
    snapshot_every / snapshots_kept: keep a pickled copy of each run's detector every
        ``snapshot_every`` records (the last ``snapshots_kept`` of them), so a late record
        replays at most about ``snapshot_every`` records, not the whole run (0 disables).

    Thread-safe: runs are independent (one lock each); the store serialises its writes.
    """

    def __init__(
        self,
        store: Store | str | Path | None = None,
        *,
        detection: Any = None,
        schedule: ReweightSchedule | Mapping[str, Any] | str | None = None,
        listeners: Iterable[Listener] = (),
        listener_queue: int = 10_000,
        snapshot_every: int = 256,
        snapshots_kept: int = 4,
    ) -> None:
        if isinstance(store, (str, Path)):
            self.store: Store | None = Store(store)
            self._owns_store = True
        elif store is None or isinstance(store, Store):
            self.store = store
            self._owns_store = False
        else:
            raise ValueError(f"store: expected a Store, a path or None, got {type(store).__name__}")
        if self.store is not None and self.store.readonly:
            raise ValueError(f"store: {self.store.path} is open read-only; the monitor writes to it")
        self.detection = detection
        self.default_schedule = ReweightSchedule() if schedule is None else coerce_schedule(schedule)
        if isinstance(listener_queue, bool) or not isinstance(listener_queue, int) or listener_queue < 1:
            raise ValueError(f"listener_queue: expected a positive integer, got {listener_queue!r}")
        self._listener_queue = listener_queue
        for name, value in (("snapshot_every", snapshot_every), ("snapshots_kept", snapshots_kept)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
        self.snapshot_every = snapshot_every
        self.snapshots_kept = max(1, snapshots_kept)
        self._lock = threading.Lock()
        self._runs: dict[str, _RunState] = {}
        self._listeners: list[_ListenerWorker] = []
        self._closed = False
        self._readings_failed = False
        if self.store is not None:
            for run in self.store.runs():
                self._runs[run] = _RunState(run=run)
        self._detector_cls: Any = None
        for fn in listeners:
            self.add_listener(fn)

    # -- runs ------------------------------------------------------------------------------

    def _new_detector(self) -> Any:
        if self._detector_cls is None:
            from phasewatch.detect import RunDetector

            self._detector_cls = RunDetector
        return self._detector_cls(self.detection)

    def _state(self, run: str, *, create: bool) -> _RunState:
        state = self._runs.get(run)
        if state is not None:
            return state
        validate_run_id(run)
        if not create:
            raise KeyError(f"unknown run {run!r}")
        with self._lock:
            state = self._runs.get(run)
            if state is None:
                state = _RunState(run=run)
                self._runs[run] = state
        return state

    def _restore(self, state: _RunState) -> None:
        """(Re)build a run's detector from its ordered history. Called with the run locked."""
        detector = self._new_detector()
        state.snapshots = []
        state.since_snapshot = 0
        state.events = []
        state.last_event_step = {}
        if self.store is not None:
            history: Iterable[StepRecord] = self.store.iter_records(state.run)
        else:
            history = (state.records[s] for s in sorted(state.records))
        steps: list[int] = []
        for rec in history:
            state.note_events(detector.update(rec))
            steps.append(rec.step)
            state.last_step = rec.step
            self._maybe_snapshot(state, detector)
        if self.store is not None:
            stored = self.store.events(state.run)
            if [_event_key(e) for e in stored] != [_event_key(e) for e in state.events]:
                log.warning(
                    "run %s: the stored events differ from those the current detection settings"
                    " derive from the stored records (%d stored, %d derived); keeping the derived ones",
                    state.run, len(stored), len(state.events),
                )
                self.store.replace_events(state.run, state.events)
            raw = self.store.schedule(state.run)
            state.schedule = None if raw is None else ReweightSchedule.from_json(raw)
        state.detector = detector
        state.steps = set(steps)
        state.last_step = steps[-1] if steps else None
        state.decision = self._decide(state, ())

    def _maybe_snapshot(self, state: _RunState, detector: Any) -> None:
        """Every ``snapshot_every`` in-order records, keep a pickled copy of the detector."""
        if not self.snapshot_every:
            return
        state.since_snapshot += 1
        if state.since_snapshot < self.snapshot_every:
            return
        state.since_snapshot = 0
        try:
            blob = pickle.dumps(detector, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a detector that cannot be pickled: rebuild from step 0 instead
            self.snapshot_every = 0
            log.warning("phasewatch: the detector cannot be pickled; late records rebuild from the start")
            return
        state.snapshots.append(_Snapshot(state.last_step, len(state.events), blob))
        del state.snapshots[: -self.snapshots_kept]

    def _ready(self, state: _RunState) -> _RunState:
        if state.detector is None:
            self._restore(state)
        return state

    def _readings(self, state: _RunState) -> tuple[DetectorReading, ...]:
        """Readings are for dashboards only: a failure here must not fail the observe."""
        if state.detector is None:
            return ()
        try:
            return tuple(state.detector.readings())
        except Exception:
            if not self._readings_failed:
                self._readings_failed = True
                log.exception("phasewatch: detector readings failed; listeners get none (logged once)")
            return ()

    def _decide(self, state: _RunState, new_events: Iterable[Event]) -> Decision:
        """The one place alpha is computed: a function of the run's history and schedule."""
        schedule = state.schedule or self.default_schedule
        step = 0 if state.last_step is None else state.last_step
        detector = state.detector
        shift_step = None if detector is None else detector.shift_step
        phase = WARMUP if detector is None else detector.phase
        pause_steps = [state.last_event_step[k] for k in schedule.pause_on if k in state.last_event_step]
        pause_step = max(pause_steps) if pause_steps else None
        alpha = schedule.alpha_at(step, shift_step, pause_step)
        return Decision(step=step, phase=phase, alpha=alpha, shift_step=shift_step, events=tuple(new_events))

    # -- ingest ----------------------------------------------------------------------------

    def observe(
        self,
        run: str,
        step: int | None,
        record: StepRecord | Mapping[str, Any] | Any,
        *,
        schedule: ReweightSchedule | Mapping[str, Any] | str | None = None,
    ) -> Decision:
        """Ingest one step record of ``run``; return the decision after it.

        Durable before it returns when the monitor has a store. ``schedule``, when given,
        becomes the run's schedule (as :meth:`configure_run`). Raises ``ValueError`` for a
        bad run id or record; listener problems never surface here.
        """
        started = time.perf_counter()
        if self._closed:
            raise ValueError("monitor: closed")
        validate_run_id(run)
        rec = coerce_record(step, record)
        return self._observe(run, [rec], schedule, started)[0]

    def observe_many(
        self,
        run: str,
        records: Iterable[StepRecord | Mapping[str, Any]],
        *,
        schedule: ReweightSchedule | Mapping[str, Any] | str | None = None,
    ) -> list[Decision]:
        """Ingest several records of one run (each carrying its step) in one go.

        Same outcome as calling :meth:`observe` for each, in the given order (duplicates and
        late steps included), but the new records are committed to the store in one
        transaction: one fsync for the batch instead of one per record. That is what lets
        ``phasewatch serve`` keep up when a trainer's client sends what it had buffered.
        The whole batch is validated before anything is ingested. On a storage error nothing
        of the batch stays in the monitor or the store (except records before a late one,
        which are committed first so the late record can be placed among them).
        """
        started = time.perf_counter()
        if self._closed:
            raise ValueError("monitor: closed")
        validate_run_id(run)
        recs = _coerce_records(records)
        if not recs:
            return []
        return self._observe(run, recs, schedule, started)

    def _observe(
        self, run: str, recs: list[StepRecord], schedule: Any, started: float
    ) -> list[Decision]:
        new_schedule = None if schedule is None else coerce_schedule(schedule)
        state = self._state(run, create=True)
        with state.lock:
            self._ready(state)
            if new_schedule is not None and new_schedule != state.schedule:
                self._set_schedule_locked(state, new_schedule)
            with_readings = bool(self._listeners)
            results = self._ingest_locked(state, recs, with_readings)
            if with_readings:
                # queued under the run lock so every listener sees a run's steps in order
                self._notify(self._observations(run, results, time.perf_counter() - started))
        return [decision for _, decision, _, _ in results]

    @staticmethod
    def _observations(run: str, results: list, latency: float) -> list[Observation]:
        return [
            Observation(run=run, record=rec, decision=decision, readings=readings,
                        duplicate=duplicate, latency_s=latency)
            for rec, decision, duplicate, readings in results
        ]

    def _notify(self, observations: list[Observation]) -> None:
        if observations:
            for worker in list(self._listeners):
                worker.submit_many(observations)

    def observe_batches(
        self, batches: Sequence[tuple[str, Iterable[StepRecord | Mapping[str, Any]]]]
    ) -> list[list[Decision] | Exception]:
        """Ingest the records of several requests, of any runs, with one store commit.

        ``batches`` is a sequence of ``(run, records)``; each is ingested exactly as
        ``observe_many(run, records)`` would be, in the given order, but everything new from
        all of them is committed in one transaction (one fsync), before this returns. This
        is the group commit of ``phasewatch serve``: while one commit is being fsynced, the
        requests that arrive queue up and become the next group, so the disk is no longer
        the limit on records per second, and each request is still acknowledged only once
        its records are durable.

        Returns one entry per batch, in order: its decisions, or the exception that refused
        it (bad run id or record, or a failure while ingesting it), which leaves nothing of
        that batch behind and does not affect the other batches. A failure of the commit
        itself (disk full, store closed) is raised: nothing of the call is kept, and every
        run involved is rebuilt from the store on its next use.

        Listeners see the observations only after the commit, in order. Detector readings
        (what dashboards draw) are attached to the last new observation of each run in the
        call, i.e. the state after the whole call; the run's other observations of the call
        carry none (readings cost tens of microseconds per computation; a listener that keeps
        the latest value per detector, as the Prometheus exporter does, shows the same).
        """
        if self._closed:
            raise ValueError("monitor: closed")
        results: list[list[Decision] | Exception] = [[] for _ in batches]
        prepared: list[tuple[int, str, list[StepRecord]]] = []
        for index, (run, records) in enumerate(batches):
            try:
                validate_run_id(run)
                recs = _coerce_records(records)
            except ValueError as exc:
                results[index] = exc
                continue
            if recs:
                prepared.append((index, run, recs))
        if not prepared:
            return results
        states = {run: self._state(run, create=True) for _, run, _ in prepared}
        observations: list[Observation] = []
        last_new: dict[str, int] = {}  # run -> its last new observation in `observations`
        with ExitStack() as locks:
            # every run lock before the store's write lock, in one global order: a thread in
            # observe() holds one run lock and then waits for the write lock, never the reverse
            for run in sorted(states):
                locks.enter_context(states[run].lock)
            with_readings = bool(self._listeners)
            unrestorable: dict[str, Exception] = {}
            for run, state in states.items():  # a restore replays history: not inside the write transaction
                try:
                    self._ready(state)
                except Exception as exc:  # noqa: BLE001 - refuse this run's batches only
                    unrestorable[run] = exc
            try:
                with self.store.transaction() if self.store is not None else nullcontext():
                    for index, run, recs in prepared:
                        state = states[run]
                        batch_started = time.perf_counter()
                        try:
                            if run in unrestorable:
                                raise unrestorable[run]
                            self._ready(state)
                            done = self._ingest_locked(state, recs, False)
                        except Exception as exc:  # noqa: BLE001 - refuse this batch only
                            results[index] = exc
                            if self.store is not None:
                                # the failed run restores from the store on its next use,
                                # perhaps later in this call: it must see what came before
                                self.store.commit_pending()
                            continue
                        results[index] = [decision for _, decision, _, _ in done]
                        if with_readings:
                            for observation in self._observations(run, done, time.perf_counter() - batch_started):
                                if not observation.duplicate:
                                    last_new[run] = len(observations)
                                observations.append(observation)
            except BaseException:
                for state in states.values():
                    state.detector = None  # rebuild from what is stored on next use
                raise
            for run, i in last_new.items():
                observations[i] = replace(observations[i], readings=self._readings(states[run]))
            self._notify(observations)
        return results

    def _ingest_locked(
        self, state: _RunState, recs: list[StepRecord], with_readings: bool
    ) -> list[tuple[StepRecord, Decision, bool, tuple[DetectorReading, ...]]]:
        """Apply records to a ready run; new in-order records are written in one transaction
        at the end. Any failure leaves the run to be rebuilt from what is stored."""
        out = []
        pending: list[tuple[StepRecord, list[Event]]] = []
        try:
            for rec in recs:
                duplicate = rec.step in state.steps
                if duplicate:
                    decision = replace(state.decision, events=())
                elif state.last_step is None or rec.step > state.last_step:
                    new_events = list(state.detector.update(rec))
                    if self.store is None:
                        state.records[rec.step] = rec
                    else:
                        pending.append((rec, new_events))
                    state.steps.add(rec.step)
                    state.last_step = rec.step
                    state.note_events(new_events)
                    self._maybe_snapshot(state, state.detector)
                    decision = state.decision = self._decide(state, new_events)
                else:
                    self._flush(state, pending)
                    decision = self._ingest_late(state, rec)
                out.append((rec, decision, duplicate, self._readings(state) if with_readings else ()))
            self._flush(state, pending)
        except BaseException:
            state.detector = None  # half-applied: rebuild from the stored history on next use
            raise
        return out

    def _flush(self, state: _RunState, pending: list[tuple[StepRecord, list[Event]]]) -> None:
        if pending and self.store is not None:
            self.store.append_many(state.run, pending)
        pending.clear()

    def _ingest_late(self, state: _RunState, rec: StepRecord) -> Decision:
        base = next((snap for snap in reversed(state.snapshots) if snap.step < rec.step), None)
        log.info(
            "run %s: late record for step %d (last step %s): replaying from %s",
            state.run, rec.step, state.last_step, "the start" if base is None else f"step {base.step}",
        )
        if base is None:
            detector = self._new_detector()
            events: list[Event] = []
        else:
            detector = pickle.loads(base.blob)
            events = state.events[: base.n_events]
        for r in self._history_with(state, rec, after=None if base is None else base.step):
            events.extend(detector.update(r))
        if self.store is not None:
            self.store.append(state.run, rec, events, replace_events=True)
        else:
            state.records[rec.step] = rec
        announced = {_event_key(e) for e in state.events}
        derived = {_event_key(e) for e in events}
        new_events = [e for e in events if _event_key(e) not in announced]
        withdrawn = [e for e in state.events if _event_key(e) not in derived]
        if withdrawn:
            log.warning(
                "run %s: late step %d changed the history; %d earlier event(s) no longer follow"
                " from it and were removed: %s",
                state.run, rec.step, len(withdrawn), [(e.kind, e.step) for e in withdrawn],
            )
        state.detector = detector
        state.steps.add(rec.step)
        state.snapshots = [snap for snap in state.snapshots if snap.step < rec.step]
        state.events = []
        state.last_event_step = {}
        state.note_events(events)
        state.decision = self._decide(state, new_events)
        return state.decision

    def _history_with(self, state: _RunState, late: StepRecord, after: int | None) -> Iterator[StepRecord]:
        """The run's records with step > ``after``, in step order, ``late`` in its place."""
        inserted = False
        source: Iterable[StepRecord]
        start = None if after is None else after + 1
        if self.store is not None:
            source = self.store.iter_records(state.run, start=start)
        else:
            source = (state.records[s] for s in sorted(state.records) if start is None or s >= start)
        for r in source:
            if not inserted and r.step > late.step:
                inserted = True
                yield late
            yield r
        if not inserted:
            yield late

    # -- schedules -------------------------------------------------------------------------

    def _set_schedule_locked(self, state: _RunState, schedule: ReweightSchedule | None) -> None:
        if self.store is not None:
            self.store.set_schedule(state.run, None if schedule is None else schedule.to_json())
        state.schedule = schedule
        state.decision = self._decide(state, ())

    def configure_run(
        self, run: str, schedule: ReweightSchedule | Mapping[str, Any] | str | None
    ) -> Decision:
        """Set (``None``: reset to the monitor default) the run's reweighting schedule; it is
        persisted, so a restart keeps it. Creates the run if needed. Returns the decision under
        the new schedule."""
        validate_run_id(run)
        new = None if schedule is None else coerce_schedule(schedule)
        state = self._state(run, create=True)
        with state.lock:
            self._ready(state)
            self._set_schedule_locked(state, new)
            return state.decision

    #: the name the HTTP server uses
    set_schedule = configure_run

    def schedule(self, run: str) -> ReweightSchedule:
        """The schedule in force for ``run`` (its own, or the monitor default)."""
        state = self._state(run, create=False)
        with state.lock:
            self._ready(state)
            return state.schedule or self.default_schedule

    # -- queries ---------------------------------------------------------------------------

    def runs(self) -> list[str]:
        """Known run ids, in the order they were first seen."""
        with self._lock:
            return list(self._runs)

    def decision(self, run: str) -> Decision:
        """The run's current decision (``events`` = those raised by its latest new step).
        Raises ``KeyError`` for an unknown run."""
        state = self._state(run, create=False)
        with state.lock:
            return self._ready(state).decision

    def events(self, run: str) -> list[Event]:
        """All events of the run, in the order they were raised."""
        state = self._state(run, create=False)
        with state.lock:
            return list(self._ready(state).events)

    def readings(self, run: str) -> tuple[DetectorReading, ...]:
        state = self._state(run, create=False)
        with state.lock:
            return self._readings(self._ready(state))

    def records(self, run: str, start: int | None = None, end: int | None = None) -> list[StepRecord]:
        """The run's records with ``start <= step < end``, by ascending step."""
        state = self._state(run, create=False)
        if self.store is not None:
            return self.store.records(run, start, end)
        with state.lock:
            steps = sorted(s for s in state.records if (start is None or s >= start) and (end is None or s < end))
            return [state.records[s] for s in steps]

    def summary(self, run: str) -> dict[str, Any]:
        """A JSON-ready overview of one run (for ``GET /v1/runs/{run}`` and reports)."""
        state = self._state(run, create=False)
        with state.lock:
            self._ready(state)
            return {
                "run": run,
                "records": len(state.steps),
                "first_step": min(state.steps) if state.steps else None,
                "last_step": state.last_step,
                "decision": state.decision.to_json(),
                "events": len(state.events),
                "schedule": (state.schedule or self.default_schedule).to_json(),
            }

    # -- listeners -------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(observation)`` after every observe, on a thread of its own."""
        if not callable(fn):
            raise ValueError(f"listener: expected a callable, got {type(fn).__name__}")
        worker = _ListenerWorker(fn, self._listener_queue)
        with self._lock:
            self._listeners = self._listeners + [worker]

    def remove_listener(self, fn: Listener, timeout: float = 5.0) -> None:
        with self._lock:
            # == rather than `is`: a bound method (``seen.append``) is a new object each time
            keep = [w for w in self._listeners if w.fn != fn]
            gone = [w for w in self._listeners if w.fn == fn]
            self._listeners = keep
        deadline = time.monotonic() + timeout
        for worker in gone:
            worker.stop(deadline)

    @property
    def listener_errors(self) -> int:
        """Exceptions raised by listeners so far (each was caught)."""
        return sum(w.errors for w in self._listeners)

    @property
    def listener_dropped(self) -> int:
        """Observations dropped because a listener's queue was full."""
        return sum(w.dropped for w in self._listeners)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every listener has handled everything queued so far; ``False`` on
        timeout. For tests, shutdown and reports; training never needs it."""
        deadline = time.monotonic() + timeout
        return all(w.flush(deadline) for w in list(self._listeners))

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Deliver queued observations (up to ``timeout``), stop listener threads, and close
        the store if the monitor opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        for worker in self._listeners:
            worker.flush(deadline)
        for worker in self._listeners:
            worker.stop(deadline)
        self._listeners = []
        if self.store is not None and self._owns_store:
            self.store.close()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _coerce_records(records: Iterable[Any]) -> list[StepRecord]:
    """Records of one request as ``StepRecord``s; a bad one is a ValueError naming its index."""
    recs = []
    for i, record in enumerate(records):
        try:
            recs.append(coerce_record(None, record))
        except ValueError as exc:
            raise ValueError(f"record {i}: {exc}") from None
    return recs
