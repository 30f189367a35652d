"""HICRA reweighting: the advantage transform (pure) and the schedule that gates it.

HICRA (arXiv:2509.03646, section 3) adds ``alpha * |A|`` to the advantage of every planning
token, so planning tokens get ``(1 + alpha) * A`` when the rollout did well and
``(1 - alpha) * A`` when it did badly; execution tokens are untouched. The paper applies it
from step 0; phasewatch's default (``auto``) waits until the execution-to-planning shift is
confirmed and then ramps alpha in, because the paper itself reports HICRA hurting a model that
has not consolidated its procedures yet.

Both halves are pure: :func:`hicra_advantages` never mutates its input and
:meth:`ReweightSchedule.alpha_at` is a function of the step numbers only. That is what lets
every rank, the HTTP server and the Prometheus exporter report the same alpha for a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from phasewatch.config import DEFAULT_PAUSE_ON, REWEIGHT_MODES

if TYPE_CHECKING:  # torch stays out of the import path of the CLI and the service
    import torch


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool):
        raise ValueError("alpha: expected a number in [0, 1], got a boolean")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}") from None
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    return value


def _check_steps(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ReweightSchedule:
    """When, and how strongly, to apply HICRA.

    mode: ``"off"`` (never), ``"always"`` (``alpha`` from step 0, as in the paper) or ``"auto"``
        (0 until the phase shift is confirmed at ``shift_step``, then a linear ramp that reaches
        ``alpha`` after ``ramp_steps`` steps; ``ramp_steps=0`` switches it on at once).
    pause_on: event kinds that pause reweighting. An entropy explosion means the policy is
        diverging; amplifying planning-token updates then adds gradient exactly where the
        policy is least stable, so by default alpha drops to 0 at the alarm.
    pause_steps: how long a pause lasts after the last pausing alarm before alpha ramps back
        in (over ``ramp_steps``); ``None`` keeps reweighting off for the rest of the run.

    The schedule is a value: it serialises with :meth:`to_json`, is stored per run, and
    :meth:`alpha_at` depends on step numbers only, never on wall time or call order.
    """

    mode: str = "auto"
    alpha: float = 0.2
    ramp_steps: int = 10
    pause_on: tuple[str, ...] = DEFAULT_PAUSE_ON
    pause_steps: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in REWEIGHT_MODES:
            raise ValueError(f"mode: expected one of {REWEIGHT_MODES}, got {self.mode!r}")
        object.__setattr__(self, "alpha", _check_alpha(self.alpha))
        _check_steps("ramp_steps", self.ramp_steps)
        _check_steps("pause_steps", self.pause_steps, allow_none=True)
        if isinstance(self.pause_on, str) or not all(isinstance(k, str) for k in self.pause_on):
            raise ValueError(f"pause_on: expected a sequence of event kinds, got {self.pause_on!r}")
        object.__setattr__(self, "pause_on", tuple(self.pause_on))

    def _ramp(self, steps_since: int) -> float:
        """Fraction of alpha ``steps_since`` steps after a ramp began (0 at the start step
        counts as the first step of the ramp)."""
        if steps_since < 0:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        return min(1.0, (steps_since + 1) / self.ramp_steps)

    def alpha_at(self, step: int, shift_step: int | None, pause_step: int | None = None) -> float:
        """The alpha to apply at ``step``.

        ``shift_step`` is the step at which the shift was confirmed (``None`` before);
        ``pause_step`` is the step of the most recent pausing alarm at or before ``step``
        (``None`` when there was none). Pure: same arguments, same answer, everywhere.
        """
        if self.mode == "off" or self.alpha == 0.0:
            return 0.0
        if self.mode == "always":
            scale = 1.0
        else:
            if shift_step is None:
                return 0.0
            scale = self._ramp(step - shift_step)
        if pause_step is not None and step >= pause_step:
            if self.pause_steps is None:
                return 0.0
            scale = min(scale, self._ramp(step - pause_step - self.pause_steps))
        return self.alpha * scale

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "ramp_steps": self.ramp_steps,
            "pause_on": list(self.pause_on),
            "pause_steps": self.pause_steps,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ReweightSchedule":
        """Parse :meth:`to_json` output (also what a remote client sends); unknown keys are
        an error so a typo does not silently fall back to a default."""
        if not isinstance(data, Mapping):
            raise ValueError(f"schedule: expected a JSON object, got {type(data).__name__}")
        known = {"mode", "alpha", "ramp_steps", "pause_on", "pause_steps"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"schedule: unknown field(s) {unknown}; expected some of {sorted(known)}")
        kwargs = dict(data)
        if "pause_on" in kwargs:
            pause_on = kwargs["pause_on"]
            if isinstance(pause_on, str) or not isinstance(pause_on, Iterable):
                raise ValueError(f"schedule: pause_on must be a list of event kinds, got {pause_on!r}")
            kwargs["pause_on"] = tuple(pause_on)
        return cls(**kwargs)

    @classmethod
    def from_config(cls, config: Any) -> "ReweightSchedule":
        """The schedule a :class:`phasewatch.Config` asks for (``reweight``, ``alpha``,
        ``ramp_steps``, ``pause_on``, ``pause_steps``)."""
        return cls(
            mode=config.reweight,
            alpha=config.alpha,
            ramp_steps=int(config.ramp_steps),
            pause_on=tuple(getattr(config, "pause_on", DEFAULT_PAUSE_ON)),
            pause_steps=getattr(config, "pause_steps", None),
        )


def hicra_advantages(
    advantages: "torch.Tensor", planning_mask: "torch.Tensor", alpha: float
) -> "torch.Tensor":
    """HICRA: ``A' = A + alpha * |A| * planning_mask``, as a new ``(B, T)`` tensor.

    advantages: ``(B,)`` (one advantage per sequence, GRPO) or ``(B, T)`` (per token).
    planning_mask: ``(B, T)``, bool or 0/1; treated as a constant (detached), so the
        transform adds no gradient path through the labels.
    alpha: in ``[0, 1]``.

    The input is never modified; the result has the dtype and device of ``advantages``
    (a floating dtype: an integer advantage tensor is an error, not a silent cast).
    """
    import torch

    alpha_f = _check_alpha(alpha)
    if not isinstance(advantages, torch.Tensor) or not isinstance(planning_mask, torch.Tensor):
        raise ValueError(
            "hicra_advantages: advantages and planning_mask must be torch tensors, got "
            f"{type(advantages).__name__} and {type(planning_mask).__name__}"
        )
    if not advantages.is_floating_point():
        raise ValueError(f"advantages: expected a floating dtype, got {advantages.dtype}")
    if planning_mask.dim() != 2:
        raise ValueError(f"planning_mask: expected shape (B, T), got {tuple(planning_mask.shape)}")
    batch, length = planning_mask.shape
    if advantages.dim() == 1:
        if advantages.shape[0] != batch:
            raise ValueError(
                f"advantages: shape {tuple(advantages.shape)} does not match planning_mask "
                f"{tuple(planning_mask.shape)} (batch sizes differ)"
            )
        per_token = advantages.unsqueeze(1).expand(batch, length)
    elif advantages.dim() == 2:
        if tuple(advantages.shape) != (batch, length):
            raise ValueError(
                f"advantages: shape {tuple(advantages.shape)} does not match planning_mask "
                f"{tuple(planning_mask.shape)}"
            )
        per_token = advantages
    else:
        raise ValueError(f"advantages: expected shape (B,) or (B, T), got {tuple(advantages.shape)}")
    if planning_mask.device != advantages.device:
        raise ValueError(
            f"planning_mask is on {planning_mask.device} but advantages are on {advantages.device}"
        )
    mask = planning_mask.detach()
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("planning_mask: expected booleans or 0/1 values")
    mask = mask.to(dtype=advantages.dtype)
    if alpha_f == 0.0:
        return per_token.clone()
    # out-of-place arithmetic only: `per_token` may be a view of the caller's tensor
    return per_token + alpha_f * per_token.abs() * mask


def last_pause_step(events: Iterable[Any], pause_on: Iterable[str], step: int) -> int | None:
    """The step of the latest event of a pausing kind detected at or before ``step``."""
    kinds = set(pause_on)
    latest: int | None = None
    for event in events:
        if event.kind in kinds and event.step <= step and (latest is None or event.step > latest):
            latest = event.step
    return latest


__all__ = ["ReweightSchedule", "hicra_advantages", "last_pause_step", "DEFAULT_PAUSE_ON"]
