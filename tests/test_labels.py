"""PlanningLabeler: phrase matching on text, and token labeling through real tokenizers.

The oracle for token labels is independent of the labeler's own offset arithmetic: the
tokenizer's offset mapping (from encoding the text) says which characters each token covers,
and a token must be planning exactly when it overlaps a span that ``find`` reports on the text.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_path
from phasewatch.labels import BatchLabels, PlanningLabeler, Span, TokenTable, token_table
from phasewatch.lexicon import Lexicon, fold_text
from phasewatch.tiny import train_tokenizer

LABELS_FILE = "labels/thought-anchors-r1-distill-llama-8b.jsonl"
EXTRA_TEXT = [
    "WAIT, let me double-check. Hmm... (wait) wait. ,wait, Let’s try again: x²+1 ≈ 2 🙂 wait 数学",
    "Alternatively, but wait, maybe I made a mistake?\nLet me\nverify: 3 × 4 = 12 ✔️",
    "café naïve Ünïcödé 😀😃 ok wait",
]


@pytest.fixture(scope="session")
def corpus():
    path = shared_path(LABELS_FILE)
    with open(path, encoding="utf-8") as handle:
        sentences = [json.loads(line)["text"] for line in handle if line.strip()]
    return sentences[:1200] + EXTRA_TEXT * 3


@pytest.fixture(scope="session")
def byte_level(corpus):
    return train_tokenizer(corpus, vocab_size=1200, kind="byte_level")


@pytest.fixture(scope="session")
def metaspace(corpus):
    return train_tokenizer(corpus, vocab_size=1200, kind="metaspace")


@pytest.fixture(scope="session")
def tiny_byte_level(corpus):
    """So small a vocabulary that every phrase is split into many sub-word tokens."""
    return train_tokenizer(corpus[:200], vocab_size=270, kind="byte_level")


@pytest.fixture(scope="session")
def llama_style(corpus):
    """SentencePiece-style BPE with <0xNN> byte-fallback vocabulary entries (trained on ASCII only,
    so any other character becomes byte tokens) and Llama's Replace/ByteFallback/Fuse/Strip decoder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "<eos>", "<unk>"], show_progress=False)
    tok.train_from_iterator([s.encode("ascii", "ignore").decode() for s in corpus], trainer=trainer)
    config = json.loads(tok.to_str())
    vocab = config["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    config["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(config))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="session")
def labeler():
    return PlanningLabeler()


def oracle_mask(labeler, tokenizer, text):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    expected = np.zeros(len(offsets), dtype=bool)
    for span in labeler.find(text):
        expected |= (offsets[:, 0] < span.end) & (offsets[:, 1] > span.start)
    return enc["input_ids"], expected


def label_one(labeler, tokenizer, ids):
    ids_t = torch.tensor([ids])
    return labeler.label(ids_t, torch.ones_like(ids_t), tokenizer)


# ------------------------------------------------------------------------------ text matching
def test_find_is_case_insensitive_with_word_boundaries():
    labeler = PlanningLabeler(["now", "wait", "hmm,", "let me", "## step"])
    text = "I KNOW it. Now wait... HMM, Let Me see. nowhere, await, ## Step 2"
    spans = labeler.find(text)
    assert [(text[s.start : s.end], s.phrase) for s in spans] == [
        ("Now", "now"),
        ("wait", "wait"),
        ("HMM,", "hmm,"),
        ("Let Me", "let me"),
        ("## Step", "## step"),
    ]
    assert all(isinstance(s, Span) for s in spans)


def test_find_resolves_overlaps_leftmost_longest():
    labeler = PlanningLabeler(["but", "but wait", "wait", "wait, but", "need to", "to find"])
    assert [s.phrase for s in labeler.find("But wait, but I need to find it")] == ["but wait", "but", "need to"]
    # "wait, but" starts inside the taken "but wait", so it is not reported
    assert [(s.start, s.end) for s in labeler.find("but wait, but")] == [(0, 8), (10, 13)]


def test_find_matches_across_newlines_and_typographic_apostrophes():
    labeler = PlanningLabeler(["let me", "let's check"])
    assert [s.phrase for s in labeler.find("Let\nme think. Let’s check.")] == ["let me", "let's check"]


