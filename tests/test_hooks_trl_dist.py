"""Two ranks with ``torchrun --nproc_per_node 2`` (gloo, CPU): a real PhaseWatchGRPOTrainer.

The worker (``hooks_trl_worker.py``) keeps, on every rank, what each micro-batch handed to the
statistics, the alpha applied at each optimizer step and what TRL's loss received; rank 0's
in-process monitor writes what it was streamed into a real SQLite store. Here we recompute
the statistics of each step in one process from both ranks' raw tensors and compare.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phasewatch.stats import StepStats
from phasewatch.store import Store

pytest.importorskip("trl")

WORKER = Path(__file__).with_name("hooks_trl_worker.py")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return out, ranks


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[1]))


def _single_process_record(pieces: list[dict], step: int):
    """StepStats of all pieces concatenated into one batch (padded to a common T)."""
    length = max(p["entropies"].shape[1] for p in pieces)
    cat = {k: torch.cat([_pad(p[k], length) for p in pieces]) for k in
           ("entropies", "completion_mask", "planning_mask", "logps")}
    return StepStats.from_batch(
        cat["entropies"], cat["completion_mask"], cat["planning_mask"], logps=cat["logps"],
        rewards=torch.cat([p["rewards"] for p in pieces]),
        phrases=[ph for p in pieces for ph in p["phrases"]],
    ).to_record(step)


def _assert_same_values(streamed: dict, expected: dict) -> None:
    assert set(streamed) == set(expected)
    for name, value in expected.items():
        # standard deviations come from sums of squares: summing in another order moves them
        # in the 9th digit when the spread is tiny next to the mean (entropies ~5.4 +- 0.001)
        rel = 1e-6 if name.endswith("/std") else 1e-9
        assert streamed[name] == pytest.approx(value, rel=rel, abs=1e-12), name


def test_streamed_sums_equal_single_process_sums(two_ranks):
    out, ranks = two_ranks
    stored = {r.step: dict(r.values) for r in Store(out / "monitor.sqlite").records("dist")}
    assert sorted(stored) == [1, 2]
    for rank in ranks:
        assert [s["step"] for s in rank["steps"]] == [1, 2]
        assert len(rank["observe"]) == 2  # one micro-batch per optimizer step here
    planning_tokens = 0
    for i, step in enumerate((1, 2)):
        pieces = [ranks[0]["observe"][i], ranks[1]["observe"][i]]
        assert pieces[0]["entropies"].shape[0] == pieces[1]["entropies"].shape[0] == 4
        expected = _single_process_record(pieces, step)
        _assert_same_values(stored[step], dict(expected.values))
        planning_tokens += expected.values.get("tokens/planning", 0)
    assert planning_tokens > 0, "the tiny setup must produce planning tokens for this test to mean anything"


def test_every_rank_applies_rank0_alpha_at_the_same_step(two_ranks):
    _, ranks = two_ranks
    # rank 0 asked for reweight="always", rank 1 for "off": rank 0's decision governs both
    alphas = [[(s["step"], s["alpha"]) for s in rank["steps"]] for rank in ranks]
    assert alphas[0] == alphas[1] == [(1, 0.2), (2, 0.2)]
    assert [s["decision"] for s in ranks[0]["steps"]] == [s["decision"] for s in ranks[1]["steps"]]
    for rank in ranks:
        for inputs in rank["loss_inputs"]:
            adv, planning = inputs["advantages"], inputs["planning_mask"]
            assert adv.dim() == 2  # HICRA's per-token advantages reached TRL's loss on this rank
            base = adv.masked_fill(planning, float("nan")).nanmean(dim=1, keepdim=True).expand_as(adv)
            assert torch.allclose(adv[~planning], base[~planning])
            assert torch.allclose(adv[planning], (base + 0.2 * base.abs())[planning])
        assert [m["phasewatch/alpha"] for m in rank["metrics"]] == [0.2, 0.2]


def test_plain_watcher_all_reduces_under_torch_distributed(two_ranks):
    out, ranks = two_ranks
    stored = Store(out / "plain.sqlite").records("plain")
    assert [r.step for r in stored] == [0]
    from phasewatch.labels import PlanningLabeler
    from hooks_trl_worker import tiny_tokenizer

    pieces = []
    for rank in ranks:
        plain = rank["plain"]
        labels = PlanningLabeler().label(plain["ids"], plain["mask"], tiny_tokenizer())
        pieces.append({"entropies": plain["entropies"], "completion_mask": plain["mask"],
                       "planning_mask": labels.planning_mask, "phrases": labels.phrases})
    length = max(p["entropies"].shape[1] for p in pieces)
    expected = StepStats.from_batch(
        torch.cat([_pad(p["entropies"], length) for p in pieces]),
        torch.cat([_pad(p["completion_mask"], length) for p in pieces]),
        torch.cat([_pad(p["planning_mask"], length) for p in pieces]),
        phrases=[ph for p in pieces for ph in p["phrases"]],
    ).to_record(0)
    _assert_same_values(dict(stored[0].values), dict(expected.values))
    # every rank ends the step holding the same reduced record
    assert ranks[0]["plain"]["record"] == ranks[1]["plain"]["record"]
