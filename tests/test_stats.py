"""StepStats: per-class sums from a micro-batch, exact merging, the record, the JSON form.

Reference values are computed independently with boolean indexing in float64, so a wrong
reduction, a wrong merge (e.g. averaging means) or a wrong outcome split shows up as a
mismatch rather than being baked into the expectations.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phasewatch.record import CANONICAL_FIELDS, StepRecord
from phasewatch.stats import OUTCOMES, STATS_FORMAT, TOKEN_CLASSES, StepStats, TokenSums

PHRASES = ("wait", "but", "let me check", "alternatively", "we can use the fact that")


def make_batch(
    B: int, T: int, seed: int, *, scale: float = 1.0, plan_p: float = 0.15, bad_p: float = 0.0
):
    """A synthetic micro-batch with ragged completions (right padding) and NaN in the padding;
    ``bad_p`` also puts non-finite entropies, log-probs and rewards inside the completion."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    completion = torch.arange(T)[None, :] < lengths[:, None]
    entropies = torch.rand(B, T, generator=g) * 3.0 * scale
    entropies[~completion] = float("nan")  # padding garbage must be ignored, not dropped
    planning = torch.rand(B, T, generator=g) < plan_p
    logps = -torch.rand(B, T, generator=g) * 2.0 * scale
    rewards = torch.randn(B, generator=g)
    rewards[torch.rand(B, generator=g) < 0.2] = 0.0  # reward == 0 is a failure
    if bad_p:
        entropies[(torch.rand(B, T, generator=g) < bad_p) & completion] = float("inf")
        logps[torch.rand(B, T, generator=g) < bad_p] = float("nan")
        rewards[torch.rand(B, generator=g) < bad_p] = float("-inf")
    phrases = [
        [PHRASES[int(i)] for i in torch.randint(0, len(PHRASES), (int(k),), generator=g)]
        for k in torch.randint(0, 4, (B,), generator=g)
    ]
    return dict(
        entropies=entropies,
        completion_mask=completion.long(),
        planning_mask=planning,
        logps=logps,
        rewards=rewards,
        phrases=phrases,
    )


def reference(batch) -> dict[str, float]:
    """The expected record values, by direct indexing in float64 (no sums machinery)."""
    h = batch["entropies"].double()
    nll = -batch["logps"].double()
    comp = batch["completion_mask"] > 0
    plan = batch["planning_mask"].bool() & comp
    exe = comp & ~plan
    r = batch["rewards"].double()
    succ_rows = (r > 0)[:, None].expand_as(comp)
    out: dict[str, float] = {}
    out["entropy"] = h[comp].mean().item()
    out["entropy/planning"] = h[plan].mean().item()
    out["entropy/execution"] = h[exe].mean().item()
    out["entropy/planning/std"] = h[plan].std(correction=0).item()
    out["entropy/execution/std"] = h[exe].std(correction=0).item()
    out["nll/planning"] = nll[plan].mean().item()
    out["nll/execution"] = nll[exe].mean().item()
    out["entropy/execution/success"] = h[exe & succ_rows].mean().item()
    out["entropy/execution/failure"] = h[exe & ~succ_rows].mean().item()
    out["entropy/planning/success"] = h[plan & succ_rows].mean().item()
    out["entropy/planning/failure"] = h[plan & ~succ_rows].mean().item()
    out["planning_frac"] = plan.sum().item() / comp.sum().item()
    out["tokens/planning"] = float(plan.sum().item())
    out["tokens/execution"] = float(exe.sum().item())
    out["response_length"] = comp.sum().item() / comp.shape[0]
    out["reward"] = r.mean().item()
    out["sequences"] = float(comp.shape[0])
    out["sequences/success"] = float((r > 0).sum().item())
    counts = Counter(p for seq in batch["phrases"] for p in seq)
    n = sum(counts.values())
    out["semantic_entropy"] = -sum(c / n * math.log(c / n) for c in counts.values())
    return out