def test_find_offsets_survive_a_character_whose_lowercase_is_longer():
    labeler = PlanningLabeler(["wait"])
    text = "İİ wait"  # 'İ'.lower() is two characters
    (span,) = labeler.find(text)
    assert text[span.start : span.end] == "wait"


def _reference_find(phrases, text):
    """A regular expression doing the documented rules, for comparison."""
    parts = []
    for phrase in sorted(phrases, key=len, reverse=True):
        left = r"(?<!\w)" if re.match(r"\w", phrase[0]) else ""
        right = r"(?!\w)" if re.match(r"\w", phrase[-1]) else ""
        parts.append(f"{left}{re.escape(phrase)}{right}")
    pattern = re.compile("|".join(parts))
    folded = fold_text(text)
    lookup = {p: p for p in phrases}
    return [(m.start(), m.end(), lookup[m.group(0)]) for m in pattern.finditer(folded)]


PHRASES = ["wait", "but wait", "but", "let me", "let me check", "hmm,", "re-check", "a", "ab", "b a", "## x"]
fragments = st.sampled_from(
    ["wait", "Wait", "WAIT", "but", "But", "let", "me", "check", "hmm", ",", "re-", "check", "a", "b", "ab", "x",
     "#", "## x", " ", " ", "\n", ".", "é", "ß", "_", "🙂", "1", "’"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments, max_size=25).map("".join))
def test_find_equals_a_regex_reference(text):
    labeler = PlanningLabeler(PHRASES)
    assert [tuple(s) for s in labeler.find(text)] == _reference_find(labeler.lexicon.phrases, text)


# ------------------------------------------------------------------------------ token labeling
@pytest.mark.parametrize("fixture", ["byte_level", "metaspace", "tiny_byte_level", "llama_style"])
def test_token_mask_equals_find_spans_through_tokenizer_offsets(request, fixture, corpus, labeler):
    tokenizer = request.getfixturevalue(fixture)
    texts = corpus[:300:7] + EXTRA_TEXT
    checked = 0
    for text in texts:
        ids, expected = oracle_mask(labeler, tokenizer, text)
        if not ids:
            continue
        got = label_one(labeler, tokenizer, ids).planning_mask[0].numpy()
        assert got.tolist() == expected.tolist(), (fixture, text, tokenizer.convert_ids_to_tokens(ids))
        checked += int(expected.any())
    assert checked >= 5  # the texts do contain phrases


words = st.sampled_from(
    ["wait", "Wait", "WAIT", "but", "hmm", "Hmm,", "let", "me", "Let", "check", "maybe", "perhaps", "alternatively",
     "double-check", "x", "=", "2", "(", ")", ".", ",", "?", "🙂", "≈", "the", "answer", "know", "awaits"]
)
separators = st.sampled_from([" ", " ", " ", "", "\n", ", "])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(words, separators), min_size=1, max_size=20))
def test_token_mask_property_byte_level(byte_level, labeler, pieces):
    text = "".join(w + s for w, s in pieces)
    ids, expected = oracle_mask(labeler, byte_level, text)
    got = label_one(labeler, byte_level, ids).planning_mask[0].numpy()
    assert got.tolist() == expected.tolist()


def test_exact_tokens_around_a_phrase_no_off_by_one(byte_level):
    """Byte-level BPE splits punctuation off words, so the marked tokens spell exactly the phrase."""
    labeler = PlanningLabeler(["wait"])
    for text in ["so.wait.", "(wait)", ",wait,", "x wait y", "Wait", "ok WAIT!", "wait", ".wait"]:
        ids = byte_level(text, add_special_tokens=False)["input_ids"]
        mask = label_one(labeler, byte_level, ids).planning_mask[0].tolist()
        marked = "".join(byte_level.decode([i]) for i, m in zip(ids, mask) if m)
        assert marked.strip().lower() == "wait", (text, byte_level.convert_ids_to_tokens(ids), mask)


