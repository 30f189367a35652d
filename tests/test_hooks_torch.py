"""Watcher, the trainer-agnostic hook core, with the real labeler, stats, monitor and detector.

Batches are built from real text through a tokenizer trained here, so the planning mask comes
from the real labeler; per-token entropies are synthetic tensors whose shape over steps we
choose (execution consolidating, then planning rising), so the real detector finds a real
phase shift within a few dozen steps and the reweighting schedule can be checked end to end.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import urllib.request

import pytest
import torch

import phasewatch
from phasewatch.events import PHASE_SHIFT
from phasewatch.hooks.torch import PHASE_CODES, Watcher
from phasewatch.labels import PlanningLabeler
from phasewatch.monitor import Monitor
from phasewatch.stats import StepStats
from phasewatch.tiny import train_tokenizer

TEXTS = [
    "wait, let me check the sum again. so 3 + 4 = 7 and 7 * 2 = 14.",
    "alternatively we multiply first: 2 * 7 = 14. but the answer is 14.",
    "first compute 12 / 4 = 3. then 3 + 9 = 12. therefore x = 12.",
    "hmm, maybe try another approach: 5 * 5 = 25, 25 - 1 = 24.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 10, vocab_size=300, kind="metaspace")


@pytest.fixture(scope="module")
def batch(tokenizer):
    """(ids, mask): 8 right-padded completions of different lengths."""
    encoded = [tokenizer(t)["input_ids"] for t in TEXTS]
    length = max(map(len, encoded))
    ids = torch.full((8, length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(8, length, dtype=torch.long)
    for i in range(8):
        e = encoded[i % 4]
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask


def entropies_at(step: int, planning: torch.Tensor) -> torch.Tensor:
    """Execution entropy falls then flattens; planning entropy rises from step 25 (seeded)."""
    execution = 0.5 + 1.5 * math.exp(-step / 8)
    plan = 1.0 + (0.08 * (step - 25) if step > 25 else 0.0)
    base = torch.where(planning, torch.tensor(plan), torch.tensor(execution))
    return base + 0.03 * torch.randn(base.shape, generator=torch.Generator().manual_seed(step))


ADVANTAGES = torch.linspace(-1.0, 1.0, 8)


def run_steps(watch: Watcher, batch, steps, planning) -> list[tuple[int, float, str, int | None]]:
    ids, mask = batch
    out = []
    for s in steps:
        result = watch.step(ids, mask, entropies=entropies_at(s, planning), advantages=ADVANTAGES,
                            rewards=ADVANTAGES, step=s)
        out.append((s, result.alpha, result.decision.phase, result.decision.shift_step))
    return out


def test_always_reweights_exactly_the_planning_tokens(tokenizer, batch):
    ids, mask = batch
    watch = Watcher(phasewatch.Config(run="always", reweight="always", alpha=0.3), tokenizer, strict=True)
    expected_mask = PlanningLabeler().label(ids, mask, tokenizer).planning_mask
    assert expected_mask.any() and (~expected_mask & mask.bool()).any()
    out = watch.step(ids, mask, entropies=torch.ones(ids.shape), advantages=ADVANTAGES)
    assert torch.equal(out.planning_mask, expected_mask)
    base = ADVANTAGES[:, None].expand(ids.shape)
    assert out.alpha == pytest.approx(0.3)
    assert torch.equal(out.advantages[~expected_mask], base[~expected_mask])
    diff = (out.advantages - base)[expected_mask]
    assert torch.allclose(diff, 0.3 * base.abs()[expected_mask])
    watch.close()


def test_off_leaves_advantages_identical(tokenizer, batch):
    ids, mask = batch
    watch = Watcher(phasewatch.Config(run="off", reweight="off"), tokenizer, strict=True)
    out = watch.step(ids, mask, entropies=torch.ones(ids.shape), advantages=ADVANTAGES)
    assert out.alpha == 0.0
    assert torch.equal(out.advantages, ADVANTAGES[:, None].expand(ids.shape))
    watch.close()


def test_record_is_the_whole_batch_statistics_and_reaches_the_monitor(tokenizer, batch):
    ids, mask = batch
    monitor = Monitor()
    watch = Watcher(phasewatch.Config(run="rec", monitor=monitor), tokenizer, strict=True)
    labels = PlanningLabeler().label(ids, mask, tokenizer)
    ent = entropies_at(3, labels.planning_mask)
    logps = -ent / 2
    # two micro-batches observed separately, then one step: must equal the whole batch at once
    for rows in (slice(0, 3), slice(3, 8)):
        watch.observe(ent[rows], mask[rows], labels.planning_mask[rows], logps=logps[rows],
                      rewards=ADVANTAGES[rows], phrases=labels.phrases[rows])
    watch.end_step(7)
    watch.sync_decision()  # the in-process monitor works on its own thread: wait for it
    whole = StepStats.from_batch(ent, mask, labels.planning_mask, logps=logps, rewards=ADVANTAGES,
                                 phrases=labels.phrases).to_record(7)
    stored = monitor.records("rec")
    assert [r.step for r in stored] == [7]
    assert set(stored[0].values) == set(whole.values)
    for name, value in whole.values.items():
        assert stored[0].values[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    metrics = watch.metrics()
    assert metrics["phasewatch/entropy/planning"] == pytest.approx(whole.values["entropy/planning"])
    assert metrics["phasewatch/semantic_entropy"] == pytest.approx(whole.values["semantic_entropy"])
    assert metrics["phasewatch/phase"] == PHASE_CODES["warmup"]
    watch.close()


def test_logits_give_the_same_record_as_their_entropies(tokenizer, batch):
    ids, mask = batch
    logits = torch.randn(*ids.shape, 50, generator=torch.Generator().manual_seed(1))
    ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    a = Watcher(phasewatch.Config(run="a"), tokenizer, strict=True)
    b = Watcher(phasewatch.Config(run="b"), tokenizer, strict=True)
    ra = a.step(ids, mask, logits=logits).record
    rb = b.step(ids, mask, entropies=ent).record
    for name in ("entropy", "entropy/planning", "entropy/execution"):
        assert ra.values[name] == pytest.approx(rb.values[name], rel=1e-5)
    with pytest.raises(ValueError, match="exactly one of entropies"):
        a.step(ids, mask)
    a.close()
    b.close()


def test_auto_mode_shifts_once_ramps_and_survives_a_restart(tokenizer, batch):
    planning = PlanningLabeler().label(*batch, tokenizer).planning_mask
    config = dict(reweight="auto", alpha=0.2, ramp_steps=5)
    whole = Watcher(phasewatch.Config(run="whole", **config), tokenizer, strict=True)
    uninterrupted = run_steps(whole, batch, range(70), planning)
    shift_steps = {s for _, _, _, s in uninterrupted if s is not None}
    assert len(shift_steps) == 1
    shift = shift_steps.pop()
    assert 25 < shift < 60, "the synthetic rise must be detected mid-run for this test to mean anything"
    alphas = {s: a for s, a, _, _ in uninterrupted}
    assert all(alphas[s] == 0.0 for s in range(shift + 1))  # nothing before the decision is known
    assert 0.0 < alphas[shift + 1] < 0.2 and alphas[shift + 6] == pytest.approx(0.2)  # the ramp

    # stop two steps into the ramp, restore into a fresh watcher with a fresh in-memory monitor
    stop = shift + 2
    first = Watcher(phasewatch.Config(run="split", **config), tokenizer, strict=True)
    run_steps(first, batch, range(stop + 1), planning)
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    second = Watcher(phasewatch.Config(run="split", **config), tokenizer, strict=True)
    second.load_state_dict(state)
    resumed = run_steps(second, batch, range(stop + 1, 70), planning)
    assert [(s, a, p, sh) for s, a, p, sh in resumed] == [u for u in uninterrupted if u[0] > stop]
    events = second.client.monitor.events("split")
    assert [e.kind for e in events].count(PHASE_SHIFT) == 1  # no second shift after the restart
    assert [e.to_json() for e in events] == [e.to_json() for e in whole.client.monitor.events("whole")]
    whole.close()
    second.close()


class BrokenLabeler(PlanningLabeler):
    def label(self, completion_ids, completion_mask, tokenizer):
        raise RuntimeError("labeler exploded")


def test_a_failing_labeler_fails_open_counted_and_logged_once(tokenizer, batch, caplog):
    ids, mask = batch
    watch = Watcher(phasewatch.Config(run="broken", reweight="always"), tokenizer, labeler=BrokenLabeler())
    with caplog.at_level(logging.WARNING, logger="phasewatch.hooks"):
        for step in range(3):
            out = watch.step(ids, mask, entropies=torch.ones(ids.shape), advantages=ADVANTAGES)
            assert torch.equal(out.advantages, ADVANTAGES[:, None].expand(ids.shape))
            assert out.alpha == 0.0 and out.planning_mask is None
    assert watch.failures.counts["label"] == 3
    assert watch.metrics()["phasewatch/errors"] == 3
    warnings = [r for r in caplog.records if "label failed" in r.getMessage()]
    assert len(warnings) == 1 and "labeler exploded" in warnings[0].getMessage()
    with pytest.raises(RuntimeError, match="labeler exploded"):
        Watcher(phasewatch.Config(run="strict"), tokenizer, labeler=BrokenLabeler(), strict=True).step(
            ids, mask, entropies=torch.ones(ids.shape))
    watch.close()


def test_bad_configuration_is_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="tokenizer"):
        Watcher(phasewatch.Config(run="x"))
    with pytest.raises(ValueError, match="phasewatch.Config"):
        Watcher({"reweight": "auto"}, tokenizer)


def test_a_tokenizer_that_cannot_decode_is_refused_at_construction():
    # before: accepted, then every step's labeling failed (counted, logged once): a run with no
    # planning tokens at all
    with pytest.raises(ValueError, match=r"tokenizer: a dict has no decode\(\)"):
        Watcher(phasewatch.Config(run="x"), {"input_ids": [1, 2]})


def test_a_failing_exporter_does_not_cost_the_run_its_monitor(tokenizer, batch, caplog):
    """The Grafana annotator cannot be built (a URL changed after the Config checked it): that
    listener is lost, counted and logged; the in-process monitor and reweighting carry on."""
    ids, mask = batch
    config = phasewatch.Config(run="listener", reweight="always")
    config.grafana_url = "grafana:3000"  # no scheme: GrafanaAnnotator refuses it
    with caplog.at_level(logging.WARNING, logger="phasewatch.hooks"):
        watch = Watcher(config, tokenizer)
        results = [watch.step(ids, mask, entropies=torch.ones(ids.shape), advantages=ADVANTAGES, step=s)
                   for s in range(3)]
    assert watch.failures.counts == {"annotations": 1}
    assert watch.client is not None and watch.client.flush(10)
    assert [r.step for r in watch.client.monitor.records("listener")] == [0, 1, 2]
    assert results[-1].alpha == pytest.approx(0.2)  # reweighting still follows the schedule
    assert sum("annotations failed" in r.getMessage() for r in caplog.records) == 1
    watch.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_remote_monitor_over_real_http(tokenizer, batch):
    """A real `phasewatch serve` app (uvicorn on loopback): records arrive, decisions return."""
    import uvicorn

    from phasewatch.server import create_app

    monitor = Monitor()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(monitor), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        ids, mask = batch
        planning = PlanningLabeler().label(ids, mask, tokenizer).planning_mask
        watch = Watcher(phasewatch.Config(run="remote", monitor=f"http://127.0.0.1:{port}"), tokenizer, strict=True)
        for s in range(3):
            watch.step(ids, mask, entropies=entropies_at(s, planning), step=s)
        assert watch.client.flush(10)
        assert [r.step for r in monitor.records("remote")] == [0, 1, 2]
        assert watch.client.decision.step == 2
        watch.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_metrics_port_serves_prometheus_from_the_trainer_process(tokenizer, batch):
    ids, mask = batch
    watch = Watcher(phasewatch.Config(run="prom", metrics_port=0), tokenizer, strict=True)
    for s in range(4):
        watch.step(ids, mask, entropies=torch.ones(ids.shape), step=s)
    url = watch._metrics_server.url
    deadline = time.monotonic() + 5
    while True:  # the exporter is a monitor listener on its own thread
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        if 'phasewatch_step{run="prom"} 3.0' in body or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'phasewatch_step{run="prom"} 3.0' in body
    watch.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)  # closed with the watcher


# -- rollouts, drops, pause settings ---------------------------------------------------------


def test_watcher_saves_rollouts_that_grams_mine_reads(tokenizer, batch, tmp_path):
    """Config(save_rollouts=...): each step's completions, decoded without padding or masked
    tokens, with their rewards and step; `phasewatch grams mine` reads the file end to end."""
    from phasewatch.cli import main
    from phasewatch.grams.rollouts import read_rollouts
    from phasewatch.lexicon import Lexicon, fold_text

    ids, mask = batch
    mask = mask.clone()
    last = int(mask[1].sum()) - 1
    mask[1, last] = 0  # a masked real token (e.g. tool output) is not part of the saved text
    path = tmp_path / "out" / "rollouts.jsonl"
    watch = Watcher(phasewatch.Config(run="dump", save_rollouts=path), tokenizer, strict=True)
    rewards = torch.tensor([1.0, 0.0, 1.0, 2.0, float("nan"), 1.0, 0.5, 1.0])
    for s in range(1, 6):
        watch.step(ids, mask, entropies=torch.ones(ids.shape), rewards=rewards, step=s)
    watch.close()
    rows = read_rollouts(path)
    assert [r.step for r in rows] == [s for s in range(1, 6) for _ in range(8)]
    assert {r.run for r in rows} == {"dump"}
    assert [r.reward for r in rows[:8]] == [1.0, 0.0, 1.0, 2.0, None, 1.0, 0.5, 1.0]
    for i, row in enumerate(rows[:8]):
        kept = ids[i][mask[i].bool()].tolist()
        assert row.text == tokenizer.decode(kept, skip_special_tokens=True)
        assert "<pad>" not in row.text and row.text.strip()
    assert rows[1].text != tokenizer.decode(ids[1][: last + 1].tolist(), skip_special_tokens=True)
    assert "wait, let me check" in fold_text(rows[0].text)

    lexicon = tmp_path / "mined.txt"
    assert main(["grams", "mine", str(path), "--embedder", "hashing", "--min-successful", "10",
                 "--top-frac", "1", "--out", str(lexicon), "--quiet"]) == 0
    phrases = Lexicon.from_file(lexicon).phrases
    texts = " | ".join(fold_text(r.text) for r in rows)
    assert phrases and all(p in texts for p in phrases)


def test_rollouts_are_capped_and_a_failing_dump_fails_open(tokenizer, batch, tmp_path, caplog):
    ids, mask = batch
    capped = Watcher(phasewatch.Config(run="cap", save_rollouts=tmp_path / "cap.jsonl", rollouts_max_bytes=1500),
                     tokenizer, strict=True)
    for s in range(4):
        capped.step(ids, mask, entropies=torch.ones(ids.shape), rewards=ADVANTAGES, step=s)
    assert 0 < capped.rollouts.written < 32 and capped.rollouts.written + capped.rollouts.dropped == 32
    assert (tmp_path / "cap.jsonl").stat().st_size <= 1500
    capped.close()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    watch = Watcher(phasewatch.Config(run="nodump", monitor=Monitor(), save_rollouts=blocker / "r.jsonl"), tokenizer)
    with caplog.at_level(logging.WARNING, logger="phasewatch.hooks"):
        for s in range(3):
            watch.step(ids, mask, entropies=torch.ones(ids.shape), rewards=ADVANTAGES, step=s)
    assert watch.failures.counts == {"rollouts": 3}
    assert sum("rollouts failed" in r.getMessage() for r in caplog.records) == 1
    assert watch.client.flush(10) and [r.step for r in watch.client.monitor.records("nodump")] == [0, 1, 2]
    assert watch.dropped == 0  # the records themselves were not lost
    watch.close()


def test_rollouts_path_per_rank():
    from phasewatch.hooks.torch import rollouts_path

    assert str(rollouts_path("d/rollouts.jsonl", 1, 0)) == "d/rollouts.jsonl"
    assert str(rollouts_path("d/rollouts.jsonl", 4, 3)) == "d/rollouts.rank3.jsonl"
    assert str(rollouts_path("rollouts.jsonl.gz", 2, 0)) == "rollouts.rank0.jsonl.gz"
    assert str(rollouts_path("dump", 2, 1)) == "dump.rank1"


def test_dropped_steps_reach_prometheus_for_an_in_process_monitor(tokenizer, batch):
    """A step lost to a phasewatch failure is counted in phasewatch/dropped and in the
    exporter's phasewatch_records_dropped_total{reason="other"} (served over real HTTP)."""
    ids, mask = batch
    watch = Watcher(phasewatch.Config(run="drops", metrics_port=0), tokenizer, labeler=BrokenLabeler())
    for s in range(3):
        watch.step(ids, mask, entropies=torch.ones(ids.shape), step=s)
    assert watch.metrics()["phasewatch/dropped"] == 3
    body = urllib.request.urlopen(watch._metrics_server.url, timeout=5).read().decode()
    line = [x for x in body.splitlines() if x.startswith("phasewatch_records_dropped_total{")
            and 'reason="other"' in x and 'run="drops"' in x]
    assert line and float(line[0].rsplit(" ", 1)[1]) == 3.0
    watch.close()


