"""Rollout dumps: the JSON-lines file that training writes and ``phasewatch grams mine`` reads.

Format: UTF-8, one JSON object per line.

======== ========================= ===========================================================
field    type                      meaning
======== ========================= ===========================================================
text     string (required)         the completion text (no prompt)
reward   number or null            the scalar reward the completion got; null = unknown
                                   (a non-finite reward is written as null)
run      string (optional)         which training run
step     integer (optional)        the trainer's step number
group    string or int (optional)  what the rollout answered, e.g. a prompt id or a hash of
                                   the prompt: the miner counts a phrase's spread across
                                   groups, so one problem sampled many times is not taken for
                                   a habit of the model
correct  bool (optional, read only) used as the reward (1.0 / 0.0) when ``reward`` is absent,
                                   for files of traces labelled correct / incorrect
======== ========================= ===========================================================

Other fields are kept out of the way (ignored), so a dump can carry extras such as a prompt
id. Files ending in ``.gz`` are read and written gzip-compressed.

``RolloutWriter`` is what a training hook calls once per step. It appends and flushes one
batch at a time, is safe to call from several threads, and stops writing (counting what it
skipped) once an optional size cap is reached, so a long run cannot fill the disk.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    """One completion and its reward (``None`` when the dump did not know it)."""

    text: str
    reward: float | None
    run: str | None = None
    step: int | None = None
    group: str | int | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"text": self.text, "reward": self.reward}
        if self.run is not None:
            row["run"] = self.run
        if self.step is not None:
            row["step"] = self.step
        if self.group is not None:
            row["group"] = self.group
        return row


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_rollout(row: Any, where: str) -> Rollout:
    """One decoded JSON line as a ``Rollout``; ``ValueError`` naming ``where`` on bad input."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    text = row.get("text")
    if not isinstance(text, str):
        found = 'no "text" field' if "text" not in row else f'"text" is {type(text).__name__}, not a string'
        raise ValueError(f"{where}: {found}")
    if "reward" in row:
        reward = row["reward"]
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            raise ValueError(f'{where}: "reward" must be a number or null, got {reward!r}')
        reward = _finite_or_none(reward)
    elif "correct" in row:
        correct = row["correct"]
        if not isinstance(correct, bool):
            raise ValueError(f'{where}: "correct" must be true or false, got {correct!r}')
        reward = 1.0 if correct else 0.0
    else:
        raise ValueError(f'{where}: no "reward" field (nor "correct"); every rollout needs its reward')
    run = row.get("run")
    if run is not None and not isinstance(run, str):
        raise ValueError(f'{where}: "run" must be a string, got {run!r}')
    step = row.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise ValueError(f'{where}: "step" must be an integer, got {step!r}')
    group = row.get("group")
    if group is not None and (isinstance(group, bool) or not isinstance(group, (str, int))):
        raise ValueError(f'{where}: "group" must be a string or an integer, got {group!r}')
    return Rollout(text=text, reward=reward, run=run, step=step, group=group)


