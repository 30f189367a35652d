"""The verl hook (``phasewatch.hooks.verl``).

Two groups, kept apart on purpose:

- *verl-free* tests (first in this file) run everywhere: the batch function on padded tensors,
  the config section parser, checkpoint folder rules.
- *verl* tests need verl 0.9.x installed (a separate venv, see the hooks notes) and skip
  otherwise. They use verl's real classes: the trainer registry, ``PPOTrainerSync``, the
  Hydra config ``ppo_trainer.yaml``, the real ``ReplayBuffer``, verl's own
  ``_compute_advantage`` (GRPO) and ``_compute_metrics``, its checkpoint save/load code, and the
  real TransferQueue on a local single-node Ray instance (CPU).

What cannot run here, and stands in: verl's worker groups (FSDP actor, rollout servers: GPUs).
The checkpoint test gives the trainer an ``actor_rollout_wg`` whose ``save_checkpoint`` /
``load_checkpoint`` follow verl's signatures and only record calls, and ``_compute_metrics``
gets a ``resource_pool_manager`` reporting one GPU for verl's throughput metric. ``fit()``
itself (which needs the rollout servers) is not run: the test drives the methods ``fit`` calls,
in its order: ``_compute_advantage`` then ``_compute_metrics`` per step,
``_save_checkpoint``, and ``_load_checkpoint`` on a fresh trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import phasewatch
from phasewatch.hooks.torch import Watcher
from phasewatch.hooks.verl import STATE_FILE, config_from_verl, load_state, resumed_folder, save_state, watch_padded_batch
from phasewatch.labels import PlanningLabeler
from phasewatch.stats import StepStats
from phasewatch.tiny import train_tokenizer

TEXTS = [
    "wait, let me check the sum again.",
    "so 3 + 4 = 7.",
    "alternatively we multiply first: 2 * 7 = 14.",
    "2 * 7 = 14.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 10, vocab_size=200, kind="metaspace")


def padded_batch(tokenizer, rows: int = 8):
    encoded = [tokenizer(TEXTS[i % 4])["input_ids"] for i in range(rows)]
    length = max(map(len, encoded))
    ids = torch.zeros(rows, length, dtype=torch.long)
    mask = torch.zeros(rows, length, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask


# -- verl-free ------------------------------------------------------------------------------


def test_padded_batch_reweights_and_leaves_padding_rows_out_of_the_statistics(tokenizer):
    ids, mask = padded_batch(tokenizer)
    adv = torch.linspace(-1, 1, 8)[:, None] * mask
    keep = torch.tensor([True] * 6 + [False] * 2)
    entropy = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
    watch = Watcher(phasewatch.Config(run="v", reweight="always", alpha=0.2), tokenizer, strict=True)
    new, alpha = watch_padded_batch(watch, ids, mask, adv, entropy=entropy, keep=keep)
    planning = PlanningLabeler().label(ids, mask, tokenizer).planning_mask
    assert alpha == 0.2 and planning.any()
    assert torch.equal(new[~planning], adv[~planning])
    assert torch.allclose(new[planning], (adv + 0.2 * adv.abs())[planning])
    stats = watch._pending
    expected = StepStats.from_batch(entropy[:6], mask[:6], planning[:6],
                                    phrases=PlanningLabeler().label(ids[:6], mask[:6], tokenizer).phrases)
    assert stats.sequences == 6
    assert stats.to_record(1).values == pytest.approx(expected.to_record(1).values)


def test_padded_batch_without_entropy_counts_tokens_and_auto_leaves_advantages(tokenizer):
    ids, mask = padded_batch(tokenizer)
    watch = Watcher(phasewatch.Config(run="v"), tokenizer, strict=True)  # auto: no shift yet
    new, alpha = watch_padded_batch(watch, ids, mask, torch.ones(ids.shape), entropy=None)
    assert new is None and alpha == 0.0
    record = watch._pending.to_record(1)
    assert record.values["tokens"] == int(mask.sum()) and "entropy" not in record.values


def test_padded_batch_saves_the_real_rows_with_their_scores(tokenizer, tmp_path):
    """+phasewatch.save_rollouts=FILE: real rows only (verl's padding rows left out), decoded
    without masked tokens, reward = the row's summed token scores, under verl's global step."""
    from phasewatch.grams.rollouts import read_rollouts

    ids, mask = padded_batch(tokenizer)
    keep = torch.tensor([True] * 6 + [False] * 2)
    scores = torch.zeros(ids.shape)
    lengths = mask.sum(dim=1)
    scores[torch.arange(8), lengths - 1] = torch.arange(8, dtype=torch.float32)  # reward on the last token
    config = config_from_verl({"run": "v", "save_rollouts": str(tmp_path / "r.jsonl")})
    watch = Watcher(config, tokenizer, strict=True)
    watch_padded_batch(watch, ids, mask, torch.ones(ids.shape), token_scores=scores, keep=keep, step=7)
    watch.close()
    rows = read_rollouts(tmp_path / "r.jsonl")
    assert [(r.step, r.reward, r.run) for r in rows] == [(7, float(i), "v") for i in range(6)]
    assert [r.text for r in rows] == [tokenizer.decode(ids[i][: lengths[i]].tolist(), skip_special_tokens=True)
                                      for i in range(6)]


def test_config_section_is_parsed_and_typos_are_named():
    config = config_from_verl({"run": "verl-run", "reweight": "always", "alpha": 0.1})
    assert (config.run, config.reweight, config.alpha) == ("verl-run", "always", 0.1)
    with pytest.raises(ValueError, match="reweigth"):
        config_from_verl({"reweigth": "always"})
    assert config_from_verl(None).reweight == "auto"


def test_resumed_folder_follows_verl_resume_modes(tmp_path):
    assert resumed_folder({"resume_mode": "auto", "default_local_dir": str(tmp_path)}, 0) is None
    assert resumed_folder({"resume_mode": "auto", "default_local_dir": str(tmp_path)}, 7) == str(tmp_path / "global_step_7")
    explicit = str(tmp_path / "x" / "global_step_3")
    assert resumed_folder({"resume_mode": "resume_path", "resume_from_path": explicit}, 3) == explicit
    assert resumed_folder({"resume_mode": "disable"}, 3) is None


# -- against verl's own classes ----------------------------------------------------------------


def require_verl() -> None:
    """Skip without verl, except where CI asks for it (PHASEWATCH_REQUIRE_VERL=1): then fail."""
    import importlib.util
    import os

    if importlib.util.find_spec("verl") is None:
        if os.environ.get("PHASEWATCH_REQUIRE_VERL") == "1":
            pytest.fail("PHASEWATCH_REQUIRE_VERL=1 but verl is not installed (pip install 'phasewatch[verl]')")
        pytest.skip("verl is not installed (the verl tests run in their own venv)")


@pytest.fixture(scope="module")
def verl_v1():
    require_verl()
    import phasewatch.hooks.verl  # noqa: F401  (registers on the import of verl.trainer.ppo.v1)
    import verl.trainer.ppo.v1 as v1

    return v1


def make_trainer(mode: str, *overrides: str):
    import verl
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.v1 import get_trainer_cls

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=[
            f"trainer.v1.trainer_mode={mode}", "algorithm.adv_estimator=grpo",
            "actor_rollout_ref.rollout.n=4", "data.train_batch_size=2", *overrides,
        ])
    return get_trainer_cls(mode)(config)


@pytest.fixture(scope="module")
def transfer_queue(verl_v1):
    """The real TransferQueue on a local single-node Ray instance (CPU, ~25 s to start)."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    ray.shutdown()


def put_rollouts(tq, tokenizer, prefix: str):
    """8 rollouts (2 prompts x 4 samples) in the fields and key format verl's agent loop uses."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys, fields, tags = [], [], []
    for p in range(2):
        for s in range(4):
            response = torch.tensor(tokenizer(TEXTS[(p + s) % 4])["input_ids"])
            score = torch.zeros(len(response))
            score[-1] = float(s + p)  # verl puts the sequence reward on the last token
            keys.append(f"{prefix}{p}_{s}_0")
            fields.append({
                "uid": f"{prefix}{p}", "prompts": torch.tensor([3, 4]), "responses": response,
                "response_mask": torch.ones(len(response), dtype=torch.long), "rm_scores": score,
                "old_log_probs": -torch.rand(len(response), generator=torch.Generator().manual_seed(s)),
                "entropy": torch.rand(len(response), generator=torch.Generator().manual_seed(10 + s)),
                "num_turns": torch.tensor(2),
            })
            tags.append({"status": "success", "global_steps": 1, "min_global_steps": 1, "max_global_steps": 1})
    return tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields), tags=tags)


def read(tq, batch, *names):
    return tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(names)).to_padded_tensor()


class OneGpu:
    """Stands in for verl's ResourcePoolManager (needs GPUs): only what _compute_metrics asks."""

    def get_n_gpus(self) -> int:
        return 1


def test_registered_mode_keeps_sync_semantics(verl_v1):
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    cls = verl_v1.get_trainer_cls("phasewatch")
    assert issubclass(cls, verl_v1.PPOTrainerSync)
    trainer = make_trainer("phasewatch", "+phasewatch.run=sync-check", "+phasewatch.reweight=always")
    assert trainer.trainer_mode == "sync" and trainer.registered_mode == "phasewatch"
    assert type(trainer.replay_buffer) is ReplayBuffer  # not ReplayBufferAsync
    assert (trainer.phasewatch_config.run, trainer.phasewatch_config.reweight) == ("sync-check", "always")
    with pytest.raises(ValueError, match="alpah"):
        make_trainer("phasewatch", "+phasewatch.alpah=0.3")


def test_entry_point_registers_the_mode_on_import_verl(verl_v1, tmp_path):
    """An installed ``verl.plugins`` entry point (a dist-info on sys.path, as pip writes it)."""
    dist = tmp_path / "phasewatch_plugin_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: phasewatch-plugin-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[verl.plugins]\nphasewatch = phasewatch.hooks.verl\n")
    probe = textwrap.dedent("""
        import sys, verl
        assert "phasewatch.hooks.verl" in sys.modules, "entry point not loaded"
        assert "verl.trainer.ppo.v1" not in sys.modules, "the plugin must not import verl's trainer"
        from verl.trainer.ppo.v1 import get_trainer_cls
        print(get_trainer_cls("phasewatch").__name__)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "PhaseWatchPPOTrainer"


def test_advantages_on_the_real_transfer_queue(transfer_queue, tokenizer):
    tq = transfer_queue
    alpha = 0.2
    watched = make_trainer("phasewatch", "+phasewatch.run=tq", "+phasewatch.reweight=always", f"+phasewatch.alpha={alpha}")
    plain = make_trainer("sync")
    watched.tokenizer = plain.tokenizer = tokenizer  # init() would load the model's tokenizer
    ours, theirs = put_rollouts(tq, tokenizer, "a"), put_rollouts(tq, tokenizer, "b")
    metrics: dict = {}
    ours = watched._compute_advantage(ours, metrics)
    theirs = plain._compute_advantage(theirs, {})

    mine, base = read(tq, ours, "advantages", "responses", "response_mask"), read(tq, theirs, "advantages")
    planning = PlanningLabeler().label(mine["responses"], mine["response_mask"], tokenizer).planning_mask
    assert planning.any() and base["advantages"].abs().sum() > 0
    a, b = mine["advantages"], base["advantages"]
    assert torch.equal(a[~planning], b[~planning])
    assert torch.allclose(a[planning], (b + alpha * b.abs())[planning])

    # one global step ends in _compute_metrics: the record reaches the monitor, metrics reach verl
    watched.resource_pool_manager = OneGpu()
    watched._compute_metrics(ours, metrics, {"step": 1.0, "gen": 0.5}, 1, 0)
    assert metrics["phasewatch/alpha"] == alpha and metrics["phasewatch/errors"] == 0
    assert "training/global_step" in metrics  # verl's own metrics are still there
    watched.phasewatch.sync_decision()  # the next step would: waits for the monitor's thread
    stored = watched.phasewatch.client.monitor.records("tq")
    assert [r.step for r in stored] == [1]
    data = read(tq, ours, "responses", "response_mask", "entropy", "old_log_probs", "rm_scores")
    labels = PlanningLabeler().label(data["responses"], data["response_mask"], tokenizer)
    expected = StepStats.from_batch(
        data["entropy"], data["response_mask"], labels.planning_mask, logps=data["old_log_probs"],
        rewards=(data["rm_scores"] * data["response_mask"]).sum(-1), phrases=labels.phrases,
    ).to_record(1)
    assert dict(stored[0].values) == pytest.approx(dict(expected.values), rel=1e-6)
    assert metrics["phasewatch/entropy/planning"] == pytest.approx(expected.values["entropy/planning"], rel=1e-6)


class RecordingWorkerGroup:
    """Stands in for verl's actor worker group (FSDP on GPUs), with its checkpoint signatures."""

    def __init__(self):
        self.calls = []

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        self.calls.append(("save", local_path, global_step))

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        self.calls.append(("load", local_path))


class DataloaderState:
    def state_dict(self):
        return {"epoch": 0}

    def load_state_dict(self, state):
        self.loaded = state


def test_checkpoint_save_and_resume_through_verl(verl_v1, tmp_path, tokenizer):
    overrides = (f"trainer.default_local_dir={tmp_path}", "trainer.resume_mode=auto",
                 "+phasewatch.run=ckpt", "+phasewatch.reweight=always")
    first = make_trainer("phasewatch", *overrides)
    first.tokenizer = tokenizer
    first.actor_rollout_wg, first.train_dataloader = RecordingWorkerGroup(), DataloaderState()
    ids, mask = padded_batch(tokenizer)
    for step in (1, 2):
        first.phasewatch.step(ids, mask, entropies=torch.rand(ids.shape), step=step)
    first.global_steps = 2
    first._save_checkpoint()
    folder = tmp_path / "global_step_2"
    assert (folder / STATE_FILE).exists() and (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "2"

    second = make_trainer("phasewatch", *overrides)
    second.tokenizer = tokenizer
    second.actor_rollout_wg, second.train_dataloader = RecordingWorkerGroup(), DataloaderState()
    second._load_checkpoint()  # verl's own resume logic finds global_step_2
    assert second.global_steps == 2
    assert second.actor_rollout_wg.calls == [("load", str(folder / "actor"))]
    assert second.phasewatch.decision == first.phasewatch.decision
    restored = second.phasewatch.client.monitor.records("ckpt")
    assert [dict(r.values) for r in restored] == [dict(r.values) for r in first.phasewatch.client.monitor.records("ckpt")]


def test_state_file_roundtrip_without_verl(tmp_path, tokenizer):
    ids, mask = padded_batch(tokenizer)
    watch = Watcher(phasewatch.Config(run="file"), tokenizer, strict=True)
    watch.step(ids, mask, entropies=torch.rand(ids.shape), step=4)
    save_state(watch, str(tmp_path / "global_step_4"))
    assert json.loads((tmp_path / "global_step_4" / STATE_FILE).read_text())["next_step"] == 5
    fresh = Watcher(phasewatch.Config(run="file"), tokenizer, strict=True)
    assert load_state(fresh, str(tmp_path / "global_step_4"))
    assert fresh.decision == watch.decision
    assert not load_state(fresh, str(tmp_path / "missing"))
