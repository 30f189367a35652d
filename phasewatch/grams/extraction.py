"""Candidate n-grams: every word n-gram of the corpus, counted, then cut down to a few thousand.

Why a prefilter: 10,000 rollouts of ~500 tokens hold millions of distinct n-grams, and a
sentence embedder on two CPU cores embeds a few hundred to a few thousand strings a second.
Strategic grams "appear across many solutions but sparingly within one" (HICRA, section 2.1),
so most n-grams can be ruled out from counts alone, before anything is embedded:

1. *document frequency*: in at least ``min_df`` of the documents (a fraction) and at least
   ``min_docs`` of them; when documents carry a group (the prompt they answer), also in at
   least ``min_groups`` groups, so a phrase that belongs to one problem ("the larger square")
   is not taken for a habit of the model because that problem was sampled many times;
2. *sparingly within one*: at most ``max_per_doc`` occurrences per document that contains it,
   on average (repeated boilerplate and a problem's own terms fail this);
3. *content*: not made only of grammatical words (``STOP_WORDS``; discourse words such as
   "but", "wait", "let", "maybe", "what" are deliberately *not* stop words: they are what
   planning phrases are made of) and with no more than ``max_number_frac`` of its words
   numbers (default: none; numbers belong to execution);
4. *closed n-grams*: a fragment that almost only occurs inside one longer candidate ("me
   check the" inside "let me check the") is dropped in favour of the longer one;
5. the ``max_candidates`` survivors in the most documents are kept.

Words. Text is folded exactly as the labeler folds it (``phasewatch.lexicon.fold_text``). A
word is a run of letters, digits and ``_``, with inner apostrophes and hyphens ("let's",
"double-check"). n counts words; a comma after the first word rides along ("wait, but the"
is a 3-gram: an interjection or discourse word and what follows it), but a comma further in
is a clause boundary that no n-gram crosses, and neither is a stop word before a comma ("the,
so the"). Any other character (a period, ``=``, ``$``, a backslash, a bracket) and any run of
two or more whitespace characters ends a segment, and no n-gram crosses a segment end. So a
mined phrase, written with single spaces and its commas attached, occurs literally in the
text it came from, and the labeler finds it there.

Counting is vectorised with numpy: each n-gram becomes a 64-bit polynomial hash of its word
ids and comma flags, and document and occurrence counts come from one sort per n. Two
distinct n-grams share a hash with probability about 2^-64 per pair: for 10 million distinct
n-grams, a few runs in a million see one merged count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence

import numpy as np

from phasewatch.lexicon import fold_text

# Words that carry grammar but no move of reasoning. An n-gram made only of these is never a
# candidate. Discourse markers, modal and first-person words are kept out on purpose.
STOP_WORDS = frozenset(
    """
    a an the this that these those it its it's they them their there here
    of in on at to for from by with as into onto about over under than then
    and or nor is are was were be been being am has have had do does did
    which who whom whose where when
    """.split()
)

# group 1 = a word or a comma; anything else matched is a segment break
_TOKENS = re.compile(r"(\w+(?:['\-]\w+)*|,)|[^\w\s,]+|\s{2,}")
_DIGIT = re.compile(r"\d")
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication is invertible mod 2^64


def tokenize(text: str) -> list[str]:
    """Folded tokens of ``text``: words, ``","``, and ``""`` for a segment break."""
    return _TOKENS.findall(fold_text(text))


def render(words: Sequence[str], commas: Sequence[bool]) -> str:
    """An n-gram as the phrase the labeler matches: single spaces, commas attached."""
    return " ".join(w + ("," if c else "") for w, c in zip(words, commas))


@dataclass
class Vocabulary:
    """Token string <-> id. Id 0 stands for a segment break, id 1 for a comma."""

    ids: dict[str, int] = field(default_factory=lambda: {"": 0, ",": 1})
    tokens: list[str] = field(default_factory=lambda: ["", ","])

    BREAK = 0
    COMMA = 1

    def encode(self, tokens: list[str]) -> np.ndarray:
        ids, table = self.ids, self.tokens
        out = list(map(ids.get, tokens))  # known tokens in one C-level pass
        if None in out:
            for position, (token, index) in enumerate(zip(tokens, out)):
                if index is None:
                    index = ids.get(token)
                    if index is None:
                        index = ids[token] = len(table)
                        table.append(token)
                    out[position] = index
        return np.array(out, dtype=np.int32)

    def flags(self) -> tuple[np.ndarray, np.ndarray]:
        """Per id: (is a stop word, contains a digit)."""
        stop = np.array([t in STOP_WORDS for t in self.tokens], dtype=bool)
        number = np.array([bool(_DIGIT.search(t)) for t in self.tokens], dtype=bool)
        return stop, number


@dataclass(frozen=True)
class WordStream:
    """Every document's words in one array.

    ``word[i]`` is a vocabulary id, ``comma[i]`` says a comma follows word i, ``segment[i]``
    numbers the segment (n-grams never cross one), ``doc[i]`` is the document.
    """

    word: np.ndarray
    comma: np.ndarray
    segment: np.ndarray
    doc: np.ndarray
    n_docs: int


def encode_documents(
    texts: Iterable[str], vocabulary: Vocabulary, *, progress: bool = False, total: int | None = None
) -> WordStream:
    """Tokenize every document and lay all of them out as one ``WordStream``."""
    from tqdm.auto import tqdm

    chunks: list[np.ndarray] = []
    doc_lengths: list[int] = []
    separator = np.array([Vocabulary.BREAK], dtype=np.int32)
    for text in tqdm(texts, total=total, desc="n-grams", unit="doc", disable=not progress, leave=False):
        if not isinstance(text, str):
            raise TypeError(f"document {len(doc_lengths)}: expected a string, got {type(text).__name__}")
        encoded = vocabulary.encode(tokenize(text))
        chunks.append(encoded)
        chunks.append(separator)
        doc_lengths.append(encoded.size + 1)
    if not chunks:
        empty = np.zeros(0, dtype=np.int32)
        return WordStream(empty, np.zeros(0, dtype=bool), empty, empty, 0)
    tokens = np.concatenate(chunks)
    token_doc = np.repeat(np.arange(len(doc_lengths), dtype=np.int32), doc_lengths)
    is_word = tokens > Vocabulary.COMMA
    comma_next = np.zeros(tokens.size, dtype=bool)
    comma_next[:-1] = tokens[1:] == Vocabulary.COMMA
    segment = np.cumsum(tokens == Vocabulary.BREAK)
    return WordStream(
        word=tokens[is_word],
        comma=comma_next[is_word],
        segment=segment[is_word],
        doc=token_doc[is_word],
        n_docs=len(doc_lengths),
    )


@dataclass(frozen=True)
class ExtractionConfig:
    """Which n-grams may become candidates (see the module docstring for why each rule)."""

    n_min: int = 3
    n_max: int = 5
    min_df: float = 0.01
    min_docs: int = 3
    min_groups: int = 1
    max_per_doc: float = 2.0
    max_number_frac: float = 0.0
    closed_ratio: float = 0.9
    max_candidates: int = 4000

    def __post_init__(self) -> None:
        if not (1 <= self.n_min <= self.n_max <= 8):
            raise ValueError(f"n-gram sizes: need 1 <= n_min <= n_max <= 8, got {self.n_min}-{self.n_max}")
        if not (0.0 <= self.min_df <= 1.0):
            raise ValueError(f"min_df={self.min_df}: must be a fraction of documents in [0, 1]")
        if self.min_docs < 1:
            raise ValueError(f"min_docs={self.min_docs}: must be at least 1")
        if self.min_groups < 1:
            raise ValueError(f"min_groups={self.min_groups}: must be at least 1")
        if self.max_per_doc < 1.0:
            raise ValueError(
                f"max_per_doc={self.max_per_doc}: must be at least 1 (an n-gram occurs at least once in a document that has it)"
            )
        if not (0.0 <= self.max_number_frac <= 1.0):
            raise ValueError(f"max_number_frac={self.max_number_frac}: must be in [0, 1]")
        if not (0.0 < self.closed_ratio <= 1.0):
            raise ValueError(f"closed_ratio={self.closed_ratio}: must be in (0, 1]")
        if self.max_candidates < 2:
            raise ValueError(f"max_candidates={self.max_candidates}: must be at least 2")


@dataclass(frozen=True)
class Candidates:
    """The n-grams that survived the prefilter, and which documents contain each.

    ``phrases[i]`` has ``sizes[i]`` words and occurs in ``df[i]`` documents, ``tf[i]`` times
    in all; its documents are ``pair_doc[pair_candidate == i]``. ``counts`` tells how many
    n-grams each stage left.
    """

    phrases: list[str]
    sizes: np.ndarray
    df: np.ndarray
    tf: np.ndarray
    pair_candidate: np.ndarray
    pair_doc: np.ndarray
    n_docs: int
    counts: dict[str, int]

    def __len__(self) -> int:
        return len(self.phrases)


@dataclass(frozen=True)
class _NgramTable:
    """Distinct n-grams of one size that passed the count rules."""

    n: int
    first_position: np.ndarray  # word index of one occurrence (the earliest)
    df: np.ndarray
    tf: np.ndarray
    pair_row: np.ndarray  # per (n-gram, document) pair: row of this table
    pair_doc: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "_NgramTable":
        nothing = np.zeros(0, dtype=np.int64)
        return cls(n, nothing, nothing, nothing, nothing, nothing)


def _window_sum(values: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``values`` over every window of ``n`` consecutive entries."""
    cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return cumulative[n:] - cumulative[:-n]


