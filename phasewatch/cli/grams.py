"""``phasewatch grams mine``: mine a strategic-gram lexicon from a model's successful rollouts.

Cheap to import: numpy, scipy, the embedding model and tqdm load only when the command runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any


def parse_sizes(value: str) -> tuple[int, int]:
    """``"3-5"`` -> (3, 5); ``"4"`` -> (4, 4)."""
    text = value.strip()
    low_text, sep, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if sep else low
    except ValueError:
        raise argparse.ArgumentTypeError(f"--n {value!r}: expected N or N-M, e.g. 3-5") from None
    if not (1 <= low <= high <= 8):
        raise argparse.ArgumentTypeError(f"--n {value!r}: need 1 <= N <= M <= 8")
    return low, high


def register(subparsers: Any) -> None:
    grams = subparsers.add_parser(
        "grams",
        help="strategic grams: mine a planning lexicon from your model's own rollouts",
        description="Strategic-gram tools. `phasewatch grams mine ROLLOUTS` writes a lexicon for `--lexicon`.",
    )
    sub = grams.add_subparsers(dest="grams_command", metavar="SUBCOMMAND")
    mine = sub.add_parser(
        "mine",
        help="mine strategic grams from successful rollouts (JSON lines with text and reward)",
        description=(
            "Read rollouts (JSON lines, one object per line with \"text\" and \"reward\", optionally \"run\", "
            "\"step\", \"group\"; .gz allowed: the format RolloutWriter writes during training), keep the "
            "successful ones, extract n-grams, keep those that appear in many rollouts but sparingly within one, "
            "embed and cluster them, score each cluster by the share of rollouts holding any of its phrases, and "
            "write the top clusters' phrases as a lexicon file (load it with --lexicon or Config(lexicon=...))."
        ),
    )
    mine.add_argument(
        "rollouts",
        metavar="ROLLOUTS",
        nargs="+",
        help="rollouts files (.jsonl or .jsonl.gz), read in order: e.g. every rank's dump (rollouts.rank*.jsonl)",
    )
    mine.add_argument(
        "-o", "--out", "--output", dest="out", metavar="FILE", default=None, help="lexicon file to write (default: stdout)"
    )
    mine.add_argument("--top-frac", type=float, default=0.2, help="share of clusters kept, best first (default: 0.2)")
    mine.add_argument("--n", type=parse_sizes, default=(3, 5), metavar="N-M", help="n-gram sizes in words (default: 3-5)")
    mine.add_argument(
        "--min-reward", type=float, default=1.0, help="a rollout is successful when reward >= this (default: 1.0)"
    )
    mine.add_argument(
        "--embedder",
        default="minilm",
        help="minilm (default; needs phasewatch[grams]), hashing (no download, lexical only), or MODULE:ATTR",
    )
    mine.add_argument(
        "--min-df", type=float, default=0.01, help="a candidate is in at least this share of rollouts (default: 0.01)"
    )
    mine.add_argument(
        "--max-per-doc",
        type=float,
        default=2.0,
        help="...and at most this many times per rollout that has it, on average (default: 2)",
    )
    mine.add_argument(
        "--min-groups",
        type=int,
        default=3,
        help="...and in rollouts of at least this many groups (prompts), when rollouts carry a group (default: 3)",
    )
    mine.add_argument("--max-candidates", type=int, default=4000, help="at most this many phrases embedded (default: 4000)")
    mine.add_argument(
        "--threshold", type=float, default=None, help="cosine distance cut for clustering (default: the embedder's own)"
    )
    mine.add_argument(
        "--min-successful", type=int, default=20, help="fewer successful rollouts than this is an error (default: 20)"
    )
    mine.add_argument("--json", action="store_true", help="print a JSON summary on stdout (needs --out)")
    mine.add_argument("--quiet", action="store_true", help="no progress bars or summary on stderr")
    mine.set_defaults(func=run_mine)


#: MiningConfig field -> the option that sets it (errors name what the user typed)
OPTION_OF_FIELD = {
    "top_frac": "--top-frac",
    "min_reward": "--min-reward",
    "min_df": "--min-df",
    "max_per_doc": "--max-per-doc",
    "min_groups": "--min-groups",
    "max_candidates": "--max-candidates",
    "distance_threshold": "--threshold",
    "min_successful": "--min-successful",
}


def mining_config(args: argparse.Namespace, config_class: Any) -> Any:
    return config_class(
        n_min=args.n[0],
        n_max=args.n[1],
        top_frac=args.top_frac,
        min_reward=args.min_reward,
        min_successful=args.min_successful,
        min_df=args.min_df,
        max_per_doc=args.max_per_doc,
        min_groups=args.min_groups,
        max_candidates=args.max_candidates,
        distance_threshold=args.threshold,
    )


def option_message(message: str) -> str:
    """``"top_frac=2.0: must be in (0, 1]"`` -> ``"--top-frac 2.0: must be in (0, 1]"``."""
    field, sep, rest = message.partition("=")
    if sep and field in OPTION_OF_FIELD:
        return f"{OPTION_OF_FIELD[field]} {rest}"
    return message


def run_mine(args: argparse.Namespace) -> int:
    from phasewatch.cli import write_stdout
    from phasewatch.grams.mine import MiningConfig, mine_strategic_grams
    from phasewatch.grams.rollouts import iter_rollouts

    if args.json and args.out is None:
        raise ValueError("--json prints the summary on stdout, so the lexicon needs --out FILE")
    try:
        config = mining_config(args, MiningConfig)
    except ValueError as exc:
        raise ValueError(option_message(str(exc))) from None
    # Every file is checked before mining starts, so a mistyped second path is not found
    # only after minutes spent on the first.
    for path in args.rollouts:
        if not Path(path).is_file():
            raise FileNotFoundError(f"rollouts file not found: {path}")
    source = ", ".join(args.rollouts)
    progress = not args.quiet
    if progress:
        print(f"phasewatch grams mine: reading {source}", file=sys.stderr)
    # streamed: only the successful rollouts' texts are kept in memory
    rollouts = itertools.chain.from_iterable(iter_rollouts(path) for path in args.rollouts)
    result = mine_strategic_grams(rollouts, embedder=args.embedder, config=config, progress=progress, source=source)
    text = result.to_text()
    if args.out is None:
        write_stdout(text)
    else:
        try:
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise ValueError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    if progress:
        c = result.counts
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.seconds.items())
        print(
            f"phasewatch grams mine: {c['documents']} successful of {c['rollouts']} rollouts; "
            f"{c['distinct n-grams']} distinct n-grams -> {c['candidates']} candidates -> {result.n_clusters} clusters; "
            f"kept {len(result.clusters)} clusters, {len(result.phrases)} phrases"
            + (f" -> {args.out}" if args.out else "")
            + f" ({stages})",
            file=sys.stderr,
        )
    if args.json:
        write_stdout(json.dumps(result.summary(), indent=1) + "\n")
    return 0
