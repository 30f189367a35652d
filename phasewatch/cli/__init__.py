"""The ``phasewatch`` command line.

Each subcommand lives in its own module here and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed ``argparse.Namespace``, returning an exit
code). Modules must stay cheap to import: heavy imports (torch, TRL) go inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

# Order is the order shown in ``phasewatch --help``.
_COMMANDS = ("demo", "label", "replay", "serve", "dashboards", "grams")


def build_parser() -> argparse.ArgumentParser:
    from phasewatch import __version__

    parser = argparse.ArgumentParser(
        prog="phasewatch",
        description="Watch RL fine-tuning for the execution-to-planning shift.",
    )
    parser.add_argument("--version", action="version", version=f"phasewatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        spec = importlib.util.find_spec(f"phasewatch.cli.{name}")
        if spec is None:  # command not built yet
            continue
        importlib.import_module(f"phasewatch.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"phasewatch {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
