"""Planning-token labeling: which completion tokens belong to a strategic-gram phrase.

The labeler works on the *decoded text*, so a phrase is found however the tokenizer split it
(sub-word pieces, with or without a leading ``Ġ``/``▁`` space, any capitalisation), and maps
the matched character spans back to token positions: a token is planning when any of its
characters lies inside a matched phrase.

How a batch is labeled, without re-encoding anything:

1. A per-tokenizer ``TokenTable`` (built once from the vocabulary and the decoder's
   configuration, cached per tokenizer object) holds every id's decoded bytes, already
   case-folded. Special tokens, masked positions, padding and out-of-vocabulary ids all become
   one ``\\x00`` separator byte, which no phrase can contain or cross.
2. numpy gathers the bytes of the whole batch into one buffer (rows separated by the same
   byte); cumulative piece lengths give each token's byte range; one UTF-8 decode gives the
   text, and a cumulative count of UTF-8 lead bytes turns byte offsets into character offsets
   (a character split across two tokens belongs to both, and is case-folded once assembled).
   Invalid UTF-8 is decoded with ``surrogateescape``, one character per bad byte, so offsets
   stay exact.
3. pyahocorasick finds every occurrence of every phrase in one pass; word boundaries are
   checked after matching; overlaps are resolved *leftmost-longest* (below).
4. ``np.searchsorted`` maps the chosen spans to tokens.

Tokenizers whose decoder cannot be expressed per token (WordPiece, custom decoders, objects
that only have ``decode``) fall back to incremental decoding: the text of each token is the
growth of ``decode`` over a short sliding window, as streaming detokenizers do.

Matching rules, shared by ``find`` and ``label``:

- Case-insensitive (``str.lower``), whitespace-insensitive in kind (a newline matches a
  space, but not a run of spaces), typographic apostrophes equal ``'``.
- Word boundaries: a phrase that begins (ends) with a letter, digit or ``_`` must not be
  preceded (followed) by one. ``"now"`` does not fire in ``"know"``; ``"hmm,"`` needs no
  boundary after its comma.
- Overlaps: scanning left to right, at each position the longest phrase that matches there is
  taken and scanning resumes after it, exactly like a regular expression whose alternatives
  are sorted longest first. So ``"but wait"`` reports one phrase, not ``"but"`` + ``"wait"``;
  a phrase that starts inside an already taken one is not reported. ``BatchLabels.phrases``
  (used for semantic entropy) and the planning mask both follow these spans.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from phasewatch.lexicon import Lexicon, fold_text

SEPARATOR = b"\x00"


class Span(NamedTuple):
    """A matched phrase: ``text[start:end]`` (character offsets) and its canonical form."""

    start: int
    end: int
    phrase: str


@dataclass
class BatchLabels:
    """What ``PlanningLabeler.label`` returns for a batch of completions.

    planning_mask: bool tensor (B, T) on the device of ``completion_ids``; masked and padding
        positions are always False.
    phrases: per sequence, the canonical phrases matched, in order, with multiplicity.
    """

    planning_mask: Any
    phrases: list[list[str]]


# -------------------------------------------------------------------------------------------
# Phrase matching on folded text
# -------------------------------------------------------------------------------------------


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


_ASCII_WORD = np.array([chr(c).isalnum() or c == 0x5F for c in range(128)], dtype=bool)


def _word_flags(chars: str) -> np.ndarray:
    """Per character of ``chars``: is it a word character (letter, digit or ``_``)?"""
    codepoints = np.frombuffer(chars.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    flags = np.zeros(len(codepoints), dtype=bool)
    ascii_ = codepoints < 128
    flags[ascii_] = _ASCII_WORD[codepoints[ascii_]]
    if not ascii_.all():
        for cp in np.unique(codepoints[~ascii_]).tolist():
            flags[codepoints == cp] = _is_word_char(chr(cp))
    return flags


class PhraseMatcher:
    """Aho-Corasick over canonical phrases, with word boundaries and leftmost-longest overlaps.

    The automaton reports every occurrence (overlapping ones included) from C; boundary checks
    and overlap resolution are vectorised, so Python work per occurrence stays small.
    """

    def __init__(self, phrases: Sequence[str]):
        import ahocorasick

        self.phrases = tuple(phrases)
        self._automaton = ahocorasick.Automaton()
        for pid, phrase in enumerate(self.phrases):
            self._automaton.add_word(phrase, pid)
        if self.phrases:
            self._automaton.make_automaton()
        self._length = np.array([len(p) for p in self.phrases], dtype=np.int64)
        self._left_word = np.array([_is_word_char(p[0]) for p in self.phrases], dtype=bool)
        self._right_word = np.array([_is_word_char(p[-1]) for p in self.phrases], dtype=bool)

    def spans(self, folded: str) -> list[tuple[int, int, int]]:
        """``(start, end, phrase_id)`` of the chosen matches in already folded text, sorted."""
        start, end, pid = self.span_arrays(folded)
        return list(zip(start.tolist(), end.tolist(), pid.tolist()))

    def span_arrays(self, folded: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like ``spans`` but as three int64 arrays (start, end, phrase id)."""
        empty = np.zeros(0, dtype=np.int64)
        if not self.phrases or not folded:
            return empty, empty, empty
        raw = np.array(list(self._automaton.iter(folded)), dtype=np.int64).reshape(-1, 2)
        if raw.shape[0] == 0:
            return empty, empty, empty
        n = len(folded)
        pid = raw[:, 1]
        end = raw[:, 0] + 1
        start = end - self._length[pid]
        check_left = self._left_word[pid] & (start > 0)
        check_right = self._right_word[pid] & (end < n)
        positions = np.concatenate([np.where(check_left, start - 1, 0), np.where(check_right, end, 0)])
        neighbours = _word_flags("".join(map(folded.__getitem__, positions.tolist())))
        k = len(pid)
        keep = ~((check_left & neighbours[:k]) | (check_right & neighbours[k:]))
        start, end, pid = start[keep], end[keep], pid[keep]
        if start.size <= 1:
            return start, end, pid
        order = np.lexsort((start - end, start))  # by start, then longest first
        start, end, pid = start[order], end[order], pid[order]
        reach = np.maximum.accumulate(end)
        if np.all(start[1:] >= reach[:-1]):  # no overlaps at all: every match stands
            return start, end, pid
        chosen = []
        taken_until = -1
        for i, (s, e) in enumerate(zip(start.tolist(), end.tolist())):
            if s >= taken_until:
                chosen.append(i)
                taken_until = e
        index = np.asarray(chosen, dtype=np.int64)
        return start[index], end[index], pid[index]


