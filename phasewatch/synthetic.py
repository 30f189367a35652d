"""Seeded synthetic training runs with known phase-shift and health-alarm onsets.

The detectors are judged on series whose truth is known. Every situation imitates a shape read
off the HICRA paper's figures (arXiv:2509.03646, the table in ``docs/reference.md`` section 1)
or a failure seen in real GRPO logs, and every run draws its own length, scale, noise level,
autocorrelation, onset, rise steepness, spikes, missing values and missing fields, so a
detector tuned here has to be robust to all of them rather than to one curve.

=================  ====================================================================
situation          what happens (and the paper's curve it imitates)
=================  ====================================================================
clear_shift        100-300 steps (paper: 150). Execution entropy consolidates, falling to
                   0.4-0.6x its start with a time constant of 0.12-0.3x the onset (paper,
                   Qwen3-4B-Base: 0.27 -> 0.14 by step ~25). Semantic entropy drifts up by
                   0-12% before the onset (paper: x1.12 by step 40), then rises by 20-45% of
                   its level over 0.6-1.5x the onset (paper: steep rise from ~45 to x1.45 at
                   90). Onset at 20-40% of the run (paper: 45/150). Planning-token entropy
                   dips by 0-10% and turns 0-12 steps after the onset (paper: bottoms near
                   55). In 70% of runs the response length jumps 1.5-3.5x within 10-30 steps,
                   starting 0-10 steps after the onset (paper: ~900 -> ~3,000 between 50 and
                   65); in the others it grows by at most 30%.
late_small_shift   400-800 steps (paper, Qwen2.5-7B-Base: 500). Execution entropy falls to
                   0.15-0.35x its start with a time constant of 15-35 steps (paper: 0.5 ->
                   0.1 by steps 50-100). Planning-token entropy falls by 20-45% until the
                   onset at 30-50% of the run (paper: falls to ~0.35 at step ~175), then
                   rises slowly, by 25-70% of its start over 100-250 steps (paper: to ~0.9 by
                   ~390); semantic entropy rises by 10-30%, 0-20 steps later.
no_execution       100-300 steps; planning signals rise from step 0-10, by 20-50% over
                   30-90 steps; execution entropy is already flat (paper: Qwen3-4B-Instruct
                   and VL models, "rises almost at once").
never_pivots       150-600 steps. Execution consolidates; planning signals stagnate, then
                   degrade (paper: Llama-3.1-8B-Base); in half the runs planning-token
                   entropy first falls fast with execution entropy (5-25%, same time
                   constant) and flattens. In 35% of runs every entropy drifts up
                   together from the stagnation on (instability, not a planning shift); in
                   30% the response length grows steadily through the run (long-CoT RL runs
                   often lengthen without any change of strategy). No phase shift.
stationary         300-1000 steps, every series stationary around a constant level. No alarm
                   of any kind.
collapse           total and per-class entropy decay toward 0 from a known step
explosion          entropy climbs toward ln|V| (a uniform policy) within 2-10 steps (the real
                   ``7_5_plus_kl`` log: 0.44 -> 1.51 -> ... -> ln(151,936) in a few steps)
=================  ====================================================================

Noise, grounded on the real GRPO logs in ``../shared/data/rl-logs/reasoning-from-scratch``
(Qwen3-0.6B-Base, 1 prompt x 8 rollouts per step; measured around a 31-step smoothed trend
on their stable stretches):

* **Level.** Relative per-step noise there is 0.31-0.51 for ``entropy_avg``, 0.26-0.46 for
  ``avg_response_len`` and 0.26-0.37 for ``reward_avg``: the prompt-to-prompt variation of one
  prompt's 8 rollouts. A step averages over P prompts, so the relative noise is
  ``s1 / sqrt(P)`` with ``s1`` drawn from :data:`PER_PROMPT_REL_SD` (0.30-0.50, the measured
  range) and P log-uniform in :data:`PROMPTS_PER_STEP` (128-1024 prompts per step: the batch
  sizes of verl's GRPO recipes, on which the paper's code is built). That gives 0.9-4.4% per
  step, median ~2.1%. ``noise_scale`` multiplies it: x1.5 stands for ~2.3x fewer prompts
  (56-455, e.g. TRL runs on a few GPUs), x2 for 4x fewer.
* **Autocorrelation.** Lag-1 autocorrelation of the residuals is -0.06..+0.13 on the stable
  stretches (up to +0.45 just before the ``7_5`` explosion). Larger batches shrink the
  independent sampling noise relative to the slow wander of the policy, so the AR(1)
  coefficient is drawn from 0-0.5 (:data:`PHI_RANGE`); ``phi_max`` raises the upper end.
* **Correlation across series.** Residuals of different series move together (a batch of
  harder prompts has longer answers, higher entropy, lower reward): entropy vs length
  +0.39..+0.65, entropy vs reward -0.51..-0.78. Every series' noise therefore shares a common
  AR(1) factor with a loading drawn so that the correlation between two series is 0.3-0.7
  (:data:`COMMON_SHARE`); token NLL and token entropy of the same class correlate more (0.9:
  the same tokens).
* **Spikes.** Residuals of ``entropy_avg`` beyond 5 robust standard deviations occur on 3.3%
  (``7_3``) and 4.6% (``7_4``) of steps, 5.6-78 standard deviations large, and never in length
  or reward: entropy-type series get spikes on 0-5% of steps (:data:`SPIKE_RATE`), 5-40 noise
  standard deviations (log-uniform), 80% upward, hitting every entropy series of the step
  (one odd batch).
* **Gaps.** The real logs have none; for robustness 0-5% of values are NaN, 0-3% of steps
  are missing, and 30% of runs never report one optional field. Per-class series are a little
  noisier than the totals (planning tokens are 5-20% of tokens: x1.0-1.5); semantic entropy,
  an aggregate over thousands of phrase occurrences, gets x0.5-1.0 (no per-step log exists
  to measure it; this is an assumption).
* ``entropy/execution/std`` is the within-batch standard deviation of per-token execution
  entropy, as ``StepStats`` reports it: per-token entropies of LLMs are right-skewed (most
  tokens near-deterministic), so the standard deviation is of the order of the mean or above
  (1.0-2.5x, drawn per run).

:func:`generate` is a pure function of ``(situation, seed)`` and its keyword overrides;
:func:`suite` builds a reproducible collection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from phasewatch.record import StepRecord

SITUATIONS: tuple[str, ...] = (
    "clear_shift",
    "late_small_shift",
    "no_execution",
    "never_pivots",
    "stationary",
    "collapse",
    "explosion",
)
#: Situations whose runs contain an execution-to-planning shift.
SHIFT_SITUATIONS: tuple[str, ...] = ("clear_shift", "late_small_shift", "no_execution")
#: Situations whose runs contain a health alarm, and its kind.
HEALTH_SITUATIONS: dict[str, str] = {"collapse": "entropy_collapse", "explosion": "entropy_explosion"}

#: Fields every synthetic run may carry (a run may drop some optional ones entirely).
FIELDS: tuple[str, ...] = (
    "entropy",
    "entropy/planning",
    "entropy/execution",
    "entropy/execution/std",
    "semantic_entropy",
    "nll/planning",
    "nll/execution",
    "planning_frac",
    "reward",
    "response_length",
)
#: Fields a run may never report (hooks without log-probs, without a phrase list, ...).
OPTIONAL_FIELDS: tuple[str, ...] = ("semantic_entropy", "nll/planning", "nll/execution", "response_length")

#: Relative per-step noise of one prompt's rollouts (measured on the real logs, see above).
PER_PROMPT_REL_SD: tuple[float, float] = (0.30, 0.50)
#: Prompts per training step (log-uniform): paper-scale GRPO batches.
PROMPTS_PER_STEP: tuple[float, float] = (128.0, 1024.0)
#: AR(1) coefficient of the noise (uniform).
PHI_RANGE: tuple[float, float] = (0.0, 0.5)
#: Share of each series' noise variance that is common to all series of the run (uniform):
#: the correlation between two series' noise is about this share.
COMMON_SHARE: tuple[float, float] = (0.3, 0.7)
#: Fraction of steps with a spike in the entropy-type series (uniform), and spike sizes in
#: noise standard deviations (log-uniform).
SPIKE_RATE: tuple[float, float] = (0.0, 0.05)
SPIKE_SIZE: tuple[float, float] = (5.0, 40.0)
#: Run lengths per situation (uniform integers).
LENGTHS: dict[str, tuple[int, int]] = {
    "clear_shift": (100, 300),
    "late_small_shift": (400, 800),
    "no_execution": (100, 300),
    "never_pivots": (150, 600),
    "stationary": (300, 1000),
    "collapse": (150, 400),
    "explosion": (150, 400),
}


@dataclass(frozen=True)
class SyntheticRun:
    """One generated run.

    ``series`` maps field name to an array over steps ``0..length-1`` with NaN where the
    value is missing; ``steps_present`` marks the steps that produce a record at all.
    ``shift_onset`` is the true start of the planning phase (None: there is none);
    ``health_onsets`` maps an alarm kind to the step its condition began.
    """

    situation: str
    seed: int
    length: int
    series: dict[str, np.ndarray]
    steps_present: np.ndarray
    shift_onset: int | None = None
    health_onsets: dict[str, int] = field(default_factory=dict)
    params: dict[str, float] = field(default_factory=dict)
    vocab_size: int | None = None

    def records(self) -> Iterator[StepRecord]:
        """The run as the monitor would see it: missing values dropped, gaps skipped."""
        names = list(self.series)
        columns = [self.series[n] for n in names]
        for t in range(self.length):
            if not self.steps_present[t]:
                continue
            values = {}
            for name, col in zip(names, columns):
                v = col[t]
                if not math.isnan(v):
                    values[name] = float(v)
            yield StepRecord(step=t, values=values)


def ar1_noise(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal standard deviation ``sd``."""
    innov = rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi), n)
    out = np.empty(n)
    out[0] = rng.normal(0.0, sd)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + innov[i]
    return out