def assert_values_close(got: dict, want: dict, rel: float = 1e-9) -> None:
    for name, value in want.items():
        assert name in got, f"{name} missing from record"
        assert got[name] == pytest.approx(value, rel=rel, abs=1e-12), name


def assert_stats_close(got: StepStats, want: StepStats, rel: float = 1e-12) -> None:
    """Every count equal, every float sum equal up to float64 rounding, via the JSON form."""

    def walk(a, b, path):
        if isinstance(b, dict):
            assert isinstance(a, dict) and a.keys() == b.keys(), path
            for key in b:
                walk(a[key], b[key], f"{path}.{key}")
        elif isinstance(b, float):
            assert a == pytest.approx(b, rel=rel, abs=1e-12), path
        else:
            assert a == b, path

    walk(got.to_json(), want.to_json(), "stats")


def concat(batches):
    """Concatenate micro-batches along the batch dimension, right-padding to the longest T."""
    T = max(b["entropies"].shape[1] for b in batches)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    return dict(
        entropies=torch.cat([pad(b["entropies"], float("nan")) for b in batches]),
        completion_mask=torch.cat([pad(b["completion_mask"], 0) for b in batches]),
        planning_mask=torch.cat([pad(b["planning_mask"], True) for b in batches]),
        logps=torch.cat([pad(b["logps"], float("nan")) for b in batches]),
        rewards=torch.cat([b["rewards"] for b in batches]),
        phrases=[p for b in batches for p in b["phrases"]],
    )


# ---------------------------------------------------------------------- one batch


def test_from_batch_matches_direct_computation():
    batch = make_batch(16, 40, seed=1)
    record = StepStats.from_batch(**batch).to_record(3)
    assert record.step == 3
    assert_values_close(dict(record.values), reference(batch))
    assert record.values["dropped_tokens"] == 0
    assert set(CANONICAL_FIELDS) <= set(record.values)


def test_record_values_are_finite_numbers_and_carry_the_sums():
    record = StepStats.from_batch(**make_batch(8, 20, seed=2)).to_record(0)
    assert all(isinstance(v, float) and math.isfinite(v) for v in record.values.values())
    assert StepStats.from_json(record.stats) == StepStats.from_batch(**make_batch(8, 20, seed=2))
    # the flat form the monitor and the server read round-trips through StepRecord
    assert StepRecord.from_flat(json.loads(json.dumps(record.to_json()))).values == record.values


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.int64, torch.float32])
def test_completion_mask_dtypes_agree(mask_dtype):
    batch = make_batch(6, 12, seed=3)
    want = StepStats.from_batch(**batch)
    batch["completion_mask"] = batch["completion_mask"].to(mask_dtype)
    assert StepStats.from_batch(**batch) == want


def test_planning_flags_outside_the_completion_are_ignored():
    batch = make_batch(6, 12, seed=4)
    comp = batch["completion_mask"].bool()
    only_inside = dict(batch, planning_mask=batch["planning_mask"] & comp)
    everywhere_outside = dict(batch, planning_mask=batch["planning_mask"] | ~comp)
    assert StepStats.from_batch(**only_inside) == StepStats.from_batch(**everywhere_outside)


def test_low_precision_entropies_are_accepted():
    batch = make_batch(4, 16, seed=5)
    batch["entropies"] = batch["entropies"].to(torch.bfloat16)
    batch["logps"] = batch["logps"].to(torch.float16)
    record = StepStats.from_batch(**batch).to_record(0)
    want = reference(batch)
    assert record.values["entropy"] == pytest.approx(want["entropy"], rel=1e-6)
    assert record.values["nll/planning"] == pytest.approx(want["nll/planning"], rel=1e-6)


def test_semantic_entropy_of_known_counts():
    phrases = [["wait", "wait"], ["but"], [], ["let me check"]]
    stats = StepStats.from_batch(
        torch.ones(4, 3), torch.ones(4, 3, dtype=torch.bool), torch.zeros(4, 3, dtype=torch.bool),
        phrases=phrases,
    )
    assert stats.phrase_counts == {"wait": 2, "but": 1, "let me check": 1}  # with multiplicity
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    record = stats.to_record(0)
    assert record.values["semantic_entropy"] == pytest.approx(expected, rel=1e-12)
    assert record.values["phrases"] == 4 and record.values["phrases/distinct"] == 3


