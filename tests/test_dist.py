"""Cross-rank reduction and decision broadcast.

The distributed test is real: two processes (tests/_dist_worker.py) join a gloo process group
on CPU and run the actual collectives. Rank 1 has a different padded length, no planning
tokens, no phrases and NaN padding, the awkward cases that a rank-conditional collective or a
mean-of-means would get wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from phasewatch.dist import all_reduce_stats, broadcast_decision, is_distributed
from phasewatch.events import Decision
from phasewatch.stats import StepStats

WORKER = Path(__file__).with_name("_dist_worker.py")
WORLD = 2
TIMEOUT_S = 90


def _shards() -> list[dict]:
    g = torch.Generator().manual_seed(123)

    def shard(B, T, plan_p, phrases, scale):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        comp = torch.arange(T)[None, :] < lengths[:, None]
        ent = torch.rand(B, T, generator=g) * scale
        ent[~comp] = float("nan")
        return dict(
            entropies=ent,
            completion_mask=comp.to(torch.float32),
            planning_mask=(torch.rand(B, T, generator=g) < plan_p) & comp,
            logps=-torch.rand(B, T, generator=g) * scale,
            rewards=torch.randn(B, generator=g),
            phrases=phrases,
        )

    rank0 = shard(5, 30, 0.3, [["wait"], ["but", "wait"], [], ["let me check"], ["wait"]], 1.0)
    rank1 = shard(3, 18, 0.0, None, 4.0)  # no planning tokens, no phrases, shorter padding
    rank0["entropies"][0, 0] = float("inf")  # one dropped token, to check the dropped count reduces
    return [rank0, rank1]


def _concatenated(shards: list[dict]) -> dict:
    T = max(s["entropies"].shape[1] for s in shards)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    return dict(
        entropies=torch.cat([pad(s["entropies"], float("nan")) for s in shards]),
        completion_mask=torch.cat([pad(s["completion_mask"], 0.0) for s in shards]),
        planning_mask=torch.cat([pad(s["planning_mask"], False) for s in shards]),
        logps=torch.cat([pad(s["logps"], 0.0) for s in shards]),
        rewards=torch.cat([s["rewards"] for s in shards]),
        phrases=[p for s in shards for p in (s["phrases"] or [[]] * s["entropies"].shape[0])],
    )


def _run_ranks(workdir: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD), str(workdir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        for rank in range(WORLD)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"distributed workers did not finish in {TIMEOUT_S}s (a collective hung?)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{out}"
    return [json.loads((workdir / f"result{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> list[dict]:
    workdir = tmp_path_factory.mktemp("dist")
    for rank, shard in enumerate(_shards()):
        torch.save(shard, workdir / f"shard{rank}.pt")
    return _run_ranks(workdir)


def test_reduced_stats_equal_the_single_process_stats_of_all_data(two_rank_results):
    single = StepStats.from_batch(**_concatenated(_shards()))
    for rank, result in enumerate(two_rank_results):
        reduced = StepStats.from_json(result["reduced"])
        got, want = reduced.to_record(0).values, single.to_record(0).values
        assert got.keys() == want.keys(), rank
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12), (rank, name)
        assert reduced.phrase_counts == single.phrase_counts == {"wait": 3, "but": 1, "let me check": 1}
        assert reduced.sums().tokens == single.sums().tokens
        assert reduced.sums().dropped_tokens == 1
    # every rank holds the very same result, and it is not just its own share
    assert two_rank_results[0]["reduced"] == two_rank_results[1]["reduced"]
    assert two_rank_results[1]["reduced"] != two_rank_results[1]["local"]
    assert StepStats.from_json(two_rank_results[1]["local"]).sums("planning").tokens == 0


def test_every_rank_gets_rank_zeros_decision(two_rank_results):
    from _dist_worker import RANK0_DECISION

    for result in two_rank_results:
        assert Decision.from_json(result["decision"]) == RANK0_DECISION


def test_errors_are_raised_on_every_rank_and_leave_the_group_usable(two_rank_results):
    for result in two_rank_results:
        assert "rank 0 passed NoneType" in result["none_error"]
        assert "disagree on the success/failure basis" in result["basis_error"]
        assert StepStats.from_json(result["after_errors"]) == StepStats.empty()


def test_without_a_process_group_both_are_no_ops():
    assert not is_distributed()
    stats = StepStats.from_batch(torch.rand(2, 3), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert all_reduce_stats(stats) is stats
    decision = Decision(step=4, phase="execution")
    assert broadcast_decision(decision) is decision


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="stats: expected StepStats"):
        all_reduce_stats({"sequences": 1})
    with pytest.raises(ValueError, match="decision: expected a Decision"):
        broadcast_decision(None)
