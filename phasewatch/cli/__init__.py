"""The ``phasewatch`` command line.

Each subcommand lives in its own module here and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed ``argparse.Namespace``, returning an exit
code). Modules must stay cheap to import: heavy imports (torch, TRL) go inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Iterator, Sequence

# Order is the order shown in ``phasewatch --help``.
_COMMANDS = ("demo", "label", "replay", "serve", "dashboards", "grams")

_EXIT_STATUSES = """exit status:
  0    success
  1    a remote service failed (e.g. Grafana refused a dashboard push)
  2    bad input or usage (the message names the problem)
  130  interrupted (Ctrl-C)"""


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every (sub-)subcommand parser below it."""
    yield parser
    for action in parser._actions:  # argparse keeps subparsers here; no public accessor exists
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _all_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    from phasewatch import __version__

    parser = argparse.ArgumentParser(
        prog="phasewatch",
        description="Watch RL fine-tuning for the execution-to-planning shift.",
        epilog=_EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"phasewatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"phasewatch.cli.{name}").register(sub)
    # Each parser records itself, so errors found after parsing (unknown options, bad values)
    # are reported with the usage line and name of the deepest command the user typed.
    for each in _all_parsers(parser):
        each.set_defaults(_command_parser=each)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command_parser: argparse.ArgumentParser = getattr(args, "_command_parser", parser)
    if extras:
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    func = getattr(args, "func", None)
    if func is None:
        command_parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``phasewatch replay ... | head``): not an error.
        _silence_stdout()
        return 0
    except (ValueError, OSError) as exc:
        print(f"{command_parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def write_stdout(text: str) -> int:
    """Write a command's output; a reader that stops early (``| head``) is not an error, and
    the command goes on (its summary on stderr still appears)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
