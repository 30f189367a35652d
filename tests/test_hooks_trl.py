"""PhaseWatchGRPOTrainer on a real TRL GRPOTrainer run (tiny model, local tokenizer, CPU).

Each run is a few optimizer steps of the setup in ``hooks_trl_worker.py``. Runs that must be
compared use the same seed, so TRL generates the same completions for the same step; a
recording subclass keeps what TRL's loss received.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

import phasewatch
from phasewatch.labels import PlanningLabeler
from phasewatch.stats import StepStats

trl = pytest.importorskip("trl")

from hooks_trl_worker import build_trainer, recording  # noqa: E402
from phasewatch.hooks.trl import STATE_FILE, PhaseWatchGRPOTrainer, PhaseWatchMixin, attach  # noqa: E402

PER_CLASS_METRICS = ("phasewatch/entropy", "phasewatch/entropy/execution", "phasewatch/planning_frac",
                     "phasewatch/phase", "phasewatch/alpha", "phasewatch/errors")


def train_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    trainer = build_trainer(recording(trl.GRPOTrainer), tmp_path_factory.mktemp("plain"))
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def off(tmp_path_factory):
    out = tmp_path_factory.mktemp("off")
    trainer = build_trainer(recording(PhaseWatchGRPOTrainer), out,
                            phasewatch=phasewatch.Config(run="off", reweight="off", save_rollouts=out / "rollouts.jsonl"))
    trainer.train()
    return trainer


def test_per_class_metrics_reach_trl_logs_every_step(off):
    logs = train_logs(off)
    assert [h["step"] for h in logs] == [1, 2, 3]
    planning_seen = False
    for h in logs:
        for name in PER_CLASS_METRICS:
            assert name in h, (name, h)
        # the entropies phasewatch reads are the ones TRL computed for its own `entropy` metric
        assert h["phasewatch/entropy"] == pytest.approx(h["entropy"], rel=1e-5)
        assert 0.0 <= h["phasewatch/planning_frac"] < 1.0
        assert h["phasewatch/alpha"] == 0.0 and h["phasewatch/errors"] == 0
        planning_seen |= "phasewatch/entropy/planning" in h
    assert planning_seen, "the tiny setup must produce planning tokens"
    # the monitor got one record per optimizer step, the same numbers TRL logged
    records = off.phasewatch.client.monitor.records("off")
    assert [r.step for r in records] == [1, 2, 3]
    for record, h in zip(records, logs):
        assert record.values["entropy/execution"] == pytest.approx(h["phasewatch/entropy/execution"])
        assert record.values["planning_frac"] == pytest.approx(h["phasewatch/planning_frac"])


def test_record_equals_statistics_of_what_the_loss_saw(off):
    """Labels travel with TRL's shuffled batch: recompute step 1 from the loss inputs."""
    tokenizer = off.processing_class
    inputs = off.loss_inputs[0]
    labels = PlanningLabeler().label(inputs["completion_ids"], inputs["completion_mask"], tokenizer)
    assert torch.equal(inputs["planning_mask"], labels.planning_mask)
    assert inputs["planning_phrases"] == labels.phrases
    record = off.phasewatch.client.monitor.records("off")[0]
    assert record.values["tokens/planning"] == int(labels.planning_mask.sum())
    expected = StepStats.from_batch(torch.ones(labels.planning_mask.shape), inputs["completion_mask"],
                                    labels.planning_mask, phrases=labels.phrases).to_record(1)
    assert record.values.get("semantic_entropy") == pytest.approx(expected.values.get("semantic_entropy"))


def test_off_is_identical_to_plain_grpo(plain, off):
    assert len(off.loss_inputs) == len(plain.loss_inputs) == 3
    for a, b in zip(plain.loss_inputs, off.loss_inputs):
        assert torch.equal(a["completion_ids"], b["completion_ids"])
        assert torch.equal(a["advantages"], b["advantages"])
    assert [h["loss"] for h in train_logs(plain)] == [h["loss"] for h in train_logs(off)]


