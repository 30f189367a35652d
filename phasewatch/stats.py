"""Per-step statistics as mergeable sums.

A training step is seen in pieces: micro-batches on one rank, and one share of the batch on
every rank. Means, standard deviations and the semantic entropy of a step are therefore never
computed from a piece; a piece is reduced to *sums and counts* (:class:`StepStats`), pieces are
merged by adding those sums (exactly what a whole-batch computation would have added), and the
derived values are computed once, from the merged sums, in :meth:`StepStats.to_record`.

Token classes and outcomes
--------------------------
Every completion token falls in exactly one *cell*: its class (``planning`` where the planning
mask is set, else ``execution``) crossed with the outcome of its sequence: ``success`` (reward
> 0), ``failure`` (reward <= 0) or ``unknown`` (no reward given, or a non-finite one). Each
cell holds :class:`TokenSums`. When only advantages are given, ``success`` means advantage > 0: the
update reinforces the rollout (in GRPO: its reward beats its group's mean). The stats remember
which of the two the split is based on (``outcome_basis``) and refuse to merge the two kinds.

Bad input
---------
Shapes, dtypes, devices and phrase lists are checked before any arithmetic, and a mistake
raises ``ValueError`` naming the tensor and the problem. Non-finite *values* are not errors:
they happen in real training (an overflowing bf16 logit, a ``-inf`` log-prob) and must not
crash it, so a completion token whose entropy is NaN/inf is left out of the entropy sums and
counted (``dropped_tokens`` in the record), a token whose log-prob is not finite is left out
of the NLL sums (``dropped_nll_tokens``), and a sequence whose reward is not finite falls in
the ``unknown`` outcome (``dropped_rewards``). Non-finite values outside the completion mask
(padding) are ignored silently. An all-zero completion mask, or a batch of zero sequences, is
valid (a rank can legitimately hold nothing this step): it gives zero counts, and the record
then simply has no entropy fields.

Cost
----
:meth:`StepStats.from_batch` makes one pass over the ``(B, T)`` inputs with a handful of
vectorised float64 ops and two matrix products, on the inputs' device, and reads the
``(3, 14)`` result back with one ``.tolist()``: one host synchronisation per call, nothing
else. About 0.5-0.8 ms of CPU for a ``(64, 1024)`` micro-batch (benchmarks/bench_stats.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from phasewatch.record import StepRecord

if TYPE_CHECKING:  # torch is imported where tensors are handled, so the service can parse
    import torch  # step statistics without paying for the import

#: The token classes, in the order used by the internal vector layout.
TOKEN_CLASSES: tuple[str, ...] = ("planning", "execution")
#: Sequence outcomes. ``unknown``: no reward/advantage given, or a non-finite one.
OUTCOMES: tuple[str, ...] = ("success", "failure", "unknown")
#: What the success/failure split is based on.
OUTCOME_BASES: tuple[str, ...] = ("reward", "advantage")
#: Version tag of the JSON form (``to_json`` / ``from_json``).
STATS_FORMAT = "phasewatch.step_stats/1"

_CELL_FIELDS: tuple[str, ...] = (
    "tokens",
    "entropy_tokens",
    "entropy_sum",
    "entropy_sumsq",
    "nll_tokens",
    "nll_sum",
)
_CELL_COUNT_FIELDS = frozenset({"tokens", "entropy_tokens", "nll_tokens"})
_SEQ_FIELDS: tuple[str, ...] = (
    "sequences",
    "reward_sum",
    "reward_count",
    "success_sequences",
    "failure_sequences",
    "dropped_rewards",
    "dropped_nll_tokens",
)
_SEQ_COUNT_FIELDS = frozenset(_SEQ_FIELDS) - {"reward_sum"}
#: Length of the flat vector that ``from_batch`` reads back and ``dist`` all-reduces.
VECTOR_SIZE = len(OUTCOMES) * len(TOKEN_CLASSES) * len(_CELL_FIELDS) + len(_SEQ_FIELDS)


@dataclass(frozen=True)
class TokenSums:
    """Sums over one set of completion tokens; adding two gives the sums over the union.

    ``tokens`` counts every completion token in the set; ``entropy_tokens`` those with a
    finite entropy (the others were dropped); ``nll_tokens`` those with a finite log-prob
    (zero when no log-probs were given). Entropies and NLLs are in nats.
    """

    tokens: int = 0
    entropy_tokens: int = 0
    entropy_sum: float = 0.0
    entropy_sumsq: float = 0.0
    nll_tokens: int = 0
    nll_sum: float = 0.0

    def __add__(self, other: "TokenSums") -> "TokenSums":
        if not isinstance(other, TokenSums):
            return NotImplemented
        return TokenSums(
            self.tokens + other.tokens,
            self.entropy_tokens + other.entropy_tokens,
            self.entropy_sum + other.entropy_sum,
            self.entropy_sumsq + other.entropy_sumsq,
            self.nll_tokens + other.nll_tokens,
            self.nll_sum + other.nll_sum,
        )

    @property
    def entropy_mean(self) -> float | None:
        """Mean token entropy, or ``None`` when no token with a finite entropy is in the set."""
        if self.entropy_tokens <= 0:
            return None
        return self.entropy_sum / self.entropy_tokens

    @property
    def entropy_std(self) -> float | None:
        """Population standard deviation (ddof=0) of token entropy, or ``None`` when empty."""
        mean = self.entropy_mean
        if mean is None:
            return None
        var = self.entropy_sumsq / self.entropy_tokens - mean * mean
        return math.sqrt(var) if var > 0.0 else 0.0

    @property
    def nll_mean(self) -> float | None:
        """Mean negative log-likelihood, or ``None`` when no log-prob is behind it."""
        if self.nll_tokens <= 0:
            return None
        return self.nll_sum / self.nll_tokens

    @property
    def dropped_tokens(self) -> int:
        """Tokens left out of the entropy sums because their entropy was not finite."""
        return self.tokens - self.entropy_tokens


_EMPTY_CELL = TokenSums()


def _empty_cells() -> dict[tuple[str, str], TokenSums]:
    return {(c, o): _EMPTY_CELL for c in TOKEN_CLASSES for o in OUTCOMES}


@dataclass(frozen=True)
class StepStats:
    """Mergeable statistics of (part of) one training step.

    Build one per micro-batch with :meth:`from_batch`, combine with :meth:`merge` /
    :meth:`merge_all` (or :func:`phasewatch.dist.all_reduce_stats` across ranks), then turn
    the total into the flat record the monitor reads with :meth:`to_record`.

    cells: :class:`TokenSums` per ``(token class, outcome)``; see the module docstring.
    sequences: number of sequences (rows) seen, including ones with an empty completion.
    reward_sum / reward_count: sum and number of finite per-sequence rewards.
    success_sequences / failure_sequences: sequences with outcome > 0 / <= 0.
    dropped_rewards: sequences whose reward (or advantage) was not finite.
    dropped_nll_tokens: completion tokens given a non-finite log-prob.
    outcome_basis: ``"reward"``, ``"advantage"``, or ``None`` when no outcome was given.
    phrase_counts: occurrences of each matched planning phrase over all rollouts, *with
        multiplicity* (a phrase matched twice in one rollout counts twice); ``None`` when no
        phrases were supplied at all (as opposed to ``{}``: supplied, none matched).
    """

    cells: Mapping[tuple[str, str], TokenSums] = field(default_factory=_empty_cells)
    sequences: int = 0
    reward_sum: float = 0.0
    reward_count: int = 0
    success_sequences: int = 0
    failure_sequences: int = 0
    dropped_rewards: int = 0
    dropped_nll_tokens: int = 0
    outcome_basis: str | None = None
    phrase_counts: Mapping[str, int] | None = None

    # ------------------------------------------------------------------ building

    @classmethod
    def empty(cls) -> "StepStats":
        """The identity of :meth:`merge`: statistics of nothing."""
        return cls()

    @classmethod
    def from_batch(
        cls,
        entropies: torch.Tensor,
        completion_mask: torch.Tensor,
        planning_mask: torch.Tensor,
        *,
        logps: torch.Tensor | None = None,
        rewards: torch.Tensor | Sequence[float] | None = None,
        advantages: torch.Tensor | Sequence[float] | None = None,
        phrases: Sequence[Sequence[str]] | None = None,
    ) -> "StepStats":
        """Reduce one micro-batch to sums.

        entropies: ``(B, T)`` float, per-token entropy in nats (any float dtype).
        completion_mask: ``(B, T)`` bool, integer or float; a token is in the completion where
            it is > 0 (a float mask is a set of 0/1 flags here, not weights).
        planning_mask: ``(B, T)`` bool or integer; nonzero marks a planning token. Planning
            flags outside the completion are ignored.
        logps: optional ``(B, T)`` float log-probabilities of the sampled tokens (NLL = -logp).
        rewards: optional per-sequence rewards ``(B,)``: outcome split at reward > 0, and the
            ``reward`` field. A tensor on another device or a list is copied over.
        advantages: optional per-sequence advantages ``(B,)``, used for the outcome split only
            when ``rewards`` is not given (success = advantage > 0).
        phrases: optional list of ``B`` lists of matched planning phrases, one list per
            sequence (``BatchLabels.phrases``), each occurrence listed once.
        """
        import torch
        B, T, device = _check_batch(entropies, completion_mask, planning_mask, logps)
        outcome_basis: str | None = None
        outcome: torch.Tensor | None = None
        if rewards is not None:
            outcome = _check_per_sequence("rewards", rewards, B, device)
            outcome_basis = "reward"
        if advantages is not None:
            checked = _check_per_sequence("advantages", advantages, B, device)
            if outcome is None:
                outcome, outcome_basis = checked, "advantage"
        phrase_counts = _count_phrases(phrases, B) if phrases is not None else None

        acc = _accumulation_dtype(device)
        sums = _reduce_batch(entropies, completion_mask, planning_mask, logps, outcome, acc)
        return cls._from_outcome_sums(
            sums.tolist(), logps is not None, outcome_basis, phrase_counts, B
        )

    # ------------------------------------------------------------------ merging

    def merge(self, other: "StepStats") -> "StepStats":
        """Statistics of both pieces together (associative and commutative)."""
        if not isinstance(other, StepStats):
            raise ValueError(f"merge: expected StepStats, got {type(other).__name__}")
        return StepStats(
            cells={key: self.cells[key] + other.cells[key] for key in self.cells},
            sequences=self.sequences + other.sequences,
            reward_sum=self.reward_sum + other.reward_sum,
            reward_count=self.reward_count + other.reward_count,
            success_sequences=self.success_sequences + other.success_sequences,
            failure_sequences=self.failure_sequences + other.failure_sequences,
            dropped_rewards=self.dropped_rewards + other.dropped_rewards,
            dropped_nll_tokens=self.dropped_nll_tokens + other.dropped_nll_tokens,
            outcome_basis=_merge_basis(self.outcome_basis, other.outcome_basis),
            phrase_counts=_merge_phrases(self.phrase_counts, other.phrase_counts),
        )

    @classmethod
    def merge_all(cls, pieces: Iterable["StepStats"]) -> "StepStats":
        """Merge any number of pieces; no pieces gives :meth:`empty`."""
        total = cls.empty()
        for piece in pieces:
            total = total.merge(piece)
        return total

    # ------------------------------------------------------------------ reading

    def sums(self, token_class: str | None = None, outcome: str | None = None) -> TokenSums:
        """Sums over one class and/or one outcome (``None`` = all of them)."""
        if token_class is not None and token_class not in TOKEN_CLASSES:
            raise ValueError(f"token_class: expected one of {TOKEN_CLASSES}, got {token_class!r}")
        if outcome is not None and outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {OUTCOMES}, got {outcome!r}")
        total = _EMPTY_CELL
        for (c, o), cell in self.cells.items():
            if (token_class is None or c == token_class) and (outcome is None or o == outcome):
                total = total + cell
        return total

    @property
    def semantic_entropy(self) -> float | None:
        """Shannon entropy (nats) of the phrase-frequency distribution; ``None`` without phrases."""
        if not self.phrase_counts:
            return None
        counts = sorted(c for c in self.phrase_counts.values() if c > 0)
        total = sum(counts)
        if total <= 0:
            return None
        # H = log N - (1/N) sum c log c; sorted for a result independent of merge order.
        return max(0.0, math.log(total) - math.fsum(c * math.log(c) for c in counts) / total)

    def to_record(self, step: int) -> StepRecord:
        """The flat record: canonical fields plus extras; a value with nothing behind it is absent."""
        values: dict[str, float] = {}

        def put(name: str, value: float | None) -> None:
            if value is not None:
                values[name] = float(value)

        every = self.sums()
        put("entropy", every.entropy_mean)
        put("entropy/std", every.entropy_std)
        for c in TOKEN_CLASSES:
            cls_sums = self.sums(c)
            put(f"entropy/{c}", cls_sums.entropy_mean)
            put(f"entropy/{c}/std", cls_sums.entropy_std)
            put(f"nll/{c}", cls_sums.nll_mean)
            put(f"tokens/{c}", cls_sums.tokens)
            for o in ("success", "failure"):
                cell = self.sums(c, o)
                put(f"entropy/{c}/{o}", cell.entropy_mean)
                put(f"nll/{c}/{o}", cell.nll_mean)
        for o in ("success", "failure"):
            put(f"entropy/{o}", self.sums(outcome=o).entropy_mean)
        put("nll", every.nll_mean)
        put("tokens", every.tokens)
        if every.tokens > 0:
            put("planning_frac", self.sums("planning").tokens / every.tokens)
        put("sequences", self.sequences)
        if self.sequences > 0:
            put("response_length", every.tokens / self.sequences)
        if self.reward_count > 0:
            put("reward", self.reward_sum / self.reward_count)
        if self.outcome_basis is not None:
            put("sequences/success", self.success_sequences)
            put("sequences/failure", self.failure_sequences)
            judged = self.success_sequences + self.failure_sequences
            if judged > 0:
                put("success_frac", self.success_sequences / judged)
        put("semantic_entropy", self.semantic_entropy)
        if self.phrase_counts is not None:
            put("phrases", sum(self.phrase_counts.values()))
            put("phrases/distinct", sum(1 for c in self.phrase_counts.values() if c > 0))
        put("dropped_tokens", every.dropped_tokens)
        put("dropped_nll_tokens", self.dropped_nll_tokens)
        put("dropped_rewards", self.dropped_rewards)
        return StepRecord(step=step, values=values, stats=self.to_json())

    # ------------------------------------------------------------------ JSON form

    def to_json(self) -> dict[str, Any]:
        """The step-statistics form: plain JSON, lossless (``from_json`` reverses it)."""
        cells: dict[str, dict[str, dict[str, float | int]]] = {}
        for c in TOKEN_CLASSES:
            cells[c] = {}
            for o in OUTCOMES:
                cell = self.cells[(c, o)]
                cells[c][o] = {name: getattr(cell, name) for name in _CELL_FIELDS}
        out: dict[str, Any] = {"format": STATS_FORMAT, "cells": cells}
        for name in _SEQ_FIELDS:
            out[name] = getattr(self, name)
        out["outcome_basis"] = self.outcome_basis
        out["phrase_counts"] = None if self.phrase_counts is None else dict(self.phrase_counts)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StepStats":
        """Parse and validate the step-statistics form (e.g. from an HTTP body).

        Missing cells and fields count as zero; unknown fields, wrong types, negative or
        non-integral counts, non-finite sums and inconsistent counts raise ``ValueError``
        naming the field (``cells.planning.success.tokens``, ``phrase_counts['wait']``...).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"step statistics: expected a JSON object, got {type(data).__name__}")
        allowed = {"format", "cells", "outcome_basis", "phrase_counts", *_SEQ_FIELDS}
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise ValueError(
                f"step statistics: unknown field(s) {', '.join(map(repr, unknown))};"
                f" expected some of {sorted(allowed)}"
            )
        fmt = data.get("format", STATS_FORMAT)
        if fmt != STATS_FORMAT:
            raise ValueError(f"format: expected {STATS_FORMAT!r}, got {fmt!r}")

        cells = _empty_cells()
        raw_cells = data.get("cells", {})
        if raw_cells is None:
            raw_cells = {}
        if not isinstance(raw_cells, Mapping):
            raise ValueError(f"cells: expected an object, got {type(raw_cells).__name__}")
        for c, by_outcome in raw_cells.items():
            if c not in TOKEN_CLASSES:
                raise ValueError(f"cells: unknown token class {c!r}; expected {TOKEN_CLASSES}")
            if not isinstance(by_outcome, Mapping):
                raise ValueError(f"cells.{c}: expected an object, got {type(by_outcome).__name__}")
            for o, raw in by_outcome.items():
                if o not in OUTCOMES:
                    raise ValueError(f"cells.{c}: unknown outcome {o!r}; expected {OUTCOMES}")
                cells[(c, o)] = _parse_cell(f"cells.{c}.{o}", raw)

        seq: dict[str, Any] = {}
        for name in _SEQ_FIELDS:
            raw = data.get(name, 0)
            if name in _SEQ_COUNT_FIELDS:
                seq[name] = _parse_count(name, raw)
            else:
                seq[name] = _parse_finite(name, raw)

        basis = data.get("outcome_basis")
        if basis is not None and basis not in OUTCOME_BASES:
            raise ValueError(f"outcome_basis: expected null or one of {OUTCOME_BASES}, got {basis!r}")

        phrase_counts = data.get("phrase_counts")
        if phrase_counts is not None:
            if not isinstance(phrase_counts, Mapping):
                raise ValueError(
                    f"phrase_counts: expected an object or null, got {type(phrase_counts).__name__}"
                )
            parsed: dict[str, int] = {}
            for phrase, count in phrase_counts.items():
                if not isinstance(phrase, str) or not phrase:
                    raise ValueError(f"phrase_counts: keys must be non-empty strings, got {phrase!r}")
                parsed[phrase] = _parse_count(f"phrase_counts[{phrase!r}]", count)
            phrase_counts = parsed

        stats = cls(cells=cells, outcome_basis=basis, phrase_counts=phrase_counts, **seq)
        _check_consistent(stats)
        return stats

    # ------------------------------------------------------------------ internals

    @classmethod
    def _from_outcome_sums(
        cls,
        sums: list[list[float]],
        with_logps: bool,
        outcome_basis: str | None,
        phrase_counts: Mapping[str, int] | None,
        sequences: int,
    ) -> "StepStats":
        """Assemble the result of :func:`_reduce_batch` (read back as nested lists)."""
        n_q = 6 if with_logps else 4
        names = _CELL_FIELDS[:n_q]
        cells: dict[tuple[str, str], TokenSums] = {}
        for o, row in zip(OUTCOMES, sums):
            for i, c in enumerate(TOKEN_CLASSES):
                values = row[i * n_q : (i + 1) * n_q]
                cells[(c, o)] = TokenSums(
                    **{
                        name: (int(round(v)) if name in _CELL_COUNT_FIELDS else v)
                        for name, v in zip(names, values)
                    }
                )
        (success, success_reward), (failure, failure_reward), (unknown, _) = (
            row[2 * n_q :] for row in sums
        )
        judged = int(round(success)) + int(round(failure))
        dropped_nll = 0
        if with_logps:
            dropped_nll = sum(cell.tokens - cell.nll_tokens for cell in cells.values())
        by_reward = outcome_basis == "reward"
        return cls(
            cells=cells,
            sequences=sequences,
            reward_sum=(success_reward + failure_reward) if by_reward else 0.0,
            reward_count=judged if by_reward else 0,
            success_sequences=int(round(success)) if outcome_basis else 0,
            failure_sequences=int(round(failure)) if outcome_basis else 0,
            dropped_rewards=int(round(unknown)) if outcome_basis else 0,
            dropped_nll_tokens=dropped_nll,
            outcome_basis=outcome_basis,
            phrase_counts=phrase_counts,
        )

    @classmethod
    def _from_vector(
        cls,
        vector: Sequence[float],
        outcome_basis: str | None,
        phrase_counts: Mapping[str, int] | None,
    ) -> "StepStats":
        """Inverse of :meth:`_to_vector` (counts are rounded back to integers)."""
        if len(vector) != VECTOR_SIZE:
            raise ValueError(f"stats vector: expected {VECTOR_SIZE} values, got {len(vector)}")
        cells: dict[tuple[str, str], TokenSums] = {}
        i = 0
        for o in OUTCOMES:
            for c in TOKEN_CLASSES:
                raw = vector[i : i + len(_CELL_FIELDS)]
                i += len(_CELL_FIELDS)
                cells[(c, o)] = TokenSums(
                    **{
                        name: (int(round(v)) if name in _CELL_COUNT_FIELDS else float(v))
                        for name, v in zip(_CELL_FIELDS, raw)
                    }
                )
        seq = {
            name: (int(round(v)) if name in _SEQ_COUNT_FIELDS else float(v))
            for name, v in zip(_SEQ_FIELDS, vector[i:])
        }
        return cls(cells=cells, outcome_basis=outcome_basis, phrase_counts=phrase_counts, **seq)

    def _to_vector(self) -> list[float]:
        """The fixed-length list of all sums (layout shared with ``from_batch`` and ``dist``)."""
        out: list[float] = []
        for o in OUTCOMES:
            for c in TOKEN_CLASSES:
                cell = self.cells[(c, o)]
                out.extend(float(getattr(cell, name)) for name in _CELL_FIELDS)
        out.extend(float(getattr(self, name)) for name in _SEQ_FIELDS)
        return out