def test_leading_space_and_capital_variants_are_all_found(byte_level, metaspace, labeler):
    text = "Wait, the answer. But wait, I see. WAIT! wait"
    for tokenizer in (byte_level, metaspace):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = label_one(labeler, tokenizer, ids)
        assert labels.phrases == [["wait", "but wait", "wait", "wait"]]
    # the same phrase is four different token-id sequences here: exact-id matching cannot work
    variants = {tuple(byte_level.encode(v, add_special_tokens=False)) for v in ["Wait", " wait", " WAIT", "wait"]}
    assert len(variants) == 4


def test_phrase_split_into_many_subword_tokens(tiny_byte_level):
    labeler = PlanningLabeler(["alternatively"])
    text = "x. Alternatively, y"
    ids = tiny_byte_level(text, add_special_tokens=False)["input_ids"]
    tokens = tiny_byte_level.convert_ids_to_tokens(ids)
    mask = label_one(labeler, tiny_byte_level, ids).planning_mask[0].tolist()
    assert sum(mask) >= 3  # split into several pieces, all of them labeled
    assert "".join(t for t, m in zip(tokens, mask) if m).replace("Ġ", "").lower() == "alternatively"


def test_padding_and_masked_tokens_are_never_planning(byte_level):
    labeler = PlanningLabeler(["wait", "let me"])
    wait_id = byte_level.encode(" wait", add_special_tokens=False)
    assert len(wait_id) == 1  # the pad id below is a real phrase token
    rows = ["wait, let me see", "so wait"]
    encoded = [byte_level.encode(t, add_special_tokens=False) for t in rows]
    width = max(len(e) for e in encoded) + 3
    ids = torch.full((2, width), wait_id[0], dtype=torch.long)  # padding made of " wait" tokens
    mask = torch.zeros((2, width), dtype=torch.long)
    ids[0, : len(encoded[0])] = torch.tensor(encoded[0])  # right padding
    mask[0, : len(encoded[0])] = 1
    ids[1, width - len(encoded[1]) :] = torch.tensor(encoded[1])  # left padding
    mask[1, width - len(encoded[1]) :] = 1
    labels = labeler.label(ids, mask, byte_level)
    assert not labels.planning_mask[mask == 0].any()
    assert labels.planning_mask.sum() > 0
    assert labels.phrases == [["wait", "let me"], ["wait"]]


def test_masked_token_inside_a_phrase_breaks_it(byte_level):
    labeler = PlanningLabeler(["let me"])
    ids = byte_level.encode("let me see", add_special_tokens=False)
    ids_t = torch.tensor([ids, ids])
    mask = torch.ones_like(ids_t)
    me_position = byte_level.convert_ids_to_tokens(ids).index("Ġme")
    mask[1, me_position] = 0
    labels = labeler.label(ids_t, mask, byte_level)
    assert labels.phrases == [["let me"], []]
    assert not labels.planning_mask[1].any()


def test_special_tokens_and_row_ends_separate_text(byte_level):
    labeler = PlanningLabeler(["let me", "wait", "hmm"])
    eos = byte_level.eos_token_id
    let = byte_level.encode("so let", add_special_tokens=False)
    me = byte_level.encode(" me wait", add_special_tokens=False)
    width = len(let) + len(me) + 1
    row_with_eos = let + [eos] + me
    row_a = let + [byte_level.pad_token_id] * (width - len(let))
    row_b = me + [byte_level.pad_token_id] * (width - len(me))
    ids = torch.tensor([row_with_eos, row_a, row_b])
    mask = torch.ones_like(ids)  # even unmasked, special tokens are not text
    labels = labeler.label(ids, mask, byte_level)
    assert labels.phrases == [["wait"], [], ["wait"]]
    assert not labels.planning_mask[0, len(let)]  # the eos itself


def test_multibyte_character_split_across_tokens(byte_level):
    labeler = PlanningLabeler(["wait"])
    text = "🙂 wait 😀wait"
    ids, expected = oracle_mask(labeler, byte_level, text)
    tokens = byte_level.convert_ids_to_tokens(ids)
    assert len(tokens) > len(text.split())  # the emoji bytes are split over several tokens
    got = label_one(labeler, byte_level, ids).planning_mask[0].tolist()
    assert got == expected.tolist()
    assert sum(got) >= 2


