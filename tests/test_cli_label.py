"""`phasewatch label`: exact spans for JSON-lines and plain-text input, through the real entry point."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from phasewatch.cli.label import label_stream
from phasewatch.labels import PlanningLabeler
from phasewatch.lexicon import fold_text

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phasewatch", "label", *args],
        input=stdin,
        capture_output=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )


def test_cli_writes_exact_spans_for_json_and_plain_lines():
    lines = [
        json.dumps({"text": "Hmm, Let me CHECK that.\nWait, but why?", "id": 7}),
        "Alternatively, maybe I made a mistake — let’s verify 🙂 wait",
        "",
        "{not json, but wait",
        "   " + json.dumps({"text": "So the answer is 4."}),
    ]
    stdin = ("\r\n".join(lines[:2]) + "\n" + "\n".join(lines[2:]) + "\n").encode("utf-8")
    result = run_cli([], stdin)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert [r["text"] for r in records] == [
        "Hmm, Let me CHECK that.\nWait, but why?",
        "Alternatively, maybe I made a mistake — let’s verify 🙂 wait",
        "",
        "{not json, but wait",
        "So the answer is 4.",
    ]
    labeler = PlanningLabeler()
    for record in records:
        text = record["text"]
        assert record["spans"] == [[s.start, s.end, s.phrase] for s in labeler.find(text)]
        for start, end, phrase in record["spans"]:
            assert fold_text(text[start:end]) == phrase  # offsets index the text itself
    # leftmost-longest: "wait, but" wins at 24, so "but why" (starting inside it) is not reported
    assert records[0]["spans"] == [[0, 3, "hmm"], [5, 11, "let me"], [12, 17, "check"], [24, 33, "wait, but"], [34, 37, "why"]]
    assert [s[2] for s in records[1]["spans"]][:3] == ["alternatively", "maybe", "made a mistake"]
    assert records[2]["spans"] == [] and records[4]["spans"] == []


def run_in_process(args: list[str], stdin: bytes, monkeypatch, capsys) -> tuple[int, str, str]:
    """The CLI's own main() on real text streams (faster than a subprocess)."""
    from phasewatch.cli import main

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = main(["label", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_uses_a_lexicon_file_with_comments_and_hash_phrases(tmp_path: Path, monkeypatch, capsys):
    lexicon = tmp_path / "lex.txt"
    lexicon.write_text("# my phrases\n## step\n\\# note\nsanity check\n", encoding="utf-8")
    stdin = "## Step 1: a Sanity Check. # Note this\n".encode("utf-8")
    code, out, err = run_in_process(["--lexicon", str(lexicon)], stdin, monkeypatch, capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["spans"] == [[0, 7, "## step"], [13, 25, "sanity check"], [27, 33, "# note"]]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        ([], b'{"id": 1}\n', 'stdin line 1: JSON object with no "text" field'),
        # the fields it has are named: rollouts often keep the text under another key
        ([], b'{"completion": "wait", "reward": 1}\n', "no \"text\" field (its fields: 'completion', 'reward')"),
        ([], b'ok\n{"text": 3}\n', 'stdin line 2: JSON object with "text" is int'),
        (["--lexicon", "/no/such/lexicon.txt"], b"wait\n", "lexicon file not found: /no/such/lexicon.txt"),
        ([], b"caf\xe9 wait\n", "not UTF-8"),
    ],
)
def test_cli_errors_name_the_problem(args, stdin, message, monkeypatch, capsys):
    code, _, err = run_in_process(args, stdin, monkeypatch, capsys)
    assert code == 2
    assert message in err


def test_label_stream_one_output_line_per_input_line():
    labeler = PlanningLabeler(["wait"])
    out = io.StringIO()
    count = label_stream(labeler, io.StringIO("wait\n\n{\"text\": \"no\"}\nWAIT"), out)
    assert count == 4
    assert out.getvalue().splitlines() == [
        '{"text": "wait", "spans": [[0, 4, "wait"]]}',
        '{"text": "", "spans": []}',
        '{"text": "no", "spans": []}',
        '{"text": "WAIT", "spans": [[0, 4, "wait"]]}',
    ]


def test_label_command_never_imports_torch():
    code = (
        "import io, sys; sys.stdin = io.TextIOWrapper(io.BytesIO(b'wait\\n'));"
        "import phasewatch.cli.label;"
        "assert 'torch' not in sys.modules, 'import';"
        "from phasewatch.cli import main; main(['label']);"
        "assert 'torch' not in sys.modules, 'run'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=PROJECT_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["spans"] == [[0, 4, "wait"]]
