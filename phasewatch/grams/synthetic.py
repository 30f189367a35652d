"""Seeded synthetic math rollouts, for the mining benchmark, tests and trying the miner out.

Each rollout imitates the shape of an R1-style solution (as in the Thought Anchors traces): it
restates its problem, then alternates *planning* sentences (a plan, a hesitation, a backtrack,
a check, an alternative: drawn from ``PLANNING_MOVES``, each move with several wordings) with
runs of *execution* sentences, and ends with an answer. Execution is made of formulaic
sentences about the problem's own objects and numbers ("Dividing 84 by 12 gives 7."), LaTeX,
and free clauses of words drawn from a Zipf law over a large vocabulary (real math nouns plus
pseudo-words standing for the long tail of names, units and terms a corpus of many problems
has). So, as in real traces, execution n-grams are numerous and spread thin, while the model's
planning wordings recur across rollouts: the property the miner relies on. Successful
rollouts check their work more often than failed ones.

``synthetic_rollouts(n, seed=...)`` is a pure function of its arguments.
"""

from __future__ import annotations

import numpy as np

from phasewatch.grams.rollouts import Rollout

# move -> wordings. These are the planted strategic grams.
PLANNING_MOVES: dict[str, tuple[str, ...]] = {
    "approach": (
        "Let me think about how to approach this problem.",
        "First, I need to figure out what the question is asking.",
        "I think the best way to start is to write down what we know.",
        "Let me think about how to set this up.",
    ),
    "plan": (
        "My plan is to find the {noun} first and then use it to get the {noun2}.",
        "I need to find the {noun} before I can compute the {noun2}.",
        "So the strategy is to express the {noun} in terms of the {noun2}.",
        "Maybe I can break this into smaller steps.",
    ),
    "hesitate": (
        "Wait, maybe I made a mistake somewhere.",
        "Hmm, that doesn't seem right.",
        "Wait, let me reconsider this step.",
        "Hmm, I'm not sure about that.",
    ),
    "backtrack": (
        "Let me go back and check the {noun} again.",
        "Actually, I think I misread the problem.",
        "Wait, I think I mixed up the {noun} and the {noun2}.",
        "Let me start over with a different approach.",
    ),
    "verify": (
        "Let me double-check the calculation.",
        "Let me verify this result by plugging it back in.",
        "To make sure, let me check it another way.",
        "Let me double-check that the {noun} is correct.",
    ),
    "alternative": (
        "Alternatively, I could use the formula for the {noun}.",
        "Another way to think about it is to consider the {noun}.",
        "What if I try a different method?",
        "Maybe there is a simpler way to do this.",
    ),
}