def decay(t: np.ndarray, start: float, end: float, tau: float) -> np.ndarray:
    """Exponential approach from ``start`` to ``end`` with time constant ``tau``."""
    return end + (start - end) * np.exp(-t / max(tau, 1e-9))


def ramp(t: np.ndarray, onset: float, duration: float, power: float = 1.0) -> np.ndarray:
    """0 before ``onset``, rising to 1 over ``duration`` steps (convex for ``power`` > 1)."""
    return np.clip((t - onset) / max(duration, 1e-9), 0.0, 1.0) ** power


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


class _Noise:
    """The per-run noise process: level, AR(1), common factor, spikes, NaNs, gaps."""

    def __init__(self, rng: np.random.Generator, n: int, *, noise_scale: float, phi_max: float) -> None:
        self.rng = rng
        self.n = n
        self.prompts = _log_uniform(rng, *PROMPTS_PER_STEP)
        self.per_prompt = float(rng.uniform(*PER_PROMPT_REL_SD))
        self.rel_sd = self.per_prompt / math.sqrt(self.prompts) * noise_scale
        self.phi = float(rng.uniform(PHI_RANGE[0], phi_max))
        self.common_share = float(rng.uniform(*COMMON_SHARE))
        self.spike_rate = float(rng.uniform(*SPIKE_RATE))
        self.nan_rate = float(rng.uniform(0.0, 0.05))
        self.gap_rate = float(rng.uniform(0.0, 0.03))
        self.planning_factor = float(rng.uniform(1.0, 1.5))
        self.semantic_factor = float(rng.uniform(0.5, 1.0))
        # unit-variance AR(1) processes: one common to the run, one per entropy class
        self.common = ar1_noise(rng, n, self.phi, 1.0)
        self.spike_steps = rng.uniform(size=n) < self.spike_rate
        self.spike_sign = np.where(rng.uniform(size=n) < 0.8, 1.0, -1.0)

    def unit(self, loading: float = 1.0, base: np.ndarray | None = None, base_corr: float = 0.0) -> np.ndarray:
        """Unit-variance noise sharing ``common_share`` with the run's common factor (sign of
        ``loading``), or correlated ``base_corr`` with ``base`` when given."""
        own = ar1_noise(self.rng, self.n, float(np.clip(self.phi + self.rng.normal(0.0, 0.05), 0.0, 0.95)), 1.0)
        if base is not None:
            return base_corr * base + math.sqrt(1.0 - base_corr ** 2) * own
        c = math.sqrt(self.common_share)
        return math.copysign(c, loading) * self.common + math.sqrt(1.0 - c * c) * own

    def apply(self, clean: np.ndarray, unit: np.ndarray, factor: float = 1.0, *, spiky: bool = False) -> np.ndarray:
        """``clean`` times (1 + relative noise), with spikes (entropy-type series) and NaNs."""
        sd = self.rel_sd * factor
        out = clean * (1.0 + sd * unit)
        if spiky and self.spike_steps.any():
            k = int(self.spike_steps.sum())
            size = np.exp(self.rng.uniform(math.log(SPIKE_SIZE[0]), math.log(SPIKE_SIZE[1]), k))
            bump = self.spike_sign[self.spike_steps] * size * sd
            out[self.spike_steps] = clean[self.spike_steps] * np.maximum(1.0 + bump, 0.05)
        out[self.rng.uniform(size=self.n) < self.nan_rate] = np.nan
        return out


