"""Watcher: the trainer-agnostic core that every phasewatch hook runs each step.

One optimizer step, as every hook (TRL, verl, a plain PyTorch loop) drives it::

    decision  = watch.sync_decision()                                    # the decision in force
    labels    = watch.label(completion_ids, completion_mask)             # once per generation batch
    advantages, alpha = watch.reweight(advantages, labels.planning_mask) # HICRA, if the decision says so
    watch.observe(entropies, completion_mask, labels.planning_mask, ...) # once per micro-batch
    watch.end_step(step)                                                 # once per optimizer step

(``watch.step(...)`` does all of it for a plain loop.) Ranks meet twice per step. In
``end_step`` every rank all-reduces its statistics (sums and counts, so the result equals one
process holding the whole batch) and the main process hands the record to the monitor without
waiting for it. In ``sync_decision`` the main process takes the monitor's latest decision and
broadcasts it, so every rank applies the same alpha from the same step. Both collectives are
entered by every rank, in the same order, whatever happened locally: a rank whose labeler failed
takes part with empty statistics rather than skipping a collective (which would hang the others).

When the reweighting takes effect: the in-process monitor works on its own thread, off the
training thread; ``sync_decision`` at the start of step ``t + 1`` waits (briefly, bounded) for
it to finish step ``t``'s record, so the decision made from step ``t`` applies from step
``t + 1`` (the next generation batch), on every rank, run after run. A remote monitor
(``phasewatch serve``) is never waited for: the latest decision that has arrived is used, so the
lag may be longer, but it is the same on every rank.

Failing open: every phasewatch stage runs inside :class:`FailOpen`. An exception is caught,
counted per stage (``Watcher.errors``, exported as ``phasewatch/errors``) and logged once with
its traceback; training continues with unmodified advantages. Programming errors at the call
site that can never succeed (e.g. ``step()`` with neither entropies nor logits) raise at once.
A step whose record is lost that way (or that the monitor client dropped or rejected) is counted
in ``phasewatch/dropped`` and, when this Watcher serves Prometheus (``Config.metrics_port``), in
``phasewatch_records_dropped_total{reason}`` too, as the server does for remote clients.

Rollouts: with ``Config.save_rollouts`` every hook calls :meth:`Watcher.save_rollouts` once per
generation batch; the completions (decoded without padding or masked tokens, unless the trainer
already has the texts), their rewards and the step go to a JSON-lines file through
``phasewatch.grams.RolloutWriter``, one file per rank, never a collective.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from phasewatch.config import Config
from phasewatch.reweight import ReweightSchedule
from phasewatch.events import PHASE_CODES, Decision
from phasewatch.record import StepRecord

log = logging.getLogger("phasewatch.hooks")

T = TypeVar("T")


#: Record fields mirrored into the trainer's own logs as ``phasewatch/<field>``.
LOGGED_FIELDS: tuple[str, ...] = (
    "entropy",
    "entropy/planning",
    "entropy/execution",
    "nll/planning",
    "nll/execution",
    "planning_frac",
    "semantic_entropy",
)

STATE_VERSION = 1


class FailOpen:
    """Run phasewatch's own work so that no exception reaches the training loop.

    Each failure is counted under its stage name and logged once (with traceback) per
    stage; later failures of the same stage are only counted. ``strict=True`` re-raises
    instead, for tests and for debugging a setup.
    """

    def __init__(self, strict: bool = False, logger: logging.Logger = log) -> None:
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self._log = logger

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, stage: str, exc: BaseException) -> None:
        self.counts[stage] += 1
        if self.counts[stage] == 1:
            self._log.warning(
                "phasewatch: %s failed (%s: %s); training continues with unmodified advantages."
                " Further %s failures are counted in phasewatch/errors, not logged.",
                stage, type(exc).__name__, exc, stage, exc_info=exc,
            )

    def call(self, stage: str, fn: Callable[..., T], *args: Any, default: Any = None, **kwargs: Any) -> T | Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the point of failing open
            if self.strict:
                raise
            self.record(stage, exc)
            return default


def distributed_world(group: Any = None) -> tuple[int, int]:
    """``(world_size, rank)`` of ``group`` when torch.distributed is initialised, else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


