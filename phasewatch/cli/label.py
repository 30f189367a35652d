"""``phasewatch label``: show which planning phrases a lexicon finds in text (lexicon debugging).

Reads lines on stdin; each line is either a JSON object with a ``"text"`` string or plain text.
Writes one JSON line per input line, in order and flushed as it goes:
``{"text": ..., "spans": [[start, end, phrase], ...]}``, where ``text[start:end]`` is the matched
text (offsets count Unicode code points, as Python's ``str`` does) and ``phrase`` its canonical
lexicon entry. Matching is exactly the training labeler's (``PlanningLabeler.find``).

Cheap to import: the labeler (numpy, pyahocorasick) loads only when the command runs, and the
command never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "label",
        help="find planning phrases in text read from stdin (JSON lines or plain text)",
        description=(
            "Read lines on stdin, each a JSON object with a \"text\" field or plain text, and write one "
            "JSON line per input: {\"text\": ..., \"spans\": [[start, end, phrase], ...]} with character "
            "offsets into text."
        ),
    )
    parser.add_argument(
        "--lexicon",
        metavar="FILE",
        default=None,
        help="lexicon file, one phrase per line ('# ' starts a comment); default: the shipped lexicon",
    )
    parser.set_defaults(func=run)


def text_of_line(line: str, lineno: int) -> str:
    """The text a stdin line stands for: a JSON object's "text", or the line itself."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return line  # plain text that happens to start with a brace
        if isinstance(value, dict):
            text = value.get("text")
            if not isinstance(text, str):
                if "text" in value:
                    found = f"\"text\" is {type(text).__name__}, not a string"
                else:  # name what the object has: rollouts often keep the text under another key
                    keys = ", ".join(repr(k) for k in list(value)[:8]) + (", ..." if len(value) > 8 else "")
                    found = f"no \"text\" field (its fields: {keys or 'none'})"
                raise ValueError(f"stdin line {lineno}: JSON object with {found}")
            return text
    return line


def label_stream(labeler: Any, lines: IO[str], out: IO[str]) -> int:
    """Write one JSON line per input line; returns the number of lines labeled."""
    count = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith("\n") else raw
        if line.endswith("\r"):
            line = line[:-1]
        text = text_of_line(line, lineno)
        spans = [[span.start, span.end, span.phrase] for span in labeler.find(text)]
        out.write(json.dumps({"text": text, "spans": spans}, ensure_ascii=False) + "\n")
        out.flush()
        count += 1
    return count


def run(args: argparse.Namespace) -> int:
    from phasewatch.labels import PlanningLabeler

    labeler = PlanningLabeler(args.lexicon)
    stdin = sys.stdin
    stdout = sys.stdout
    if hasattr(stdin, "reconfigure"):
        stdin.reconfigure(encoding="utf-8", errors="strict")
    if hasattr(stdout, "reconfigure"):
        stdout.reconfigure(encoding="utf-8")
    try:
        label_stream(labeler, stdin, stdout)
    except UnicodeDecodeError as exc:
        raise ValueError(f"stdin is not UTF-8 text ({exc})") from None
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    return 0
