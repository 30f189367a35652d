"""Settings of the run detector, with defaults chosen so that users never need to touch them.

Every threshold here is expressed in units that do not depend on the scale of the series
(robust standard deviations, ratios, steps), so one set of defaults serves a 150-step run of
a 4B model and a 5,000-step run of a 70B model alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

#: Series whose upward turn signals the execution-to-planning shift (strongest first).
PLANNING_SERIES: tuple[str, ...] = ("semantic_entropy", "entropy/planning", "nll/planning")
#: Independent families of planning evidence: the diversity of planning moves, and the
#: uncertainty of planning tokens (entropy and NLL of the same tokens move together).
PLANNING_FAMILIES: tuple[tuple[str, ...], ...] = (("semantic_entropy",), ("entropy/planning", "nll/planning"))
#: Series whose consolidation (falling, then flat) marks the execution phase.
EXECUTION_SERIES: tuple[str, ...] = ("entropy/execution", "nll/execution")
#: Corroborating evidence: answers lengthen sharply when planning takes over (the paper's
#: Qwen3-4B-Base run: ~900 -> ~3,000 tokens within 15 steps of its shift). Never enough alone.
LENGTH_SERIES: tuple[str, ...] = ("response_length",)
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
    shift_drift / shift_threshold: the upward CUSUM on each planning series (and on their fused
        departures), in long-run standard deviations (noise autocorrelation already divided
        out): ``drift`` is half the smallest rise worth detecting, ``threshold`` its alarm level.
        These are the cheap gate and the dashboard readings; the decision is the scan's.
    gate_level: the scan runs while the largest of those CUSUM statistics is at least this
        (and always during the first ``start_window`` steps).
    scan_every / scan_every_open: steps between two scans, and while the gate is open (a scan
        fits every candidate knot of every series: ~0.5-1 ms; the cadence keeps the median
        update cheap, the gate keeps the delay short when something is rising).
    confirm_scans: consecutive scans that must agree before the shift is declared (a scan
        that passes is repeated on each next step, so this costs ``confirm_scans - 1`` steps;
        a noise excursion rarely survives three looks, a real rise does).
    shift_min_relative: smallest rise of the leading planning series, as a fraction of its
        level at the turn, that counts as a phase shift.
    shift_min_span: observations after the knot before a turn can be confirmed.
    confirm_t / confirm_t_change / confirm_t_single: the joint t statistic of the planning
        series' slopes after the knot (their correlation divided out) / of their change of
        slope / the t statistic of at least one series on its own.
    confirm_t_alone: the joint bar when a single planning family carries the evidence (the run
        reports only one, or the other does not rise with it) and response length does not
        jump with it.
    confirm_t_with_length: the joint bar when response length jumps at the turn
        (``length_t``: its t statistics of slope after and change of slope, both).
    confirm_t_unconsolidated: the joint bar when execution entropy never consolidated (the
        paper's phase 2 follows phase 1; without it a late rise needs much stronger evidence).
    refit_prior_weight / refit_floor: the candidate knots (best slope after, sharpest change
        of slope, best compromise) are judged again with the noise of their fits' own residuals
        (trend-free, so not inflated by the rise being tested); the residuals' AR(1)
        coefficient is shrunk toward the run prior with ``refit_prior_weight`` pseudo-values
        and never taken below ``refit_floor`` times the run's running estimate (a short fit
        absorbs slow wander into its line and understates autocorrelation). ``refit_max_gain``:
        the largest factor by which this may raise a t statistic of the bend rule (the judged
        knots are the best-looking ones, so their residuals are biased low; unbounded, a flat
        run of tens of thousands of steps false-alarmed about once per 30,000 steps).
    confirm_window / confirm_pre: steps scanned for a knot / steps before each knot in its fit.
    agree_t: a planning family (semantic entropy; planning-token entropy and NLL) counts as
        rising with a series at this t statistic. When both families are reported but only
        one rises (and response length does not jump), the bar is ``confirm_t_alone``: several
        planning signals agreeing is what lets a shift be confirmed on fewer points.
    conflict_t: a planning series whose slope after the knot is this significantly negative
        vetoes the shift (conflicting evidence).
    execution_falling_t / execution_falling_ratio: execution entropy whose slope is this
        significantly negative is still consolidating: no shift is declared at a knot after
        which it keeps falling, unless the leading planning series rises by more than
        ``1 / execution_falling_ratio`` times execution's relative fall (real GRPO runs keep
        settling execution entropy while planning takes over; a phase-1 drift of planning
        signals is small next to execution's fall).
    execution_veto: the shift is rejected when execution entropy rose significantly by at least
        this fraction of the planning signals' relative rise since the same step (everything
        heating up is instability, not planning becoming the bottleneck). ``execution_veto_t``:
        the t statistic from which execution's rise counts (one standard error: this is a veto,
        so it leans toward vetoing). Execution rising after the knot at ``execution_rise_t``
        vetoes on its own (after consolidation it stays flat in the paper's runs).
    consolidation_drop / consolidation_z: execution entropy has consolidated once it fell by
        this fraction of its early level, and by this many long-run standard errors.
    start_window / start_t: during the first ``start_window`` steps of a run whose execution
        entropy has not fallen, a straight line through each planning series from the first
        step is tested jointly against ``start_t`` (a run without an execution phase); so is a
        turn within its first ``start_knots`` steps. ``start_scan_every``: steps between two
        scans during those first steps (a shift from the start has a short tolerance, and the
        scans of a young run cost little over the whole run).
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
    calibrate_every: int = 64
    shift_drift: float = 0.5
    shift_threshold: float = 3.0
    gate_level: float = 3.0
    scan_every: int = 5
    scan_every_open: int = 2
    confirm_scans: int = 3
    shift_min_relative: float = 0.03
    shift_min_span: int = 4
    confirm_t: float = 4.0
    confirm_t_change: float = 1.5
    confirm_t_single: float = 2.0
    confirm_t_alone: float = 5.0
    confirm_t_with_length: float = 1.5
    confirm_t_unconsolidated: float = 6.0
    length_t: float = 5.0
    confirm_window: int = 96
    refit_prior_weight: float = 0.0
    refit_floor: float = 1.0
    refit_max_gain: float = 1.1
    confirm_pre: int = 24
    conflict_t: float = 2.0
    agree_t: float = 1.5
    execution_falling_t: float = 2.5
    execution_falling_ratio: float = 0.5
    execution_veto: float = 0.5
    execution_veto_t: float = 1.0
    execution_rise_t: float = 2.5
    consolidation_drop: float = 0.20
    consolidation_z: float = 6.0
    start_window: int = 50
    start_t: float = 2.5
    start_scan_every: int = 1
    start_knots: int = 12
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
        for name in ("scan_every", "scan_every_open", "start_scan_every", "confirm_scans"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.confirm_pre < 6:
            raise ValueError(f"confirm_pre: must be >= 6 steps, got {self.confirm_pre}")
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
