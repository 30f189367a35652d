"""Sentence-level planning detection on the Thought Anchors labels: precision, recall, F1.

A sentence is predicted *planning* when it contains a planning token. Each trace is tokenized
with a byte-level BPE tokenizer trained here, labeled in one batch by
``PlanningLabeler.label`` (the same path the training hooks use), and every token is assigned
to the sentences its characters overlap. Gold: planning = plan_generation,
uncertainty_management, self_checking; execution = active_computation, fact_retrieval,
result_consolidation; other tags are dropped.

The paper's list and the default lexicon are scored in the same run, on the tuning half of the
problems, the held-out half and all of them (see ``_reasoning_traces.problem_split``). A second
column scores ``labeler.find`` on each sentence alone, as a cross-check of the token path.

    python benchmarks/bench_label_quality.py [--lexicon FILE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reasoning_traces import (  # noqa: E402
    EXECUTION_TAGS,
    PAPER_LEXICON,
    PLANNING_TAGS,
    Trace,
    load_traces,
    problem_split,
    require,
    train_local_tokenizer,
)

TARGET_F1 = 0.70


def prf(pairs: list[tuple[bool, bool]]) -> tuple[float, float, float, int]:
    """(precision, recall, F1, n) of (predicted, gold) pairs."""
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    fn = sum(g and not p for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1, len(pairs)


def token_path_predictions(labeler, traces: list[Trace], tokenizer) -> list[list[bool]]:
    """Per trace, per sentence: does the sentence contain a token the labeler marks planning?"""
    import torch

    encodings = [tokenizer(t.text, return_offsets_mapping=True, add_special_tokens=False) for t in traces]
    width = max(len(e["input_ids"]) for e in encodings)
    ids = torch.full((len(traces), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(traces), width), dtype=torch.long)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc["input_ids"])] = torch.tensor(enc["input_ids"])
        mask[row, : len(enc["input_ids"])] = 1
    planning = labeler.label(ids, mask, tokenizer).planning_mask.numpy()
    out = []
    for row, (trace, enc) in enumerate(zip(traces, encodings)):
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        hits = offsets[planning[row, : len(offsets)]]
        flags = []
        for sentence in trace.sentences:
            flags.append(bool(np.any((hits[:, 0] < sentence.end) & (hits[:, 1] > sentence.start))))
        out.append(flags)
    return out


def evaluate(labeler, traces, tokenizer, subsets) -> dict[str, tuple[tuple, tuple]]:
    token_flags = token_path_predictions(labeler, traces, tokenizer)
    results = {}
    for name, problems in subsets.items():
        token_pairs, text_pairs = [], []
        for trace, flags in zip(traces, token_flags):
            if trace.problem not in problems:
                continue
            for sentence, flag in zip(trace.sentences, flags):
                if sentence.tag not in PLANNING_TAGS | EXECUTION_TAGS:
                    continue
                gold = sentence.tag in PLANNING_TAGS
                token_pairs.append((flag, gold))
                text_pairs.append((bool(labeler.find(sentence.text)), gold))
        results[name] = (prf(token_pairs), prf(text_pairs))
    return results


def main(argv: list[str] | None = None) -> int:
    from phasewatch.labels import PlanningLabeler
    from phasewatch.lexicon import Lexicon

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lexicon", action="append", default=[], help="extra lexicon file(s) to score")
    args = parser.parse_args(argv)

    traces = load_traces()
    tuning, held_out = problem_split(traces)
    subsets = {"tuning": tuning, "held-out": held_out, "all": tuning | held_out}
    tokenizer = train_local_tokenizer([t.text for t in traces])
    lexicons = [("HICRA paper list", Lexicon.from_file(require(PAPER_LEXICON))), ("phasewatch default", Lexicon.default())]
    lexicons += [(path, Lexicon.from_file(path)) for path in args.lexicon]

    print(f"Thought Anchors R1-Distill-Llama-8B: {len(traces)} traces, tuning problems {sorted(tuning)}")
    print(f"{'lexicon':<22} {'phrases':>7} {'subset':<9} {'n':>5}  {'precision':>9} {'recall':>6} {'F1':>6}   (find per sentence: P / R / F1)")
    summary = {}
    for name, lexicon in lexicons:
        results = evaluate(PlanningLabeler(lexicon), traces, tokenizer, subsets)
        for subset, ((p, r, f, n), (tp, tr, tf, _)) in results.items():
            print(f"{name:<22} {len(lexicon):>7} {subset:<9} {n:>5}  {p:>9.3f} {r:>6.3f} {f:>6.3f}   ({tp:.3f} / {tr:.3f} / {tf:.3f})")
        summary[name] = results
    default_all = summary["phasewatch default"]["all"][0][2]
    default_held = summary["phasewatch default"]["held-out"][0][2]
    paper_all = summary["HICRA paper list"]["all"][0][2]
    verdict = "met" if default_all >= TARGET_F1 else "NOT met"
    print(
        f"default lexicon F1 {default_all:.3f} on all problems (target >= {TARGET_F1:.2f}: {verdict}), "
        f"{default_held:.3f} held-out; paper list {paper_all:.3f}; ratio default/paper F1 = {default_all / paper_all:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
