"""The SQLite store: every step record and every event of every run, on disk.

Why SQLite: it is in the standard library, a single file a user can copy or open with any
SQLite tool, and in WAL mode readers (a dashboard GET, ``phasewatch replay``) never block
the writer. The store is the monitor's memory: reopening it restores the monitor exactly,
because detection is a deterministic function of the stored records (see ``monitor.py``).

Durability: :meth:`Store.append` commits before it returns. With ``synchronous="full"``
(the default) the commit is fsynced, so an acknowledged record survives a power cut; with
``"normal"`` it survives a crash of the process but the last commits may be lost if the
machine itself goes down (SQLite's documented WAL behaviour). ``benchmarks/bench_monitor.py``
measures what each costs. :meth:`Store.transaction` groups many writes into one commit (one
fsync): ``phasewatch serve`` commits the records of all concurrent requests together.

Schema (version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``; the file is tagged
with ``PRAGMA application_id`` so a foreign database is refused rather than written to):

- ``runs(run, created_at, schedule)``: one row per run; ``schedule`` is the run's
  :class:`~phasewatch.reweight.ReweightSchedule` as JSON, or NULL for the monitor default.
- ``records(run, step, received_at, "values", stats)``: one row per (run, step).
- ``events(run, seq, kind, step, onset, series, detector, statistic, threshold, detail)``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from phasewatch.config import validate_run_id
from phasewatch.events import Event
from phasewatch.record import StepRecord

SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a phasewatch store ("PhWt").
APPLICATION_ID = 0x50685774
SYNCHRONOUS_MODES = ("full", "normal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    schedule TEXT
);
CREATE TABLE IF NOT EXISTS records (
    run TEXT NOT NULL,
    step INTEGER NOT NULL,
    received_at REAL NOT NULL,
    "values" TEXT NOT NULL,
    stats TEXT,
    PRIMARY KEY (run, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    onset INTEGER NOT NULL,
    series TEXT NOT NULL,
    detector TEXT NOT NULL,
    statistic REAL,
    threshold REAL,
    detail TEXT NOT NULL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
"""


def _json_default(value: Any) -> Any:
    """numpy scalars and tuples appear in event details; store them as plain JSON."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _record_json(record: StepRecord) -> tuple[str, str | None]:
    """The record's values and stats as JSON text; a clear error if they cannot be."""
    try:
        values = _dumps(dict(record.values))
        stats = None if record.stats is None else _dumps(dict(record.stats))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"step {record.step}: the record cannot be stored as JSON ({exc})") from None
    return values, stats


def _real(value: float) -> float | None:
    """SQLite turns NaN into NULL anyway; be explicit so reading it back is symmetric."""
    return None if value is None or math.isnan(value) else float(value)


class StoreError(ValueError):
    """The file is not a phasewatch store, or one this version cannot read."""