def test_fields_without_tokens_behind_them_are_absent():
    B, T = 3, 5
    stats = StepStats.from_batch(
        torch.rand(B, T), torch.ones(B, T), torch.zeros(B, T, dtype=torch.bool)
    )
    values = stats.to_record(0).values
    assert "entropy/planning" not in values and "entropy/planning/std" not in values
    assert values["tokens/planning"] == 0 and values["planning_frac"] == 0
    assert "entropy/execution" in values
    for absent in ("nll/planning", "nll/execution", "reward", "semantic_entropy",
                   "entropy/execution/success", "sequences/success", "phrases"):
        assert absent not in values, absent


@pytest.mark.parametrize("B,T", [(4, 7), (0, 7), (4, 0)])
def test_empty_completion_gives_counts_but_no_means(B, T):
    stats = StepStats.from_batch(
        torch.full((B, T), float("nan")), torch.zeros(B, T), torch.zeros(B, T, dtype=torch.bool),
        logps=torch.zeros(B, T), rewards=torch.ones(B), phrases=[[] for _ in range(B)],
    )
    values = stats.to_record(0).values
    assert values["sequences"] == B and values["tokens"] == 0 and values["dropped_tokens"] == 0
    for absent in ("entropy", "entropy/planning", "entropy/execution", "nll/planning",
                   "planning_frac", "semantic_entropy"):
        assert absent not in values, absent
    assert all(math.isfinite(v) for v in values.values())
    if B:
        assert values["response_length"] == 0 and values["reward"] == 1.0
    else:
        assert "response_length" not in values and "reward" not in values


# ---------------------------------------------------------------------- non-finite values


def test_non_finite_entropies_in_the_completion_are_dropped_and_counted():
    batch = make_batch(8, 30, seed=6)
    comp = batch["completion_mask"].bool()
    rows, cols = comp.nonzero(as_tuple=True)
    bad = [(rows[i].item(), cols[i].item()) for i in (0, 5, 9)]
    for (b, t), v in zip(bad, (float("nan"), float("inf"), float("-inf"))):
        batch["entropies"][b, t] = v
    stats = StepStats.from_batch(**batch)
    values = stats.to_record(0).values
    assert values["dropped_tokens"] == 3
    finite = comp & torch.isfinite(batch["entropies"])
    assert values["entropy"] == pytest.approx(batch["entropies"][finite].double().mean().item(), rel=1e-9)
    # dropped tokens still count as completion tokens (response length is about the rollout)
    assert values["tokens"] == comp.sum().item()


def test_non_finite_logps_and_rewards_are_dropped_and_counted():
    batch = make_batch(8, 30, seed=7)
    comp = batch["completion_mask"].bool()
    b, t = comp.nonzero()[2].tolist()
    batch["logps"][b, t] = float("-inf")
    batch["rewards"][1] = float("nan")
    batch["rewards"][2] = float("inf")
    stats = StepStats.from_batch(**batch)
    values = stats.to_record(0).values
    assert values["dropped_nll_tokens"] == 1 and values["dropped_rewards"] == 2
    keep = torch.isfinite(batch["rewards"])
    assert values["reward"] == pytest.approx(batch["rewards"][keep].double().mean().item(), rel=1e-12)
    assert values["sequences/success"] + values["sequences/failure"] == keep.sum().item()
    rows_unknown = comp[~keep].sum().item()
    assert stats.sums(outcome="unknown").tokens == rows_unknown
    nll = -batch["logps"].double()
    ok = comp & torch.isfinite(nll)
    plan = batch["planning_mask"] & ok
    assert values["nll/planning"] == pytest.approx(nll[plan].mean().item(), rel=1e-9)


# ---------------------------------------------------------------------- merging


