"""``phasewatch replay FILE``: run logged metrics through the monitor and report phases and events.

Cheap to import: the readers, the monitor and matplotlib load inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json

from phasewatch.cli import write_stdout


def register(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "replay",
        help="detect phases and events in a logged run (CSV, W&B export, JSON lines, store)",
        description=(
            "Read per-step metrics from a CSV (including Weights & Biases 'Export CSV' files),"
            " a JSON-lines file, TRL's trainer_state.json or a phasewatch store, feed them to the monitor, and report the"
            " phase and every event. Canonical fields: step, entropy/planning, entropy/execution,"
            " semantic_entropy, entropy, nll/planning, nll/execution, planning_frac, reward,"
            " response_length."
        ),
    )
    parser.add_argument(
        "file", metavar="FILE", help="CSV, JSON-lines (.jsonl), TRL trainer_state.json or phasewatch store (.db)"
    )
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="CANONICAL=COLUMN",
        help="read canonical field CANONICAL from COLUMN (repeatable), e.g. --map entropy=actor/entropy",
    )
    parser.add_argument("--run", default=None, help="which run, for a store or a JSON-lines file holding several")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the report")
    parser.add_argument("--plot", metavar="OUT.png", default=None, help="write a PNG of the series with events marked")
    parser.add_argument(
        "--no-progress", action="store_true", help="never show the progress bar (shown for long files on a terminal)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phasewatch.replay import format_report, parse_map, read_source, replay

    mapping = parse_map(args.map)
    source = read_source(args.file, mapping, args.run)
    result = replay(source, progress=False if args.no_progress else None)
    if args.plot:
        from phasewatch.plot import plot_run

        try:
            plot_run(
                source.records,
                result.events,
                shift_step=result.shift_step,
                title=f"{source.path.name}: phase {result.phase}",
                path=args.plot,
            )
        except OSError as exc:
            raise ValueError(f"--plot {args.plot}: cannot write ({exc.strerror or exc})") from None
    if args.json:
        text = json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n"
    else:
        text = format_report(result) + "\n" + (f"plot: {args.plot}\n" if args.plot else "")
    return write_stdout(text)