def test_invalid_utf8_mid_sequence_keeps_offsets(byte_level):
    labeler = PlanningLabeler(["wait", "maybe"])
    emoji = byte_level.encode("😀", add_special_tokens=False)
    assert len(emoji) >= 2
    head = byte_level.encode("so", add_special_tokens=False)
    tail = byte_level.encode(" wait, maybe", add_special_tokens=False)
    ids = head + emoji[:1] + tail + emoji[:1]  # two truncated characters: invalid UTF-8
    got = label_one(labeler, byte_level, ids)
    mask = got.planning_mask[0].tolist()
    tokens = byte_level.convert_ids_to_tokens(ids)
    marked = [t for t, m in zip(tokens, mask) if m]
    assert got.phrases == [["wait", "maybe"]]
    assert "".join(marked).replace("Ġ", "") == "waitmaybe", tokens


def test_out_of_vocabulary_and_negative_ids_do_not_crash(byte_level):
    labeler = PlanningLabeler(["wait"])
    ids = byte_level.encode("wait wait", add_special_tokens=False)
    row = [-100, len(byte_level) + 5, *ids, 10**9]
    labels = label_one(labeler, byte_level, row)
    assert labels.planning_mask[0].tolist()[:2] == [False, False]
    assert labels.planning_mask[0].tolist()[-1] is False
    assert labels.phrases == [["wait", "wait"]]


def test_output_types_shapes_and_empty_batches(byte_level, labeler):
    ids = torch.tensor([byte_level.encode("wait", add_special_tokens=False) * 3])
    labels = labeler.label(ids, torch.ones_like(ids), byte_level)
    assert isinstance(labels, BatchLabels)
    assert labels.planning_mask.dtype == torch.bool and labels.planning_mask.shape == ids.shape
    empty = labeler.label(torch.zeros((0, 5), dtype=torch.long), torch.zeros((0, 5)), byte_level)
    assert empty.planning_mask.shape == (0, 5) and empty.phrases == []
    none = labeler.label(torch.zeros((2, 0), dtype=torch.long), torch.zeros((2, 0)), byte_level)
    assert none.planning_mask.shape == (2, 0) and none.phrases == [[], []]
    numpy_in = labeler.label(ids.numpy(), np.ones(ids.shape), byte_level)
    assert torch.equal(numpy_in.planning_mask, labels.planning_mask)


@pytest.mark.parametrize(
    ("ids", "mask", "message"),
    [
        (torch.zeros((2, 3), dtype=torch.long), torch.ones((2, 4)), "does not match"),
        (torch.zeros(3, dtype=torch.long), torch.ones(3), "2-D"),
        (torch.zeros((1, 3)), torch.ones((1, 3)), "integer"),
    ],
)
def test_bad_inputs_get_clear_errors(byte_level, labeler, ids, mask, message):
    with pytest.raises(ValueError, match=message):
        labeler.label(ids, mask, byte_level)


def test_labeler_keeps_no_state_between_calls(byte_level, corpus):
    labeler = PlanningLabeler()
    first = byte_level(corpus[10:14], padding=True, return_tensors="pt")
    second = byte_level(corpus[40:43], padding=True, return_tensors="pt")
    labeler.label(first["input_ids"], first["attention_mask"], byte_level)
    again = labeler.label(second["input_ids"], second["attention_mask"], byte_level)
    fresh = PlanningLabeler().label(second["input_ids"], second["attention_mask"], byte_level)
    assert torch.equal(again.planning_mask, fresh.planning_mask) and again.phrases == fresh.phrases


# ------------------------------------------------------------------------------ decoding paths
@pytest.mark.parametrize("fixture", ["byte_level", "metaspace", "llama_style"])
def test_table_decoding_equals_tokenizer_decode(request, fixture, corpus):
    tokenizer = request.getfixturevalue(fixture)
    table = token_table(tokenizer)
    assert isinstance(table, TokenTable)
    texts = corpus[::5] + EXTRA_TEXT
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ids + [tokenizer.eos_token_id] + ids[:3]  # a special token in the middle
        expected = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert table.decode(ids) == expected