# -------------------------------------------------------------------------------------------
# Per-tokenizer table of decoded pieces
# -------------------------------------------------------------------------------------------


class UnsupportedDecoder(Exception):
    """The tokenizer's decoder cannot be expressed as one byte string per token."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character alphabet (used by byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_LEVEL_CHARS: dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True)
class _DecoderPlan:
    """A decoder configuration compiled to per-token steps plus whole-sequence edits."""

    token_steps: tuple[Callable[[Any], Any], ...]  # str|bytes -> str|bytes, per token
    first_token_step: Callable[[Any], Any] | None  # Metaspace: the first token loses its marker
    strip_start: tuple[str, int] | None  # Strip applied after fusing: (content, count)
    strip_stop: tuple[str, int] | None


_BYTE_LEVEL_TO_LATIN1 = {ord(c): b for c, b in _BYTE_LEVEL_CHARS.items()}


def _byte_level_piece(token: Any) -> bytes:
    if isinstance(token, bytes):
        return token
    try:  # every character is one byte of the alphabet: map to that code point, then to the byte
        return token.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:  # not a byte-level string (e.g. an added token): its own UTF-8
        return token.encode("utf-8")


def _byte_fallback_piece(token: Any) -> Any:
    if isinstance(token, str):
        m = _BYTE_FALLBACK.match(token)
        if m:
            return bytes([int(m.group(1), 16)])
    return token


def _replace_step(pattern: str, content: str) -> Callable[[Any], Any]:
    def step(token: Any) -> Any:
        if isinstance(token, bytes):
            return token.replace(pattern.encode("utf-8"), content.encode("utf-8"))
        return token.replace(pattern, content)

    return step


def _strip_token(token: Any, content: str, start: int, stop: int) -> Any:
    is_bytes = isinstance(token, bytes)
    text = token.decode("utf-8", "surrogateescape") if is_bytes else token
    for _ in range(start):
        if text.startswith(content):
            text = text[len(content) :]
    for _ in range(stop):
        if text.endswith(content):
            text = text[: -len(content)]
    return text.encode("utf-8", "surrogateescape") if is_bytes else text


def _compile_decoder(config: dict | None) -> _DecoderPlan:
    """Translate a ``tokenizers`` decoder configuration (JSON) into a ``_DecoderPlan``."""
    if config is None:
        raise UnsupportedDecoder("no decoder (tokens are joined with spaces)")
    steps = config.get("decoders", []) if config.get("type") == "Sequence" else [config]
    token_steps: list[Callable[[Any], Any]] = []
    first_token_step = None
    strip_start = strip_stop = None
    fused = False
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            token_steps.append(_byte_level_piece)
            fused = True
        elif kind == "ByteFallback":
            if fused:
                raise UnsupportedDecoder("ByteFallback after fusing")
            token_steps.append(_byte_fallback_piece)
        elif kind == "Fuse":
            fused = True
        elif kind == "Replace":
            pattern = step.get("pattern", {})
            if "String" not in pattern:
                raise UnsupportedDecoder(f"Replace with a regex pattern: {pattern}")
            if fused and len(pattern["String"]) != 1:
                raise UnsupportedDecoder("multi-character Replace after fusing")
            token_steps.append(_replace_step(pattern["String"], step.get("content", "")))
        elif kind == "Metaspace":
            if fused:
                raise UnsupportedDecoder("Metaspace after fusing")
            replacement = step.get("replacement", "\u2581")
            token_steps.append(_replace_step(replacement, " "))
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            if scheme != "never":
                first_token_step = _replace_step(" ", "")
        elif kind == "Strip":
            content, start, stop = step.get("content", " "), int(step.get("start", 0)), int(step.get("stop", 0))
            if fused:
                strip_start = (content, start) if start else None
                strip_stop = (content, stop) if stop else None
            else:
                token_steps.append(lambda t, c=content, a=start, b=stop: _strip_token(t, c, a, b))
        else:
            raise UnsupportedDecoder(f"decoder {kind!r}")
    return _DecoderPlan(tuple(token_steps), first_token_step, strip_start, strip_stop)


def _backend_of(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and type(tokenizer).__module__.split(".")[0] == "tokenizers":
        backend = tokenizer
    return backend


def _to_bytes(piece: Any) -> bytes:
    return piece if isinstance(piece, bytes) else piece.encode("utf-8", "surrogateescape")


def _fold_pieces(pieces: list[bytes]) -> list[bytes]:
    """Case-fold every token's bytes (one ``fold_text`` call for the whole vocabulary).

    Bytes of a character cut by a token edge pass unchanged (as surrogate escapes); such a
    character is folded on the assembled text instead (see ``_refold_split_chars``).
    """
    texts = [piece.decode("utf-8", "surrogateescape") for piece in pieces]
    folded = fold_text("".join(texts))  # length-preserving, so the slices line up
    out, position = [], 0
    for text in texts:
        out.append(folded[position : position + len(text)].encode("utf-8", "surrogateescape"))
        position += len(text)
    return out


class TokenTable:
    """Every vocabulary id's decoded (and folded) bytes, for one tokenizer.

    Built from the vocabulary and the decoder configuration of a ``tokenizers``-backed
    tokenizer (``transformers`` fast tokenizers, or a bare ``tokenizers.Tokenizer``): byte-level
    BPE (``Ġ``), Metaspace/SentencePiece (``▁``, ``<0xNN>`` byte fallback) and sequences of
    Replace/ByteFallback/Fuse/Strip. ``decode(ids)`` reproduces
    ``tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)``.
    """

    def __init__(self, vocab: dict[str, int], special_ids: Iterable[int], plan: _DecoderPlan, size: int | None = None):
        size = max(max(vocab.values(), default=-1) + 1, size or 0)
        self.separator_id = size
        special = {i for i in special_ids if 0 <= i < size}
        raw: list[bytes | None] = [None] * (size + 1)
        for token, idx in vocab.items():
            if idx in special:
                continue
            piece: Any = token
            for step in plan.token_steps:
                piece = step(piece)
            raw[idx] = _to_bytes(piece)
        self._raw = raw
        self._plan = plan
        folded = _fold_pieces([SEPARATOR if piece is None else piece for piece in raw])
        lengths = np.fromiter((len(p) for p in folded), dtype=np.int32, count=len(folded))
        self.length = lengths
        self.offset = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]]).astype(np.int64)
        self.blob = np.frombuffer(b"".join(folded), dtype=np.uint8)
        self.vocab_size = size

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "TokenTable":
        backend = _backend_of(tokenizer)
        if backend is None:
            raise UnsupportedDecoder(f"{type(tokenizer).__name__} is not backed by the tokenizers library")
        decoder = backend.decoder
        config = json.loads(decoder.__getstate__()) if decoder is not None else None
        plan = _compile_decoder(config)
        vocab = backend.get_vocab(with_added_tokens=True)
        special = [i for i, tok in backend.get_added_tokens_decoder().items() if tok.special]
        special += list(getattr(tokenizer, "all_special_ids", ()) or ())
        try:
            size = len(tokenizer)
        except TypeError:
            size = None
        return cls(vocab, special, plan, size)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (special tokens skipped), as the tokenizer itself decodes it."""
        pieces: list[Any] = []
        for i in ids:
            piece = self._raw[i] if 0 <= i < self.vocab_size else None
            if piece is None:
                continue
            if not pieces and self._plan.first_token_step is not None:
                piece = _to_bytes(self._plan.first_token_step(piece))
            pieces.append(piece)
        text = b"".join(pieces).decode("utf-8", "replace")
        if self._plan.strip_start:
            text = _strip_token(text, self._plan.strip_start[0], self._plan.strip_start[1], 0)
        if self._plan.strip_stop:
            text = _strip_token(text, self._plan.strip_stop[0], 0, self._plan.strip_stop[1])
        return text


