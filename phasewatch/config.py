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

    def __post_init__(self) -> None:
        if self.reweight not in REWEIGHT_MODES:
            raise ValueError(f"reweight: expected one of {REWEIGHT_MODES}, got {self.reweight!r}")
        if not (0.0 <= float(self.alpha) <= 1.0):
            raise ValueError(f"alpha: expected a value in [0, 1], got {self.alpha!r}")
        if int(self.ramp_steps) < 0:
            raise ValueError(f"ramp_steps: must be >= 0, got {self.ramp_steps!r}")
        validate_run_id(self.run)
        if self.metrics_port is not None and not (0 <= int(self.metrics_port) <= 65535):
            raise ValueError(f"metrics_port: expected 0..65535, got {self.metrics_port!r}")
