"""phasewatch inside TRL's GRPOTrainer (trl >= 0.26).

Two lines for a user::

    from phasewatch.hooks.trl import PhaseWatchGRPOTrainer
    trainer = PhaseWatchGRPOTrainer(model=..., reward_funcs=..., args=..., train_dataset=...,
                                    phasewatch=phasewatch.Config(reweight="auto"))

The trainer is TRL's own; phasewatch wraps five of its methods and never re-implements them
(each override calls ``super()`` and works on what it returns):

- ``_calculate_rewards``: keeps the rewards TRL computed (for per-outcome statistics) and,
  with ``Config.save_rollouts``, the completion texts TRL decoded and their prompts.
- ``_generate_and_score_completions``: labels planning tokens once per generation batch and
  adds ``planning_mask`` (B, T) and ``planning_phrases`` to the batch dict, which TRL shuffles
  and splits together with everything else; then, if the decision in force has ``alpha > 0``,
  replaces ``advantages`` (B,) by HICRA's per-token (B, T) advantages, which TRL's loss
  accepts since 0.26. Tool-output tokens (TRL's ``tool_mask`` = 0) are neither planning nor
  execution. With ``Config.save_rollouts`` this rank's completions (TRL's own texts, no second
  decode), their total rewards, the step and a prompt id (a short hash of the prompt) are
  appended to the rollout file.
- ``_get_per_token_logps_and_entropies``: while the loss is being computed, keeps a detached
  reference to the entropies and log-probs TRL computes anyway (no extra forward pass).
- ``_compute_loss``: after TRL's loss, adds the micro-batch's statistics; on the last
  micro-batch of an optimizer step (``accelerator.sync_gradients``) ends the step: reduce
  over ranks, hand the record to the monitor from the main process (not waiting for it), and
  put ``phasewatch/...`` numbers into ``self._metrics`` so they reach ``log_history``,
  callbacks, W&B and TensorBoard. The decision is broadcast from the main process at the
  start of the next generation batch.
- ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: write and read
  ``phasewatch_state.json`` in the checkpoint folder (as TRL does for its entropy controller),
  so ``resume_from_checkpoint`` brings back the decision in force and the monitor's history.

Step numbers are TRL's: the record of an optimizer step carries the ``global_step`` that TRL
logs it under (1 for the first step). The decision made from step ``t``'s record applies to
the advantages of the next generation batch (step ``t + 1`` with TRL's default
``steps_per_generation == gradient_accumulation_steps``), on every rank alike.

For a trainer you cannot subclass (built by a framework), :func:`attach` adds the same
monitoring to an existing ``GRPOTrainer`` object, read-only: it never changes advantages.
A plain ``TrainerCallback`` cannot do this job: callbacks see only TRL's aggregated logs,
never token ids, masks or per-token entropies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import torch

from phasewatch.config import Config
from phasewatch.hooks.torch import Watcher

log = logging.getLogger("phasewatch.hooks")

#: File written into each TRL checkpoint folder.
STATE_FILE = "phasewatch_state.json"

#: Keys phasewatch adds to TRL's batch dict.
PLANNING_MASK_KEY = "planning_mask"
PHRASES_KEY = "planning_phrases"
REWARDS_KEY = "phasewatch_rewards"


class PhaseWatchMixin:
    """The phasewatch overrides, for users who already subclass ``GRPOTrainer``.

    Put it first: ``class MyTrainer(PhaseWatchMixin, MyGRPOSubclass)``; construct with the
    usual arguments plus ``phasewatch=Config(...)``.
    """

    phasewatch: Watcher

    def __init__(self, *args: Any, phasewatch: Config | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phasewatch_setup(phasewatch, read_only=False)

    # -- setup -----------------------------------------------------------------------------
    def _phasewatch_setup(self, config: Config | None, *, read_only: bool) -> None:
        config = Config() if config is None else config
        if not isinstance(config, Config):
            raise ValueError(f"phasewatch: expected a phasewatch.Config, got {type(config).__name__}")
        tokenizer = getattr(self, "_tokenizer", None) or getattr(self.processing_class, "tokenizer", None)
        tokenizer = tokenizer or self.processing_class
        self.phasewatch = Watcher(config, tokenizer)
        self._pw_read_only = read_only
        self._pw_capture: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None
        self._pw_rewards_per_func: torch.Tensor | None = None
        self._pw_completions: tuple[list, list] | None = None  # (prompts, completions), this rank's
        self._pw_batch_alpha = 0.0

    # -- generation: labels, rewards, reweighting -----------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._pw_rewards_per_func = rewards_per_func
        if self.phasewatch.config.save_rollouts is not None:
            self._pw_completions = (list(prompts), list(completions))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        watch = self.phasewatch
        watch.sync_decision()  # every rank, once per generation batch: the decision in force
        self._pw_batch_alpha = 0.0
        watch.failures.call("generation", self._pw_after_generation, output)
        return output

    def _pw_after_generation(self, output: dict) -> None:
        """Label the batch, carry labels and rewards with it, reweight its advantages."""
        watch = self.phasewatch
        completion_ids = output["completion_ids"]
        model_tokens = output["completion_mask"]
        tool_mask = output.get("tool_mask")
        if tool_mask is not None:
            model_tokens = model_tokens * tool_mask
        labels = watch.label(completion_ids, model_tokens)
        batch = completion_ids.shape[0]
        rewards = watch.failures.call(
            "rewards", self._pw_local_rewards, batch, completion_ids.device,
            default=torch.full((batch,), float("nan"), device=completion_ids.device),
        )
        if labels is None:  # failed (counted): no statistics for this batch, advantages untouched
            output[PLANNING_MASK_KEY] = torch.zeros_like(completion_ids, dtype=torch.bool)
            output[PHRASES_KEY] = [None] * batch
        else:
            output[PLANNING_MASK_KEY] = labels.planning_mask
            output[PHRASES_KEY] = labels.phrases
        output[REWARDS_KEY] = rewards
        if watch.config.save_rollouts is not None:  # on its own fail-open stage: never costs the reweighting
            watch.failures.call("rollouts", self._pw_save_rollouts, output, model_tokens, rewards)
        if labels is not None and not self._pw_read_only:
            output["advantages"], self._pw_batch_alpha = watch.reweight(output["advantages"], labels.planning_mask)

    def _pw_save_rollouts(self, output: dict, model_tokens: torch.Tensor, rewards: torch.Tensor) -> None:
        """This rank's completions with their rewards, step and prompt id, to the rollout file.
        TRL's decoded texts are reused; ids are decoded only when they are not plain text."""
        captured, self._pw_completions = self._pw_completions, None
        texts = groups = None
        if captured is not None and len(captured[1]) == len(rewards):
            prompts, completions = captured
            texts = completion_texts(completions)
            groups = [prompt_id(p) for p in prompts]
        self.phasewatch.save_rollouts(
            rewards, texts=texts, completion_ids=output["completion_ids"], completion_mask=model_tokens,
            step=int(self.state.global_step) + 1, groups=groups,
        )

    def _pw_local_rewards(self, batch: int, device: torch.device) -> torch.Tensor:
        """This rank's rows of the weighted total reward TRL computed (NaN when unscorable)."""
        per_func = self._pw_rewards_per_func
        self._pw_rewards_per_func = None
        if per_func is None:
            return torch.full((batch,), float("nan"), device=device)
        weights = self.reward_weights.to(per_func.device).unsqueeze(0)
        total = (per_func * weights).nansum(dim=1)
        total[torch.isnan(per_func).all(dim=1)] = float("nan")
        start = self.accelerator.process_index * batch
        return total[start : start + batch].to(device)

    # -- loss: entropies TRL already computes -------------------------------------------------
    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        capture = self._pw_capture
        if capture is not None and out[1] is not None:
            capture.append((out[1].detach(), out[0].detach()))
        return out

    def _compute_loss(self, model, inputs):
        if not self.model.training:
            return super()._compute_loss(model, inputs)
        self._pw_capture = []
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            captured, self._pw_capture = self._pw_capture, None
        self._pw_after_micro_batch(inputs, captured)
        return loss

    def _pw_after_micro_batch(self, inputs: dict, captured: list) -> None:
        watch = self.phasewatch
        if PLANNING_MASK_KEY not in inputs:
            pass  # the generation hook failed (counted there): nothing to measure
        elif len(captured) == 1:
            entropies, logps = captured[0]
            watch.failures.call("stats", self._pw_observe, inputs, entropies, logps)
        else:
            watch.failures.record("stats", RuntimeError(f"expected one entropy tensor per micro-batch, got {len(captured)}"))
        if self.accelerator.sync_gradients:
            # every rank, every optimizer step, whatever failed above: end_step is a collective
            watch.last_alpha = self._pw_batch_alpha
            # TRL logs this optimizer step under global_step + 1 (incremented after the step)
            watch.end_step(int(self.state.global_step) + 1)
            # phase and alpha below are those in force during this step; the monitor's answer
            # to this step's record is taken at the next generation batch
            watch.failures.call("metrics", self._pw_log_metrics)

    def _pw_log_metrics(self) -> None:
        metrics = self._metrics["train"]
        for name, value in self.phasewatch.metrics().items():
            metrics[name].append(value)

    def _pw_observe(self, inputs: dict, entropies: torch.Tensor, logps: torch.Tensor) -> None:
        completion_mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            completion_mask = completion_mask * inputs["tool_mask"]
        planning_mask = inputs[PLANNING_MASK_KEY]
        rewards = inputs.get(REWARDS_KEY)
        phrases = inputs.get(PHRASES_KEY)
        if phrases is not None and any(p is None for p in phrases):
            # rows whose labeling failed carry no labels: leave them out of the statistics
            keep = torch.tensor([p is not None for p in phrases], device=completion_mask.device)
            if not bool(keep.any()):
                return
            entropies, logps, completion_mask, planning_mask = (
                entropies[keep], logps[keep], completion_mask[keep], planning_mask[keep],
            )
            rewards = None if rewards is None else rewards[keep]
            phrases = [p for p in phrases if p is not None]
        self.phasewatch.observe(
            entropies, completion_mask, planning_mask, logps=logps, rewards=rewards, phrases=phrases
        )

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.phasewatch.failures.call("checkpoint", lambda: _write_state(folder, self.phasewatch.state_dict()))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            log.warning("phasewatch: %s has no %s; the run resumes with a fresh phasewatch state", checkpoint, STATE_FILE)
            return
        try:
            with open(path, encoding="utf-8") as f:
                self.phasewatch.load_state_dict(json.load(f))
        except Exception as exc:  # noqa: BLE001 - a damaged state file must not stop a resume
            self.phasewatch.failures.record("restore", exc)

    def train(self, *args: Any, **kwargs: Any):
        try:
            output = super().train(*args, **kwargs)
        except BaseException:
            client = self.phasewatch._client  # hand over what was measured; no collective here
            if client is not None:
                self.phasewatch.failures.call("flush", client.flush, 10.0)
            raise
        self.phasewatch.sync_decision()  # every rank: the decision after the last step
        return output


