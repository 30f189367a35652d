"""Mined strategic grams vs the default lexicon: sentence-level planning F1 on held-out problems.

Data: the Thought Anchors labels (DeepSeek-R1-Distill-Llama-8B on 10 MATH problems, one correct
and one incorrect trace per problem: 20 traces, 2,929 sentences tagged by GPT-4o). That is a
small corpus, so the protocol is spelled out:

- Split by *problem*, never by sentence or trace: the two halves of
  ``_reasoning_traces.problem_split`` (sorted ids, alternating; the same halves the label
  benchmark uses). Mine on one half, score on the other, then swap (2 folds).
- Mining corpus: the *correct* traces of the mining half (the paper mines successful
  solutions): 5 traces, ~950 sentences. Variant "+incorrect" adds the incorrect traces.
- Document unit (for document frequency): a chunk of ``--chunk`` consecutive sentences of a
  trace (default 30, about 360 words or ~500 tokens, the size of the rollouts the miner is
  built for); whole R1 traces are ~2,000 words, and 5 of them would make every document
  frequency a multiple of 20%. Every chunk carries its problem as its ``group``, so with the
  default ``min_groups=3`` a phrase must appear in chunks of 3 of the 5 problems: chunks of
  one trace share its topic, and without this rule "the larger square" looks like a habit.
- Everything else is the miner's default (n = 3-5, top 20% of clusters, prefilter defaults),
  except the variants named in the table.
- Scoring (same as benchmarks/bench_label_quality.py): a sentence is predicted planning when
  it contains a planning token (token path: byte-level BPE trained here, ``PlanningLabeler.
  label``) - and, in parentheses, when ``labeler.find`` finds a phrase in the sentence alone.
  Gold: plan_generation, uncertainty_management, self_checking = planning; active_computation,
  fact_retrieval, result_consolidation = execution; other tags dropped. Scored on the other
  half's sentences, correct and incorrect traces.

The HICRA paper's printed list (mined by the paper's authors from their own corpus) is scored
as a second reference.

Caveats, printed with the result: the default lexicon was tuned by hand on this very file (its
first round on the tuning half, its second after reading held-out errors), so on both folds
it has seen the test sentences, while the mined lexicon has not; and 5 traces are a tiny
mining corpus next to the thousands of rollouts the miner expects.

    python benchmarks/bench_grams_quality.py [--embedder minilm] [--embedder hashing] [--chunk 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reasoning_traces import PAPER_LEXICON, Trace, load_traces, problem_split, require, train_local_tokenizer  # noqa: E402
from bench_label_quality import evaluate  # noqa: E402


def mining_documents(traces: list[Trace], problems: frozenset[str], chunk: int, with_incorrect: bool):
    from phasewatch.grams.rollouts import Rollout

    docs = []
    for trace in traces:
        if trace.problem not in problems or (not trace.correct and not with_incorrect):
            continue
        texts = [s.text for s in trace.sentences]
        for begin in range(0, len(texts), chunk):
            docs.append(Rollout(" ".join(texts[begin : begin + chunk]), 1.0, group=trace.problem))
    return docs


VARIANTS = {
    # name: (MiningConfig overrides, add incorrect traces, union with the default lexicon)
    "mined (defaults)": ({}, False, False),
    "mined +incorrect": ({}, True, False),
    "mined, all clusters": ({"top_frac": 1.0}, False, False),
    "mined, n=2-5": ({"n_min": 2}, False, False),
    "default + mined": ({}, False, True),
}


def main(argv: list[str] | None = None) -> int:
    from phasewatch.grams.embedding import resolve_embedder
    from phasewatch.grams.mine import MiningConfig, mine_strategic_grams
    from phasewatch.labels import PlanningLabeler
    from phasewatch.lexicon import Lexicon

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", action="append", default=[], help="minilm, hashing or MODULE:ATTR (repeatable)")
    parser.add_argument("--chunk", type=int, default=30, help="sentences per mining document (default 30)")
    parser.add_argument("--show", action="store_true", help="print each mined lexicon of the default variant")
    args = parser.parse_args(argv)
    embedders = args.embedder or ["minilm", "hashing"]

    traces = load_traces()
    half_a, half_b = problem_split(traces)
    folds = [("A->B", half_a, half_b), ("B->A", half_b, half_a)]
    tokenizer = train_local_tokenizer([t.text for t in traces])
    default = Lexicon.default()

    def score(lexicon: Lexicon, problems: frozenset[str]):
        (token, text) = evaluate(PlanningLabeler(lexicon), traces, tokenizer, {"test": problems})["test"]
        return token, text

    print(f"Thought Anchors R1-Distill-Llama-8B: {len(traces)} traces; half A = {sorted(half_a)}, half B = {sorted(half_b)}")
    print(f"mining documents: chunks of {args.chunk} sentences, group = problem; scored on the other half")
    header = f"{'lexicon':<22} {'embedder':<8} {'fold':<5} {'docs':>4} {'phrases':>7}  {'P':>5} {'R':>5} {'F1':>5}   (find: P / R / F1)"
    print(header)
    rows: dict[tuple[str, str], list[float]] = {}
    references = [("phasewatch default", default), ("HICRA paper list", Lexicon.from_file(require(PAPER_LEXICON)))]
    for label, lexicon in references:
        for fold, _, test in folds:
            (p, r, f, n), (tp, tr, tf, _) = score(lexicon, test)
            print(f"{label:<22} {'-':<8} {fold:<5} {'-':>4} {len(lexicon):>7}  {p:>5.3f} {r:>5.3f} {f:>5.3f}   ({tp:.3f} / {tr:.3f} / {tf:.3f})  n={n}")
            rows.setdefault((label, "-"), []).append(f)
    for name in embedders:
        embedder = resolve_embedder(name)
        for variant, (overrides, with_incorrect, union) in VARIANTS.items():
            for fold, mine_on, test in folds:
                docs = mining_documents(traces, mine_on, args.chunk, with_incorrect)
                started = time.perf_counter()
                result = mine_strategic_grams(docs, embedder=embedder, config=MiningConfig(**overrides), source=f"half {fold[0]}")
                elapsed = time.perf_counter() - started
                lexicon = default.with_phrases(add=result.phrases) if union else result.lexicon
                (p, r, f, _), (tp, tr, tf, _) = score(lexicon, test)
                print(
                    f"{variant:<22} {name:<8} {fold:<5} {len(docs):>4} {len(lexicon):>7}  {p:>5.3f} {r:>5.3f} {f:>5.3f}   "
                    f"({tp:.3f} / {tr:.3f} / {tf:.3f})  mined in {elapsed:.1f} s"
                )
                rows.setdefault((variant, name), []).append(f)
                if args.show and variant == "mined (defaults)":
                    print(result.to_text())
    print("\nmean F1 over the two folds (token path):")
    base = sum(rows[("phasewatch default", "-")]) / 2
    for (variant, name), values in rows.items():
        mean = sum(values) / len(values)
        print(f"  {variant:<22} {name:<8} {mean:.3f}   ratio to default {mean / base:.2f}x")
    print("(P and R per fold are in the table; mean precision of each row is not averaged here on purpose:")
    print(" read precision and recall together, the mined lexicons trade recall for precision.)")
    print(
        "caveat: the default lexicon was tuned by hand on this file (both halves), the mined ones saw only "
        "the other half's 5 correct traces; treat the comparison as a floor for mining, not a verdict."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
