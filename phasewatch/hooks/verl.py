"""phasewatch inside verl's V1 PPO trainer (verl 0.9.x), on the driver.

verl's driver (the ``TaskRunnerV1`` Ray actor) sees each step's whole batch in
``PPOTrainer._compute_advantage``, through the TransferQueue. phasewatch adds a trainer mode,
``phasewatch``, whose class is verl's own ``PPOTrainerSync`` with three methods wrapped:

- ``_compute_advantage``: after verl computed the advantages, read ``responses``,
  ``response_mask``, ``advantages``, ``entropy`` (pi_old's, which verl computes anyway),
  ``old_log_probs`` and ``rm_scores`` back from the TransferQueue; label planning tokens; add
  the step statistics; and, when the decision in force has ``alpha > 0``, write HICRA's
  advantages back (``A + alpha*|A|`` on planning tokens). Tokens outside ``response_mask``
  (tool and observation tokens of multi-turn rollouts) are neither planning nor execution.
  With ``+phasewatch.save_rollouts=FILE`` the responses (decoded without masked tokens), their
  summed ``rm_scores`` and the global step are appended to that JSON-lines file.
- ``_compute_metrics``: once per global step, hand the step's record to the monitor, take its
  decision (applied from the next step's advantages) and add ``phasewatch/...`` numbers to
  the step's metrics, so they reach verl's ``Tracking`` backends (console, W&B, file, ...).
- ``_save_checkpoint`` / ``_load_checkpoint``: ``phasewatch_state.json`` in the
  ``global_step_N`` folder, so a resumed run keeps the decision and the monitor's history.

The driver is one process, so there is nothing to reduce across ranks; every worker gets the
same advantages through the TransferQueue.

Pitfall handled: verl compares ``trainer_mode`` with ``"sync"`` to choose the replay buffer,
the dataloader refill policy and the checkpoint contents, so a new mode name would silently
switch to async semantics. The class reports ``trainer_mode == "sync"`` (the registered name
is kept in ``registered_mode``), and reads its settings from ``trainer.v1.sync``.

Switching it on (see ``examples/verl/``)::

    VERL_USE_EXTERNAL_MODULES=phasewatch.hooks.verl python -m verl.trainer.main_ppo ... \\
        trainer.v1.trainer_mode=phasewatch +phasewatch.reweight=auto +phasewatch.run=my-run

or install phasewatch with its ``verl.plugins`` entry point (loaded on ``import verl``).
Importing this module does not import verl: the class is built and registered when verl's
``verl.trainer.ppo.v1`` package is imported (at once if it already is), so processes that
never build a trainer (verl's workers) pay nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import logging
import os
import sys
import threading
from dataclasses import fields as dataclass_fields
from typing import Any, Mapping

import torch

from phasewatch.config import Config
from phasewatch.hooks.torch import Watcher

log = logging.getLogger("phasewatch.hooks")

#: The name to put in ``trainer.v1.trainer_mode``.
TRAINER_MODE = "phasewatch"
#: The verl package whose import makes the trainer registry available.
V1_PACKAGE = "verl.trainer.ppo.v1"
#: File written into each ``global_step_N`` checkpoint folder.
STATE_FILE = "phasewatch_state.json"
#: TransferQueue fields read after the advantages are computed.
FIELDS = ("responses", "response_mask", "advantages", "entropy", "old_log_probs", "rm_scores")

_lock = threading.Lock()
_trainer_class: type | None = None


def config_from_verl(section: Any) -> Config:
    """A :class:`phasewatch.Config` from the ``phasewatch:`` section of verl's config (any
    mapping, an OmegaConf node included); unknown keys are an error that names them."""
    if section is None:
        return Config()
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(section):
            section = OmegaConf.to_container(section, resolve=True)
    except ImportError:  # pragma: no cover - verl always brings omegaconf
        pass
    if not isinstance(section, Mapping):
        raise ValueError(f"phasewatch: expected a mapping of settings, got {type(section).__name__}")
    known = {f.name for f in dataclass_fields(Config)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"phasewatch: unknown setting(s) {unknown}; expected some of {sorted(known)}")
    return Config(**dict(section))


def watch_padded_batch(
    watch: Watcher,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    token_scores: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    step: int | None = None,
) -> tuple[torch.Tensor | None, float]:
    """One (mini-)batch on padded ``(B, T)`` tensors: label, add statistics, reweight.

    ``keep`` marks real rows (verl pads batches to a multiple of the data-parallel size; padding
    rows are left out of the statistics). ``entropy`` may be missing (verl's bypass mode
    recomputes no log-probs): tokens are then counted, their entropy is not. With
    ``Config.save_rollouts``, the real rows are decoded (masked tokens left out) and appended
    with their rewards (``token_scores`` summed; unknown without them) under ``step``. Returns
    the new advantages, or ``None`` when they are unchanged, and the alpha applied.
    """
    watch.sync_decision()
    labels = watch.label(responses, response_mask)
    if labels is None:
        return None, 0.0
    planning = labels.planning_mask
    rows = torch.ones(responses.shape[0], dtype=torch.bool) if keep is None else keep.bool().cpu()
    if bool(rows.any()):
        index = rows.nonzero().squeeze(1).to(responses.device)
        mask = response_mask.index_select(0, index)
        rewards = None if token_scores is None else (token_scores * response_mask).sum(dim=-1)
        rewards = None if rewards is None else rewards.index_select(0, index.to(rewards.device))
        if watch.config.save_rollouts is not None:
            watch.save_rollouts([float("nan")] * len(index) if rewards is None else rewards,
                                completion_ids=responses.index_select(0, index), completion_mask=mask, step=step)
        ent = entropy if entropy is not None else torch.full(responses.shape, float("nan"))
        watch.observe(
            ent.index_select(0, index.to(ent.device)),
            mask,
            planning.index_select(0, index.to(planning.device)),
            logps=None if old_log_probs is None else old_log_probs.index_select(0, index.to(old_log_probs.device)),
            rewards=rewards,
            phrases=[labels.phrases[i] for i in index.tolist()],
        )
    new, alpha = watch.reweight(advantages, planning)
    return (new if alpha > 0.0 else None), alpha


def _build_trainer_class() -> type:
    """Define the verl trainer subclass (imports verl's V1 trainer; called once)."""
    import transfer_queue as tq
    from tensordict import TensorDict
    from verl.trainer.ppo.v1 import PPOTrainerSync
    from verl.workers.utils.padding import response_to_nested

    class PhaseWatchPPOTrainer(PPOTrainerSync):
        """verl's synchronous PPO trainer, watched by phasewatch (``trainer_mode=phasewatch``)."""

        registered_mode = TRAINER_MODE

        # verl assigns ``self.trainer_mode`` in PPOTrainer.__init__ and compares it with "sync"
        # in several places; keep sync semantics whatever name selected this class.
        @property
        def trainer_mode(self) -> str:
            return "sync"

        @trainer_mode.setter
        def trainer_mode(self, value: str) -> None:
            self.registered_mode = value

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.phasewatch_config = config_from_verl(config.get("phasewatch", None))
            self._phasewatch: Watcher | None = None
            self._pw_alpha = 0.0

        # -- the watcher needs verl's tokenizer, which exists only after init() --------------
        @property
        def phasewatch(self) -> Watcher:
            if self._phasewatch is None:
                tokenizer = getattr(self, "tokenizer", None)
                if tokenizer is None:
                    raise RuntimeError("phasewatch: the trainer has no tokenizer yet (call init() first)")
                self._phasewatch = Watcher(self.phasewatch_config, tokenizer)
            return self._phasewatch

        def _compute_advantage(self, batch, metrics: dict):
            batch = super()._compute_advantage(batch, metrics)
            try:
                watch = self.phasewatch
            except Exception as exc:  # noqa: BLE001 - never stop training
                log.warning("phasewatch: could not start (%s); training continues without it", exc)
                return batch
            updated = watch.failures.call("verl", self._pw_watch_batch, batch, default=None)
            return batch if updated is None else updated

        def _pw_watch_batch(self, batch):
            available = set(batch.fields or FIELDS)
            select = [f for f in FIELDS if f in available]
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=select)
            mask_nested = data["response_mask"]
            padded = data.to_padded_tensor()
            keep = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags], dtype=torch.bool)
            new, alpha = watch_padded_batch(
                self.phasewatch,
                padded["responses"],
                padded["response_mask"],
                padded["advantages"],
                entropy=padded.get("entropy", None),
                old_log_probs=padded.get("old_log_probs", None),
                token_scores=padded.get("rm_scores", None),
                keep=keep,
                step=getattr(self, "global_steps", None),
            )
            self._pw_alpha = alpha
            if new is None:
                return None
            fields = TensorDict({"advantages": response_to_nested(new, mask_nested)}, batch_size=len(batch))
            return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)

        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
            watch = self._phasewatch
            if watch is not None:
                watch.last_alpha = self._pw_alpha
                watch.end_step(int(global_steps))
                watch.failures.call("metrics", lambda: metrics.update(watch.metrics()))

        def _save_checkpoint(self):
            # written before verl's own files: the tracker file verl writes last then points
            # to a folder that already holds phasewatch's state
            watch = self._phasewatch
            if watch is not None:
                folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
                watch.failures.call("checkpoint", save_state, watch, folder)
            super()._save_checkpoint()

        def _load_checkpoint(self):
            super()._load_checkpoint()
            folder = resumed_folder(self.config.trainer, self.global_steps)
            if folder is not None:
                try:
                    load_state(self.phasewatch, folder)
                except Exception as exc:  # noqa: BLE001 - a bad state file must not stop a resume
                    log.warning("phasewatch: could not restore %s (%s); continuing with a fresh state",
                                os.path.join(folder, STATE_FILE), exc, exc_info=exc)

    PhaseWatchPPOTrainer.__module__ = __name__
    PhaseWatchPPOTrainer.__qualname__ = "PhaseWatchPPOTrainer"
    return PhaseWatchPPOTrainer