def _hash_windows(symbols: np.ndarray, last: np.ndarray, n: int, starts: np.ndarray) -> np.ndarray:
    """64-bit key of each n-gram: its words with comma flags, the last word without."""
    key = np.full(starts.shape, np.uint64(n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n - 1):
            key = key * _HASH_MULTIPLIER + symbols[starts + offset]
        key = key * _HASH_MULTIPLIER + last[starts + n - 1]
    return key


def _count_size(
    stream: WordStream,
    doc_group: np.ndarray | None,
    n: int,
    flags: tuple[np.ndarray, np.ndarray],
    config: ExtractionConfig,
    min_df_docs: int,
    counts: dict[str, int],
) -> _NgramTable:
    stop, number = flags
    if stream.word.size < n:
        return _NgramTable.empty(n)
    word = stream.word
    valid = stream.segment[n - 1 :] == stream.segment[: word.size - n + 1]
    counts[f"{n}-gram occurrences"] = int(valid.sum())
    valid &= _window_sum(~stop[word], n) > 0
    if n > 2:  # a comma may follow only the first word (no clause boundary inside)
        valid &= _window_sum(stream.comma[1:-1], n - 2) == 0
    valid &= ~(stream.comma[: valid.size] & stop[word[: valid.size]])  # "the, so the" is not a phrase
    valid &= _window_sum(number[word], n) <= np.floor(config.max_number_frac * n + 1e-9)
    starts = np.flatnonzero(valid)
    if starts.size == 0:
        return _NgramTable.empty(n)
    plain = word.astype(np.uint64) * np.uint64(2)
    keys = _hash_windows(plain + stream.comma.astype(np.uint64), plain, n, starts)
    docs = stream.doc[starts]
    order = np.lexsort((docs, keys))  # stable: the earliest occurrence first within a key
    keys, docs, starts = keys[order], docs[order], starts[order]
    new_key = np.concatenate([[True], keys[1:] != keys[:-1]])
    new_pair = new_key | np.concatenate([[True], docs[1:] != docs[:-1]])
    row = np.cumsum(new_key) - 1
    n_rows = int(row[-1]) + 1
    counts[f"{n}-gram distinct"] = n_rows
    tf = np.bincount(row, minlength=n_rows)
    pair_row = row[new_pair]
    pair_doc = docs[new_pair]
    df = np.bincount(pair_row, minlength=n_rows)
    keep = (df >= min_df_docs) & (tf <= config.max_per_doc * df)
    if doc_group is not None and config.min_groups > 1:
        n_groups = int(doc_group.max()) + 1
        row_group = np.unique(pair_row.astype(np.int64) * n_groups + doc_group[pair_doc])
        group_df = np.bincount(row_group // n_groups, minlength=n_rows)
        keep &= group_df >= config.min_groups
    kept = np.flatnonzero(keep)
    counts[f"{n}-gram after counts"] = int(kept.size)
    remap = np.full(n_rows, -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)
    pair_kept = remap[pair_row]
    in_table = pair_kept >= 0
    return _NgramTable(
        n=n,
        first_position=starts[new_key][kept],
        df=df[kept],
        tf=tf[kept],
        pair_row=pair_kept[in_table],
        pair_doc=pair_doc[in_table].astype(np.int64),
    )


def _group_index(groups: Sequence[Hashable] | None, n_docs: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = list(groups)
    if len(groups) != n_docs:
        raise ValueError(f"groups: {len(groups)} given for {n_docs} documents")
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)


def extract_candidates(
    texts: Sequence[str],
    config: ExtractionConfig | None = None,
    *,
    groups: Sequence[Hashable] | None = None,
    progress: bool = False,
) -> Candidates:
    """Count every n-gram of ``texts`` (one text = one document) and keep the candidates.

    ``groups``, when given, names each document's group (e.g. the prompt it answers) for the
    ``min_groups`` rule.
    """
    config = config or ExtractionConfig()
    vocabulary = Vocabulary()
    stream = encode_documents(texts, vocabulary, progress=progress, total=len(texts))
    doc_group = _group_index(groups, stream.n_docs)
    counts: dict[str, int] = {"documents": stream.n_docs, "words": int(stream.word.size)}
    if doc_group is not None:
        counts["groups"] = int(doc_group.max()) + 1 if doc_group.size else 0
    min_df_docs = max(config.min_docs, int(np.ceil(config.min_df * stream.n_docs - 1e-9)))
    counts["min document frequency (documents)"] = min_df_docs
    flags = vocabulary.flags()
    tables = [
        _count_size(stream, doc_group, n, flags, config, min_df_docs, counts)
        for n in range(config.n_min, config.n_max + 1)
    ]
    counts["distinct n-grams"] = sum(counts.get(f"{n}-gram distinct", 0) for n in range(config.n_min, config.n_max + 1))

    # Every survivor as (word ids, comma flags), read off its first occurrence.
    shapes: list[tuple[tuple[int, ...], tuple[bool, ...]]] = []
    owner: list[tuple[int, int]] = []  # (table, row)
    for t, table in enumerate(tables):
        for row, position in enumerate(table.first_position.tolist()):
            words = tuple(stream.word[position : position + table.n].tolist())
            commas = tuple(stream.comma[position : position + table.n - 1].tolist()) + (False,)
            shapes.append((words, commas))
            owner.append((t, row))
    df_all = np.array([tables[t].df[r] for t, r in owner], dtype=np.int64)
    tf_all = np.array([tables[t].tf[r] for t, r in owner], dtype=np.int64)

    dropped = _fragments_of_longer(shapes, df_all, config.closed_ratio)
    survivors = [i for i in range(len(shapes)) if not dropped[i]]
    counts["after closed-n-gram rule"] = len(survivors)
    phrase_of = {i: render([vocabulary.tokens[w] for w in shapes[i][0]], shapes[i][1]) for i in survivors}
    # most documents first; ties: fewer occurrences (sparser), then the phrase itself
    survivors.sort(key=lambda i: (-df_all[i], tf_all[i], phrase_of[i]))
    chosen = survivors[: config.max_candidates]
    counts["candidates"] = len(chosen)

    pair_candidate, pair_doc = [], []
    for t, table in enumerate(tables):
        lookup = np.full(table.df.size, -1, dtype=np.int64)
        for c, i in enumerate(chosen):
            if owner[i][0] == t:
                lookup[owner[i][1]] = c
        mapped = lookup[table.pair_row]
        mask = mapped >= 0
        pair_candidate.append(mapped[mask])
        pair_doc.append(table.pair_doc[mask])
    chosen_index = np.asarray(chosen, dtype=np.int64)
    return Candidates(
        phrases=[phrase_of[i] for i in chosen],
        sizes=np.array([tables[owner[i][0]].n for i in chosen], dtype=np.int64),
        df=df_all[chosen_index] if chosen else np.zeros(0, dtype=np.int64),
        tf=tf_all[chosen_index] if chosen else np.zeros(0, dtype=np.int64),
        pair_candidate=np.concatenate(pair_candidate),
        pair_doc=np.concatenate(pair_doc),
        n_docs=stream.n_docs,
        counts=counts,
    )


def _fragments_of_longer(
    shapes: list[tuple[tuple[int, ...], tuple[bool, ...]]], df: np.ndarray, ratio: float
) -> np.ndarray:
    """Flag n-grams that occur (almost) only inside a longer surviving n-gram.

    A fragment is the first or last n words of an (n+1)-gram, commas included; it is flagged
    when the longer one is in at least ``ratio`` times as many documents. Chains resolve
    upward: "me check the" -> "let me check the" -> "let me check the answer".
    """
    index = {shape: i for i, shape in enumerate(shapes)}
    dropped = np.zeros(len(shapes), dtype=bool)
    for i, (words, commas) in enumerate(shapes):
        prefix = (words[:-1], commas[:-2] + (False,)) if len(words) > 1 else None
        suffix = (words[1:], commas[1:])
        for fragment in (prefix, suffix):
            j = index.get(fragment) if fragment is not None else None
            if j is not None and df[i] >= ratio * df[j]:
                dropped[j] = True
    return dropped