# ---------------------------------------------------------------------- validation


def _dtype_kind(t: torch.Tensor) -> str:
    import torch
    if t.dtype == torch.bool:
        return "bool"
    if t.dtype.is_floating_point:
        return "float"
    if t.dtype.is_complex:
        return "complex"
    return "int"


def _check_tensor(name: str, t: Any, kinds: tuple[str, ...], shape: tuple[int, ...] | None) -> None:
    import torch
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if _dtype_kind(t) not in kinds:
        raise ValueError(f"{name}: expected a {' or '.join(kinds)} tensor, got dtype {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} (like entropies), got {tuple(t.shape)}")


def _check_batch(
    entropies: Any, completion_mask: Any, planning_mask: Any, logps: Any
) -> tuple[int, int, torch.device]:
    _check_tensor("entropies", entropies, ("float",), None)
    if entropies.dim() != 2:
        raise ValueError(
            f"entropies: expected a (batch, tokens) tensor, got {entropies.dim()} dimensions"
            f" {tuple(entropies.shape)}"
        )
    B, T = (int(s) for s in entropies.shape)
    _check_tensor("completion_mask", completion_mask, ("bool", "int", "float"), (B, T))
    _check_tensor("planning_mask", planning_mask, ("bool", "int"), (B, T))
    if logps is not None:
        _check_tensor("logps", logps, ("float",), (B, T))
    device = entropies.device
    named = [("completion_mask", completion_mask), ("planning_mask", planning_mask)]
    if logps is not None:
        named.append(("logps", logps))
    for name, t in named:
        if t.device != device:
            raise ValueError(f"{name}: on device {t.device}, but entropies are on {device}")
    return B, T, device