def iter_rollouts(path: str | Path) -> Iterator[Rollout]:
    """Rollouts of a JSON-lines dump, in file order (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rollouts file not found: {path}")
    try:
        with _open_text(path, "r") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not JSON ({exc.msg})") from None
                yield parse_rollout(row, where)
    except UnicodeDecodeError as exc:
        raise ValueError(f"rollouts file {path}: not UTF-8 text ({exc})") from None
    except (OSError, EOFError) as exc:  # e.g. a truncated or non-gzip ``.gz``
        raise ValueError(f"rollouts file {path}: cannot read ({exc})") from None


def read_rollouts(path: str | Path) -> list[Rollout]:
    return list(iter_rollouts(path))


def successful(rollouts: Iterable[Rollout], min_reward: float) -> list[Rollout]:
    """Rollouts whose reward is known and at least ``min_reward`` (the paper's "successful")."""
    return [r for r in rollouts if r.reward is not None and r.reward >= min_reward]


class RolloutWriter:
    """Append rollouts to a JSON-lines dump as training goes.

    >>> writer = RolloutWriter("rollouts.jsonl", run="grpo-1")      # doctest: +SKIP
    >>> writer.write_many(completions, rewards, step=trainer_step)   # doctest: +SKIP
    >>> writer.close()                                               # doctest: +SKIP

    ``max_bytes`` caps the file size this writer produces (it counts the bytes it wrote, not
    what was already in the file): once a batch would pass it, that batch and all later ones
    are skipped, counted in ``dropped`` and logged once. Type errors in the arguments raise
    (they are the caller's bug); the file is opened lazily on the first write.
    """

    def __init__(self, path: str | Path, *, run: str | None = None, max_bytes: int | None = None):
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"RolloutWriter(max_bytes={max_bytes}): must be positive or None")
        if run is not None and not isinstance(run, str):
            raise TypeError(f"RolloutWriter(run=...): expected a string, got {type(run).__name__}")
        self.path = Path(path)
        self.run = run
        self.max_bytes = max_bytes
        self.written = 0  # rollouts written
        self.dropped = 0  # rollouts skipped because of max_bytes
        self.bytes_written = 0
        self._handle: IO[str] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._warned = False

    def _lines(
        self, texts: Sequence[str], rewards: Any, step: int | None, run: str | None, groups: Sequence[Any] | None
    ) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("RolloutWriter.write_many(texts=...): expected a sequence of strings, got one string")
        texts = list(texts)
        rewards = _as_list(rewards)
        if len(texts) != len(rewards):
            raise ValueError(f"RolloutWriter: {len(texts)} texts but {len(rewards)} rewards")
        group_list = [None] * len(texts) if groups is None else _as_list(groups)
        if len(group_list) != len(texts):
            raise ValueError(f"RolloutWriter: {len(texts)} texts but {len(group_list)} groups")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            step = int(step)  # e.g. a numpy integer; raises for anything not integral
        run = self.run if run is None else run
        lines = []
        for index, (text, reward, group) in enumerate(zip(texts, rewards, group_list)):
            if not isinstance(text, str):
                raise TypeError(f"RolloutWriter: text {index} is {type(text).__name__}, not a string")
            if group is not None and (isinstance(group, bool) or not isinstance(group, (str, int))):
                raise TypeError(f"RolloutWriter: group {index} is {type(group).__name__}, not a string or an integer")
            rollout = Rollout(text=text, reward=_finite_or_none(reward), run=run, step=step, group=group)
            lines.append(json.dumps(rollout.to_json(), ensure_ascii=False) + "\n")
        return lines

    def write_many(
        self,
        texts: Sequence[str],
        rewards: Any,
        *,
        step: int | None = None,
        run: str | None = None,
        groups: Sequence[str | int] | None = None,
    ) -> int:
        """Append one batch (one line per text) and flush; returns how many were written.

        ``rewards`` may be a list, a numpy array or a 1-D tensor of numbers; ``groups`` one
        prompt id (or prompt hash) per text, when known.
        """
        lines = self._lines(texts, rewards, step, run, groups)
        payload = "".join(lines)
        size = len(payload.encode("utf-8"))
        with self._lock:
            if self._closed:
                raise ValueError(f"RolloutWriter({self.path}): write after close()")
            if self.max_bytes is not None and self.bytes_written + size > self.max_bytes:
                self.dropped += len(lines)
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "phasewatch: rollout dump %s reached max_bytes=%d; further rollouts are not written",
                        self.path,
                        self.max_bytes,
                    )
                return 0
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = _open_text(self.path, "a")
            self._handle.write(payload)
            self._handle.flush()
            self.bytes_written += size
            self.written += len(lines)
            return len(lines)

    def write(
        self, text: str, reward: Any, *, step: int | None = None, run: str | None = None, group: str | int | None = None
    ) -> int:
        """Append one rollout; returns 1 if written, 0 if skipped by ``max_bytes``."""
        return self.write_many([text], [reward], step=step, run=run, groups=None if group is None else [group])

    def flush(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> "RolloutWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RolloutWriter({str(self.path)!r}, written={self.written}, dropped={self.dropped})"


def _as_list(values: Any) -> list[Any]:
    """A list of Python values from a list, numpy array or tensor, without importing torch."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") and not hasattr(values, "tolist"):
        raise TypeError(f"RolloutWriter: expected a sequence, got {type(values).__name__}")
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu()
    if hasattr(values, "tolist"):
        values = values.tolist()
    return list(values)