def completion_texts(completions: list) -> list[str] | None:
    """TRL's completions as plain strings: the strings themselves, or the joined ``content`` of
    conversational messages; ``None`` when any is neither (then the ids are decoded instead)."""
    texts = []
    for completion in completions:
        if isinstance(completion, str):
            texts.append(completion)
        elif isinstance(completion, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in completion
        ):
            texts.append("".join(m["content"] for m in completion))
        else:
            return None
    return texts


def prompt_id(prompt: Any) -> str:
    """A short stable id of a prompt (text or messages), so the miner can tell prompts apart."""
    if isinstance(prompt, str):
        raw = prompt
    else:
        raw = json.dumps(prompt, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(raw.encode("utf-8"), digest_size=6).hexdigest()


def _write_state(folder: str, state: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, os.path.join(folder, STATE_FILE))


def _trainer_base() -> type:
    from trl import GRPOTrainer

    return GRPOTrainer


class PhaseWatchGRPOTrainer(PhaseWatchMixin, _trainer_base()):  # type: ignore[misc]
    """``trl.GRPOTrainer`` plus phasewatch: same arguments, plus ``phasewatch=Config(...)``."""


_ATTACHED: dict[type, type] = {}


def attach(trainer: Any, config: Config | None = None) -> Watcher:
    """Monitor an existing ``GRPOTrainer`` object without subclassing it (read-only).

    The object keeps its class's behaviour; phasewatch's overrides are layered on top of it
    (its class becomes a subclass of its own class with :class:`PhaseWatchMixin` in front), but
    advantages are never changed, whatever ``config.reweight`` says. Use
    :class:`PhaseWatchGRPOTrainer` to reweight. Returns the :class:`Watcher`.
    """
    base = _trainer_base()
    if not isinstance(trainer, base):
        raise ValueError(f"attach: expected a trl.GRPOTrainer, got {type(trainer).__name__}")
    cls = type(trainer)
    if issubclass(cls, PhaseWatchMixin):
        raise ValueError("attach: this trainer already runs phasewatch")
    if config is not None and config.reweight != "off":
        log.warning("phasewatch.attach is read-only: reweight=%r is ignored (use PhaseWatchGRPOTrainer)", config.reweight)
    watched = _ATTACHED.get(cls)
    if watched is None:
        watched = type(f"PhaseWatch{cls.__name__}", (PhaseWatchMixin, cls), {"__module__": cls.__module__})
        _ATTACHED[cls] = watched
    trainer.__class__ = watched
    config = Config(reweight="off") if config is None else dataclasses.replace(config, reweight="off")
    trainer._phasewatch_setup(config, read_only=True)
    return trainer.phasewatch


__all__ = ["PhaseWatchGRPOTrainer", "PhaseWatchMixin", "attach", "STATE_FILE", "completion_texts", "prompt_id"]
