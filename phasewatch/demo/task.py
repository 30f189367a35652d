"""The demo's verifiable task: prompts for GRPO and the verifier that scores completions.

Reward of one completion:

- ``1`` when the plan fits the problem and every step and the answer are right (the
  completion equals the problem's worked solution, :func:`reference_completion`);
- ``0`` when the work is honest but does not solve the problem: well formed, every equation
  true (the habitual ``let me try`` on a ``chain`` problem, or a right computation whose
  answer line copies the wrong number);
- ``-penalty`` when the work contains a false equation or the completion is malformed.

Why the penalty: it makes a longer plan *risky while the arithmetic is sloppy*. A two-step
method fails its checks more often than the one-step habit, so while execution is unreliable
the expected reward of switching plans is below that of the habit (whose work is at least
true), and only once the arithmetic is reliable does the right plan pay. That is the
HICRA paper's account of the two phases (planning becomes the bottleneck once execution is
consolidated), built into a task small enough to train on a laptop CPU.
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from phasewatch.demo.corpus import (
    KINDS,
    PLANS,
    SOLVING_PLAN,
    Problem,
    draw_problem,
    parse_prompt,
    plan_of,
    write_completion,
)

#: Prompts per kind in each block of a step's prompts (pair : chain : missing). Most problems
#: are solved by the habitual plan, so early training mostly sharpens execution.
DEFAULT_MIX: dict[str, int] = {"pair": 4, "chain": 1, "missing": 1}

_FORM = re.compile(
    r"^ (" + "|".join(re.escape(p) for p in PLANS.values()) + r") (?P<work>[0-9+\-=, ]+?) \. answer (?P<answer>\d+)$"
)
_EQUATION = re.compile(r"^(\d+)((?:[+-]\d+)+)=(\d+)$")
_TERM = re.compile(r"([+-])(\d+)")


def reference_completion(problem: Problem) -> str:
    """The completion the verifier accepts: the solving plan, carried out without a slip."""
    return write_completion(problem, SOLVING_PLAN[problem.kind])


def equations_hold(work: str) -> bool:
    """True when ``work`` is a ``" , "``-separated list of true equations like ``3+5=8``."""
    for part in work.split(" , "):
        m = _EQUATION.match(part)
        if not m:
            return False
        value = int(m.group(1))
        for sign, number in _TERM.findall(m.group(2)):
            value = value + int(number) if sign == "+" else value - int(number)
        if value != int(m.group(3)):
            return False
    return True


def score(prompt: str, completion: str, penalty: float = 1.0) -> float:
    """The verifier's reward for one completion (see the module docstring)."""
    problem = parse_prompt(prompt)
    if completion == reference_completion(problem):
        return 1.0
    m = _FORM.match(completion)
    if m is None or not equations_hold(m.group("work")):
        return -float(penalty)
    return 0.0


@dataclass
class StepOutcomes:
    """What the completions of one generation batch did, per problem kind.

    solved[kind]: completions that earned reward 1; total[kind]: completions;
    plans[kind][plan]: completions opening with ``plan`` (``None`` = no known plan).
    """

    solved: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)
    plans: dict = field(default_factory=lambda: defaultdict(Counter))

    def accuracy(self, kind: str | None = None) -> float | None:
        kinds = KINDS if kind is None else (kind,)
        total = sum(self.total[k] for k in kinds)
        return None if total == 0 else sum(self.solved[k] for k in kinds) / total

    def plan_share(self, kind: str, plan: str) -> float | None:
        total = self.total[kind]
        return None if total == 0 else self.plans[kind][plan] / total

    @classmethod
    def merged(cls, batches: Iterable["StepOutcomes"]) -> "StepOutcomes":
        """The outcomes of several batches, summed."""
        out = cls()
        for b in batches:
            out.solved.update(b.solved)
            out.total.update(b.total)
            for kind, plans in b.plans.items():
                out.plans[kind].update(plans)
        return out


class DemoReward:
    """The reward function handed to TRL (``reward_funcs=[DemoReward()]``).

    Besides scoring, it keeps per-kind outcomes of the latest batch and of the whole run, so
    the demo can tell the user which plans the model uses for which problems. TRL calls it
    from the training thread; the lock covers readers on other threads.
    """

    __name__ = "verifier"  # TRL names the reward column after it: rewards/verifier/mean

    def __init__(self, penalty: float = 1.0) -> None:
        if float(penalty) < 0:
            raise ValueError(f"penalty: must be >= 0, got {penalty!r}")
        self.penalty = float(penalty)
        self._lock = threading.Lock()
        self.latest = StepOutcomes()
        self.batches: list[StepOutcomes] = []

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float]:
        outcomes = StepOutcomes()
        rewards = []
        for prompt, completion in zip(prompts, completions):
            kind = parse_prompt(prompt).kind
            r = score(prompt, completion, self.penalty)
            rewards.append(r)
            outcomes.total[kind] += 1
            outcomes.solved[kind] += r == 1.0
            outcomes.plans[kind][plan_of(completion)] += 1
        with self._lock:
            self.latest = outcomes
            self.batches.append(outcomes)
        return rewards

    def window(self, last: int) -> StepOutcomes:
        """Outcomes summed over the last ``last`` batches."""
        with self._lock:
            batches = self.batches[-last:] if last > 0 else []
        return StepOutcomes.merged(batches)


def prompt_rows(
    steps: int, prompts_per_step: int, seed: int, mix: dict[str, int] | None = None, max_number: int = 5
) -> list[str]:
    """``steps * prompts_per_step`` prompts in blocks that follow ``mix`` exactly, so every
    step sees the same proportion of each kind (TRL must then read them in order:
    ``shuffle_dataset=False``)."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"mix: unknown kinds {sorted(unknown)} (expected some of {KINDS})")
    cycle = [k for k in KINDS for _ in range(int(mix.get(k, 0)))]
    if not cycle:
        raise ValueError("mix: needs at least one prompt of some kind")
    if prompts_per_step % len(cycle):
        raise ValueError(
            f"prompts_per_step: {prompts_per_step} is not a multiple of the mix's block of {len(cycle)} prompts"
        )
    rng = random.Random(seed)
    return [draw_problem(rng, cycle[i % len(cycle)], max_number).prompt for i in range(steps * prompts_per_step)]
