"""Read logged per-step metrics back into StepRecords, and run them through a monitor.

``phasewatch replay`` answers "what would phasewatch have said about this run?" for logs a
user already has: a CSV (including Weights & Biases "Export CSV" files), a JSON-lines file
(phasewatch's flat form, TRL ``log_history`` rows, verl's file logger ``{"step", "data"}``
lines), a JSON array of such rows or TRL's ``trainer_state.json``, or a phasewatch store.

Column names differ between tools, so each column is normalised before it is matched to a
canonical field: a W&B ``"<run name> - "`` prefix is dropped (and its ``__MIN``/``__MAX``
companion columns ignored), then a leading ``train/``, ``data/`` and ``phasewatch/``; what
remains is compared with the canonical names and a short table of names common trainers use
(:data:`ALIASES`). ``--map CANONICAL=COLUMN`` overrides the guess for one field. When a
trainer's own column and phasewatch's ``phasewatch/...`` column both match a field (TRL logs
``entropy``, phasewatch's hook ``phasewatch/entropy``), phasewatch's is taken.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from phasewatch.events import Event
from phasewatch.record import CANONICAL_FIELDS, StepRecord

STEP = "step"
#: Fields ``replay`` reads: the step plus the canonical record fields.
REPLAY_FIELDS: tuple[str, ...] = (STEP, *CANONICAL_FIELDS)

#: Other names for canonical fields, as logged by common trainers (after prefix stripping),
#: in order of preference. An exact canonical name always wins over an alias.
ALIASES: dict[str, tuple[str, ...]] = {
    STEP: ("Step", "_step", "global_step", "trainer/global_step", "iteration", "iter"),
    # TRL logs "entropy"; verl "actor/entropy"; rasbt/reasoning-from-scratch "entropy_avg"
    "entropy": ("actor/entropy", "entropy_avg", "entropy/mean", "policy_entropy"),
    # TRL "reward"; verl "critic/rewards/mean" (score = reward before KL); rasbt "reward_avg"
    "reward": ("reward_avg", "rewards/mean", "critic/rewards/mean", "critic/score/mean", "reward/mean"),
    # TRL "completions/mean_length"; verl "response_length/mean"; rasbt "avg_response_len"
    "response_length": (
        "completions/mean_length",
        "response_length/mean",
        "avg_response_len",
        "completion_length",
        "mean_response_length",
    ),
}

#: Wrappers stripped from a column name before matching (in this order, each at most once).
_PREFIXES = ("train/", "data/", "phasewatch/")
_WANDB_COMPANIONS = ("__MIN", "__MAX")
#: Files with at least this many rows show a progress bar (on a terminal).
PROGRESS_MIN_ROWS = 5_000


def normalise_column(name: str) -> str | None:
    """The part of a column name that identifies the metric; ``None`` for W&B's
    ``__MIN``/``__MAX`` companions, which never carry the value itself."""
    if name.endswith(_WANDB_COMPANIONS):
        return None
    base = name.rsplit(" - ", 1)[-1].strip()
    for prefix in _PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix):]
    return base


def _is_phasewatch_column(name: str) -> bool:
    """Whether a column is one phasewatch's hooks logged (``phasewatch/...``, possibly inside
    a W&B run prefix and a ``train/`` or ``data/`` wrapper)."""
    base = name.rsplit(" - ", 1)[-1].strip()
    for prefix in _PREFIXES[:2]:
        if base.startswith(prefix):
            base = base[len(prefix):]
    return base.startswith("phasewatch/")


def parse_map(items: Iterable[str]) -> dict[str, str]:
    """``["entropy=actor/entropy", ...]`` -> ``{"entropy": "actor/entropy"}``."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--map {item!r}: expected CANONICAL=COLUMN")
        key, column = item.split("=", 1)
        key, column = key.strip(), column.strip()
        if key not in REPLAY_FIELDS:
            raise ValueError(f"--map {item!r}: {key!r} is not a canonical field; expected one of {list(REPLAY_FIELDS)}")
        if not column:
            raise ValueError(f"--map {item!r}: empty column name")
        if key in out and out[key] != column:
            raise ValueError(f"--map: {key!r} mapped twice ({out[key]!r} and {column!r})")
        out[key] = column
    return out


