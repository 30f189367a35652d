"""Lexicon: file syntax (comments vs phrases starting with '#'), canonical phrases, editing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasewatch.lexicon import Lexicon, canonical_phrase, fold_text, parse_lexicon_text


def test_comment_syntax_keeps_phrases_that_start_with_hash():
    text = "\n".join(
        [
            "# a comment",
            "#",
            "   # an indented comment",
            "#\tanother comment",
            "## step",
            "#hashtag",
            "\\# escaped",
            "\\\\backslash",
            "",
            "   Let's   CHECK   ",
        ]
    )
    assert parse_lexicon_text(text) == ["## step", "#hashtag", "# escaped", "\\backslash", "let's check"]


def test_paper_list_loads_unchanged_including_its_hash_phrase(shared_data):
    path = shared_data("strategic-grams/hicra-paper-v3.txt")
    lexicon = Lexicon.from_file(path)
    raw = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lexicon.phrases == tuple(raw)
    assert "## step" in lexicon


def test_default_lexicon_is_package_data_with_documented_edits():
    default = Lexicon.default()
    assert Lexicon.default() is default  # cached: read once
    assert "## step" in default  # a phrase starting with '#' survives the comment syntax
    assert not any(p.startswith("# ") for p in default.phrases)  # no comment leaked in
    # the header says the paper's broad connectives were dropped and specific forms kept
    for dropped in ("so", "but", "now", "let's", "therefore", "since"):
        assert dropped not in default
    for kept in ("but wait", "let me", "alternatively", "let's reconsider", "wait"):
        assert kept in default
    assert all(p == canonical_phrase(p) for p in default.phrases)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("  Let’s   Try\tAgain ", "let's try again"),
        ("HMM,", "hmm,"),
        ("wait\nno", "wait no"),
    ],
)
def test_canonical_phrase_folds_case_space_and_apostrophes(raw, canonical):
    assert canonical_phrase(raw) == canonical


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("   ", ValueError, "empty"),
        ("let\x00me", ValueError, "control character"),
        (42, TypeError, "expected a string"),
    ],
)
def test_bad_phrases_are_rejected_with_a_clear_error(bad, error, message):
    with pytest.raises(error, match=message):
        Lexicon([bad])


def test_lexicon_from_a_single_string_is_refused():
    with pytest.raises(TypeError, match="from_file"):
        Lexicon("wait")


def test_duplicates_collapse_to_first_canonical_occurrence():
    lexicon = Lexicon(["Wait", "wait", "  WAIT ", "hmm"])
    assert lexicon.phrases == ("wait", "hmm")
    assert len(lexicon) == 2


def test_with_phrases_adds_and_removes_without_mutating():
    base = Lexicon(["wait", "hmm", "let me"])
    edited = base.with_phrases(add=["Double-check", "wait"], remove=["HMM"])
    assert edited.phrases == ("wait", "let me", "double-check")
    assert base.phrases == ("wait", "hmm", "let me")
    assert base.with_phrases(add="maybe").phrases[-1] == "maybe"  # a single string is one phrase


def test_removing_an_absent_phrase_names_it():
    with pytest.raises(ValueError, match="not in the lexicon.*'nope'"):
        Lexicon(["wait"]).with_phrases(remove=["nope"])


def test_from_file_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Lexicon.from_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no phrases"):
        Lexicon.from_file(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        Lexicon.from_file(latin)
    bad = tmp_path / "bad.txt"
    bad.write_text("wait\nlet\x01me\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        Lexicon.from_file(bad)


def test_coerce_accepts_every_documented_form(tmp_path: Path):
    path = tmp_path / "lex.txt"
    path.write_text("wait\nhmm\n", encoding="utf-8")
    assert Lexicon.coerce(None) is Lexicon.default()
    assert Lexicon.coerce(str(path)).phrases == ("wait", "hmm")
    assert Lexicon.coerce(path).phrases == ("wait", "hmm")
    lexicon = Lexicon(["x"])
    assert Lexicon.coerce(lexicon) is lexicon
    assert Lexicon.coerce(iter(["a b", "c"])).phrases == ("a b", "c")


def test_membership_uses_the_canonical_form():
    lexicon = Lexicon(["let's check"])
    assert "Let’s  CHECK" in lexicon
    assert 3 not in lexicon


phrase_text = st.text(
    alphabet=st.sampled_from(list("ab #\\'’é\t") + ["ß", "İ"]), min_size=1, max_size=12
).filter(lambda s: s.strip())


@settings(max_examples=150, deadline=None)
@given(st.lists(phrase_text, min_size=1, max_size=8))
def test_to_text_round_trips_any_lexicon(phrases):
    lexicon = Lexicon(phrases)
    assert Lexicon.from_text(lexicon.to_text()) == lexicon


def test_save_and_reload(tmp_path: Path):
    lexicon = Lexicon(["# not a comment", "\\slash", "## step", "wait"])
    path = tmp_path / "out.txt"
    lexicon.save(path)
    assert Lexicon.from_file(path) == lexicon


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fold_text_never_changes_length(text):
    assert len(fold_text(text)) == len(text)
