"""Seeded synthetic training runs with known phase-shift and health-alarm onsets.

The detectors are judged on series whose truth is known. Each situation below imitates a
shape read off the HICRA paper's figures (arXiv:2509.03646) or a failure seen in real GRPO
logs, and every run draws its own length, scale, noise level, AR(1) coefficient, spike rate,
missing values and missing fields, so a detector tuned here has to be robust to all of them
rather than to one curve:

=================  ====================================================================
situation          what happens
=================  ====================================================================
clear_shift        execution entropy consolidates (falls, flattens); around 30% of a
                   100-220-step run the planning signals turn upward (Qwen3-4B-Base-like)
late_small_shift   400-700 steps; execution consolidates slowly; planning-token entropy
                   drifts down, then rises slowly and by little after 30-55% of the run
                   (Qwen2.5-7B-Base-like)
no_execution       planning signals rise within the first 0-10 steps; execution entropy is
                   already flat (instruct / VL models)
never_pivots       execution consolidates, planning signals stagnate, then degrade
                   (fall, or, in some runs, every entropy drifts up together);
                   Llama-3.1-8B-Base-like. No phase shift.
stationary         every series stationary around a constant level. No alarm of any kind.
collapse           total and per-class entropy decay toward 0 from a known step
explosion          entropy climbs toward ln|V| (a uniform policy) within a few steps
=================  ====================================================================

Noise is AR(1) with a random coefficient, plus rare single-step spikes (either sign, 4-12
noise standard deviations), NaN values, dropped steps (gaps), and in some runs a field that
is never reported. :func:`generate` is a pure function of ``(situation, seed)`` and keyword
overrides; :func:`suite` builds a reproducible collection.
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

#: Fields every synthetic run may carry (a run may drop some of them entirely).
FIELDS: tuple[str, ...] = (
    "entropy",
    "entropy/planning",
    "entropy/execution",
    "semantic_entropy",
    "nll/planning",
    "nll/execution",
    "planning_frac",
    "reward",
    "response_length",
)


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


#: Relative noise standard deviation per situation (drawn uniformly). Shift runs are drawn
#: with per-step noise of 1-4% of the level (a mean over thousands of tokens or hundreds of
#: rollouts); the runs that must *not* alarm get up to 6%, to test false alarms harder.
NOISE_RANGE: dict[str, tuple[float, float]] = {
    "clear_shift": (0.01, 0.04),
    "late_small_shift": (0.01, 0.04),
    "no_execution": (0.01, 0.04),
    "never_pivots": (0.01, 0.06),
    "stationary": (0.01, 0.06),
    "collapse": (0.01, 0.06),
    "explosion": (0.01, 0.06),
}


class _Draw:
    """The per-run random choices, drawn in a fixed order so runs are reproducible."""

    def __init__(self, rng: np.random.Generator, noise_range: tuple[float, float],
                 noise_scale: float = 1.0) -> None:
        self.rng = rng
        self.phi = float(rng.uniform(0.0, 0.8))
        self.noise = float(rng.uniform(*noise_range)) * noise_scale  # relative noise sd
        self.scale = float(np.exp(rng.uniform(math.log(0.3), math.log(3.0))))
        self.spike_rate = float(rng.uniform(0.0, 0.02))
        self.nan_rate = float(rng.uniform(0.0, 0.05))
        self.gap_rate = float(rng.uniform(0.0, 0.03))
        self.drop_field = rng.uniform() < 0.3

    def noisy(self, clean: np.ndarray, rel_sd: float | None = None) -> np.ndarray:
        """``clean`` times (1 + AR(1) noise), plus spikes and NaNs."""
        n = clean.size
        sd = self.noise if rel_sd is None else rel_sd
        phi = float(np.clip(self.phi + self.rng.normal(0.0, 0.05), 0.0, 0.9))
        noise = ar1_noise(self.rng, n, phi, sd)
        out = clean * (1.0 + noise)
        spikes = self.rng.uniform(size=n) < self.spike_rate
        if spikes.any():
            size = self.rng.uniform(4.0, 12.0, spikes.sum()) * sd * self.rng.choice([-1.0, 1.0], spikes.sum())
            out[spikes] = clean[spikes] * np.maximum(1.0 + size, 0.05)
        out[self.rng.uniform(size=n) < self.nan_rate] = np.nan
        return out


def _assemble(d: _Draw, n: int, execution: np.ndarray, planning: np.ndarray, semantic: np.ndarray,
              length_curve: np.ndarray, planning_frac: np.ndarray, reward: np.ndarray) -> dict[str, np.ndarray]:
    rng = d.rng
    s = d.scale
    nll_ratio_e = float(rng.uniform(0.8, 1.3))
    nll_ratio_p = float(rng.uniform(0.8, 1.3))
    series = {
        "entropy/execution": d.noisy(s * execution),
        "entropy/planning": d.noisy(s * planning),
        "semantic_entropy": d.noisy(semantic),
        "nll/execution": d.noisy(s * nll_ratio_e * execution),
        "nll/planning": d.noisy(s * nll_ratio_p * planning),
        "planning_frac": d.noisy(planning_frac, 0.03),
        "reward": d.noisy(reward, 0.05),
        "response_length": d.noisy(length_curve, 0.04),
    }
    pf = planning_frac
    clean_total = s * ((1.0 - pf) * execution + pf * planning)
    series["entropy"] = d.noisy(clean_total)
    if d.drop_field:
        # a run whose hooks never report one of the optional fields
        victim = str(rng.choice(["semantic_entropy", "nll/planning", "nll/execution", "response_length"]))
        series[victim] = np.full(n, np.nan)
    return {name: series[name] for name in FIELDS}


def generate(situation: str, seed: int, *, length: int | None = None,
             noise_scale: float = 1.0) -> SyntheticRun:
    """One run of ``situation``; a pure function of its arguments.

    ``length`` overrides the drawn run length; ``noise_scale`` multiplies the drawn noise
    level (robustness checks: the same runs, noisier).
    """
    if situation not in SITUATIONS:
        raise ValueError(f"situation: expected one of {SITUATIONS}, got {situation!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if not (isinstance(noise_scale, (int, float)) and 0.0 <= noise_scale <= 10.0):
        raise ValueError(f"noise_scale: expected a number in [0, 10], got {noise_scale!r}")
    rng = np.random.default_rng([seed, SITUATIONS.index(situation), 0x5EED])
    d = _Draw(rng, NOISE_RANGE[situation], float(noise_scale))
    ranges = {
        "clear_shift": (100, 220),
        "late_small_shift": (400, 700),
        "no_execution": (100, 220),
        "never_pivots": (150, 600),
        "stationary": (300, 1000),
        "collapse": (150, 400),
        "explosion": (150, 400),
    }
    lo, hi = ranges[situation]
    n = int(length) if length is not None else int(rng.integers(lo, hi + 1))
    if n < 40:
        raise ValueError(f"length: must be >= 40 steps, got {n}")
    t = np.arange(n, dtype=float)
    e_start = float(rng.uniform(0.3, 0.6))
    e_end = e_start * float(rng.uniform(0.3, 0.6))
    p_level = float(rng.uniform(0.5, 1.2))
    sem_level = float(rng.uniform(1.5, 4.0))
    len_level = float(rng.uniform(200.0, 1500.0))
    pf_level = float(rng.uniform(0.05, 0.2))
    onset: int | None = None
    health: dict[str, int] = {}
    params: dict[str, float] = {"phi": d.phi, "noise": d.noise, "scale": d.scale}
    vocab = None

    if situation == "clear_shift":
        onset = int(round(n * rng.uniform(0.25, 0.4)))
        execution = decay(t, e_start, e_end, onset * rng.uniform(0.15, 0.3))
        pre_drift = float(rng.uniform(0.0, 0.08))  # the paper's semantic entropy is x1.12 by step 40
        rise_sem = float(rng.uniform(0.3, 0.6))
        dur = onset * rng.uniform(0.5, 1.0)
        power = float(rng.uniform(1.0, 1.3))
        semantic = sem_level * (1.0 + pre_drift * np.minimum(t / onset, 1.0) + rise_sem * ramp(t, onset, dur, power))
        dip = float(rng.uniform(0.0, 0.1))
        lag = float(rng.uniform(0.0, 10.0))  # planning-token entropy turns a little later
        planning = p_level * (1.0 - dip * np.minimum(t / (onset + lag), 1.0)
                              + rng.uniform(0.3, 0.8) * ramp(t, onset + lag, dur, power))
        length_curve = len_level * (1.0 + rng.uniform(1.0, 2.5) * ramp(t, onset + rng.uniform(3, 12), rng.uniform(10, 25)))
        pf = pf_level * (1.0 + 0.5 * ramp(t, onset, dur))
        reward = 0.2 + 0.5 * (1.0 - np.exp(-t / (onset * 1.5)))
        params.update(rise=rise_sem, duration=dur)
    elif situation == "late_small_shift":
        onset = int(round(n * rng.uniform(0.3, 0.55)))
        execution = decay(t, e_start, e_end, rng.uniform(15, 35))
        fall = float(rng.uniform(0.1, 0.35))
        planning = p_level * (1.0 - fall * np.minimum(t / onset, 1.0) ** 0.7)
        rise_p = float(rng.uniform(0.3, 0.8))
        dur = float(rng.uniform(80, 200))
        planning = planning + p_level * rise_p * ramp(t, onset, dur)
        rise_sem = float(rng.uniform(0.15, 0.4))
        semantic = sem_level * (1.0 + rise_sem * ramp(t, onset + rng.uniform(0, 20), dur))
        length_curve = len_level * (1.0 + rng.uniform(0.2, 0.8) * ramp(t, onset + 10, dur))
        pf = pf_level * (1.0 + 0.3 * ramp(t, onset, dur))
        reward = 0.2 + 0.4 * (1.0 - np.exp(-t / 100.0))
        params.update(rise=rise_p, duration=dur)
    elif situation == "no_execution":
        onset = int(rng.integers(0, 11))
        execution = np.full(n, e_end) * (1.0 - 0.05 * np.minimum(t / n, 1.0))
        dur = float(rng.uniform(40, 90))
        rise_sem = float(rng.uniform(0.3, 0.6))
        semantic = sem_level * (1.0 + rise_sem * ramp(t, onset, dur))
        planning = p_level * (1.0 + rng.uniform(0.3, 0.8) * ramp(t, onset + rng.uniform(0, 5), dur))
        length_curve = len_level * (1.0 + rng.uniform(0.5, 1.5) * ramp(t, onset + 5, rng.uniform(10, 30)))
        pf = pf_level * (1.0 + 0.5 * ramp(t, onset, dur))
        reward = 0.5 + 0.3 * (1.0 - np.exp(-t / 40.0))
        params.update(rise=rise_sem, duration=dur)
    elif situation == "never_pivots":
        tau = float(rng.uniform(10, 40))
        execution = decay(t, e_start, e_end, tau)
        stagnate = int(max(n * rng.uniform(0.3, 0.6), 5 * tau))
        decline = float(rng.uniform(0.05, 0.3))
        planning = p_level * (1.0 - 0.1 * np.minimum(t / stagnate, 1.0) - decline * ramp(t, stagnate, n - stagnate))
        semantic = sem_level * (1.0 - decline * ramp(t, stagnate, n - stagnate))
        if rng.uniform() < 0.35:
            # every entropy drifts up together (instability, not a planning shift)
            common = 1.0 + rng.uniform(0.3, 0.8) * ramp(t, stagnate, n - stagnate)
            execution = execution * common
            planning = planning * common
            params["common_drift"] = 1.0
        length_curve = len_level * (1.0 - 0.2 * ramp(t, stagnate, n - stagnate))
        pf = np.full(n, pf_level)
        reward = 0.2 + 0.2 * (1.0 - np.exp(-t / 50.0)) - 0.1 * ramp(t, stagnate, n - stagnate)
    elif situation == "stationary":
        execution = np.full(n, e_end)
        planning = np.full(n, p_level)
        semantic = np.full(n, sem_level)
        length_curve = np.full(n, len_level)
        pf = np.full(n, pf_level)
        reward = np.full(n, 0.4)
    elif situation == "collapse":
        start = int(n * rng.uniform(0.3, 0.6))
        execution = decay(t, e_start, e_end, 20.0)
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
        execution = decay(t, e_start, e_end, 20.0)
        planning = np.full(n, p_level)
        climb = ramp(t, start, rng.uniform(2.0, 10.0)) * rng.uniform(0.5, 0.95)
        # entropy in nats heads to ln|V| whatever the run's scale
        execution = execution + (uniform / d.scale - execution) * climb
        planning = planning + (uniform / d.scale - planning) * climb
        semantic = np.full(n, sem_level)
        length_curve = np.full(n, len_level)
        pf = np.full(n, pf_level)
        reward = 0.4 * (1.0 - climb)
        health["entropy_explosion"] = start

    series = _assemble(d, n, execution, planning, semantic, length_curve, pf, reward)
    present = rng.uniform(size=n) >= d.gap_rate
    present[0] = True
    return SyntheticRun(situation, seed, n, series, present, onset, health, params, vocab)


def suite(runs_per_situation: int = 20, seed: int = 0,
          situations: tuple[str, ...] = SITUATIONS) -> list[SyntheticRun]:
    """``runs_per_situation`` runs of each situation, seeds ``seed*10_000 + i``."""
    if runs_per_situation < 1:
        raise ValueError(f"runs_per_situation: must be >= 1, got {runs_per_situation}")
    return [generate(s, seed * 10_000 + i) for s in situations for i in range(runs_per_situation)]