NOUNS = tuple(
    """
    area perimeter radius diameter volume angle slope intercept sum product quotient remainder
    ratio rate speed distance time price cost profit discount interest balance principal
    probability expectation variance mean median mode height width length base side hypotenuse
    circumference chord arc sector triangle rectangle square circle polygon vertex edge face
    root coefficient exponent logarithm sequence term series limit derivative integral matrix
    determinant vector factor multiple divisor prime digit fraction percentage population
    """.split()
)
ADJECTIVES = tuple(
    "total remaining original final initial new larger smaller first second third last missing common".split()
)
FUNCTION_WORDS = tuple("the of and to a in is for that with as by on are from at this be".split())
EXECUTION_TEMPLATES: tuple[str, ...] = (
    "The {adj} {noun} is {a} times {b}, which is {c}.",
    "So, {a} plus {b} equals {c}.",
    "Substituting {a} for the {noun} gives {c}.",
    "That means the {noun} of the {noun2} is {c}.",
    "Then \\( {a} \\times {b} = {c} \\).",
    "We have \\[ \\frac{{{a}}}{{{b}}} = {c} \\]",
    "Dividing {c} by {b} gives {a}.",
    "The {noun} is equal to {a}, and the {noun2} is {b}.",
    "So the answer is {c}.",
    "Subtracting {b} from {c} leaves {a}.",
    "The {adj} {noun} must be {c} because the {noun2} is {b}.",
    "Now, {a} squared is {c}.",
    "Adding the {noun} and the {noun2} gives {c}.",
    "{free}.",
    "{free}, so the {noun} is {c}.",
    "For the {noun}, {free}.",
)
SETUP_TEMPLATES: tuple[str, ...] = (
    "Okay, so I have this problem about the {noun} of a {noun2}.",
    "The problem says the {adj} {noun} is {a} and the {noun2} is {b}.",
    "We need to find the {noun} given that the {noun2} is {a}.",
)
ANSWER_TEMPLATES: tuple[str, ...] = (
    "Therefore, the final answer is {c}.",
    "So the {noun} is {c}.",
    "The answer is \\( \\boxed{{{c}}} \\).",
)
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def pseudo_words(count: int, seed: int = 0) -> tuple[str, ...]:
    """``count`` distinct pronounceable non-words (2-4 syllables), a stand-in for a long tail."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        syllables = int(rng.integers(2, 5))
        letters = [
            _CONSONANTS[int(rng.integers(len(_CONSONANTS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
            for _ in range(syllables)
        ]
        out.setdefault("".join(letters), None)
    return tuple(out)


class _Vocabulary:
    """Zipf-distributed word pool: math nouns first (most frequent), then pseudo-words."""

    def __init__(self, tail_size: int, seed: int):
        self.words = NOUNS + pseudo_words(tail_size, seed=seed + 7919)
        ranks = np.arange(1, len(self.words) + 1, dtype=np.float64)
        weights = 1.0 / (ranks + 2.7) ** 1.05
        self.cumulative = np.cumsum(weights / weights.sum())

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cumulative, rng.random(size)), len(self.words) - 1)


def synthetic_rollout(
    rng: np.random.Generator, target_chars: int, success: bool, vocabulary: _Vocabulary, nouns: list[str]
) -> str:
    """One rollout of about ``target_chars`` characters about a problem whose objects are ``nouns``."""
    words = vocabulary.words
    moves = list(PLANNING_MOVES)
    move_p = np.array([3.0, 2.0, 2.0, 1.0, 3.0 if success else 1.5, 1.5])
    move_p /= move_p.sum()
    budget = max(4, target_chars // 45)  # sentences drawn at once; unused ones are dropped
    is_planning = rng.random(budget) < 0.28
    move_of = rng.choice(len(moves), size=budget, p=move_p)
    wording = rng.integers(0, 4, size=budget)
    template = rng.integers(0, len(EXECUTION_TEMPLATES), size=budget)
    noun_pick = rng.integers(0, len(nouns), size=(budget, 2))
    adjective = rng.integers(0, len(ADJECTIVES), size=budget)
    numbers = rng.integers(2, 100, size=(budget, 2))
    product = rng.random(budget) < 0.5
    free_length = rng.integers(5, 13, size=budget)
    free_words = vocabulary.draw(rng, int(free_length.sum()))
    function_mask = rng.random(free_words.size) < 0.4
    function_pick = rng.integers(0, len(FUNCTION_WORDS), size=free_words.size)

    def fill(text: str, k: int, free: str = "") -> str:
        a, b = int(numbers[k, 0]), int(numbers[k, 1])
        first, second = noun_pick[k]
        if second == first:
            second = (first + 1) % len(nouns)
        return text.format(
            noun=nouns[first],
            noun2=nouns[second],
            adj=ADJECTIVES[adjective[k]],
            a=a,
            b=b,
            c=a * b if product[k] else a + b,
            free=free,
        )

    sentences = [fill(SETUP_TEMPLATES[int(wording[0]) % len(SETUP_TEMPLATES)], 0)]
    length, offset = len(sentences[0]), 0
    for k in range(1, budget):
        if length >= target_chars:
            break
        n_free = int(free_length[k])
        if is_planning[k]:
            sentence = fill(PLANNING_MOVES[moves[move_of[k]]][wording[k]], k)
        else:
            span = range(offset, offset + n_free)
            free = " ".join(FUNCTION_WORDS[function_pick[i]] if function_mask[i] else words[free_words[i]] for i in span)
            sentence = fill(EXECUTION_TEMPLATES[template[k]], k, free)
            sentence = sentence[0].upper() + sentence[1:]
        offset += n_free
        sentences.append(sentence)
        length += len(sentence) + 1
    sentences.append(fill(ANSWER_TEMPLATES[int(wording[-1]) % len(ANSWER_TEMPLATES)], budget - 1))
    # paragraphs of 2-5 sentences, as models write them
    breaks = np.cumsum(rng.integers(2, 6, size=len(sentences)))
    paragraphs, begin = [], 0
    for end in breaks.tolist():
        if begin >= len(sentences):
            break
        paragraphs.append(" ".join(sentences[begin:end]))
        begin = end
    return "\n\n".join(paragraphs)


def synthetic_rollouts(
    n: int,
    *,
    seed: int = 0,
    mean_chars: int = 2000,
    success_rate: float = 0.6,
    rollouts_per_prompt: int = 8,
    vocabulary_size: int = 20_000,
    run: str | None = "synthetic",
) -> list[Rollout]:
    """``n`` rollouts (reward 1.0 when successful, else 0.0), ~``mean_chars`` characters each.

    2,000 characters is about 500 tokens of an LLM tokenizer (~4 characters per token).
    Rollouts come in GRPO-style groups of ``rollouts_per_prompt`` answering the same prompt:
    they share the problem's objects and carry the prompt index as their ``group``.
    """
    if n < 0:
        raise ValueError(f"synthetic_rollouts(n={n}): must be >= 0")
    if rollouts_per_prompt < 1:
        raise ValueError(f"synthetic_rollouts(rollouts_per_prompt={rollouts_per_prompt}): must be >= 1")
    rng = np.random.default_rng(seed)
    vocabulary = _Vocabulary(vocabulary_size, seed)
    out = []
    nouns: list[str] = []
    for index in range(n):
        prompt = index // rollouts_per_prompt
        if index % rollouts_per_prompt == 0:  # a new prompt: its objects
            nouns = list(dict.fromkeys(vocabulary.words[i] for i in vocabulary.draw(rng, 8)))
            while len(nouns) < 2:
                nouns.append(NOUNS[len(nouns)])
        success = bool(rng.random() < success_rate)
        target = int(rng.integers(int(mean_chars * 0.6), int(mean_chars * 1.4) + 1))
        text = synthetic_rollout(rng, target, success, vocabulary, nouns)
        out.append(Rollout(text=text, reward=1.0 if success else 0.0, run=run, step=index // 64, group=prompt))
    return out
