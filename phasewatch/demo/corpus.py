"""The demo's synthetic reasoning traces: small arithmetic problems, plans, and worked solutions.

Every completion has the shape ``" <plan phrase> <work> . answer <n>"``: a *planning* phrase
that names a method (taken from phasewatch's default lexicon, so the shipped labeler marks it
as planning) followed by *execution* tokens that carry the method out.

Three kinds of problem, each solved by one method:

==========  =====================  =====================================================
kind        prompt                 the method that solves it
==========  =====================  =====================================================
``pair``    ``Q: 7+4=? A:``        ``let me try 7+4=11 . answer 11`` (one step)
``chain``   ``Q: 3+5+2=? A:``      ``let's break this down 3+5=8 , 8+2=10 . answer 10``
``missing`` ``Q: 2+?+4=9 A:``      ``we can think of this as 9-2=7 , 7-4=3 . answer 3``
==========  =====================  =====================================================

The warm-up corpus imitates a base model with a narrow planning habit and sloppy execution,
the starting point in which the HICRA paper observes its two phases:

- *Narrow planning*: most traces open with the habitual ``let me try`` whatever the problem,
  and then do what that habit does (add the first two numbers it sees), which is right only
  for ``pair`` problems. The method that fits a ``chain`` or ``missing`` problem appears in a
  minority of its traces (``1 - habit``). So planning diversity starts low.
- *Sloppy execution*: each arithmetic result is off by one or two with probability
  ``arithmetic_noise``, and the final ``answer`` copies a wrong number of the work with
  probability ``copy_noise``. So execution-token entropy starts high.

Everything here is a pure function of its arguments and an explicit ``random.Random``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator

#: The problem kinds, in the order used for mixes and tables.
KINDS: tuple[str, ...] = ("pair", "chain", "missing")

#: Plan name -> the planning phrase that opens a completion using it. All three are phrases of
#: phasewatch's default lexicon, so the default labeler marks them as planning tokens.
PLANS: dict[str, str] = {
    "try": "let me try",
    "decompose": "let's break this down",
    "rearrange": "we can think of this as",
}

#: The plan whose work solves each kind of problem.
SOLVING_PLAN: dict[str, str] = {"pair": "try", "chain": "decompose", "missing": "rearrange"}

#: The plan the warm-up model reaches for first, whatever the problem.
HABIT_PLAN = "try"

_NUMBER = re.compile(r"\d+")
_PAIR = re.compile(r"^Q: (\d+)([+-])(\d+)=\? A:$")
_CHAIN = re.compile(r"^Q: (\d+(?:\+\d+){2,})=\? A:$")
_MISSING = re.compile(r"^Q: (\d+)\+\?\+(\d+)=(\d+) A:$")


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem.

    kind: one of :data:`KINDS`. numbers: the operands in prompt order; for ``missing``
    problems ``(a, b, total)`` of ``a + ? + b = total``. op: ``"+"`` or ``"-"`` (``pair`` only).
    """

    kind: str
    numbers: tuple[int, ...]
    op: str = "+"

    @property
    def prompt(self) -> str:
        if self.kind == "pair":
            a, b = self.numbers
            return f"Q: {a}{self.op}{b}=? A:"
        if self.kind == "chain":
            return "Q: " + "+".join(map(str, self.numbers)) + "=? A:"
        a, b, total = self.numbers
        return f"Q: {a}+?+{b}={total} A:"

    @property
    def answer(self) -> int:
        if self.kind == "pair":
            a, b = self.numbers
            return a + b if self.op == "+" else a - b
        if self.kind == "chain":
            return sum(self.numbers)
        a, b, total = self.numbers
        return total - a - b