def _assemble(z: _Noise, rng: np.random.Generator, scale: float, execution: np.ndarray,
              planning: np.ndarray, semantic: np.ndarray, length_curve: np.ndarray,
              planning_frac: np.ndarray, reward: np.ndarray) -> dict[str, np.ndarray]:
    nll_ratio_e = float(rng.uniform(0.8, 1.3))
    nll_ratio_p = float(rng.uniform(0.8, 1.3))
    std_ratio = float(rng.uniform(1.0, 2.5))
    u_exec = z.unit()
    u_plan = z.unit()
    series = {
        "entropy/execution": z.apply(scale * execution, u_exec, spiky=True),
        "entropy/planning": z.apply(scale * planning, u_plan, z.planning_factor, spiky=True),
        "semantic_entropy": z.apply(semantic, z.unit(), z.semantic_factor),
        "nll/execution": z.apply(scale * nll_ratio_e * execution, z.unit(base=u_exec, base_corr=0.9), spiky=True),
        "nll/planning": z.apply(scale * nll_ratio_p * planning, z.unit(base=u_plan, base_corr=0.9),
                                z.planning_factor, spiky=True),
        "entropy/execution/std": z.apply(scale * std_ratio * execution, z.unit(base=u_exec, base_corr=0.7), spiky=True),
        "planning_frac": z.apply(planning_frac, z.unit(), 0.5),
        "reward": z.apply(reward, z.unit(loading=-1.0)),
        "response_length": z.apply(length_curve, z.unit()),
    }
    pf = planning_frac
    clean_total = scale * ((1.0 - pf) * execution + pf * planning)
    series["entropy"] = z.apply(clean_total, z.unit(base=u_exec, base_corr=0.95), spiky=True)
    if rng.uniform() < 0.3:
        # a run whose hooks never report one of the optional fields
        victim = str(rng.choice(list(OPTIONAL_FIELDS)))
        series[victim] = np.full(z.n, np.nan)
    return {name: series[name] for name in FIELDS}