def resolve_columns(columns: Sequence[str], mapping: Mapping[str, str] | None = None) -> dict[str, str]:
    """Canonical field -> column, for the columns a file has.

    Explicit ``mapping`` entries must name an existing column. Otherwise each field takes
    the column whose normalised name is the field itself, else its best alias; two columns
    tied for one field (e.g. two runs in one W&B export) are an error asking for ``--map``.
    """
    mapping = dict(mapping or {})
    present = list(dict.fromkeys(columns))
    out: dict[str, str] = {}
    for key, column in mapping.items():
        if key not in REPLAY_FIELDS:
            raise ValueError(f"map: {key!r} is not a canonical field; expected one of {list(REPLAY_FIELDS)}")
        if column not in present:
            raise ValueError(f"map: {key}={column!r}: no such column; the file has {present}")
        out[key] = column
    taken = set(out.values())
    for key in REPLAY_FIELDS:
        if key in out:
            continue
        names = (key, *ALIASES.get(key, ()))
        best: tuple[int, list[str]] | None = None
        for column in present:
            if column in taken:
                continue
            base = normalise_column(column)
            if base is None:
                continue
            rank = names.index(base) if base in names else (0 if base.lower() == key else None)
            if rank is None:
                continue
            if best is None or rank < best[0]:
                best = (rank, [column])
            elif rank == best[0]:
                best[1].append(column)
        if best is None:
            continue
        if len(best[1]) > 1:
            # a TRL run watched by phasewatch logs both TRL's "entropy" and phasewatch's
            # "phasewatch/entropy": the same quantity, and phasewatch's own name is the canonical one
            own = [c for c in best[1] if _is_phasewatch_column(c)]
            if len(own) == 1:
                best = (best[0], own)
        if len(best[1]) > 1:
            raise ValueError(
                f"columns {best[1]} all look like {key!r}; choose one with --map {key}=COLUMN"
            )
        out[key] = best[1][0]
        taken.add(best[1][0])
    return out


@dataclass
class ReplaySource:
    """What a reader produced: records in step order, and how the file was understood."""

    path: Path
    format: str  # "csv", "jsonl" or "store"
    records: list[StepRecord]
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> source column
    rows: int = 0  # data rows read
    skipped_rows: int = 0  # rows without a step or without any usable field
    duplicate_steps: int = 0  # rows whose step appeared earlier (the later row is kept)


def _build_records(
    rows: Iterable[tuple[int, Mapping[str, Any]]], columns: Mapping[str, str], where: str, unit: str = "line"
) -> tuple[list[StepRecord], int, int, int]:
    """Rows (line or entry number, raw mapping) -> sorted, de-duplicated StepRecords;
    errors name ``where`` and ``unit`` (``"line"`` in a file, ``"entry"`` in a JSON array)."""
    by_step: dict[int, StepRecord] = {}
    n_rows = skipped = duplicates = 0
    step_column = columns[STEP]
    value_columns = [(k, c) for k, c in columns.items() if k != STEP]
    for line, row in rows:
        n_rows += 1
        raw_step = row.get(step_column)
        flat: dict[str, Any] = {}
        try:
            if raw_step is None or (isinstance(raw_step, str) and not raw_step.strip()):
                skipped += 1
                continue
            for key, column in value_columns:
                value = row.get(column)
                if value is not None and value != "":
                    flat[key] = value
            record = StepRecord.from_flat(flat, step=_parse_step(raw_step))
        except ValueError as exc:
            raise ValueError(f"{where}, {unit} {line}: {exc}") from None
        if not record.values:
            skipped += 1
            continue
        if record.step in by_step:  # a restarted run logs steps again: the later row wins
            duplicates += 1
        by_step[record.step] = record
    return [by_step[s] for s in sorted(by_step)], n_rows, skipped, duplicates


