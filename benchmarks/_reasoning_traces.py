"""Reasoning traces rebuilt from the Thought Anchors sentence labels (shared by the label benchmarks).

The labels file holds 2,929 sentences of DeepSeek-R1-Distill-Llama-8B traces on 10 MATH
problems, one JSON object per sentence with its function tag. Joining each trace's sentences
in order gives realistic reasoning text for throughput runs, and keeps each sentence's
character range for quality runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LABELS_FILE = PROJECT_ROOT.parent / "shared" / "data" / "labels" / "thought-anchors-r1-distill-llama-8b.jsonl"
PAPER_LEXICON = PROJECT_ROOT.parent / "shared" / "data" / "strategic-grams" / "hicra-paper-v3.txt"

PLANNING_TAGS = frozenset({"plan_generation", "uncertainty_management", "self_checking"})
EXECUTION_TAGS = frozenset({"active_computation", "fact_retrieval", "result_consolidation"})


@dataclass(frozen=True)
class Sentence:
    text: str
    tag: str
    start: int  # character range inside the trace text
    end: int


@dataclass(frozen=True)
class Trace:
    problem: str
    correct: bool
    text: str
    sentences: tuple[Sentence, ...]


def require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"shared data file missing: {path} (expected beside the project root)")
    return path


def load_traces(path: Path = LABELS_FILE) -> list[Trace]:
    """One trace per (problem, correct), sentences in index order joined by single spaces."""
    groups: dict[tuple[str, bool], list[dict]] = {}
    with open(require(path), encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                groups.setdefault((row["problem"], bool(row["correct"])), []).append(row)
    traces = []
    for (problem, correct), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["idx"])
        parts, sentences, position = [], [], 0
        for row in rows:
            if parts:
                parts.append(" ")
                position += 1
            sentences.append(Sentence(row["text"], row["tag"], position, position + len(row["text"])))
            parts.append(row["text"])
            position += len(row["text"])
        traces.append(Trace(problem, correct, "".join(parts), tuple(sentences)))
    return traces


def problem_split(traces: list[Trace]) -> tuple[frozenset[str], frozenset[str]]:
    """(tuning problems, held-out problems): sorted problem ids, alternating.

    The default lexicon was tuned on the first set only in its first round; see the header of
    phasewatch/data/strategic_grams.txt.
    """
    problems = sorted({t.problem for t in traces})
    return frozenset(problems[0::2]), frozenset(problems[1::2])


def train_local_tokenizer(texts: list[str], vocab_size: int = 4000, kind: str = "byte_level"):
    from phasewatch.tiny import train_tokenizer

    return train_tokenizer(texts, vocab_size=vocab_size, kind=kind)