class _TableCache:
    """One table per live tokenizer object, rebuilt if the vocabulary grows (added tokens)."""

    def __init__(self) -> None:
        self._weak: "weakref.WeakKeyDictionary[Any, tuple[Any, TokenTable | None]]" = weakref.WeakKeyDictionary()
        self._strong: dict[int, tuple[Any, Any, TokenTable | None]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _fingerprint(tokenizer: Any) -> Any:
        backend = _backend_of(tokenizer)
        try:
            size = len(tokenizer)
        except TypeError:
            size = None
        if backend is None:
            return (size, None, None)
        decoder = backend.decoder
        return (size, backend.get_vocab_size(with_added_tokens=True), decoder.__getstate__() if decoder else None)

    def get(self, tokenizer: Any) -> TokenTable | None:
        """The table, or None when the tokenizer needs incremental decoding."""
        fingerprint = self._fingerprint(tokenizer)
        with self._lock:
            try:
                cached = self._weak.get(tokenizer)
            except TypeError:  # not weak-referenceable: key by id, keep the object alive
                entry = self._strong.get(id(tokenizer))
                cached = entry[1:] if entry is not None and entry[0] is tokenizer else None
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
        try:
            table: TokenTable | None = TokenTable.from_tokenizer(tokenizer)
        except UnsupportedDecoder:
            table = None
        with self._lock:
            try:
                self._weak[tokenizer] = (fingerprint, table)
            except TypeError:
                if len(self._strong) >= 16:
                    self._strong.pop(next(iter(self._strong)))
                self._strong[id(tokenizer)] = (tokenizer, fingerprint, table)
        return table


_TABLES = _TableCache()


def token_table(tokenizer: Any) -> TokenTable | None:
    """The cached ``TokenTable`` of ``tokenizer``, or None if it must be decoded incrementally."""
    return _TABLES.get(tokenizer)


# -------------------------------------------------------------------------------------------
# Text and token offsets of a batch
# -------------------------------------------------------------------------------------------


def _char_index_of_bytes(buffer: np.ndarray) -> tuple[str, np.ndarray | None]:
    """Decode a UTF-8 buffer; return the text and each byte's character index (None: identity)."""
    raw = buffer.tobytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Invalid bytes (a character cut by truncation, or a byte-fallback soup): one
        # surrogate per bad byte, and each character's byte length read off its code point.
        text = raw.decode("utf-8", "surrogateescape")
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        escaped = (codepoints >= 0xDC80) & (codepoints <= 0xDCFF)
        widths = 1 + (codepoints >= 0x80).astype(np.int64) + (codepoints >= 0x800) + (codepoints >= 0x10000)
        widths[escaped] = 1
        return text, np.repeat(np.arange(len(codepoints), dtype=np.int64), widths)
    if len(text) == len(raw):
        return text, None
    return text, np.cumsum((buffer & 0xC0) != 0x80, dtype=np.int64) - 1


def _batch_text(table: TokenTable, ids: np.ndarray, mask: np.ndarray):
    """Folded text of a (B, T) batch plus every token's character range.

    Returns ``(text, token_start, token_end, nonempty)`` for the (B, T+1) layout in which each
    row is followed by one separator token.
    """
    sep = table.separator_id
    usable = mask & (ids >= 0) & (ids < sep)
    safe = np.where(usable, ids, sep)
    flat = np.concatenate([safe, np.full((ids.shape[0], 1), sep, dtype=safe.dtype)], axis=1).ravel()
    lengths = table.length[flat]
    byte_end = np.cumsum(lengths, dtype=np.int64)
    byte_start = byte_end - lengths
    total = int(byte_end[-1])
    # byte i of the batch comes from blob[offset(token) + (i - byte_start(token))]; 32-bit
    # indices halve the memory traffic of the two byte-length arrays below
    index_type = np.int32 if total < 2**31 - 1 else np.int64
    gather = np.repeat((table.offset[flat] - byte_start).astype(index_type), lengths)
    gather += np.arange(total, dtype=index_type)
    buffer = table.blob[gather]
    text, char_of_byte = _char_index_of_bytes(buffer)
    nonempty = lengths > 0
    if char_of_byte is None:
        return text, byte_start, byte_end, nonempty
    first_byte = np.minimum(byte_start, total - 1)
    token_start = char_of_byte[first_byte]
    token_end = char_of_byte[np.maximum(byte_end - 1, 0)] + 1
    starts_inside_char = nonempty & ((buffer[first_byte] & 0xC0) == 0x80)
    if starts_inside_char.any():
        text = _refold_split_chars(text, np.unique(token_start[starts_inside_char]).tolist())
    return text, token_start, token_end, nonempty


def _refold_split_chars(text: str, positions: list[int]) -> str:
    """Fold characters whose bytes straddle two tokens (per-token folding could not see them).

    ``fold_text`` keeps lengths, so character offsets computed before stay valid.
    """
    changes = [(i, fold_text(text[i])) for i in positions]
    changes = [(i, c) for i, c in changes if c != text[i]]
    if not changes:
        return text
    chars = list(text)
    for i, c in changes:
        chars[i] = c
    return "".join(chars)


def _decode_call(tokenizer: Any) -> Callable[[list[int]], str]:
    def decode(ids: list[int]) -> str:
        try:
            return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        except TypeError:
            return tokenizer.decode(ids)

    return decode


def _incremental_offsets(decode: Callable[[list[int]], str], ids: list[int], window: int = 6):
    """Text of ``ids`` and each token's character range, by growing a short decode window.

    Tokens that complete no character yet (half of a multi-byte character) share the range of
    the text that appears once the character is complete.
    """
    parts: list[str] = []
    starts = [0] * len(ids)
    ends = [0] * len(ids)
    position = 0
    prefix_offset = read_offset = 0
    for i in range(len(ids)):
        prefix_text = decode(ids[prefix_offset:read_offset])
        new_text = decode(ids[prefix_offset : i + 1])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            for k in range(read_offset, i + 1):
                starts[k], ends[k] = position, position + len(delta)
            parts.append(delta)
            position += len(delta)
            prefix_offset = max(read_offset, i + 1 - window)
            read_offset = i + 1
    if read_offset < len(ids):  # trailing incomplete character
        prefix_text = decode(ids[prefix_offset:read_offset])
        delta = decode(ids[prefix_offset:])[len(prefix_text) :]
        for k in range(read_offset, len(ids)):
            starts[k], ends[k] = position, position + len(delta)
        parts.append(delta)
    return "".join(parts), starts, ends


# -------------------------------------------------------------------------------------------
# The labeler
# -------------------------------------------------------------------------------------------


def _as_numpy(value: Any, name: str) -> tuple[np.ndarray, Any]:
    """(array, torch device or None); accepts torch tensors, numpy arrays and nested lists."""
    device = None
    if hasattr(value, "detach") and hasattr(value, "device"):
        device = value.device
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (batch, tokens) array, got shape {tuple(array.shape)}")
    return array, device


class PlanningLabeler:
    """Label completion tokens *planning* when they fall inside a lexicon phrase.

    ``lexicon``: None (the shipped default), a ``Lexicon``, a path to a lexicon file, or an
    iterable of phrases. The labeler holds no per-call state; the per-tokenizer tables it uses
    are cached module-wide and keyed on the tokenizer object and its vocabulary size.
    """

    def __init__(self, lexicon: Lexicon | str | Path | Iterable[str] | None = None):
        self.lexicon = Lexicon.coerce(lexicon)
        self._matcher = PhraseMatcher(self.lexicon.phrases)

    def __repr__(self) -> str:
        return f"PlanningLabeler({self.lexicon!r})"

    # -- text -------------------------------------------------------------------------------
    def find(self, text: str) -> list[Span]:
        """The phrases in ``text`` as character spans of ``text`` itself (leftmost-longest)."""
        if not isinstance(text, str):
            raise TypeError(f"find(text): expected a str, got {type(text).__name__}")
        phrases = self._matcher.phrases
        return [Span(s, e, phrases[p]) for s, e, p in self._matcher.spans(fold_text(text))]

    # -- token batches ------------------------------------------------------------------------
    def label(self, completion_ids: Any, completion_mask: Any, tokenizer: Any) -> BatchLabels:
        """Planning mask (B, T) and matched phrases per sequence for a batch of completions.

        ``completion_ids`` and ``completion_mask`` are (B, T) tensors (or arrays); positions
        where the mask is 0, special tokens and ids outside the tokenizer's vocabulary are never
        planning, and no phrase is matched across them.
        """
        import torch

        ids, device = _as_numpy(completion_ids, "completion_ids")
        if completion_mask is None:
            mask = np.ones(ids.shape, dtype=bool)
        else:
            mask, _ = _as_numpy(completion_mask, "completion_mask")
            if mask.shape != ids.shape:
                raise ValueError(
                    f"completion_mask: shape {tuple(mask.shape)} does not match completion_ids {tuple(ids.shape)}"
                )
            mask = mask.astype(bool)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"completion_ids: expected integer token ids, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        batch, length = ids.shape
        if batch == 0 or length == 0 or not self._matcher.phrases:
            planning = np.zeros((batch, length), dtype=bool)
            phrases: list[list[str]] = [[] for _ in range(batch)]
        else:
            table = token_table(tokenizer)
            if table is not None:
                planning, phrases = self._label_with_table(table, ids, mask)
            else:
                planning, phrases = self._label_incremental(tokenizer, ids, mask)
        tensor = torch.from_numpy(planning)
        if device is not None and device.type != "cpu":
            tensor = tensor.to(device, non_blocking=True)
        return BatchLabels(planning_mask=tensor, phrases=phrases)

    def _label_with_table(self, table: TokenTable, ids: np.ndarray, mask: np.ndarray):
        batch, length = ids.shape
        text, token_start, token_end, nonempty = _batch_text(table, ids, mask)
        span_start, span_end, span_pid = self._matcher.span_arrays(text)
        phrases: list[list[str]] = [[] for _ in range(batch)]
        if span_start.size == 0:
            return np.zeros((batch, length), dtype=bool), phrases
        planning_flat = _tokens_in_spans(token_start, token_end, nonempty, span_start, span_end)
        row_end = token_end.reshape(batch, length + 1)[:, -1]  # end of each row's separator
        rows = np.searchsorted(row_end, span_start, side="right")
        names = self._matcher.phrases
        for row, pid in zip(rows.tolist(), span_pid.tolist()):
            phrases[row].append(names[pid])
        planning = planning_flat.reshape(batch, length + 1)[:, :length] & mask
        return planning, phrases

    def _label_incremental(self, tokenizer: Any, ids: np.ndarray, mask: np.ndarray):
        """Fallback for tokenizers without a usable table: decode each masked-in run of tokens."""
        decode = _decode_call(tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        batch, length = ids.shape
        planning = np.zeros((batch, length), dtype=bool)
        phrases: list[list[str]] = [[] for _ in range(batch)]
        names = self._matcher.phrases
        for row in range(batch):
            usable = mask[row] & (ids[row] >= 0) & ~np.isin(ids[row], list(special))
            positions = np.flatnonzero(usable)
            if positions.size == 0:
                continue
            runs = np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1)
            for run in runs:
                text, starts, ends = _incremental_offsets(decode, ids[row, run].tolist())
                span_start, span_end, span_pid = self._matcher.span_arrays(fold_text(text))
                if span_start.size == 0:
                    continue
                starts_a, ends_a = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
                hit = _tokens_in_spans(starts_a, ends_a, ends_a > starts_a, span_start, span_end)
                planning[row, run] = hit
                phrases[row].extend(names[p] for p in span_pid.tolist())
        return planning, phrases


def _tokens_in_spans(token_start, token_end, nonempty, span_start, span_end) -> np.ndarray:
    """Tokens whose character range [start, end) overlaps any span (spans sorted, disjoint)."""
    last = np.searchsorted(span_start, token_end, side="left") - 1
    return nonempty & (last >= 0) & (span_end[np.maximum(last, 0)] > token_start)