def save_state(watch: Watcher, folder: str) -> None:
    """Write the watcher's state into a checkpoint folder (atomically)."""
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(watch.state_dict(), f)
    os.replace(tmp, os.path.join(folder, STATE_FILE))


def load_state(watch: Watcher, folder: str) -> bool:
    """Restore the watcher from a checkpoint folder; False (and a warning) when it has none."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        log.warning("phasewatch: %s has no %s; the run resumes with a fresh phasewatch state", folder, STATE_FILE)
        return False
    with open(path, encoding="utf-8") as f:
        watch.load_state_dict(json.load(f))
    return True


def resumed_folder(trainer_config: Any, global_steps: int) -> str | None:
    """The ``global_step_N`` folder verl resumed from (``None`` when it started fresh),
    following verl's ``resume_mode`` rules."""
    if not global_steps:
        return None
    mode = trainer_config.get("resume_mode", "auto")
    if mode == "resume_path":
        folder = str(trainer_config.get("resume_from_path"))
    elif mode == "auto":
        folder = os.path.join(str(trainer_config.get("default_local_dir")), f"global_step_{global_steps}")
    else:
        return None
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)


def trainer_class() -> type:
    """The registered trainer class (built, and registered as ``phasewatch``, on first call)."""
    global _trainer_class
    with _lock:
        if _trainer_class is None:
            from verl.trainer.ppo.v1 import register_trainer

            cls = _build_trainer_class()
            register_trainer(TRAINER_MODE)(cls)
            globals()["PhaseWatchPPOTrainer"] = cls
            _trainer_class = cls
        return _trainer_class


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers the trainer right after verl's V1 trainer package finishes importing."""

    def find_spec(self, fullname, path, target=None):
        if fullname != V1_PACKAGE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _remove_finder()
            try:
                trainer_class()
            except Exception as exc:  # noqa: BLE001 - verl must import even if we cannot register
                log.warning("phasewatch: could not register verl trainer mode %r: %s", TRAINER_MODE, exc)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


_finder = _RegisterAfterImport()


def _remove_finder() -> None:
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def plugin() -> None:
    """Make ``trainer.v1.trainer_mode=phasewatch`` available (the ``verl.plugins`` entry point)."""
    if V1_PACKAGE in sys.modules:
        trainer_class()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


plugin()

__all__ = [
    "STATE_FILE",
    "TRAINER_MODE",
    "config_from_verl",
    "load_state",
    "plugin",
    "resumed_folder",
    "save_state",
    "trainer_class",
    "watch_padded_batch",
]