def test_always_changes_exactly_planning_tokens_by_alpha_abs_a(plain, tmp_path):
    alpha = 0.25
    trainer = build_trainer(recording(PhaseWatchGRPOTrainer), tmp_path,
                            phasewatch=phasewatch.Config(run="always", reweight="always", alpha=alpha), max_steps=1)
    trainer.train()
    reweighted, base = trainer.loss_inputs[0], plain.loss_inputs[0]
    assert torch.equal(reweighted["completion_ids"], base["completion_ids"])  # same rollouts
    mask = reweighted["planning_mask"]
    assert mask.any()
    a = base["advantages"][:, None].expand(mask.shape)
    adv = reweighted["advantages"]
    assert adv.shape == mask.shape
    assert torch.equal(adv[~mask], a[~mask])
    assert torch.allclose(adv[mask] - a[mask], alpha * a[mask].abs())
    assert train_logs(trainer)[0]["phasewatch/alpha"] == alpha


class BrokenLabeler(PlanningLabeler):
    def label(self, completion_ids, completion_mask, tokenizer):
        raise RuntimeError("labeler exploded")


def test_exception_inside_the_hook_does_not_stop_training(tmp_path, caplog):
    trainer = build_trainer(recording(PhaseWatchGRPOTrainer), tmp_path, max_steps=2,
                            phasewatch=phasewatch.Config(run="broken", reweight="always"))
    trainer.phasewatch.labeler = BrokenLabeler()
    with caplog.at_level(logging.WARNING, logger="phasewatch.hooks"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert [h["phasewatch/errors"] for h in train_logs(trainer)] == [1, 2]
    assert [h["phasewatch/dropped"] for h in train_logs(trainer)] == [1, 2]  # steps with nothing measured
    for inputs in trainer.loss_inputs:
        assert inputs["advantages"].dim() == 1  # untouched: GRPO's own (B,) advantages
    assert len([r for r in caplog.records if "label failed" in r.getMessage()]) == 1


def test_resume_restores_monitor_and_decision(tmp_path):
    """Resuming from checkpoint-2 ends in the same state as never stopping."""
    config = dict(reweight="auto", alpha=0.2, ramp_steps=3)
    whole = build_trainer(PhaseWatchGRPOTrainer, tmp_path / "a", max_steps=3, save_strategy="steps", save_steps=2,
                          phasewatch=phasewatch.Config(run="resume", **config))
    whole.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["decision"]["step"] == 2 and [r["step"] for r in state["records"]] == [1, 2]

    resumed = build_trainer(PhaseWatchGRPOTrainer, tmp_path / "b", max_steps=3,
                            phasewatch=phasewatch.Config(run="resume", **config))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3
    monitor_a, monitor_b = whole.phasewatch.client.monitor, resumed.phasewatch.client.monitor
    records_a, records_b = monitor_a.records("resume"), monitor_b.records("resume")
    assert [r.step for r in records_b] == [1, 2, 3]  # history replayed, then one new step
    assert [dict(r.values) for r in records_b] == [dict(r.values) for r in records_a]
    assert [e.to_json() for e in monitor_b.events("resume")] == [e.to_json() for e in monitor_a.events("resume")]
    assert monitor_b.readings("resume") == monitor_a.readings("resume")
    assert resumed.phasewatch.decision == whole.phasewatch.decision


def test_attach_monitors_an_existing_trainer_read_only(plain, tmp_path, caplog):
    trainer = build_trainer(recording(trl.GRPOTrainer), tmp_path, max_steps=1)
    with caplog.at_level(logging.WARNING, logger="phasewatch.hooks"):
        watch = attach(trainer, phasewatch.Config(run="attached", reweight="always",
                                                  save_rollouts=tmp_path / "attached.jsonl"))
    assert any("read-only" in r.getMessage() for r in caplog.records)
    assert isinstance(trainer, PhaseWatchMixin) and isinstance(trainer, trl.GRPOTrainer)
    trainer.train()
    inputs = trainer.loss_inputs[0]
    assert torch.equal(inputs["advantages"], plain.loss_inputs[0]["advantages"])  # never reweighted
    assert "phasewatch/entropy/execution" in train_logs(trainer)[0]
    assert [r.step for r in watch.client.monitor.records("attached")] == [1]
    from phasewatch.grams.rollouts import read_rollouts

    assert [r.step for r in read_rollouts(tmp_path / "attached.jsonl")] == [1] * 8  # read-only attach saves too
    with pytest.raises(ValueError, match="already runs phasewatch"):
        attach(trainer)
    with pytest.raises(ValueError, match="trl.GRPOTrainer"):
        attach(object())


def test_tool_output_tokens_are_neither_planning_nor_execution(tmp_path):
    """TRL's tool mask (here from a rollout_func's ``env_mask``, TRL's supported route for
    environment feedback) keeps tool output out of both classes and out of the matching."""
    from hooks_trl_worker import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model_part = tokenizer("wait, let's check the sum.")["input_ids"]
    tool_part = tokenizer(" but alternatively, maybe")["input_ids"]  # planning words, from a tool
    tail = tokenizer(" so the answer is 7.")["input_ids"]

    def rollout(prompts, trainer):
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        completion = model_part + tool_part + tail
        env_mask = [1] * len(model_part) + [0] * len(tool_part) + [1] * len(tail)
        return {"prompt_ids": prompt_ids, "completion_ids": [completion] * len(prompts),
                "logprobs": [[0.0] * len(completion)] * len(prompts), "env_mask": [env_mask] * len(prompts)}

    trainer = build_trainer(recording(PhaseWatchGRPOTrainer), tmp_path, max_steps=1,
                            phasewatch=phasewatch.Config(run="tools", reweight="always"))
    trainer.rollout_func = rollout
    trainer.train()
    inputs = trainer.loss_inputs[0]
    tool = inputs["tool_mask"] == 0
    assert tool.any()
    planning = inputs["planning_mask"]
    assert not (planning & tool).any()
    expected = PlanningLabeler().label(inputs["completion_ids"], inputs["completion_mask"] * inputs["tool_mask"], tokenizer)
    assert torch.equal(planning, expected.planning_mask) and planning.any()
    record = trainer.phasewatch.client.monitor.records("tools")[0]
    model_tokens = int((inputs["completion_mask"] * inputs["tool_mask"]).sum())
    assert record.values["tokens"] == model_tokens
    assert record.values["tokens/planning"] == int(planning.sum())


def test_rollouts_saved_during_training_are_mined_by_grams_mine(off, tmp_path):
    """Config(save_rollouts=...) on a real GRPOTrainer run: TRL's own completion texts with the
    reward TRL computed for them, the step and the prompt; `phasewatch grams mine` reads it."""
    from hooks_trl_worker import distinct_words_reward

    from phasewatch.cli import main
    from phasewatch.grams.rollouts import read_rollouts
    from phasewatch.hooks.trl import prompt_id
    from phasewatch.lexicon import Lexicon, fold_text

    path = off.phasewatch.rollouts.path
    rows = read_rollouts(path)
    assert [r.step for r in rows] == [s for s in (1, 2, 3) for _ in range(8)]
    assert {r.run for r in rows} == {"off"}
    # the saved reward is the one TRL computed for that very text (reward = distinct words / 10)
    assert [r.reward for r in rows] == pytest.approx(distinct_words_reward([r.text for r in rows]))
    # GRPO groups: 4 generations of each prompt in a batch of 8 share a prompt id
    from hooks_trl_worker import PROMPTS

    for start in range(0, 24, 4):
        assert len({r.group for r in rows[start:start + 4]}) == 1
    assert {r.group for r in rows} <= {prompt_id(p) for p in PROMPTS}
    assert len({r.group for r in rows}) >= 2

    lexicon = tmp_path / "mined.txt"
    # a random tiny model repeats single words, not phrases: mine 1-3-grams
    assert main(["grams", "mine", str(path), "--embedder", "hashing", "--min-reward", "0", "--min-successful", "10",
                 "--min-groups", "1", "--top-frac", "1", "--n", "1-3", "--out", str(lexicon), "--quiet"]) == 0
    phrases = Lexicon.from_file(lexicon).phrases
    texts = " | ".join(fold_text(r.text) for r in rows)
    assert phrases and all(p in texts for p in phrases)
