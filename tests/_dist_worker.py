"""One rank of the 2-process gloo test in tests/test_dist.py (run as a script, once per rank).

Usage: python tests/_dist_worker.py RANK WORLD_SIZE WORKDIR

Reads WORKDIR/shard{RANK}.pt, joins a gloo group through a file rendezvous in WORKDIR, runs
the collectives under test and writes what it saw to WORKDIR/result{RANK}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from phasewatch.dist import all_reduce_stats, broadcast_decision
from phasewatch.events import Decision, Event
from phasewatch.stats import StepStats

RANK0_DECISION = Decision(
    step=7,
    phase="planning",
    alpha=0.15,
    shift_step=5,
    events=(
        Event(
            kind="phase_shift", step=7, onset=5, series="semantic_entropy",
            detector="cusum", statistic=6.5, threshold=5.0, detail={"side": "up"},
        ),
    ),
)


def main(rank: int, world: int, workdir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{workdir / 'rendezvous'}", rank=rank, world_size=world
    )
    result: dict = {}
    try:
        shard = torch.load(workdir / f"shard{rank}.pt", weights_only=False)
        local = StepStats.from_batch(**shard)
        result["local"] = local.to_json()
        result["reduced"] = all_reduce_stats(local).to_json()

        # every rank but 0 holds a different (stale) decision or none at all
        mine = RANK0_DECISION if rank == 0 else (None if rank % 2 else Decision(step=3))
        result["decision"] = broadcast_decision(mine, src=0).to_json()

        # rank 0 passing nothing must fail on every rank, not leave the others waiting
        try:
            broadcast_decision(None if rank == 0 else Decision(step=1), src=0)
            result["none_error"] = None
        except ValueError as exc:
            result["none_error"] = str(exc)

        # ranks disagreeing on the outcome basis: every rank raises, no rank hangs
        kwargs = {"rewards": torch.ones(2)} if rank == 0 else {"advantages": torch.ones(2)}
        mixed = StepStats.from_batch(
            torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool), **kwargs
        )
        try:
            all_reduce_stats(mixed)
            result["basis_error"] = None
        except ValueError as exc:
            result["basis_error"] = str(exc)

        # the group is still aligned after those errors: one more reduction of empty stats
        result["after_errors"] = all_reduce_stats(StepStats.empty()).to_json()
    finally:
        (workdir / f"result{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