def test_merging_unequal_micro_batches_equals_the_whole_batch():
    # micro-batches of different sizes, padded lengths and entropy scales: the per-piece means
    # differ a lot, so averaging means (or fractions) instead of adding sums would be caught.
    pieces = [
        make_batch(3, 50, seed=10, scale=0.2, plan_p=0.05),
        make_batch(11, 20, seed=11, scale=1.0, plan_p=0.4),
        make_batch(6, 35, seed=12, scale=3.0, plan_p=0.2),
    ]
    whole = concat(pieces)
    merged = StepStats.merge_all(StepStats.from_batch(**p) for p in pieces)
    direct = StepStats.from_batch(**whole)
    assert_stats_close(merged, direct)
    got, want = merged.to_record(0).values, direct.to_record(0).values
    assert got.keys() == want.keys()
    assert_values_close(dict(got), dict(want), rel=1e-12)
    assert_values_close(dict(got), reference(whole), rel=1e-9)
    assert merged.phrase_counts == direct.phrase_counts
    for key in merged.cells:  # integer counts are exact
        assert merged.cells[key].tokens == direct.cells[key].tokens
        assert merged.cells[key].entropy_tokens == direct.cells[key].entropy_tokens
    # the test has teeth: the mean of per-piece means is far from the whole-batch mean
    piece_means = [StepStats.from_batch(**p).to_record(0).values["entropy/planning"] for p in pieces]
    assert abs(sum(piece_means) / len(piece_means) - want["entropy/planning"]) > 0.05


def test_semantic_entropy_comes_from_merged_counts_not_from_piece_entropies():
    def piece(phrase):
        return StepStats.from_batch(
            torch.ones(2, 2), torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool),
            phrases=[[phrase], [phrase, phrase]],
        )

    a, b = piece("wait"), piece("but")
    assert a.semantic_entropy == 0.0 and b.semantic_entropy == 0.0
    assert a.merge(b).semantic_entropy == pytest.approx(math.log(2), rel=1e-12)


def test_merge_is_associative_commutative_with_an_identity():
    a, b, c = (StepStats.from_batch(**make_batch(5, 9, seed=s)) for s in (20, 21, 22))
    left = a.merge(b).merge(c).to_record(0).values
    right = a.merge(b.merge(c)).to_record(0).values
    swapped = c.merge(a).merge(b).to_record(0).values
    assert_values_close(dict(left), dict(right), rel=1e-12)
    assert_values_close(dict(left), dict(swapped), rel=1e-12)
    assert a.merge(StepStats.empty()) == a == StepStats.empty().merge(a)
    assert StepStats.merge_all([]) == StepStats.empty()


def test_phrases_absent_on_one_piece_merge_as_no_phrases_there():
    with_phrases = make_batch(4, 8, seed=23)
    without = dict(make_batch(3, 8, seed=24), phrases=None)
    merged = StepStats.from_batch(**with_phrases).merge(StepStats.from_batch(**without))
    assert merged.phrase_counts == dict(Counter(p for s in with_phrases["phrases"] for p in s))
    assert StepStats.from_batch(**without).phrase_counts is None


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=24), max_size=5),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_any_split_into_micro_batches_merges_to_the_whole(cuts, seed):
    batch = make_batch(24, 13, seed=seed, bad_p=0.1)
    bounds = [0, *sorted(cuts), 24]
    pieces = []
    for lo, hi in zip(bounds, bounds[1:]):
        part = {k: v[lo:hi] for k, v in batch.items()}
        pieces.append(StepStats.from_batch(**part))
    merged, whole = StepStats.merge_all(pieces), StepStats.from_batch(**batch)
    assert_stats_close(merged, whole)


# ---------------------------------------------------------------------- outcome basis


def test_advantages_split_on_sign_when_no_rewards_are_given():
    batch = make_batch(10, 12, seed=30)
    advantages = torch.linspace(-1, 1, 10)
    stats = StepStats.from_batch(**dict(batch, rewards=None), advantages=advantages)
    values = stats.to_record(0).values
    assert stats.outcome_basis == "advantage"
    assert "reward" not in values
    assert values["sequences/success"] == (advantages > 0).sum().item()
    comp = batch["completion_mask"].bool()
    exe = comp & ~batch["planning_mask"] & (advantages > 0)[:, None]
    assert values["entropy/execution/success"] == pytest.approx(
        batch["entropies"][exe].double().mean().item(), rel=1e-9)


