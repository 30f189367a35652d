"""A tiny, offline, CPU-only TRL GRPO setup for the hook tests, and the two-rank worker.

Imported by ``test_hooks_trl.py`` for its builders; run under
``torchrun --nproc_per_node 2 tests/hooks_trl_worker.py OUT_DIR`` by ``test_hooks_trl_dist.py``.

The tokenizer is trained here (SentencePiece-style BPE on a small corpus rich in planning
words), the model is a randomly initialised 2-layer Qwen2 with hidden size 32, and the reward
is a Python function: each GRPO step takes about a second on one CPU core. A random model
emits the corpus' whole-word tokens often enough that a few percent of its tokens fall in
strategic-gram phrases of the default lexicon, so every step has planning tokens.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "wait, but let's check the sum again. alternatively we can try another approach.",
    "first compute 3 + 4 = 7. then multiply by 2 to get 14. so the answer is 14.",
    "hmm, maybe we should try a different approach. now we can see that x = 5.",
    "therefore the result is 12. however, perhaps we made an error. okay so 6 * 2 = 12.",
    "next we add 5 and 8 to get 13. thus the total is 13. alright, since 13 is odd we stop.",
]

PROMPTS = ["compute 3 + 4", "what is 2 * 5", "solve x + 1 = 6", "find the sum of 5 and 8"]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from phasewatch.tiny import train_tokenizer

    return train_tokenizer(CORPUS * 20, vocab_size=300, kind="metaspace")


def tiny_dataset(n: int = 64):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [PROMPTS[i % len(PROMPTS)] for i in range(n)]})


def distinct_words_reward(completions: list[str], **_: Any) -> list[float]:
    """Varies across a group, so GRPO advantages are nonzero."""
    return [len(set(c.split())) / 10.0 for c in completions]


def grpo_args(output_dir: str | Path, **overrides: Any):
    from trl import GRPOConfig

    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=24,
        max_steps=3,
        logging_steps=1,
        learning_rate=1e-3,
        save_strategy="no",
        seed=0,
        bf16=False,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return GRPOConfig(**settings)


def build_trainer(cls, output_dir: str | Path, *, phasewatch: Any = None, seed: int = 0, **arg_overrides: Any):
    """``cls`` (GRPOTrainer or a phasewatch subclass) on the tiny setup; same seed, same run."""
    from phasewatch.tiny import tiny_causal_lm

    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, seed=seed)
    kwargs: dict[str, Any] = {}
    if phasewatch is not None:
        kwargs["phasewatch"] = phasewatch
    return cls(
        model=model,
        reward_funcs=distinct_words_reward,
        args=grpo_args(output_dir, seed=seed, **arg_overrides),
        train_dataset=tiny_dataset(),
        processing_class=tokenizer,
        **kwargs,
    )


class RecordLossInputs:
    """Keeps a copy of what TRL's loss receives, per micro-batch (test instrumentation)."""

    def _compute_loss(self, model, inputs):
        seen = self.__dict__.setdefault("loss_inputs", [])
        seen.append({k: (v.detach().clone() if hasattr(v, "detach") else v) for k, v in inputs.items()})
        return super()._compute_loss(model, inputs)


def recording(cls):
    return type(f"Recording{cls.__name__}", (RecordLossInputs, cls), {})


# -- the two-rank worker -------------------------------------------------------------------------


def _record_calls(watch) -> dict[str, list]:
    """Wrap the watcher's observe/end_step to keep their inputs and outcomes."""
    log: dict[str, list] = {"observe": [], "steps": []}
    observe, end_step = watch.observe, watch.end_step

    def observe_and_keep(entropies, completion_mask, planning_mask, **kw):
        log["observe"].append({
            "entropies": entropies.detach().clone(),
            "completion_mask": completion_mask.detach().clone(),
            "planning_mask": planning_mask.detach().clone(),
            "logps": kw["logps"].detach().clone(),
            "rewards": kw["rewards"].detach().clone(),
            "phrases": list(kw["phrases"]),
        })
        return observe(entropies, completion_mask, planning_mask, **kw)

    def end_step_and_keep(step):
        end_step(step)
        # the alpha applied to this step's advantages and the decision in force during it
        log["steps"].append({"step": step, "alpha": watch.last_alpha, "decision": watch.decision.to_json()})

    watch.observe, watch.end_step = observe_and_keep, end_step_and_keep
    return log


def main(out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    import phasewatch
    from phasewatch.hooks.torch import Watcher
    from phasewatch.hooks.trl import PhaseWatchGRPOTrainer

    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    # Rank 0's settings govern: rank 1 asks for no reweighting and must still follow rank 0.
    if rank == 0:
        config = phasewatch.Config(run="dist", reweight="always", alpha=0.2, store=str(out / "monitor.sqlite"))
    else:
        config = phasewatch.Config(run="dist", reweight="off")
    trainer = build_trainer(recording(PhaseWatchGRPOTrainer), out / "trl", phasewatch=config,
                            per_device_train_batch_size=4, max_steps=2)
    assert dist.is_initialized() and dist.get_world_size() == 2, "expected two ranks"
    log = _record_calls(trainer.phasewatch)
    trainer.train()
    log["loss_inputs"] = [
        {k: v for k, v in inputs.items() if k in ("advantages", "planning_mask", "completion_mask")}
        for inputs in trainer.loss_inputs
    ]
    log["metrics"] = [h for h in trainer.state.log_history if "phasewatch/alpha" in h]
    trainer.phasewatch.close()

    # The plain-loop Watcher on the same process group: each rank holds different rows.
    tokenizer = tiny_tokenizer()
    text = CORPUS[rank::2]
    encoded = [tokenizer(t)["input_ids"] for t in text]
    length = max(map(len, encoded)) + rank  # padded T differs per rank, as in real training
    ids = torch.full((len(encoded), length), tokenizer.pad_token_id)
    mask = torch.zeros(len(encoded), length, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    entropies = torch.rand(ids.shape, generator=torch.Generator().manual_seed(rank))
    plain_config = phasewatch.Config(run="plain", store=str(out / "plain.sqlite")) if rank == 0 else \
        phasewatch.Config(run="plain")
    watch = Watcher(plain_config, tokenizer, strict=True)
    result = watch.step(ids, mask, entropies=entropies, step=0)
    log["plain"] = {"ids": ids, "mask": mask, "entropies": entropies,
                    "record": None if result.record is None else dict(result.record.values)}
    watch.close()
    torch.save(log, out / f"rank{rank}.pt")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
