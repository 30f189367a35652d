"""The strategic-gram lexicon: which phrases mark a *planning* token.

A ``Lexicon`` is an immutable, ordered set of canonical phrases. Canonical means: surrounding
whitespace removed, inner whitespace runs collapsed to one space, lower-cased, typographic
apostrophes folded to ``'``. The labeler matches the same folding of the text, so a phrase
written ``"Let's  Check"`` and one written ``"let’s check"`` are the same phrase.

File format (the shipped default is ``phasewatch/data/strategic_grams.txt``): UTF-8, one
phrase per line.

- Blank lines are ignored.
- A *comment* is a line whose first non-blank character is ``#`` followed by whitespace or by
  the end of the line (``# like this``). ``#`` followed by anything else starts a phrase, so
  the paper's ``## step`` is read as a phrase and the paper's list loads unchanged.
- A line starting with a backslash is taken literally without it: ``\\# step`` is the phrase
  ``# step``, ``\\\\n`` the phrase ``\\n``. ``Lexicon.to_text()`` writes this escape where needed,
  so ``Lexicon.from_text(lexicon.to_text()) == lexicon`` always holds.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

DEFAULT_RESOURCE = "data/strategic_grams.txt"

# Characters folded before matching. Whitespace becomes a plain space (a phrase written with
# spaces still matches across a newline); typographic apostrophes become ASCII ones (R1-style
# models write both "let's" and "let’s"); final sigma becomes sigma (str.lower() is
# context-sensitive only there, and per-token folding cannot see the context).
_FOLD_TABLE: dict[int, str] = {
    **{ord(c): " " for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"},
    **{cp: " " for cp in range(0x2000, 0x200B)},
    ord("\u2019"): "'",
    ord("\u2018"): "'",
    ord("\u02bc"): "'",
    ord("\u03c2"): "\u03c3",
}
_NEEDS_TRANSLATE = re.compile("[" + "".join(re.escape(chr(cp)) for cp in _FOLD_TABLE) + "]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")
_WHITESPACE_RUN = re.compile(r"\s+")


def fold_text(text: str) -> str:
    """Case- and whitespace-fold ``text`` *without changing its length*.

    Character offsets into the folded text are offsets into the original, which is what lets
    the labeler report spans of the user's own text. ``str.lower()`` keeps the length for every
    character but U+0130 (dotted capital I), which is then left as it is.
    """
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    if _NEEDS_TRANSLATE.search(lowered):
        lowered = lowered.translate(_FOLD_TABLE)
    return lowered


def canonical_phrase(phrase: object) -> str:
    """The form a phrase is stored and reported in; raises ``ValueError`` naming bad input."""
    if not isinstance(phrase, str):
        raise TypeError(f"lexicon phrase: expected a string, got {type(phrase).__name__} ({phrase!r})")
    if _CONTROL.search(phrase):
        raise ValueError(f"lexicon phrase {phrase!r}: contains a control character")
    canonical = _WHITESPACE_RUN.sub(" ", fold_text(phrase)).strip()
    if not canonical:
        raise ValueError(f"lexicon phrase {phrase!r}: empty after removing whitespace")
    return canonical


def _is_comment(stripped_line: str) -> bool:
    return stripped_line == "#" or (stripped_line.startswith("#") and stripped_line[1].isspace())


def parse_lexicon_text(text: str, source: str = "<text>") -> list[str]:
    """Phrases of a lexicon file's text, in order (see the module docstring for the syntax)."""
    phrases: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or _is_comment(stripped):
            continue
        if stripped.startswith("\\"):
            stripped = stripped[1:]
        try:
            phrases.append(canonical_phrase(stripped))
        except ValueError as exc:
            raise ValueError(f"{source}, line {lineno}: {exc}") from None
    return phrases


class Lexicon:
    """An immutable, ordered, de-duplicated set of canonical planning phrases."""

    __slots__ = ("_phrases", "_set", "source")

    def __init__(self, phrases: Iterable[str], *, source: str = "<phrases>"):
        if isinstance(phrases, (str, bytes, Path)):
            raise TypeError(
                "Lexicon(phrases): expected an iterable of phrases, got a single "
                f"{type(phrases).__name__} ({phrases!r}); use Lexicon.from_file(path) to read a file"
            )
        seen: dict[str, None] = {}
        for phrase in phrases:
            seen.setdefault(canonical_phrase(phrase), None)
        self._phrases: tuple[str, ...] = tuple(seen)
        self._set = frozenset(self._phrases)
        self.source = source

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "Lexicon":
        """The lexicon shipped with phasewatch (curated from the HICRA paper's list)."""
        return _default_lexicon()

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> "Lexicon":
        return cls(parse_lexicon_text(text, source), source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> "Lexicon":
        """Read a lexicon file; a file with no phrase in it is an error (it labels nothing)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"lexicon file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"lexicon file {path}: not UTF-8 text ({exc})") from None
        lexicon = cls.from_text(text, source=str(path))
        if not lexicon:
            raise ValueError(f"lexicon file {path}: contains no phrases (only blank lines or comments)")
        return lexicon

    @classmethod
    def coerce(cls, value: "Lexicon | str | Path | Iterable[str] | None") -> "Lexicon":
        """What every public entry point accepts: None (default), a Lexicon, a path, or phrases."""
        if value is None:
            return cls.default()
        if isinstance(value, Lexicon):
            return value
        if isinstance(value, (str, Path)):
            return cls.from_file(value)
        return cls(value)

    def with_phrases(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> "Lexicon":
        """A new lexicon with ``add`` appended and ``remove`` taken out.

        Removing a phrase that is not in the lexicon is an error: it is almost always a typo,
        and a silent no-op would leave the user labeling with a phrase they meant to drop.
        """
        add_list = [add] if isinstance(add, str) else list(add)
        remove_list = [remove] if isinstance(remove, str) else list(remove)
        removed = {canonical_phrase(p) for p in remove_list}
        missing = sorted(removed - self._set)
        if missing:
            raise ValueError(f"with_phrases(remove=...): not in the lexicon: {missing}")
        kept = [p for p in self._phrases if p not in removed]
        return Lexicon(kept + add_list, source=f"{self.source} (modified)")

    # -- access -------------------------------------------------------------------------------
    @property
    def phrases(self) -> tuple[str, ...]:
        return self._phrases

    def to_text(self) -> str:
        """The lexicon in the file format, escaping phrases that would read as comments."""
        lines = []
        for phrase in self._phrases:
            needs_escape = phrase.startswith("\\") or _is_comment(phrase)
            lines.append("\\" + phrase if needs_escape else phrase)
        return "\n".join(lines) + ("\n" if lines else "")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_text(), encoding="utf-8")

    def __len__(self) -> int:
        return len(self._phrases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._phrases)

    def __contains__(self, phrase: object) -> bool:
        try:
            return canonical_phrase(phrase) in self._set
        except (TypeError, ValueError):
            return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lexicon) and self._phrases == other._phrases

    def __hash__(self) -> int:
        return hash(self._phrases)

    def __repr__(self) -> str:
        return f"Lexicon({len(self)} phrases from {self.source})"


@functools.lru_cache(maxsize=1)
def _default_lexicon() -> Lexicon:
    resource = resources.files("phasewatch").joinpath(DEFAULT_RESOURCE)
    text = resource.read_text(encoding="utf-8")
    return Lexicon(parse_lexicon_text(text, source=f"phasewatch/{DEFAULT_RESOURCE}"), source="phasewatch default")
