"""Across ranks: one step's statistics from every rank's share, and one decision for all.

Each rank holds its own rollouts, so per-step statistics must be reduced as *sums* (a mean of
per-rank means is wrong when ranks hold different numbers of tokens), and every rank must apply
the *same* reweighting decision or the replicas diverge.

Collectives must be entered by every rank in the same order, or training hangs. So both
functions here issue a fixed sequence of collectives that depends on nothing rank-local: a rank
with zero planning tokens, no phrases or no rewards still joins each one. Both are no-ops
(return their input) when ``torch.distributed`` is not initialised, so the same code runs
single-process.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from phasewatch.events import Decision
from phasewatch.stats import VECTOR_SIZE, StepStats


def is_distributed() -> bool:
    """True when collectives are possible (``torch.distributed`` available and initialised)."""
    return dist.is_available() and dist.is_initialized()


def _collective_device(group: Any) -> torch.device:
    """The device the group's backend wants tensors on: CPU for gloo/mpi, else the accelerator.

    A process group created with both (``"cpu:gloo,cuda:nccl"``) accepts CPU tensors.
    """
    backend = str(dist.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    accel = getattr(torch, "accelerator", None)
    if accel is not None and accel.is_available():
        kind = accel.current_accelerator()
        return torch.device(kind.type, accel.current_device_index())
    if torch.cuda.is_available():  # older torch without torch.accelerator
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_stats(stats: StepStats, group: Any = None) -> StepStats:
    """The step statistics of all ranks' shares together; every rank gets the same result.

    Two collectives, always both, always in this order:
    1. ``all_reduce(SUM)`` of the fixed-size float64 vector of all sums and counts;
    2. ``all_gather_object`` of each rank's ``(phrase_counts, outcome_basis)``, since the set
       of phrases differs by rank. Phrase counts are then added in rank order.
    Mixing rewards on one rank with advantages on another raises ``ValueError`` on every rank
    (each sees the same gathered bases), after both collectives, so no rank is left waiting.
    """
    if not isinstance(stats, StepStats):
        raise ValueError(f"stats: expected StepStats, got {type(stats).__name__}")
    if not is_distributed():
        return stats
    device = _collective_device(group)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    vector = torch.tensor(stats._to_vector(), dtype=dtype, device=device)
    dist.all_reduce(vector, op=dist.ReduceOp.SUM, group=group)

    world = dist.get_world_size(group)
    gathered: list[Any] = [None] * world
    local = (None if stats.phrase_counts is None else dict(stats.phrase_counts), stats.outcome_basis)
    dist.all_gather_object(gathered, local, group=group)

    basis: str | None = None
    phrase_total: dict[str, int] | None = None
    for rank_phrases, rank_basis in gathered:
        if rank_basis is not None:
            if basis is not None and basis != rank_basis:
                raise ValueError(
                    f"all_reduce_stats: ranks disagree on the success/failure basis ({basis!r} vs"
                    f" {rank_basis!r}); pass rewards (or advantages) on every rank"
                )
            basis = rank_basis
        if rank_phrases is not None:
            phrase_total = {} if phrase_total is None else phrase_total
            for phrase, count in rank_phrases.items():
                phrase_total[phrase] = phrase_total.get(phrase, 0) + int(count)
    values = vector.tolist()
    assert len(values) == VECTOR_SIZE
    return StepStats._from_vector(values, basis, phrase_total)


def broadcast_decision(decision: Decision | None, src: int = 0, group: Any = None) -> Decision:
    """Rank ``src``'s decision, on every rank (one ``broadcast_object_list``).

    ``src`` is a global rank, as in ``torch.distributed.broadcast_object_list``. Ranks other
    than ``src`` may pass ``None``. If rank ``src`` passes ``None`` (or not a ``Decision``), every
    rank raises ``ValueError`` after the broadcast, so none is left waiting. Without
    ``torch.distributed`` the decision is returned as is.
    """
    if not is_distributed():
        if not isinstance(decision, Decision):
            raise ValueError(f"decision: expected a Decision, got {type(decision).__name__}")
        return decision
    payload: list[Any] = [decision if dist.get_rank() == src else None]
    device = _collective_device(group)
    dist.broadcast_object_list(payload, src=src, group=group, device=device if device.type != "cpu" else None)
    received = payload[0]
    if not isinstance(received, Decision):
        raise ValueError(
            f"broadcast_decision: rank {src} passed {type(received).__name__}, not a Decision"
        )
    return received
