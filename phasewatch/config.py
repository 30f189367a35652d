"""One configuration object that every hook accepts.

Users pass ``phasewatch.Config(...)`` to ``PhaseWatchGRPOTrainer``, ``Watcher`` or the verl
trainer; the defaults are the ones we would pick for a user who reads nothing else: monitor
in-process, planning-token reweighting switched on automatically once the shift is confirmed.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

ReweightMode = Literal["auto", "always", "off"]
REWEIGHT_MODES: tuple[str, ...] = ("auto", "always", "off")

#: Default size cap of a rollout dump (``Config.rollouts_max_bytes``): 1 GiB per file, about
#: 500,000 completions of 2,000 characters; later steps are skipped (counted), not written.
DEFAULT_ROLLOUTS_MAX_BYTES = 1 << 30
#: Health alarms that pause reweighting by default (``Config`` and ``ReweightSchedule`` both).
DEFAULT_PAUSE_ON: tuple[str, ...] = ("entropy_explosion",)


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_run_id(run: object) -> str:
    """Run ids appear in URLs, SQLite keys and Prometheus labels: keep them plain."""
    if not isinstance(run, str) or not _RUN_ID.match(run):
        raise ValueError(
            f"run: {run!r} is not a valid run id (1-128 characters of letters, digits, '.', '_', '-',"
            " starting with a letter or digit)"
        )
    return run


def _default_run_id() -> str:
    return os.environ.get("PHASEWATCH_RUN") or f"run-{uuid.uuid4().hex[:8]}"


@dataclass
class Config:
    """Settings shared by all trainer hooks.

    run: the run id under which records are stored and exported (default: ``$PHASEWATCH_RUN``
        or a random ``run-xxxxxxxx``).
    lexicon: planning phrases: ``None`` for the shipped default, a path to a lexicon file,
        an iterable of phrases, or a ``Lexicon``.
    monitor: ``None`` for an in-process ``Monitor``, an existing ``Monitor`` object, or the URL
        of a ``phasewatch serve`` instance (``"http://127.0.0.1:8765"``).
    store: SQLite file for the in-process monitor (``None`` keeps records in memory only).
    reweight: ``"auto"`` (HICRA off until the execution-to-planning shift is confirmed, then
        ramped in), ``"always"`` (HICRA from step 0, as in the paper) or ``"off"`` (monitor only).
    alpha: HICRA strength: planning-token advantages become ``A + alpha*|A|``.
    ramp_steps: steps over which alpha ramps from 0 to ``alpha`` after the shift (``auto``).
    metrics_port: serve Prometheus ``/metrics`` on 127.0.0.1 at this port from the trainer's
        process (0 picks a free port; ``None`` serves nothing).
    grafana_url / grafana_token: where to post an annotation for each phase event.
    server_token: bearer token for a remote monitor.
    pause_on: health alarms (event kinds) that pause reweighting, e.g.
        ``("entropy_explosion", "entropy_collapse")``; ``()`` never pauses.
    pause_steps: steps after the last pausing alarm before alpha ramps back in (over
        ``ramp_steps``); ``None`` keeps reweighting off for the rest of the run.
    save_rollouts: JSON-lines file to which every hook appends each step's completions (decoded
        text, reward, step, run and, where the trainer knows it, the prompt's group id), the
        input of ``phasewatch grams mine``; ``.gz`` compresses. ``None`` saves nothing. Under
        torch.distributed with more than one rank, each rank writes its own file, with
        ``.rank{N}`` before the extension (``rollouts.rank1.jsonl``): no rank waits for another.
    rollouts_max_bytes: size cap of each rollout file written by this run (default 1 GiB);
        once reached, later completions are skipped, counted and logged once. ``None``: no cap.

    Every field is checked when the Config is built, and a mistake raises ``ValueError`` (a
    missing lexicon file ``FileNotFoundError``) naming the field: a lexicon file is read, URLs
    must be http(s), and ``store`` / ``metrics_port`` / ``grafana_url`` (in-process monitor only)
    are refused next to a remote ``monitor`` URL, where they would be ignored.
    """

    run: str = field(default_factory=_default_run_id)
    lexicon: str | Path | Iterable[str] | Any | None = None
    monitor: Any = None
    store: str | Path | None = None
    reweight: ReweightMode = "auto"
    alpha: float = 0.2
    ramp_steps: int = 10
    metrics_port: int | None = None
    grafana_url: str | None = None
    grafana_token: str | None = None
    server_token: str | None = None
    pause_on: Iterable[str] = DEFAULT_PAUSE_ON
    pause_steps: int | None = None
    save_rollouts: str | Path | None = None
    rollouts_max_bytes: int | None = DEFAULT_ROLLOUTS_MAX_BYTES

    def __post_init__(self) -> None:
        # Every mistake here is reported now, by name: the hooks fail open, so a bad value
        # found later would silently switch monitoring or reweighting off for the whole run.
        if self.reweight not in REWEIGHT_MODES:
            raise ValueError(f"reweight: expected one of {REWEIGHT_MODES}, got {self.reweight!r}")
        self.alpha = _number("alpha", self.alpha)
        if not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha: expected a value in [0, 1], got {self.alpha!r}")
        self.ramp_steps = _integer("ramp_steps", self.ramp_steps)
        if self.ramp_steps < 0:
            raise ValueError(f"ramp_steps: must be >= 0, got {self.ramp_steps!r}")
        validate_run_id(self.run)
        if self.metrics_port is not None:
            self.metrics_port = _integer("metrics_port", self.metrics_port)
            if not (0 <= self.metrics_port <= 65535):
                raise ValueError(f"metrics_port: expected 0..65535, got {self.metrics_port!r}")
        self.lexicon = _checked_lexicon(self.lexicon)
        self.pause_on = _checked_pause_on(self.pause_on)
        if self.pause_steps is not None:
            self.pause_steps = _integer("pause_steps", self.pause_steps)
            if self.pause_steps < 0:
                raise ValueError(f"pause_steps: must be >= 0 or None, got {self.pause_steps!r}")
        self.save_rollouts = _checked_rollouts_path(self.save_rollouts)
        if self.rollouts_max_bytes is not None:
            self.rollouts_max_bytes = _integer("rollouts_max_bytes", self.rollouts_max_bytes)
            if self.rollouts_max_bytes <= 0:
                raise ValueError(f"rollouts_max_bytes: must be positive or None, got {self.rollouts_max_bytes!r}")
        remote = isinstance(self.monitor, str)
        if remote:
            _check_url("monitor", self.monitor, "the URL of a `phasewatch serve` instance, e.g. http://127.0.0.1:8765")
        elif self.monitor is not None and not callable(getattr(self.monitor, "observe", None)):
            raise ValueError(
                "monitor: expected None (in-process monitor), a URL (str) or a phasewatch.Monitor,"
                f" got {type(self.monitor).__name__}"
            )
        elif self.monitor is not None and self.store is not None:
            raise ValueError("store: the Monitor passed as monitor= has its own store (Monitor(store=...)); leave store unset")
        if self.grafana_url is not None:
            _check_url("grafana_url", self.grafana_url, "Grafana's base URL, e.g. http://127.0.0.1:3000")
        if remote:
            # these belong to the in-process monitor; with a server they would be ignored silently
            for name, where in (
                ("store", "the server keeps the records: `phasewatch serve --db FILE`"),
                ("metrics_port", "Prometheus scrapes the server's /metrics"),
                ("grafana_url", "the trainer posts no annotations when the monitor is remote"),
            ):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: applies to the in-process monitor only, not with monitor={self.monitor!r}; {where}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if out != out:
        raise ValueError(f"{name}: expected a number, got NaN")
    return out


def _integer(name: str, value: Any) -> int:
    number = _number(name, value)
    if number != int(number):
        raise ValueError(f"{name}: expected a whole number, got {value!r}")
    return int(number)


def _check_url(name: str, value: str, what: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: {value!r} is not an http(s) URL; expected {what}")


def _checked_pause_on(value: Any) -> tuple[str, ...]:
    """Event kinds as a tuple; a typo would silently never pause, so unknown kinds are refused."""
    from phasewatch.events import EVENT_KINDS

    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"pause_on: expected a list of event kinds (some of {EVENT_KINDS}), got {value!r}")
    kinds = tuple(value)
    unknown = [k for k in kinds if k not in EVENT_KINDS]
    if unknown:
        raise ValueError(f"pause_on: unknown event kind(s) {unknown}; expected some of {EVENT_KINDS}")
    return kinds


def _checked_rollouts_path(value: Any) -> Path | None:
    """The dump path, checked now: a directory or a non-path would fail on every step later."""
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ValueError(f"save_rollouts: expected a file path (e.g. 'rollouts.jsonl') or None, got {value!r}")
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"save_rollouts: {str(path)!r} is a directory; give a file path such as {str(path / 'rollouts.jsonl')!r}")
    return path


def _checked_lexicon(value: Any) -> Any:
    """Read and check the lexicon now (a missing file is an error at construction, not a
    failure in the first training step). Paths and Lexicon objects are kept as given; other
    iterables are materialised into a Lexicon (a generator could be read only once)."""
    if value is None:
        return None
    from phasewatch.lexicon import Lexicon

    if isinstance(value, (str, Path)):
        Lexicon.from_file(value)  # FileNotFoundError / ValueError naming the file and line
        return value
    if isinstance(value, Lexicon):
        return value
    if isinstance(value, bytes) or not isinstance(value, Iterable):
        raise ValueError(
            f"lexicon: expected None (the shipped lexicon), a file path, a Lexicon or a list of phrases,"
            f" got {type(value).__name__}"
        )
    try:
        lexicon = Lexicon(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lexicon: {exc}") from None
    if not lexicon:
        raise ValueError("lexicon: no phrases given (an empty lexicon marks no token as planning)")
    return lexicon