def _parse_step(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"step: expected a non-negative integer, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"step: {raw!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise ValueError(f"step: expected a non-negative integer, got {raw!r}")
    return int(value)


def _need_fields(columns: Mapping[str, str], available: Sequence[str], where: str) -> None:
    if STEP not in columns:
        raise ValueError(
            f"{where}: no step column (looked for {[STEP, *ALIASES[STEP]]}); name it with"
            f" --map step=COLUMN. Columns: {list(available)}"
        )
    if len(columns) == 1:
        raise ValueError(
            f"{where}: no usable field: none of the columns is one of {list(CANONICAL_FIELDS)}"
            f" (or a known alias); point one at a column with --map FIELD=COLUMN. Columns: {list(available)}"
        )


def read_csv(path: str | Path, mapping: Mapping[str, str] | None = None) -> ReplaySource:
    """A CSV with a header row, e.g. a W&B "Export CSV" or a trainer's metrics file."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty file (expected a CSV header row)")
        header = [h.strip() for h in header]
        if len(header) == 1:
            for delimiter, name in ((";", "semicolon"), ("\t", "tab")):
                if delimiter in header[0]:
                    raise ValueError(
                        f"{path}: the header is a single column {header[0]!r}: the file looks {name}-separated;"
                        " phasewatch replay reads comma-separated CSV (export it with ',' as the separator)"
                    )
        columns = resolve_columns(header, mapping)
        _need_fields(columns, header, str(path))

        def rows() -> Iterable[tuple[int, Mapping[str, Any]]]:
            for i, cells in enumerate(reader, start=2):
                if not cells or all(not c.strip() for c in cells):
                    continue
                yield i, dict(zip(header, cells))

        records, n, skipped, dups = _build_records(rows(), columns, str(path))
    return ReplaySource(path, "csv", records, columns, n, skipped, dups)


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        elif not isinstance(value, (list, tuple)):
            out[name] = value
    return out


def _json_document_rows(path: Path) -> tuple[list[Any], str] | None:
    """The rows of a file holding one JSON document: an array of row objects, or TRL's
    ``trainer_state.json`` (its ``log_history``). ``None`` when the file is JSON lines."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None  # several documents (JSON lines), or broken JSON: the line reader says which line
    if isinstance(doc, list):
        return doc, f"{path}"
    if isinstance(doc, Mapping) and isinstance(doc.get("log_history"), list):
        return doc["log_history"], f"{path}: log_history"
    return None


def read_jsonl(
    path: str | Path, mapping: Mapping[str, str] | None = None, run: str | None = None
) -> ReplaySource:
    """One JSON object per line. Nested objects are flattened with ``/`` (verl's
    ``{"step": 3, "data": {...}}`` becomes ``data/...``, then ``data/`` is stripped); a
    ``"stats"`` object is ignored; lines of other runs are skipped when ``run`` is given.
    A file holding a single JSON array of such objects, or TRL's ``trainer_state.json``
    (whose ``log_history`` holds one object per logged step), is read the same way."""
    path = Path(path)
    objects: list[tuple[int, Any]] = []
    where, unit = str(path), "line"
    document = _json_document_rows(path) if path.suffix.lower() == ".json" or _first_char(path) == "[" else None
    if document is not None:
        rows, where = document
        unit = "entry"
        objects = list(enumerate(rows, start=1))
    else:
        with open(path, encoding="utf-8") as fh:
            for i, text in enumerate(fh, start=1):
                text = text.strip()
                if not text:
                    continue
                try:
                    objects.append((i, json.loads(text)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {i}: not valid JSON ({exc.msg})") from None
    lines: list[tuple[int, dict[str, Any]]] = []
    runs_seen: set[str] = set()
    for i, obj in objects:
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}, {unit} {i}: expected a JSON object, got {type(obj).__name__}")
        row_run = obj.get("run")
        if isinstance(row_run, str):
            if run is not None and row_run != run:
                continue
            runs_seen.add(row_run)
        lines.append((i, _flatten({k: v for k, v in obj.items() if k not in ("stats", "run")})))
    if run is None and len(runs_seen) > 1:
        raise ValueError(f"{path}: lines of several runs {sorted(runs_seen)}; choose one with --run")
    if run is not None and not lines:
        raise ValueError(f"{path}: no lines for run {run!r}")
    if run is not None and not runs_seen:
        raise ValueError(f"{path}: --run {run!r}, but no line has a \"run\" field to select by; leave --run out")
    keys = list(dict.fromkeys(k for _, row in lines for k in row))
    if not keys:
        if objects:
            raise ValueError(f"{where}: no numeric fields (the objects hold only lists or are empty)")
        raise ValueError(f"{path}: empty file (expected JSON objects, one per line)")
    columns = resolve_columns(keys, mapping)
    _need_fields(columns, keys, where)
    records, n, skipped, dups = _build_records(lines, columns, where, unit)
    return ReplaySource(path, "jsonl", records, columns, n, skipped, dups)


def _first_char(path: Path) -> str:
    """The first non-blank character of a text file ('' for an empty one)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]


def read_store(path: str | Path, run: str | None = None) -> ReplaySource:
    """The records of one run of a phasewatch store (the only run, or ``run``)."""
    from phasewatch.store import Store

    path = Path(path)
    with Store(path, readonly=True) as store:
        runs = store.runs()
        if run is None:
            if not runs:
                raise ValueError(f"{path}: the store holds no runs")
            if len(runs) > 1:
                raise ValueError(f"{path}: the store holds several runs {runs}; choose one with --run")
            run = runs[0]
        elif run not in runs:
            raise ValueError(f"{path}: no run {run!r} in the store (runs: {runs})")
        records = store.records(run)
    fields = sorted({k for r in records for k in r.values if k in CANONICAL_FIELDS})
    return ReplaySource(path, "store", records, {STEP: STEP, **{f: f for f in fields}}, len(records))


def read_source(
    path: str | Path, mapping: Mapping[str, str] | None = None, run: str | None = None
) -> ReplaySource:
    """Pick the reader by content (a SQLite header means a store) and extension."""
    from phasewatch.store import is_store_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a CSV, JSON-lines or store file")
    if is_store_file(path):
        if mapping:
            raise ValueError(f"{path}: --map does not apply to a phasewatch store (its fields are canonical)")
        return read_store(path, run)
    try:
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson", ".json"):
            return read_jsonl(path, mapping, run)
        if suffix == ".tsv":
            raise ValueError(f"{path}: tab-separated files are not supported; export as CSV")
        if suffix in (".csv", ".txt", "") or _first_char(path) not in ("{", "["):
            if run is not None:
                raise ValueError(
                    f"{path}: --run {run!r} selects a run in a store or a JSON-lines file; a CSV holds one run"
                )
            return read_csv(path, mapping)
        return read_jsonl(path, mapping, run)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start});"
            " expected a CSV, JSON-lines or phasewatch store file"
        ) from None


@dataclass
class ReplayResult:
    """The monitor's verdict on a replayed file."""

    source: ReplaySource
    phase: str
    shift_step: int | None
    alpha: float
    events: list[Event]

    @property
    def steps(self) -> int:
        return len(self.source.records)

    @property
    def notes(self) -> list[str]:
        """What the log lacks for a full verdict (a run logged without per-class fields stays in
        ``warmup`` for ever, which should not read as "no shift happened")."""
        from phasewatch.detect.config import EXECUTION_SERIES, HEALTH_SERIES, PLANNING_SERIES

        present = {name for r in self.source.records for name in r.values}
        out = []
        if not present.intersection(PLANNING_SERIES + EXECUTION_SERIES):
            out.append(
                "phase detection needs per-class fields (" + ", ".join(PLANNING_SERIES + EXECUTION_SERIES)
                + ") and this log has none, so the phase stays 'warmup'; log them with phasewatch's hooks"
            )
        if not present.intersection(HEALTH_SERIES):
            out.append("health alarms need an entropy field (" + ", ".join(HEALTH_SERIES) + ") and this log has none")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "phase": self.phase,
            "shift_step": self.shift_step,
            "alpha": self.alpha,
            "events": [jsonable(e.to_json()) for e in self.events],
            "source": str(self.source.path),
            "format": self.source.format,
            "columns": dict(self.source.columns),
            "rows": self.source.rows,
            "skipped_rows": self.source.skipped_rows,
            "duplicate_steps": self.source.duplicate_steps,
            "notes": self.notes,
        }


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become strings ("inf", "nan") rather than invalid tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):
        return jsonable(value.item())
    return value


def replay(
    source: ReplaySource,
    *,
    detection: Any = None,
    schedule: Any = None,
    progress: bool | None = None,
) -> ReplayResult:
    """Feed ``source.records`` (already in step order) through an in-memory monitor.

    progress: ``True``/``False`` forces the bar on or off; ``None`` shows it for files of at
    least :data:`PROGRESS_MIN_ROWS` rows when stderr is a terminal.
    """
    from phasewatch.monitor import Monitor

    records = source.records
    if progress is None:
        disable: bool | None = True if len(records) < PROGRESS_MIN_ROWS else None
    else:
        disable = not progress
    monitor = Monitor(None, detection=detection, schedule=schedule)
    try:
        iterator: Iterable[StepRecord] = records
        bar = None
        if disable is not True:
            from tqdm import tqdm

            bar = tqdm(records, desc="replay", unit="step", file=sys.stderr, disable=disable)
            iterator = bar
        decision = None
        for record in iterator:
            decision = monitor.observe("replay", record.step, record)
        if bar is not None:
            bar.close()
        if decision is None:
            raise ValueError(f"{source.path}: no rows with a step and a usable value")
        return ReplayResult(
            source=source,
            phase=decision.phase,
            shift_step=decision.shift_step,
            alpha=decision.alpha,
            events=monitor.events("replay"),
        )
    finally:
        monitor.close()


def replay_file(
    path: str | Path,
    mapping: Mapping[str, str] | None = None,
    *,
    run: str | None = None,
    detection: Any = None,
    schedule: Any = None,
    progress: bool | None = None,
) -> ReplayResult:
    """Read ``path`` and replay it: the library form of ``phasewatch replay``."""
    return replay(read_source(path, mapping, run), detection=detection, schedule=schedule, progress=progress)


def format_report(result: ReplayResult) -> str:
    """The human-readable report ``phasewatch replay`` prints."""
    src = result.source
    lines = [f"{src.path} ({src.format}): {result.steps} steps"]
    mapped = [f"{k} <- {c!r}" if k != c else k for k, c in src.columns.items() if k != STEP]
    lines.append("fields: " + ", ".join(mapped))
    if src.skipped_rows or src.duplicate_steps:
        lines.append(
            f"skipped: {src.skipped_rows} row(s) without a step or a value,"
            f" {src.duplicate_steps} repeated step(s) (later row kept)"
        )
    if result.shift_step is None:
        lines.append(f"phase: {result.phase} (no phase shift detected)")
    else:
        lines.append(f"phase: {result.phase} (shift confirmed at step {result.shift_step}; alpha now {result.alpha:g})")
    lines.extend(f"note: {note}" for note in result.notes)
    if not result.events:
        lines.append("events: none")
    else:
        lines.append(f"events: {len(result.events)}")
        header = f"  {'step':>7} {'onset':>7}  {'kind':<18} {'series':<20} {'detector':<14} {'statistic':>10} {'threshold':>10}"
        lines.append(header)
        for e in result.events:
            lines.append(
                f"  {e.step:>7} {e.onset:>7}  {e.kind:<18} {e.series:<20} {e.detector:<14}"
                f" {e.statistic:>10.4g} {e.threshold:>10.4g}"
            )
    return "\n".join(lines)