def test_rewards_take_precedence_over_advantages():
    batch = make_batch(10, 12, seed=31)
    both = StepStats.from_batch(**batch, advantages=-batch["rewards"])
    assert both == StepStats.from_batch(**batch)


def test_merging_reward_and_advantage_splits_is_refused():
    batch = make_batch(4, 6, seed=32)
    by_reward = StepStats.from_batch(**batch)
    by_adv = StepStats.from_batch(**dict(batch, rewards=None), advantages=batch["rewards"])
    with pytest.raises(ValueError, match="rewards.*advantages|advantages.*rewards"):
        by_reward.merge(by_adv)
    # pieces without any outcome merge with either
    no_outcome = StepStats.from_batch(**dict(batch, rewards=None))
    assert by_reward.merge(no_outcome).outcome_basis == "reward"


def test_rewards_may_be_a_list():
    batch = make_batch(5, 6, seed=33)
    as_list = dict(batch, rewards=batch["rewards"].tolist())
    assert StepStats.from_batch(**as_list) == StepStats.from_batch(**batch)


# ---------------------------------------------------------------------- bad input


def _base(B=3, T=4):
    return dict(
        entropies=torch.rand(B, T),
        completion_mask=torch.ones(B, T, dtype=torch.bool),
        planning_mask=torch.zeros(B, T, dtype=torch.bool),
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(entropies=torch.ones(3, 4, dtype=torch.long)), r"entropies: expected a float tensor"),
        (dict(entropies=torch.rand(3, 4, 5)), r"entropies: expected a \(batch, tokens\)"),
        (dict(entropies=[[0.1] * 4] * 3), r"entropies: expected a torch.Tensor"),
        (dict(completion_mask=torch.ones(3, 5)), r"completion_mask: expected shape \(3, 4\)"),
        (dict(completion_mask=torch.ones(3, 4, dtype=torch.complex64)), r"completion_mask: .*complex64"),
        (dict(planning_mask=torch.zeros(3, 4)), r"planning_mask: expected a bool or int tensor"),
        (dict(planning_mask=torch.zeros(4, 3, dtype=torch.bool)), r"planning_mask: expected shape"),
        (dict(logps=torch.zeros(3, 4, dtype=torch.int32)), r"logps: expected a float tensor"),
        (dict(logps=torch.zeros(3)), r"logps: expected shape"),
        (dict(rewards=torch.zeros(4)), r"rewards: expected one value per sequence, shape \(3,\)"),
        (dict(rewards=torch.zeros(3, 4)), r"rewards: expected one value per sequence"),
        (dict(rewards=["a", "b", "c"]), r"rewards: expected a tensor or a sequence of numbers"),
        (dict(advantages=torch.zeros(2)), r"advantages: expected one value per sequence"),
        (dict(phrases=[["wait"]] * 2), r"phrases: expected one list per sequence \(3\), got 2"),
        (dict(phrases=["wait", "but", "hmm"]), r"phrases\[0\]: expected a list of phrases, got str"),
        (dict(phrases=[["wait"], [3], []]), r"phrases: every phrase must be a non-empty string"),
        (dict(phrases="wait"), r"phrases: expected a list of 3 lists"),
        (dict(completion_mask=torch.ones(3, 4, device="meta")), r"completion_mask: on device meta"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_tensor(change, match):
    with pytest.raises(ValueError, match=match):
        StepStats.from_batch(**{**_base(), **change})


def test_sums_rejects_unknown_class_or_outcome():
    stats = StepStats.from_batch(**_base())
    with pytest.raises(ValueError, match="token_class"):
        stats.sums("thinking")
    with pytest.raises(ValueError, match="outcome"):
        stats.sums(outcome="win")


# ---------------------------------------------------------------------- JSON form


def test_json_round_trip_is_lossless():
    stats = StepStats.from_batch(**make_batch(9, 17, seed=40))
    data = json.loads(json.dumps(stats.to_json()))
    assert data["format"] == STATS_FORMAT
    assert StepStats.from_json(data) == stats
    assert StepStats.from_json(StepStats.empty().to_json()) == StepStats.empty()


def test_from_json_treats_missing_cells_as_zero():
    stats = StepStats.from_json({"sequences": 2, "cells": {"planning": {"unknown": {
        "tokens": 4, "entropy_tokens": 4, "entropy_sum": 2.0, "entropy_sumsq": 1.5}}}})
    assert stats.cells[("planning", "unknown")] == TokenSums(4, 4, 2.0, 1.5, 0, 0.0)
    assert stats.cells[("execution", "success")] == TokenSums()
    values = stats.to_record(1).values
    assert values["entropy/planning"] == 0.5 and values["planning_frac"] == 1.0


def _valid_json():
    return StepStats.from_batch(**make_batch(4, 6, seed=41)).to_json()


def _set(path, value):
    def change(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return d
    return change


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: [d], r"step statistics: expected a JSON object"),
        (_set(("surprise",), 1), r"unknown field\(s\) 'surprise'"),
        (_set(("format",), "phasewatch.step_stats/9"), r"format: expected"),
        (_set(("sequences",), -1), r"sequences: expected a non-negative integer"),
        (_set(("sequences",), 2.5), r"sequences: expected a non-negative integer"),
        (_set(("sequences",), True), r"sequences: expected a non-negative integer"),
        (_set(("reward_sum",), float("nan")), r"reward_sum: expected a finite number"),
        (_set(("reward_sum",), "1.0"), r"reward_sum: expected a finite number"),
        (_set(("cells", "planning", "success", "tokens"), -3), r"cells\.planning\.success\.tokens"),
        (_set(("cells", "execution", "failure", "entropy_sum"), float("inf")),
         r"cells\.execution\.failure\.entropy_sum: expected a finite number"),
        (_set(("cells", "planning", "unknown", "entropy_tokens"), 10**9),
         r"cells\.planning\.unknown\.entropy_tokens: .* exceeds tokens"),
        (_set(("cells", "planning", "unknown", "entropy_sumsq"), -1.0),
         r"cells\.planning\.unknown\.entropy_sumsq: must be >= 0"),
        (_set(("cells", "thinking"), {}), r"cells: unknown token class 'thinking'"),
        (_set(("cells", "planning", "win"), {}), r"cells\.planning: unknown outcome 'win'"),
        (_set(("cells", "planning", "success"), {"tokenz": 1}), r"cells\.planning\.success: unknown field"),
        (_set(("cells", "planning"), [1, 2]), r"cells\.planning: expected an object"),
        (_set(("outcome_basis",), "vibes"), r"outcome_basis: expected null or one of"),
        (_set(("phrase_counts",), {"wait": -1}), r"phrase_counts\['wait'\]: expected a non-negative integer"),
        (_set(("phrase_counts",), ["wait"]), r"phrase_counts: expected an object or null"),
        (_set(("success_sequences",), 10**6), r"exceeds sequences"),
        (_set(("dropped_nll_tokens",), 10**6), r"dropped_nll_tokens: .* exceeds tokens"),
    ],
)
def test_from_json_rejects_bad_forms_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        StepStats.from_json(change(_valid_json()))


def test_from_json_rejects_outcome_counts_without_a_basis():
    data = _valid_json()
    data["outcome_basis"] = None
    with pytest.raises(ValueError, match="outcome_basis"):
        StepStats.from_json(data)


def test_layout_constants_cover_every_cell():
    stats = StepStats.from_batch(**make_batch(3, 5, seed=42))
    assert set(stats.cells) == {(c, o) for c in TOKEN_CLASSES for o in OUTCOMES}
    assert StepStats._from_vector(stats._to_vector(), stats.outcome_basis, stats.phrase_counts) == stats