def _check_per_sequence(name: str, values: Any, B: int, device: torch.device) -> torch.Tensor:
    import torch
    if isinstance(values, torch.Tensor):
        t = values.detach()
    else:
        try:
            t = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name}: expected a tensor or a sequence of numbers ({exc})") from None
    if _dtype_kind(t) not in ("float", "int", "bool"):
        raise ValueError(f"{name}: expected real numbers, got dtype {t.dtype}")
    if tuple(t.shape) != (B,):
        raise ValueError(f"{name}: expected one value per sequence, shape ({B},), got {tuple(t.shape)}")
    if t.dtype == torch.float64 and _accumulation_dtype(device) != torch.float64:
        t = t.to(torch.float32)  # e.g. a list of rewards headed for an MPS device (no float64)
    return t.to(device)


def _count_phrases(phrases: Any, B: int) -> dict[str, int]:
    if isinstance(phrases, (str, bytes)) or not isinstance(phrases, Sequence):
        raise ValueError(
            f"phrases: expected a list of {B} lists of phrases (one per sequence),"
            f" got {type(phrases).__name__}"
        )
    if len(phrases) != B:
        raise ValueError(f"phrases: expected one list per sequence ({B}), got {len(phrases)}")
    for i, per_seq in enumerate(phrases):
        if isinstance(per_seq, (str, bytes)) or not isinstance(per_seq, Iterable):
            raise ValueError(
                f"phrases[{i}]: expected a list of phrases, got {type(per_seq).__name__}"
            )
    counts = Counter(chain.from_iterable(phrases))
    for phrase in counts:
        if not isinstance(phrase, str) or not phrase:
            raise ValueError(f"phrases: every phrase must be a non-empty string, got {phrase!r}")
    return dict(counts)