def generate(situation: str, seed: int, *, length: int | None = None,
             noise_scale: float = 1.0, phi_max: float = PHI_RANGE[1]) -> SyntheticRun:
    """One run of ``situation``; a pure function of its arguments.

    ``length`` overrides the drawn run length; ``noise_scale`` multiplies the drawn noise
    level and ``phi_max`` is the upper end of the drawn AR(1) coefficient (robustness checks:
    the same shapes, noisier and more autocorrelated).
    """
    if situation not in SITUATIONS:
        raise ValueError(f"situation: expected one of {SITUATIONS}, got {situation!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if isinstance(noise_scale, bool) or not (isinstance(noise_scale, (int, float)) and 0.0 <= noise_scale <= 10.0):
        raise ValueError(f"noise_scale: expected a number in [0, 10], got {noise_scale!r}")
    if isinstance(phi_max, bool) or not (isinstance(phi_max, (int, float)) and 0.0 <= phi_max <= 0.95):
        raise ValueError(f"phi_max: expected a number in [0, 0.95], got {phi_max!r}")
    rng = np.random.default_rng([seed, SITUATIONS.index(situation), 0x5EED2])
    lo, hi = LENGTHS[situation]
    n = int(rng.integers(lo, hi + 1))
    if length is not None:
        n = int(length)
    if n < 40:
        raise ValueError(f"length: must be >= 40 steps, got {n}")
    z = _Noise(rng, n, noise_scale=float(noise_scale), phi_max=float(phi_max))
    scale = _log_uniform(rng, 0.3, 3.0)  # models and tokenizers differ in entropy level
    t = np.arange(n, dtype=float)
    e_start = float(rng.uniform(0.2, 0.6))
    p_level = float(rng.uniform(0.4, 1.2))
    sem_level = float(rng.uniform(1.5, 4.0))
    len_level = float(rng.uniform(200.0, 1500.0))
    pf_level = float(rng.uniform(0.05, 0.2))
    onset: int | None = None
    health: dict[str, int] = {}
    params: dict[str, float] = {"noise": z.rel_sd, "prompts": z.prompts, "phi": z.phi,
                                "common_share": z.common_share, "scale": scale}
    vocab = None

    if situation == "clear_shift":
        onset = max(25, int(round(n * rng.uniform(0.2, 0.4))))
        e_end = e_start * float(rng.uniform(0.4, 0.6))
        execution = decay(t, e_start, e_end, onset * rng.uniform(0.12, 0.3))
        pre_drift = float(rng.uniform(0.0, 0.12))
        rise_sem = float(rng.uniform(0.2, 0.45))
        dur = onset * float(rng.uniform(0.6, 1.5))
        power = float(rng.uniform(1.0, 1.3))
        semantic = sem_level * (1.0 + pre_drift * np.minimum(t / onset, 1.0) + rise_sem * ramp(t, onset, dur, power))
        dip = float(rng.uniform(0.0, 0.1))
        lag = float(rng.uniform(0.0, 12.0))
        rise_p = float(rng.uniform(0.2, 0.6))
        planning = p_level * (1.0 - dip * np.minimum(t / (onset + lag), 1.0)
                              + rise_p * ramp(t, onset + lag, dur, power))
        if rng.uniform() < 0.7:
            jump = float(rng.uniform(0.5, 2.5))
            length_curve = len_level * (1.0 + jump * ramp(t, onset + rng.uniform(0, 10), rng.uniform(10, 30)))
        else:
            length_curve = len_level * (1.0 + rng.uniform(0.0, 0.3) * ramp(t, onset, dur))
        pf = pf_level * (1.0 + rng.uniform(0.2, 0.6) * ramp(t, onset, dur))
        reward = 0.2 + 0.5 * (1.0 - np.exp(-t / (onset * 1.5)))
        params.update(rise=rise_sem, rise_planning=rise_p, duration=dur, lag=lag, pre_drift=pre_drift)
    elif situation == "late_small_shift":
        onset = int(round(n * rng.uniform(0.3, 0.5)))
        execution = decay(t, e_start, e_start * rng.uniform(0.15, 0.35), rng.uniform(15, 35))
        fall = float(rng.uniform(0.2, 0.45))
        rise_p = float(rng.uniform(0.25, 0.7))
        dur = float(rng.uniform(100, 250))
        planning = p_level * (1.0 - fall * np.minimum(t / onset, 1.0) ** 0.7 + rise_p * ramp(t, onset, dur))
        rise_sem = float(rng.uniform(0.1, 0.3))
        semantic = sem_level * (1.0 + rise_sem * ramp(t, onset + rng.uniform(0, 20), dur))
        length_curve = len_level * (1.0 + rng.uniform(0.0, 0.5) * ramp(t, onset + 10, dur))
        pf = pf_level * (1.0 + 0.3 * ramp(t, onset, dur))
        reward = 0.2 + 0.4 * (1.0 - np.exp(-t / 100.0))
        params.update(rise=rise_p, rise_semantic=rise_sem, duration=dur)
    elif situation == "no_execution":
        onset = int(rng.integers(0, 11))
        e_end = e_start * float(rng.uniform(0.4, 0.6))
        execution = np.full(n, e_end) * (1.0 + rng.uniform(-0.05, 0.05) * np.minimum(t / n, 1.0))
        dur = float(rng.uniform(30, 90))
        rise_sem = float(rng.uniform(0.2, 0.5))
        semantic = sem_level * (1.0 + rise_sem * ramp(t, onset, dur))
        rise_p = float(rng.uniform(0.2, 0.6))
        planning = p_level * (1.0 + rise_p * ramp(t, onset + rng.uniform(0, 5), dur))
        if rng.uniform() < 0.7:
            jump_start = onset + rng.uniform(0, 5)
            length_curve = len_level * (1.0 + rng.uniform(0.5, 1.5) * ramp(t, jump_start, rng.uniform(10, 30)))
        else:
            length_curve = len_level * (1.0 + rng.uniform(0.0, 0.3) * ramp(t, onset, dur))
        pf = pf_level * (1.0 + 0.5 * ramp(t, onset, dur))
        reward = 0.5 + 0.3 * (1.0 - np.exp(-t / 40.0))
        params.update(rise=rise_sem, rise_planning=rise_p, duration=dur)
    elif situation == "never_pivots":
        e_end = e_start * float(rng.uniform(0.3, 0.6))
        tau = float(rng.uniform(10, 40))
        execution = decay(t, e_start, e_end, tau)
        stagnate = int(min(max(n * rng.uniform(0.3, 0.6), 5 * tau), n - 20))
        decline = float(rng.uniform(0.05, 0.3))
        degrade = ramp(t, stagnate, n - stagnate)
        if rng.uniform() < 0.5:
            early = 0.1 * np.minimum(t / stagnate, 1.0)
        else:
            # planning-token entropy falls fast and flattens with execution (a convex fall
            # that flattens must not read as an upward turn)
            early = rng.uniform(0.05, 0.25) * (1.0 - np.exp(-t / tau))
        planning = p_level * (1.0 - early - decline * degrade)
        semantic = sem_level * (1.0 - decline * degrade)
        length_curve = len_level * (1.0 - 0.2 * degrade)
        if rng.uniform() < 0.35:
            # every entropy drifts up together (instability, not a planning shift)
            common = 1.0 + rng.uniform(0.3, 0.8) * degrade
            execution = execution * common
            planning = planning * common
            params["common_drift"] = 1.0
        if rng.uniform() < 0.3:
            # answers lengthen steadily all run long, without any change of strategy
            length_curve = len_level * (1.0 + rng.uniform(0.2, 1.0) * t / n)
            params["length_growth"] = 1.0
        pf = np.full(n, pf_level)
        reward = 0.2 + 0.2 * (1.0 - np.exp(-t / 50.0)) - 0.1 * degrade
    elif situation == "stationary":
        execution = np.full(n, e_start * 0.5)
        planning = np.full(n, p_level)
        semantic = np.full(n, sem_level)
        length_curve = np.full(n, len_level)
        pf = np.full(n, pf_level)
        reward = np.full(n, 0.4)
    elif situation == "collapse":
        start = int(n * rng.uniform(0.3, 0.6))
        execution = decay(t, e_start, e_start * 0.5, 20.0)
        planning = np.full(n, p_level)
        squash = np.where(t < start, 1.0, np.exp(-(t - start) / rng.uniform(3.0, 12.0)))
        floor = float(rng.uniform(0.005, 0.03))
        execution = execution * (floor + (1.0 - floor) * squash)
        planning = planning * (floor + (1.0 - floor) * squash)
        semantic = sem_level * (floor + (1.0 - floor) * squash)
        length_curve = np.full(n, len_level)
        pf = np.full(n, pf_level)
        reward = np.full(n, 0.4)
        health["entropy_collapse"] = start
    else:  # explosion
        start = int(n * rng.uniform(0.3, 0.6))
        vocab = int(rng.choice([32000, 128256, 151936]))
        uniform = math.log(vocab)
        execution = decay(t, e_start, e_start * 0.5, 20.0)
        planning = np.full(n, p_level)
        climb = ramp(t, start, rng.uniform(2.0, 10.0)) * rng.uniform(0.5, 0.95)
        # entropy in nats heads to ln|V| whatever the run's scale
        execution = execution + (uniform / scale - execution) * climb
        planning = planning + (uniform / scale - planning) * climb
        semantic = np.full(n, sem_level)
        length_curve = np.full(n, len_level)
        pf = np.full(n, pf_level)
        reward = 0.4 * (1.0 - climb)
        health["entropy_explosion"] = start

    series = _assemble(z, rng, scale, execution, planning, semantic, length_curve, pf, reward)
    present = rng.uniform(size=n) >= z.gap_rate
    present[0] = True
    return SyntheticRun(situation, seed, n, series, present, onset, health, params, vocab)


def suite(runs_per_situation: int = 20, seed: int = 0,
          situations: tuple[str, ...] = SITUATIONS, **overrides) -> list[SyntheticRun]:
    """``runs_per_situation`` runs of each situation, seeds ``seed*10_000 + i``;
    ``overrides`` (``noise_scale``, ``phi_max``) go to :func:`generate`."""
    if runs_per_situation < 1:
        raise ValueError(f"runs_per_situation: must be >= 1, got {runs_per_situation}")
    return [generate(s, seed * 10_000 + i, **overrides) for s in situations for i in range(runs_per_situation)]