def test_pause_settings_reach_the_monitor_schedule(tokenizer, batch):
    ids, mask = batch
    monitor = Monitor()
    config = phasewatch.Config(run="pause", monitor=monitor, reweight="always",
                               pause_on=("entropy_collapse", "entropy_explosion"), pause_steps=5)
    watch = Watcher(config, tokenizer, strict=True)
    watch.step(ids, mask, entropies=torch.ones(ids.shape), step=0)
    schedule = monitor.schedule("pause")
    assert schedule.pause_on == ("entropy_collapse", "entropy_explosion") and schedule.pause_steps == 5
    assert watch.schedule == schedule
    watch.close()


def _rank_worker(rank: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: a Watcher saving rollouts (spawned by the test below)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        tok = train_tokenizer(TEXTS * 10, vocab_size=300, kind="metaspace")
        encoded = [tok(TEXTS[rank])["input_ids"], tok(TEXTS[rank + 2])["input_ids"]]
        length = max(map(len, encoded))
        ids = torch.full((2, length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(2, length, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        config = phasewatch.Config(run="ranks", save_rollouts=f"{out}/rollouts.jsonl", reweight="off")
        watch = Watcher(config, tok, strict=True)
        watch.step(ids, mask, entropies=torch.ones(ids.shape), rewards=torch.tensor([rank, rank + 0.5]), step=1)
        watch.close()
    finally:
        dist.destroy_process_group()


def test_each_rank_writes_its_own_rollout_file(tmp_path):
    """Two real gloo ranks: no gather, no waiting; rank N appends to rollouts.rankN.jsonl."""
    import torch.multiprocessing as mp

    from phasewatch.grams.rollouts import read_rollouts
    from phasewatch.lexicon import fold_text

    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert not (tmp_path / "rollouts.jsonl").exists()
    for rank in (0, 1):
        rows = read_rollouts(tmp_path / f"rollouts.rank{rank}.jsonl")
        assert [(r.step, r.reward, r.run) for r in rows] == [(1, rank, "ranks"), (1, rank + 0.5, "ranks")]
        assert [fold_text(r.text)[:12] for r in rows] == [fold_text(TEXTS[rank])[:12], fold_text(TEXTS[rank + 2])[:12]]