def _merge_basis(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None or a == b:
        return a
    raise ValueError(
        f"merge: cannot merge statistics whose success/failure split uses {a}s with one that"
        f" uses {b}s; pass the same kind (rewards or advantages) everywhere"
    )


def _merge_phrases(a: Mapping[str, int] | None, b: Mapping[str, int] | None) -> dict[str, int] | None:
    if a is None and b is None:
        return None
    out = dict(a or {})
    for phrase, count in (b or {}).items():
        out[phrase] = out.get(phrase, 0) + count
    return out


def _parse_count(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"{name}: expected a non-negative integer, got {raw!r}")
    if not math.isfinite(raw) or raw < 0 or raw != int(raw):
        raise ValueError(f"{name}: expected a non-negative integer, got {raw!r}")
    return int(raw)


def _parse_finite(name: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ValueError(f"{name}: expected a finite number, got {raw!r}")
    return float(raw)


def _parse_cell(path: str, raw: Any) -> TokenSums:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected an object, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _CELL_FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; expected some of {list(_CELL_FIELDS)}")
    values: dict[str, Any] = {}
    for name in _CELL_FIELDS:
        v = raw.get(name, 0)
        if name in _CELL_COUNT_FIELDS:
            values[name] = _parse_count(f"{path}.{name}", v)
        else:
            values[name] = _parse_finite(f"{path}.{name}", v)
    cell = TokenSums(**values)
    if cell.entropy_tokens > cell.tokens:
        raise ValueError(f"{path}.entropy_tokens: {cell.entropy_tokens} exceeds tokens ({cell.tokens})")
    if cell.nll_tokens > cell.tokens:
        raise ValueError(f"{path}.nll_tokens: {cell.nll_tokens} exceeds tokens ({cell.tokens})")
    if cell.entropy_sumsq < 0:
        raise ValueError(f"{path}.entropy_sumsq: must be >= 0, got {cell.entropy_sumsq}")
    return cell


def _check_consistent(stats: StepStats) -> None:
    """Cross-field checks on parsed statistics (each failure names the field)."""
    judged = stats.success_sequences + stats.failure_sequences
    if judged + stats.dropped_rewards > stats.sequences:
        raise ValueError(
            f"success_sequences + failure_sequences + dropped_rewards ({judged + stats.dropped_rewards})"
            f" exceeds sequences ({stats.sequences})"
        )
    if stats.reward_count > stats.sequences:
        raise ValueError(f"reward_count: {stats.reward_count} exceeds sequences ({stats.sequences})")
    if stats.outcome_basis is None:
        if judged or stats.dropped_rewards:
            raise ValueError("outcome_basis: null, but success/failure sequences are counted")
        for (c, o), cell in stats.cells.items():
            if o != "unknown" and cell.tokens:
                raise ValueError(f"cells.{c}.{o}: tokens counted but outcome_basis is null")
    if stats.outcome_basis != "reward" and (stats.reward_count or stats.reward_sum):
        raise ValueError("reward_count: rewards are counted but outcome_basis is not 'reward'")
    tokens = stats.sums().tokens
    if stats.dropped_nll_tokens > tokens:
        raise ValueError(f"dropped_nll_tokens: {stats.dropped_nll_tokens} exceeds tokens ({tokens})")


# ---------------------------------------------------------------------- the reduction


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 everywhere it exists (counts stay exact, sums merge cleanly); MPS has none."""
    import torch
    return torch.float32 if device.type == "mps" else torch.float64


def _reduce_batch(
    entropies: torch.Tensor,
    completion_mask: torch.Tensor,
    planning_mask: torch.Tensor,
    logps: torch.Tensor | None,
    outcome: torch.Tensor | None,
    acc: torch.dtype,
) -> torch.Tensor:
    """All sums of one micro-batch as one small ``(3, 2 * n_q + 2)`` tensor on the inputs' device.

    Step 1, per row b, class c, quantity q: ``rows[b, c, q] = sum_t L[b, c, t] * Q[b, q, t]``,
    one batched matrix product of the class indicators L (planning, execution) with the
    per-token quantities Q (count, finite-entropy flag, entropy, entropy^2, and with log-probs
    finite-logp flag, NLL; non-finite values zeroed, so ``n_q`` is 4 or 6).
    Step 2: rows, plus two per-sequence columns (1, reward), are summed into the three outcomes
    (success, failure, unknown) by one product with a ``(B, 3)`` outcome indicator. Row
    ``o`` of the result is ``[cells of class planning (n_q), of execution (n_q), sequences,
    reward sum]`` for outcome ``o``.

    Everything runs in float64 (``acc``): counts are exact, and sums do not depend on the
    padded length, so micro-batches and ranks merge to the whole batch's sums up to float64
    rounding (~1e-15). Per-row float32 sums would be ~1.5x faster on CPU but agree only to
    ~1e-8 once padding differs; the float64 version already meets the 1 ms budget.
    """
    import torch
    B, T = entropies.shape
    device = entropies.device
    with torch.no_grad():
        comp = completion_mask if completion_mask.dtype == torch.bool else completion_mask > 0
        plan = planning_mask if planning_mask.dtype == torch.bool else planning_mask != 0
        n_q = 6 if logps is not None else 4
        quantities = torch.empty((B, n_q, T), dtype=acc, device=device)
        quantities[:, 0].fill_(1.0)
        ent = entropies.detach()
        ent_finite = torch.nan_to_num(ent, nan=0.0, posinf=0.0, neginf=0.0)
        torch.eq(ent_finite, ent, out=quantities[:, 1])  # 1 where the entropy is finite
        quantities[:, 2].copy_(ent_finite)
        torch.mul(quantities[:, 2], quantities[:, 2], out=quantities[:, 3])
        if logps is not None:
            lp = logps.detach()
            lp_finite = torch.nan_to_num(lp, nan=0.0, posinf=0.0, neginf=0.0)
            torch.eq(lp_finite, lp, out=quantities[:, 4])
            quantities[:, 5].copy_(lp_finite).neg_()
        classes = torch.empty((B, 2, T), dtype=acc, device=device)
        in_plan = comp & plan
        classes[:, 0].copy_(in_plan)
        classes[:, 1].copy_(comp ^ in_plan)

        rows = torch.bmm(classes, quantities.transpose(1, 2))  # (B, 2, n_q)
        per_sequence = torch.zeros((B, 2), dtype=acc, device=device)  # (1, finite reward)
        per_sequence[:, 0].fill_(1.0)
        by_outcome = torch.zeros((B, 3), dtype=acc, device=device)
        if outcome is None:
            by_outcome[:, 2].fill_(1.0)
        else:
            value = outcome.detach().to(acc)
            known = torch.isfinite(value)
            per_sequence[:, 1].copy_(value).masked_fill_(~known, 0.0)
            success = known & (value > 0)
            by_outcome[:, 0].copy_(success)
            by_outcome[:, 1].copy_(known ^ success)
            by_outcome[:, 2].copy_(~known)
        return by_outcome.T @ torch.cat((rows.view(B, 2 * n_q), per_sequence), dim=1)
