"""``phasewatch demo``: a real GRPO run on a CPU with phasewatch attached, and a report.

Cheap to import: torch, TRL and the demo itself load inside :func:`run`.
"""

from __future__ import annotations

import argparse

from phasewatch.cli.argtypes import whole_number


def register(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a tiny model with GRPO on this CPU, watch it with phasewatch, write a report",
        description=(
            "Build a tiny causal LM and tokenizer locally, warm it up on synthetic reasoning traces, then run"
            " TRL GRPO on a verifiable arithmetic task with phasewatch attached (in-process monitor, SQLite"
            " store, Prometheus metrics on 127.0.0.1, reweight='auto'). Prints a line per step, then a summary;"
            " writes DIR/report.png, DIR/report.html, DIR/report.json and DIR/phasewatch.db. No GPU, no network."
        ),
    )
    parser.add_argument("--steps", type=whole_number(1), default=500, metavar="N", help="GRPO steps (default 500)")
    parser.add_argument(
        "--out", default="phasewatch-demo", metavar="DIR", help="output folder (default ./phasewatch-demo)"
    )
    parser.add_argument("--seed", type=whole_number(0), default=0, help="random seed (default 0)")
    parser.add_argument(
        "--warmup-steps", type=whole_number(0), default=None, metavar="N",
        help="supervised warm-up steps before GRPO (default 1500)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (lines only)")
    parser.set_defaults(func=run)


#: Packages the demo needs beyond phasewatch's core dependencies (the ``trl`` extra).
NEEDS = ("trl", "transformers", "datasets", "tokenizers")


def missing_packages() -> list[str]:
    """The packages of :data:`NEEDS` that cannot be imported (checked without importing them)."""
    import importlib.util
    import sys

    missing = []
    for name in NEEDS:
        try:
            found = sys.modules.get(name, ...) is not None and importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    missing = missing_packages()
    if missing:
        raise ValueError(
            f"the demo needs {', '.join(missing)}, which are not installed: pip install 'phasewatch[trl]'"
        )

    from phasewatch.demo.run import DemoConfig, run_demo

    config = DemoConfig(steps=args.steps, out=Path(args.out), seed=args.seed)
    if args.warmup_steps is not None:
        config = dataclasses.replace(config, warmup=dataclasses.replace(config.warmup, steps=args.warmup_steps))
    result = run_demo(config, progress=False if args.no_progress else None)
    return 130 if result.interrupted else 0