def parse_prompt(prompt: str) -> Problem:
    """The problem a demo prompt states; ``ValueError`` naming the prompt if it is not one."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
    m = _PAIR.match(prompt)
    if m:
        return Problem("pair", (int(m.group(1)), int(m.group(3))), m.group(2))
    m = _CHAIN.match(prompt)
    if m:
        return Problem("chain", tuple(int(v) for v in m.group(1).split("+")))
    m = _MISSING.match(prompt)
    if m:
        return Problem("missing", (int(m.group(1)), int(m.group(2)), int(m.group(3))))
    raise ValueError(f"prompt: {prompt!r} is not a demo problem (expected e.g. 'Q: 3+4=? A:')")


def draw_problem(rng: random.Random, kind: str, max_number: int = 5) -> Problem:
    """A random problem of ``kind`` with operands in ``1..max_number`` (``pair`` problems use
    first operands up to ``2 * max_number``, so that they exercise every addition and
    subtraction the other kinds need)."""
    n = int(max_number)
    if n < 1:
        raise ValueError(f"max_number: must be >= 1, got {max_number!r}")
    if kind == "pair":
        if rng.random() < 0.5:
            return Problem("pair", (rng.randint(1, 2 * n), rng.randint(1, n)), "+")
        b = rng.randint(1, n)
        return Problem("pair", (rng.randint(b + 1, 2 * n), b), "-")
    if kind == "chain":
        return Problem("chain", tuple(rng.randint(1, n) for _ in range(3)))
    if kind == "missing":
        a, x, b = rng.randint(1, n), rng.randint(1, n), rng.randint(1, n)
        return Problem("missing", (a, b, a + x + b))
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def _sloppy(rng: random.Random | None, value: int, noise: float) -> int:
    """``value``, or (with probability ``noise``) a near miss: off by one or two, never negative."""
    if rng is None or noise <= 0 or rng.random() >= noise:
        return value
    near = value + rng.choice((-2, -1, 1, 2))
    return near if near >= 0 else value


def write_work(
    problem: Problem, plan: str, rng: random.Random | None = None, arithmetic_noise: float = 0.0
) -> tuple[str, int]:
    """The work a solver following ``plan`` writes for ``problem``, and the number it ends on.

    Two things happen in the warm-up corpus: the habitual ``try`` on any problem (on a
    ``chain`` or ``missing`` problem it adds the first two numbers it sees, which is wrong),
    and the plan that solves the problem. Without noise (``rng=None`` or
    ``arithmetic_noise=0``) every equation is true.
    """
    nums = problem.numbers
    if plan == "try":
        a, b = nums[0], nums[1]
        op = problem.op if problem.kind == "pair" else "+"
        r = _sloppy(rng, a + b if op == "+" else a - b, arithmetic_noise)
        return f"{a}{op}{b}={r}", r
    if plan not in PLANS:
        raise ValueError(f"plan: expected one of {tuple(PLANS)}, got {plan!r}")
    if SOLVING_PLAN[problem.kind] != plan:
        raise ValueError(f"plan: {plan!r} is not used on {problem.kind!r} problems")
    if plan == "decompose":
        r = _sloppy(rng, nums[0] + nums[1], arithmetic_noise)
        steps = [f"{nums[0]}+{nums[1]}={r}"]
        for z in nums[2:]:
            nxt = _sloppy(rng, r + z, arithmetic_noise)
            steps.append(f"{r}+{z}={nxt}")
            r = nxt
        return " , ".join(steps), r
    a, b, total = nums  # rearrange a+?+b=total into (total-a)-b
    s = _sloppy(rng, total - a, arithmetic_noise)
    r = _sloppy(rng, s - b, arithmetic_noise)
    return f"{total}-{a}={s} , {s}-{b}={r}", r


def write_completion(
    problem: Problem,
    plan: str,
    rng: random.Random | None = None,
    *,
    arithmetic_noise: float = 0.0,
    copy_noise: float = 0.0,
) -> str:
    """A whole completion: plan phrase, work, and the final answer line (which, with
    probability ``copy_noise``, copies another number of the work instead of its result)."""
    work, result = write_work(problem, plan, rng, arithmetic_noise)
    shown = result
    if rng is not None and copy_noise > 0 and rng.random() < copy_noise:
        others = [int(v) for v in _NUMBER.findall(work) if int(v) != result]
        if others:
            shown = rng.choice(others)
    return f" {PLANS[plan]} {work} . answer {shown}"


def plan_of(completion: str) -> str | None:
    """The plan a completion opens with, or ``None``."""
    for name, phrase in PLANS.items():
        if completion.startswith(" " + phrase + " "):
            return name
    return None


@dataclass(frozen=True)
class WarmupCorpus:
    """How the warm-up traces are written (see the module docstring for why).

    habit: share of traces that open with the habitual plan whatever the problem; the rest
        use the plan that solves the problem.
    arithmetic_noise: probability that an arithmetic result is off by one or two.
    copy_noise: probability that the ``answer`` copies another number of the work.
    max_number: largest operand.
    """

    habit: float = 0.8
    arithmetic_noise: float = 0.3
    copy_noise: float = 0.6
    max_number: int = 5

    def __post_init__(self) -> None:
        for name in ("habit", "arithmetic_noise", "copy_noise"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
        if int(self.max_number) < 1:
            raise ValueError(f"max_number: must be >= 1, got {self.max_number!r}")

    def example(self, rng: random.Random) -> tuple[str, str]:
        """One (prompt, completion) pair; kinds are equally likely."""
        problem = draw_problem(rng, rng.choice(KINDS), self.max_number)
        plan = HABIT_PLAN if rng.random() < self.habit else SOLVING_PLAN[problem.kind]
        completion = write_completion(
            problem, plan, rng, arithmetic_noise=self.arithmetic_noise, copy_noise=self.copy_noise
        )
        return problem.prompt, completion

    def examples(self, rng: random.Random) -> Iterator[tuple[str, str]]:
        """An endless stream of :meth:`example`."""
        while True:
            yield self.example(rng)
