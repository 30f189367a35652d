"""Settings of the run detector, with defaults chosen so that users never need to touch them.

Every threshold here is expressed in units that do not depend on the scale of the series
(robust standard deviations, ratios, steps), so one set of defaults serves a 150-step run of
a 4B model and a 5,000-step run of a 70B model alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

#: Series whose upward turn signals the execution-to-planning shift (strongest first).
PLANNING_SERIES: tuple[str, ...] = ("semantic_entropy", "entropy/planning", "nll/planning")
#: Series whose consolidation (falling, then flat) marks the execution phase.
EXECUTION_SERIES: tuple[str, ...] = ("entropy/execution", "nll/execution")
#: Entropy series watched by the health alarms (any that a record carries).
HEALTH_SERIES: tuple[str, ...] = ("entropy", "entropy/planning", "entropy/execution")


@dataclass(frozen=True)
class DetectionConfig:
    """Tuning knobs of :class:`~phasewatch.detect.run.RunDetector`.

    warmup_steps: observations of a series before any alarm may use it; the first steps of
        RL training are a transient (entropy often halves within five steps).
    window: length of the bounded windows (values kept per series); caps memory and the cost
        of every recalibration and confirmation, whatever the run length.
    calibrate_every: steps between re-estimates of each series' noise level and AR(1)
        coefficient (a numpy pass over ``window`` values; more often in the first 64 steps).
    shift_drift / shift_threshold: the upward CUSUM on each planning series, in long-run
        standard deviations (noise autocorrelation already divided out): ``drift`` is half the
        smallest rise worth detecting, ``threshold`` the alarm level.
    shift_min_rise: smallest confirmed rise of a planning series, in noise standard
        deviations of that series, that counts as a phase shift.
    shift_min_relative: ... and at least this fraction of its level at the turn.
    shift_min_span: observations after the turn before it can be confirmed (a rise must last).
    confirm_t / confirm_t_single / confirm_t_alone: t statistics (AR(1)-aware) that the
        rise after the turn must reach: summed over all planning series present (their
        correlation divided out) / for each series counted as rising / when a run reports
        a single planning series (nothing to corroborate it, so a stricter bar).
    confirm_window: values per series refitted (exact hinge search) to confirm and localise.
    confirm_cooldown: steps between two confirmation attempts.
    execution_veto: the shift is rejected when execution entropy/NLL rose by at least this
        fraction of the planning signals' relative rise since the same step (everything
        heating up is instability, not planning becoming the bottleneck).
    level_ratio / level_fraction: a level shift is a recent median ``level_ratio`` times
        above or below the baseline median, with ``level_fraction`` of the recent values
        beyond the baseline's 90th (10th) percentile.
    clip: standardised values are clipped to +-clip before entering a CUSUM, so that a single
        spike can add at most ``clip - drift`` to it.
    explosion_fraction: an entropy that has climbed this fraction of the way from its
        baseline to ln|V| (the entropy of a uniform policy), on ``persist_steps`` consecutive
        observations, has exploded.
    explosion_sd: ... and it must also be this many robust standard deviations (of single
        values) above the baseline.
    vocab_size: the policy's vocabulary size, if known (a record's ``vocab_size`` field wins).
        Unknown, ``assumed_vocab_size`` stands in: 32,000 is at the small end of current LLM
        vocabularies (Llama-2/Mistral 32k, Llama-3 128k, Qwen 152k), so the alarm errs early.
    collapse_ratio: entropy whose recent median falls below ``collapse_ratio`` times its
        baseline has collapsed.
    persist_steps: consecutive observations a health condition must hold before it fires.
    """

    warmup_steps: int = 10
    window: int = 256
    calibrate_every: int = 32
    shift_drift: float = 0.5
    shift_threshold: float = 3.0
    shift_min_rise: float = 2.0
    shift_min_relative: float = 0.03
    shift_min_span: int = 6
    confirm_t: float = 3.3
    confirm_t_single: float = 2.5
    confirm_t_alone: float = 4.0
    confirm_window: int = 96
    confirm_cooldown: int = 2
    execution_veto: float = 0.5
    level_ratio: float = 2.0
    level_fraction: float = 0.8
    clip: float = 3.0
    explosion_fraction: float = 0.25
    explosion_sd: float = 4.0
    collapse_ratio: float = 0.2
    persist_steps: int = 2
    vocab_size: int | None = None
    assumed_vocab_size: int = 32000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "vocab_size":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
                    raise ValueError(f"vocab_size: expected an integer >= 2 or None, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
                raise ValueError(f"{f.name}: expected a number, got {value!r}")
            if value < 0:
                raise ValueError(f"{f.name}: must be >= 0, got {value!r}")
        if self.window < 32:
            raise ValueError(f"window: must be >= 32 steps, got {self.window}")
        if self.confirm_window < 32:
            raise ValueError(f"confirm_window: must be >= 32 steps, got {self.confirm_window}")
        if self.calibrate_every < 1:
            raise ValueError(f"calibrate_every: must be >= 1, got {self.calibrate_every}")
        if self.persist_steps < 1:
            raise ValueError(f"persist_steps: must be >= 1, got {self.persist_steps}")
        if not 0.0 < self.explosion_fraction <= 1.0:
            raise ValueError(f"explosion_fraction: expected a value in (0, 1], got {self.explosion_fraction}")
        if not 0.0 < self.collapse_ratio < 1.0:
            raise ValueError(f"collapse_ratio: expected a value in (0, 1), got {self.collapse_ratio}")
        if self.level_ratio <= 1.0:
            raise ValueError(f"level_ratio: must be > 1, got {self.level_ratio}")
        if not 0.0 < self.level_fraction <= 1.0:
            raise ValueError(f"level_fraction: expected a value in (0, 1], got {self.level_fraction}")
        if self.assumed_vocab_size < 2:
            raise ValueError(f"assumed_vocab_size: must be >= 2, got {self.assumed_vocab_size}")