class Store:
    """Records and events per run in one SQLite file (WAL mode, one writer).

    path: the database file; created (with its directory) when missing.
    synchronous: ``"full"`` (fsync every commit: durable across power loss) or
        ``"normal"`` (durable across a process crash only; faster).
    readonly: open without writing anything (``phasewatch replay`` of a store).

    Thread-safe: writes go through one lock and one connection; reads use a second
    connection, so a long read (a dashboard fetching a whole run) does not hold up the writer.
    """

    def __init__(
        self, path: str | Path, *, synchronous: str = "full", readonly: bool = False
    ) -> None:
        if str(path) == ":memory:" or str(path) == "":
            raise ValueError(
                "store: needs a file path; for a monitor without persistence pass store=None"
            )
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous: expected one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.readonly = readonly
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._known_runs: set[str] = set()
        self._closed = False
        self._tx_depth = 0  # > 0 while transaction() is open (on the thread holding the write lock)
        self._tx_runs: set[str] = set()  # runs first written inside the open transaction
        self._tx_lost: BaseException | None = None  # why SQLite rolled the open transaction back
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"store: {self.path} does not exist")
            self._writer = None
            self._reader = self._connect(readonly=True)
            self._check_schema(self._reader, create=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect(readonly=False)
            self._check_schema(self._writer, create=True)
            self._reader = self._connect(readonly=False)
        self._known_runs.update(self.runs())

    # -- opening ---------------------------------------------------------------------------

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            else:
                conn = sqlite3.connect(
                    str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0
                )
            conn.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"store: {self.path}: could not switch to WAL mode (got {mode!r})")
                conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            return conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store: {self.path} is not a usable SQLite database ({exc})") from None

    def _check_schema(self, conn: sqlite3.Connection, *, create: bool) -> None:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store: {self.path} is not a SQLite database ({exc})") from None
        if app_id == 0 and not tables and create:
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            return
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"store: {self.path} is a SQLite database but not a phasewatch store"
                f" (application_id {app_id:#x}, tables {sorted(tables)})"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store: {self.path} has schema version {version}, written by a newer phasewatch;"
                f" this version reads up to {SCHEMA_VERSION}"
            )
        if version < 1:
            raise StoreError(f"store: {self.path} has an unknown schema version {version}")

    def set_synchronous(self, mode: str) -> None:
        """Switch between ``"full"`` and ``"normal"`` durability for later commits."""
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous: expected one of {SYNCHRONOUS_MODES}, got {mode!r}")
        with self._write_lock:
            self._require_writer().execute(f"PRAGMA synchronous = {mode.upper()}")
            self.synchronous = mode

    # -- writing ---------------------------------------------------------------------------

    def _require_writer(self) -> sqlite3.Connection:
        if self._closed:
            raise ValueError(f"store: {self.path} is closed")
        if self._writer is None:
            raise ValueError(f"store: {self.path} was opened read-only")
        return self._writer

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: its own ``BEGIN IMMEDIATE`` ... ``COMMIT``, or, inside an open
        :meth:`transaction`, a savepoint (a failed write then undoes only itself)."""
        with self._write_lock:
            conn = self._require_writer()
            if self._tx_depth:
                conn.execute("SAVEPOINT phasewatch_write")
                try:
                    yield conn
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO phasewatch_write")
                        conn.execute("RELEASE phasewatch_write")
                    else:  # SQLite rolled the whole transaction back (disk full, I/O error)
                        self._tx_lost = exc
                    raise
                conn.execute("RELEASE phasewatch_write")
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    conn.execute("ROLLBACK")
                raise

    def _note_run(self, run: str) -> None:
        """Remember that the run's row exists, once that is committed (a rolled-back
        transaction must not leave a run the store believes it has)."""
        if self._tx_depth:
            self._tx_runs.add(run)
        else:
            self._known_runs.add(run)

    @contextmanager
    def transaction(self) -> Iterator["Store"]:
        """Group every write made inside the block (by this thread) into one transaction:
        one commit, so one fsync, for all of them.

        This is how ``phasewatch serve`` makes the records of many concurrent requests durable
        together (group commit). Each write inside still succeeds or fails as a whole (a
        savepoint); the block commits when it ends and rolls everything back if it raises.
        Other threads' writes wait until the block ends (one writer); readers never wait and
        see only what is committed. Nested blocks join the outer one. (Do not wrap Monitor
        calls in a transaction of your own: the monitor's in-memory state assumes what it
        wrote is committed when it returns; :meth:`Monitor.observe_batches` is the way to
        group them.)
        """
        with self._write_lock:
            conn = self._require_writer()
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield self
                finally:
                    self._tx_depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._tx_depth = 1
            self._tx_runs = set()
            self._tx_lost = None
            try:
                yield self
                self._raise_if_lost()
                conn.execute("COMMIT")
            except BaseException:
                self._tx_depth = 0
                self._tx_runs = set()
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # COMMIT failing may already have rolled back
                    pass
                raise
            self._tx_depth = 0
            self._known_runs.update(self._tx_runs)
            self._tx_runs = set()

    def commit_pending(self) -> None:
        """Inside :meth:`transaction`: commit what was written so far and go on in a fresh
        transaction (so readers, such as a run being restored, see it). Outside: no-op."""
        with self._write_lock:
            if not self._tx_depth:
                return
            conn = self._require_writer()
            self._raise_if_lost()
            conn.execute("COMMIT")
            self._known_runs.update(self._tx_runs)
            self._tx_runs = set()
            conn.execute("BEGIN IMMEDIATE")


    def _raise_if_lost(self) -> None:
        """A write inside the open transaction failed in a way that made SQLite roll the
        whole transaction back: nothing written in it may be reported as committed."""
        lost = self._tx_lost
        if lost is not None:
            raise sqlite3.OperationalError(
                f"store: {self.path}: the transaction was rolled back by SQLite after"
                f" {type(lost).__name__}: {lost}"
            ) from lost

    def _ensure_run(self, conn: sqlite3.Connection, run: str, now: float) -> None:
        if run not in self._known_runs:
            conn.execute(
                "INSERT OR IGNORE INTO runs (run, created_at, schedule) VALUES (?, ?, NULL)",
                (run, now),
            )

    def append(
        self,
        run: str,
        record: StepRecord,
        events: Sequence[Event] = (),
        *,
        replace_events: bool = False,
        received_at: float | None = None,
    ) -> bool:
        """Store one record and the events it raised, in one transaction, durably.

        Returns ``False`` (and writes nothing) when ``(run, step)`` is already stored.
        ``replace_events=True`` replaces all of the run's events with ``events`` (after a late
        record changed the ordered history, the recomputed list is the truth).
        """
        validate_run_id(run)
        now = time.time() if received_at is None else float(received_at)
        values, stats = _record_json(record)
        with self._writing() as conn:
            self._ensure_run(conn, run, now)
            cur = conn.execute(
                'INSERT OR IGNORE INTO records (run, step, received_at, "values", stats)'
                " VALUES (?, ?, ?, ?, ?)",
                (run, record.step, now, values, stats),
            )
            inserted = cur.rowcount == 1
            if inserted:
                if replace_events:
                    conn.execute("DELETE FROM events WHERE run = ?", (run,))
                self._insert_events(conn, run, events)
        self._note_run(run)
        return inserted

    def append_many(
        self,
        run: str,
        items: Sequence[tuple[StepRecord, Sequence[Event]]],
        *,
        received_at: float | None = None,
    ) -> int:
        """Store several ``(record, events)`` pairs in one transaction (one fsync); steps
        already stored are skipped with their events. Returns how many records were new."""
        validate_run_id(run)
        if not items:
            return 0
        now = time.time() if received_at is None else float(received_at)
        rows = [(record, events, *_record_json(record)) for record, events in items]
        inserted = 0
        with self._writing() as conn:
            self._ensure_run(conn, run, now)
            for record, events, values, stats in rows:
                cur = conn.execute(
                    'INSERT OR IGNORE INTO records (run, step, received_at, "values", stats)'
                    " VALUES (?, ?, ?, ?, ?)",
                    (run, record.step, now, values, stats),
                )
                if cur.rowcount == 1:
                    inserted += 1
                    self._insert_events(conn, run, events)
        self._note_run(run)
        return inserted

    def _insert_events(self, conn: sqlite3.Connection, run: str, events: Sequence[Event]) -> None:
        if not events:
            return
        start = conn.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM events WHERE run = ?", (run,)
        ).fetchone()[0]
        conn.executemany(
            "INSERT INTO events (run, seq, kind, step, onset, series, detector, statistic,"
            " threshold, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    run,
                    start + i,
                    e.kind,
                    int(e.step),
                    int(e.onset),
                    e.series,
                    e.detector,
                    _real(e.statistic),
                    _real(e.threshold),
                    _dumps(dict(e.detail)),
                )
                for i, e in enumerate(events)
            ],
        )

    def replace_events(self, run: str, events: Sequence[Event]) -> None:
        """Make ``events`` the run's complete event list (used when a restore with a different
        detection configuration recomputes them)."""
        validate_run_id(run)
        with self._writing() as conn:
            conn.execute("DELETE FROM events WHERE run = ?", (run,))
            self._insert_events(conn, run, events)

    def set_schedule(self, run: str, schedule: Mapping[str, Any] | None) -> None:
        """Persist the run's reweighting schedule (JSON form); ``None`` = monitor default."""
        validate_run_id(run)
        text = None if schedule is None else _dumps(dict(schedule))
        with self._writing() as conn:
            self._ensure_run(conn, run, time.time())
            conn.execute("UPDATE runs SET schedule = ? WHERE run = ?", (text, run))
        self._note_run(run)

    # -- reading ---------------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        if self._closed:
            raise ValueError(f"store: {self.path} is closed")
        with self._read_lock:
            return self._reader.execute(sql, tuple(params)).fetchall()

    def runs(self) -> list[str]:
        """Run ids in the store, in the order they were first seen."""
        return [r[0] for r in self._read("SELECT run FROM runs ORDER BY created_at, run")]

    def has_run(self, run: str) -> bool:
        return run in self._known_runs or bool(
            self._read("SELECT 1 FROM runs WHERE run = ?", (run,))
        )

    def schedule(self, run: str) -> dict[str, Any] | None:
        rows = self._read("SELECT schedule FROM runs WHERE run = ?", (run,))
        if not rows or rows[0][0] is None:
            return None
        return json.loads(rows[0][0])

    def steps(self, run: str) -> list[int]:
        """The run's stored steps, ascending."""
        return [r[0] for r in self._read("SELECT step FROM records WHERE run = ? ORDER BY step", (run,))]

    def count(self, run: str) -> int:
        return int(self._read("SELECT COUNT(*) FROM records WHERE run = ?", (run,))[0][0])

    def iter_records(
        self, run: str, start: int | None = None, end: int | None = None, *, batch: int = 5000
    ) -> Iterator[StepRecord]:
        """The run's records with ``start <= step < end``, by ascending step, read in batches
        so a long run does not sit in memory twice."""
        lo = -1 if start is None else int(start) - 1
        hi = (1 << 62) if end is None else int(end)
        while True:
            rows = self._read(
                'SELECT step, "values", stats FROM records WHERE run = ? AND step > ? AND step < ?'
                " ORDER BY step LIMIT ?",
                (run, lo, hi, batch),
            )
            for step, values, stats in rows:
                yield StepRecord(
                    step=int(step),
                    values=json.loads(values),
                    stats=None if stats is None else json.loads(stats),
                )
            if len(rows) < batch:
                return
            lo = rows[-1][0]

    def records(self, run: str, start: int | None = None, end: int | None = None) -> list[StepRecord]:
        return list(self.iter_records(run, start, end))

    def received_at(self, run: str, step: int) -> float | None:
        """Wall time (epoch seconds) at which ``(run, step)`` was stored."""
        rows = self._read("SELECT received_at FROM records WHERE run = ? AND step = ?", (run, step))
        return None if not rows else float(rows[0][0])

    def events(self, run: str) -> list[Event]:
        rows = self._read(
            "SELECT kind, step, onset, series, detector, statistic, threshold, detail"
            " FROM events WHERE run = ? ORDER BY seq",
            (run,),
        )
        return [
            Event(
                kind=kind,
                step=int(step),
                onset=int(onset),
                series=series,
                detector=detector,
                statistic=float("nan") if statistic is None else float(statistic),
                threshold=float("nan") if threshold is None else float(threshold),
                detail=json.loads(detail),
            )
            for kind, step, onset, series, detector, statistic, threshold, detail in rows
        ]

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close both connections (checkpointing the WAL). Idempotent."""
        if self._closed:
            return
        with self._write_lock, self._read_lock:
            self._closed = True
            self._reader.close()
            if self._writer is not None:
                self._writer.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, synchronous={self.synchronous!r})"


def is_store_file(path: str | Path) -> bool:
    """True when ``path`` is a SQLite file (by its 16-byte header); cheap, no connection."""
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