def test_byte_fallback_tokens_decode_to_bytes(llama_style):
    labeler = PlanningLabeler(["wait"])
    text = "é wait ✔ wait"  # not in the ASCII-trained vocabulary: <0xC3><0xA9> byte-fallback tokens
    ids = llama_style(text, add_special_tokens=False)["input_ids"]
    assert "<0xC3>" in llama_style.convert_ids_to_tokens(ids)
    ids, expected = oracle_mask(labeler, llama_style, text)
    assert token_table(llama_style).decode(ids) == llama_style.decode(ids, clean_up_tokenization_spaces=False)
    labels = label_one(labeler, llama_style, ids)
    assert labels.phrases == [["wait", "wait"]]
    assert labels.planning_mask[0].tolist() == expected.tolist()


class DecodeOnly:
    """A tokenizer known only through ``decode``: forces the incremental-decoding fallback."""

    def __init__(self, inner):
        self.inner = inner
        self.all_special_ids = inner.all_special_ids

    def decode(self, ids, **kwargs):
        return self.inner.decode(ids, **kwargs)


@pytest.mark.parametrize("fixture", ["byte_level", "metaspace"])
def test_incremental_fallback_agrees_with_the_table(request, fixture, corpus):
    tokenizer = request.getfixturevalue(fixture)
    labeler = PlanningLabeler()
    wrapped = DecodeOnly(tokenizer)
    assert token_table(wrapped) is None
    batch = tokenizer(corpus[100:106] + EXTRA_TEXT, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].clone()
    mask[0, 3:6] = 0  # a masked run in the middle
    fast = labeler.label(batch["input_ids"], mask, tokenizer)
    slow = labeler.label(batch["input_ids"], mask, wrapped)
    assert torch.equal(fast.planning_mask, slow.planning_mask)
    assert fast.phrases == slow.phrases
    assert fast.planning_mask.any()


def test_wordpiece_tokenizer_uses_the_fallback(corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus[:300], trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[UNK]", "[PAD]"]))
    wordpiece = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    assert token_table(wordpiece) is None
    labeler = PlanningLabeler(["let me", "check"])
    text = "so let me check this, then check it"
    ids, expected = oracle_mask(labeler, wordpiece, text)
    labels = label_one(labeler, wordpiece, ids)
    assert labels.phrases == [["let me", "check", "check"]]
    assert labels.planning_mask[0].tolist() == expected.tolist()


def test_table_is_rebuilt_when_tokens_are_added(corpus):
    tokenizer = train_tokenizer(corpus[:100], vocab_size=400, kind="byte_level")
    labeler = PlanningLabeler(["<think> wait"])
    first = token_table(tokenizer)
    assert token_table(tokenizer) is first  # cached
    tokenizer.add_tokens(["<think>"])
    think = tokenizer.convert_tokens_to_ids("<think>")
    assert token_table(tokenizer) is not first
    ids = [think] + tokenizer.encode(" wait", add_special_tokens=False)
    assert label_one(labeler, tokenizer, ids).phrases == [["<think> wait"]]


def test_default_lexicon_labels_real_reasoning(byte_level, corpus):
    labeler = PlanningLabeler(Lexicon.default())
    batch = byte_level(corpus[:32], padding=True, return_tensors="pt")
    labels = labeler.label(batch["input_ids"], batch["attention_mask"], byte_level)
    fraction = labels.planning_mask.sum().item() / batch["attention_mask"].sum().item()
    assert 0.0 < fraction < 0.5  # planning tokens are a minority of reasoning text


def test_labeler_pickles_for_worker_processes(byte_level):
    """Distributed trainers (verl's Ray workers) ship the labeler to other processes."""
    import pickle

    labeler = PlanningLabeler(["but wait", "hmm"])
    clone = pickle.loads(pickle.dumps(labeler))
    ids = torch.tensor([byte_level.encode("Hmm, but wait", add_special_tokens=False)])
    original = labeler.label(ids, torch.ones_like(ids), byte_level)
    copied = clone.label(ids, torch.ones_like(ids), byte_level)
    assert copied.phrases == original.phrases == [["hmm", "but wait"]]
    assert torch.equal(copied.planning_mask, original.planning_mask)