@dataclass(frozen=True)
class WatchResult:
    """What :meth:`Watcher.step` hands back to a training loop.

    advantages: per-token ``(B, T)`` advantages to use in the loss (reweighted on planning
        tokens when ``alpha > 0``; the input values otherwise), or ``None`` when none were given.
    decision: the monitor's decision after this step (its alpha applies from the next step).
    alpha: the HICRA alpha applied to *these* advantages.
    planning_mask: ``(B, T)`` bool, or ``None`` when labeling failed.
    record: this step's record (reduced over ranks), or ``None`` when it could not be built.
    """

    advantages: torch.Tensor | None
    decision: Decision
    alpha: float
    planning_mask: torch.Tensor | None
    record: StepRecord | None


class Watcher:
    """Label, measure, reduce, report and reweight, for any training loop.

    config: a :class:`phasewatch.Config` (lexicon, monitor, reweight mode, alpha, run id).
    tokenizer: the tokenizer that produced the completion ids (used to decode them).
    labeler: a ready ``PlanningLabeler`` (default: one built from ``config.lexicon``).
    client: a ready monitor client (default: an in-process monitor on its own thread, or an
        HTTP client when ``config.monitor`` is a URL; built on the main process only). Under
        torch.distributed, build the Watcher after the process group is initialised, so that
        only the main process starts a client.
    group: the torch.distributed process group to reduce over (default: the world).
    strict: re-raise phasewatch's own errors instead of failing open.
    decision_wait_s: longest wait in :meth:`sync_decision` for an in-process monitor to finish
        the previous step (it takes milliseconds; the bound only matters if it is stuck).
    """

    def __init__(
        self,
        config: Config | None = None,
        tokenizer: Any = None,
        *,
        labeler: Any = None,
        client: Any = None,
        group: Any = None,
        strict: bool = False,
        decision_wait_s: float = 10.0,
    ) -> None:
        from phasewatch.client import initial_decision
        from phasewatch.labels import PlanningLabeler

        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise ValueError(f"config: expected a phasewatch.Config, got {type(config).__name__}")
        if tokenizer is None:
            raise ValueError("tokenizer: required (the tokenizer that produced the completion ids)")
        if labeler is None and not callable(getattr(tokenizer, "decode", None)):
            # caught now rather than as a labeling failure on every step of the run
            raise ValueError(
                f"tokenizer: a {type(tokenizer).__name__} has no decode(); pass the tokenizer that produced"
                " the completion ids (for a multimodal processor, its .tokenizer)"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.labeler = labeler if labeler is not None else PlanningLabeler(config.lexicon)
        self.schedule = ReweightSchedule.from_config(config)
        self.group = group
        self.failures = FailOpen(strict=strict)
        self._client = client
        self._client_failed = False
        self._listeners: list[Any] = []
        self._metrics_server: Any = None
        self._pending: Any = None  # StepStats merged over this step's micro-batches
        self.decision: Decision = initial_decision(self.schedule)
        self.last_record: StepRecord | None = None
        self.last_alpha: float = 0.0
        self.steps_ended = 0
        self._next_step = 0
        self._synced = False  # the decision has been broadcast since the last end_step
        self.decision_wait_s = float(decision_wait_s)
        self.late_decisions = 0
        self.steps_dropped = 0  # steps whose record a phasewatch failure lost (main process)
        self._failures_seen = 0  # failures.total at the last end_step
        self._drops_reported: Counter[str] = Counter()  # per reason, already sent to exporters
        self._rollouts: Any = None  # RolloutWriter, opened on the first save
        importlib.import_module("phasewatch.dist")  # imported now rather than inside the first step

        if self.is_main:  # connect now: the first training step should not pay for imports
            self.client

    # -- where this process stands -----------------------------------------------------------
    @property
    def run(self) -> str:
        return self.config.run

    @property
    def world(self) -> tuple[int, int]:
        return distributed_world(self.group)

    @property
    def is_main(self) -> bool:
        return self.world[1] == 0

    @property
    def alpha(self) -> float:
        """The alpha that :meth:`reweight` applies now (from the latest broadcast decision)."""
        return float(self.decision.alpha)

    @property
    def errors(self) -> int:
        """phasewatch failures caught on this rank so far (training went on regardless)."""
        return self.failures.total

    @property
    def client(self) -> Any:
        """The monitor client (main process only; ``None`` elsewhere or if it failed to start)."""
        if self._client is None and not self._client_failed and self.is_main:
            self._client = self.failures.call("connect", self._connect)
            self._client_failed = self._client is None
        return self._client

    @property
    def dropped(self) -> int:
        """Steps lost before the monitor saw them (main process): those the monitor client
        dropped or the monitor refused, plus those a phasewatch failure lost in the hook."""
        return sum(self._drop_counts().values())

    def _drop_counts(self) -> dict[str, int]:
        """Cumulative drops by ``phasewatch_records_dropped_total`` reason: ``buffer_full`` (the
        client dropped it, the same reason the server gives a remote client's header count),
        ``invalid`` (the monitor rejected it), ``other`` (a phasewatch failure in the hook)."""
        counts = {"buffer_full": 0, "invalid": 0, "other": self.steps_dropped}
        client = self._client
        if client is not None:
            try:
                counters = client.counters()
                counts["buffer_full"] = int(counters.dropped)
                counts["invalid"] = int(counters.rejected)
            except Exception:  # noqa: BLE001
                pass
        return counts

    def _report_drops(self) -> None:
        """Send new drops to the Prometheus exporter this Watcher attached (in-process monitor;
        a remote monitor's server counts them from the client's header)."""
        exporters = [x for x in self._listeners if callable(getattr(x, "record_dropped", None))]
        if not exporters:
            return
        for reason, total in self._drop_counts().items():
            new = total - self._drops_reported[reason]
            if new > 0:
                self._drops_reported[reason] = total
                for exporter in exporters:
                    exporter.record_dropped(self.run, new, reason)

    def _connect(self) -> Any:
        from phasewatch.client import InProcessClient, MonitorClient

        config = self.config
        if isinstance(config.monitor, str):
            return MonitorClient(config.monitor, config.run, config.server_token, schedule=self.schedule)
        if config.monitor is None:
            from phasewatch.monitor import Monitor

            monitor, owned = Monitor(store=config.store), True
        else:
            monitor, owned = config.monitor, False
        self._attach_listeners(monitor)
        return InProcessClient(monitor, config.run, schedule=self.schedule, background=True, close_monitor=owned)

    @property
    def waits_for_monitor(self) -> bool:
        """True for an in-process monitor (worth a bounded wait), False for a remote one."""
        return getattr(self._client, "monitor", None) is not None

    def _attach_listeners(self, monitor: Any) -> None:
        """Prometheus and Grafana for an in-process monitor (a remote one has its own). Each
        fails open on its own: a broken exporter must not cost the run its monitor."""
        self.failures.call("metrics", self._attach_prometheus, monitor)
        self.failures.call("annotations", self._attach_grafana, monitor)

    def _attach_prometheus(self, monitor: Any) -> None:
        if self.config.metrics_port is not None:
            from phasewatch.exporter import PrometheusExporter

            exporter = PrometheusExporter()
            monitor.add_listener(exporter)
            self._listeners.append(exporter)
            # serve() says where the metrics are (once, a warning when the port was taken)
            self._metrics_server = exporter.serve(port=int(self.config.metrics_port))

    def _attach_grafana(self, monitor: Any) -> None:
        if self.config.grafana_url:
            from phasewatch.grafana import GrafanaAnnotator

            annotator = GrafanaAnnotator.from_config(self.config)
            if annotator is not None:
                monitor.add_listener(annotator)
                self._listeners.append(annotator)

    # -- the stages of a step ------------------------------------------------------------------
    def label(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor | None) -> Any:
        """Planning labels (``BatchLabels``) for a batch, or ``None`` when labeling failed.

        Positions where ``completion_mask`` is 0 (padding, and tool output if the caller
        folded a tool mask in) are never planning and no phrase is matched across them.
        """
        return self.failures.call("label", self._label, completion_ids, completion_mask)

    def _label(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor | None) -> Any:
        labels = self.labeler.label(completion_ids, completion_mask, self.tokenizer)
        mask = labels.planning_mask
        if tuple(mask.shape) != tuple(completion_ids.shape):
            raise ValueError(
                f"labeler returned a planning mask of shape {tuple(mask.shape)} for completion ids"
                f" of shape {tuple(completion_ids.shape)}"
            )
        if mask.device != completion_ids.device:
            labels.planning_mask = mask.to(completion_ids.device)
        return labels

    def reweight(self, advantages: torch.Tensor, planning_mask: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        """HICRA with the current decision's alpha: ``(advantages, alpha_applied)``.

        With alpha 0, or no planning mask, the input tensor itself comes back unchanged
        (shape ``(B,)`` stays ``(B,)``); otherwise a new ``(B, T)`` tensor.
        """
        if not self._synced:
            self.sync_decision()
        alpha = self.alpha
        if alpha <= 0.0 or planning_mask is None:
            return advantages, 0.0
        from phasewatch.reweight import hicra_advantages

        out = self.failures.call("reweight", hicra_advantages, advantages, planning_mask, alpha)
        if out is None:
            return advantages, 0.0
        return out, alpha

    def _src(self) -> int:
        """Global rank of the group's first member (the process that talks to the monitor)."""
        if self.group is None:
            return 0
        import torch.distributed as dist

        return dist.get_global_rank(self.group, 0)

    def sync_decision(self) -> Decision:
        """Take the main process's latest decision on every rank (a collective when
        distributed: call it on every rank, once per step, before reweighting). A no-op when
        nothing was submitted since the last sync. Returns the decision in force."""
        if self._synced:
            return self.decision
        decision = self.decision
        if self.is_main and self._client is not None:
            fresh = self.failures.call("decide", self._latest_decision)
            # never step back: a client that has not heard from its monitor yet (e.g. after a
            # resume) reports its initial decision, which must not undo a restored one
            if isinstance(fresh, Decision) and fresh.step >= decision.step:
                decision = fresh
        if self.world[0] > 1:
            from phasewatch.dist import broadcast_decision

            decision = self.failures.call(
                "broadcast", broadcast_decision, decision, src=self._src(), group=self.group, default=self.decision
            )
        self.decision = decision
        self._synced = True
        return decision

    def _latest_decision(self) -> Decision:
        client = self._client
        if self.waits_for_monitor and self.decision_wait_s > 0:
            if not client.flush(self.decision_wait_s):
                self.late_decisions += 1
                log.warning(
                    "phasewatch: the in-process monitor took over %.1f s on a step; using its"
                    " latest decision (late decisions so far: %d)", self.decision_wait_s, self.late_decisions,
                )
        return client.decision

    def observe(
        self,
        entropies: torch.Tensor,
        completion_mask: torch.Tensor,
        planning_mask: torch.Tensor,
        *,
        logps: torch.Tensor | None = None,
        rewards: torch.Tensor | None = None,
        phrases: list[list[str]] | None = None,
    ) -> None:
        """Add one micro-batch's statistics to the current step (cheap: masked sums)."""
        stats = self.failures.call(
            "stats", self._batch_stats, entropies, completion_mask, planning_mask, logps, rewards, phrases
        )
        if stats is None:
            return
        if self._pending is None:
            self._pending = stats
        else:
            merged = self.failures.call("stats", self._pending.merge, stats)
            if merged is not None:
                self._pending = merged

    @staticmethod
    def _batch_stats(entropies, completion_mask, planning_mask, logps, rewards, phrases):
        from phasewatch.stats import StepStats

        with torch.no_grad():
            return StepStats.from_batch(
                entropies.detach(),
                completion_mask,
                planning_mask,
                logps=None if logps is None else logps.detach(),
                rewards=None if rewards is None else rewards.detach(),
                phrases=phrases,
            )

    def end_step(self, step: int) -> None:
        """Close optimizer step ``step``: reduce over ranks and hand the record to the monitor
        (without waiting for it). Call it on every rank exactly once per optimizer step (it runs
        a collective when distributed); the decision follows at the next :meth:`sync_decision`."""
        world_size, _ = self.world
        local, self._pending = self._pending, None
        if local is None:
            local = self.failures.call("stats", _empty_stats)
        reduced = local
        if world_size > 1 and local is not None:
            from phasewatch.dist import all_reduce_stats

            reduced = self.failures.call("reduce", all_reduce_stats, local, group=self.group)
        record = None
        if reduced is not None:
            record = self.failures.call("record", reduced.to_record, int(step))
        if record is not None and "entropy" not in record.values and "tokens" not in record.values:
            record = None  # nothing was measured anywhere this step: send nothing, leave a gap
        # a step is dropped by the hook when a phasewatch failure on this process left it with
        # nothing measured (not when the trainer simply gave nothing to measure); a record of
        # empty statistics still goes to the monitor, which then knows the step happened
        failed = self.failures.total > self._failures_seen
        measured = record is not None and ("entropy" in record.values or bool(record.values.get("tokens")))
        if self.is_main:
            client = self.client
            lost = failed and not measured
            if record is not None and client is not None:
                if self.failures.call("send", client.submit, record, default=_FAILED) is _FAILED:
                    lost = True
            if lost:
                self.steps_dropped += 1
            self.failures.call("metrics", self._report_drops)
        self._failures_seen = self.failures.total
        self._synced = False
        self.last_record = record
        self.steps_ended += 1
        self._next_step = int(step) + 1

    def step(
        self,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        *,
        entropies: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        advantages: torch.Tensor | None = None,
        rewards: torch.Tensor | None = None,
        logps: torch.Tensor | None = None,
        step: int | None = None,
    ) -> WatchResult:
        """Everything for one optimizer step of a plain loop, in one call.

        Give the per-token ``entropies`` (B, T) of the completion tokens, or the ``logits``
        (B, T, V) that predict them (entropies are then computed, chunked, without grad).
        ``advantages`` (B,) or (B, T) come back reweighted as (B, T); ``step`` defaults to one
        more than the last step. Call it on every rank when distributed. The returned decision
        is the one made from this step's record (it waits for the monitor, which takes
        milliseconds); it applies from the next call.
        """
        if (entropies is None) == (logits is None):
            raise ValueError("step(): give exactly one of entropies= (B, T) or logits= (B, T, V)")
        step = self._next_step if step is None else int(step)
        self.sync_decision()
        labels = self.label(completion_ids, completion_mask)
        planning_mask = None if labels is None else labels.planning_mask
        alpha = 0.0
        out_adv = None
        if advantages is not None:
            out_adv, alpha = self.reweight(advantages, planning_mask)
            if out_adv.dim() == 1:
                out_adv = out_adv.unsqueeze(1).expand(tuple(completion_ids.shape))
        self.last_alpha = alpha
        if rewards is not None and self.config.save_rollouts is not None:
            self.save_rollouts(rewards, completion_ids=completion_ids, completion_mask=completion_mask, step=step)
        if entropies is None:
            entropies = self.failures.call("entropy", _entropy_from_logits, logits)
        if entropies is not None and planning_mask is not None:
            self.observe(
                entropies, completion_mask, planning_mask,
                logps=logps, rewards=rewards, phrases=labels.phrases,
            )
        self.end_step(step)
        decision = self.sync_decision()  # wait for this step's decision: a plain loop wants it now
        return WatchResult(out_adv, decision, alpha, planning_mask, self.last_record)

    # -- rollouts ---------------------------------------------------------------------------
    def save_rollouts(
        self,
        rewards: Any,
        *,
        texts: list[str] | None = None,
        completion_ids: torch.Tensor | None = None,
        completion_mask: torch.Tensor | None = None,
        step: int | None = None,
        groups: list[str | int] | None = None,
    ) -> int:
        """Append this process's completions and rewards to ``Config.save_rollouts``.

        Give ``texts`` when the trainer already decoded them; otherwise ``completion_ids``
        (B, T) and ``completion_mask`` are decoded here (masked positions, i.e. padding and
        tool output, left out; special tokens skipped). ``rewards``: one number per completion
        (NaN -> null). ``groups``: the prompt each completion answers, when known. Returns how
        many were written: 0 when saving is off, the size cap was reached, or it failed (counted
        under ``rollouts`` in ``errors``, logged once; training goes on).
        """
        if self.config.save_rollouts is None:
            return 0
        return self.failures.call(
            "rollouts", self._save_rollouts, rewards, texts, completion_ids, completion_mask, step, groups, default=0
        )

    def _save_rollouts(self, rewards, texts, completion_ids, completion_mask, step, groups) -> int:
        if texts is None:
            if completion_ids is None:
                raise ValueError("save_rollouts: give texts= or completion_ids=")
            texts = decode_completions(self.tokenizer, completion_ids, completion_mask)
        writer = self._rollouts
        if writer is None:
            from phasewatch.grams.rollouts import RolloutWriter

            world_size, rank = self.world
            path = rollouts_path(self.config.save_rollouts, world_size, rank)
            writer = RolloutWriter(path, run=self.run, max_bytes=self.config.rollouts_max_bytes)
            self._rollouts = writer
        return writer.write_many(texts, rewards, step=self._next_step if step is None else int(step), groups=groups)

    @property
    def rollouts(self) -> Any:
        """The ``RolloutWriter`` in use (``.path``, ``.written``, ``.dropped``), or ``None``."""
        return self._rollouts

    # -- reporting --------------------------------------------------------------------------
    def metrics(self, prefix: str = "phasewatch/") -> dict[str, float]:
        """The last step's numbers for a trainer's own logger (TRL, W&B, TensorBoard)."""
        out: dict[str, float] = {}
        record = self.last_record
        if record is not None:
            for name in LOGGED_FIELDS:
                value = record.values.get(name)
                if value is not None:
                    out[prefix + name] = float(value)
        out[prefix + "phase"] = float(PHASE_CODES.get(self.decision.phase, -1))
        out[prefix + "alpha"] = float(self.last_alpha)
        out[prefix + "errors"] = float(self.errors)
        if self.is_main:
            out[prefix + "dropped"] = float(self.dropped)
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the decision in force, the step counter and, for an
        in-process monitor without a store, the run's records (replayed on load, so the
        detectors come back exactly; the monitor is deterministic given its records)."""
        decision = self.decision
        if self.is_main and self._client is not None:  # include the last submitted step
            fresh = self.failures.call("checkpoint", self._latest_decision)
            if isinstance(fresh, Decision) and fresh.step >= decision.step:
                decision = fresh
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "run": self.run,
            "next_step": self._next_step,
            "decision": decision.to_json(),
            "errors": dict(self.failures.counts),
        }
        monitor = getattr(self._client, "monitor", None)
        if monitor is not None and getattr(monitor, "store", None) is None:
            records = self.failures.call("checkpoint", monitor.records, self.run, default=[]) or []
            state["records"] = [{"step": r.step, **dict(r.values)} for r in records]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (on every rank; the main process also replays
        the saved records into an in-process monitor that lacks them)."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"phasewatch state: expected version {STATE_VERSION}, got {state!r:.200}")
        if state.get("run") != self.run:
            log.warning(
                "phasewatch: resuming run %r from a checkpoint of run %r; records go to %r",
                self.run, state.get("run"), self.run,
            )
        self._next_step = int(state.get("next_step", 0))
        self.decision = Decision.from_json(state["decision"])
        self._synced = True
        for stage, count in dict(state.get("errors", {})).items():
            self.failures.counts[str(stage)] = int(count)
        records = state.get("records")
        if records and self.is_main:
            client = self.client
            monitor = getattr(client, "monitor", None)
            if monitor is not None:
                self.failures.call("restore", _replay, monitor, self.run, records)
                fresh = self.failures.call("restore", monitor.decision, self.run)
                if isinstance(fresh, Decision) and fresh.step == self.decision.step:
                    self.decision = fresh

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush the client and stop what this watcher started (metrics server, listeners)."""
        client = self._client
        if client is not None:
            self.failures.call("close", client.close, timeout)
            self.failures.call("metrics", self._report_drops)  # what close() gave up on
        self._client = None
        self._client_failed = True
        writer, self._rollouts = self._rollouts, None
        if writer is not None:
            self.failures.call("close", writer.close)
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            self.failures.call("close", server.close)
        for listener in self._listeners:
            closer = getattr(listener, "close", None)
            if callable(closer):
                self.failures.call("close", closer)
        self._listeners = []


_FAILED = object()  # FailOpen's default: tells a failed call from one that returned None


def rollouts_path(path: str | Path, world_size: int, rank: int) -> Path:
    """Where this rank writes its rollouts: ``path`` itself with one process; with several,
    ``.rank{N}`` before the extension (``rollouts.jsonl.gz`` -> ``rollouts.rank1.jsonl.gz``),
    so every rank appends to its own file and none waits for another."""
    path = Path(path)
    if world_size <= 1:
        return path
    name = path.name
    tail = ""
    if name.endswith(".gz") and len(name) > 3:
        name, tail = name[:-3], ".gz"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:  # no extension (or a dot file): the suffix goes at the end
        stem, ext = name, ""
    return path.with_name(f"{stem}.rank{rank}" + (f".{ext}" if ext else "") + tail)


def decode_completions(tokenizer: Any, completion_ids: torch.Tensor, completion_mask: torch.Tensor | None) -> list[str]:
    """One string per row: the tokens where ``completion_mask`` is set, special tokens skipped."""
    ids = completion_ids.detach().cpu()
    keep = None if completion_mask is None else completion_mask.detach().cpu().bool()
    rows = [(ids[row] if keep is None else ids[row][keep[row]]).tolist() for row in range(ids.shape[0])]
    batch_decode = getattr(tokenizer, "batch_decode", None)
    if callable(batch_decode):  # one call: a fast tokenizer decodes the batch in Rust
        return list(batch_decode(rows, skip_special_tokens=True))
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in rows]


def _replay(monitor: Any, run: str, records: list[Mapping[str, Any]]) -> None:
    """Feed saved records the monitor has not seen (duplicates are ignored by the monitor)."""
    known: set[int] = set()
    try:
        known = {r.step for r in monitor.records(run)}
    except KeyError:
        pass
    for raw in records:
        record = StepRecord.from_flat(raw)
        if record.step not in known:
            monitor.observe(run, record.step, record)


def _empty_stats() -> Any:
    from phasewatch.stats import StepStats

    return StepStats.empty()


def _entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    from phasewatch.entropy import token_entropy

    with torch.no_grad():
        return token_entropy(logits.detach())


__all__ = [
    "FailOpen",
    "PHASE_CODES",
    "WatchResult",
    "Watcher",
    "decode_completions",
    "distributed_world",
    "rollouts_path",
]
