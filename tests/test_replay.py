"""``phasewatch replay``: readers (CSV, W&B export CSV, JSON lines, store), the report, the
plot, and the command line, on real GRPO logs (rasbt/reasoning-from-scratch)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from phasewatch.cli import main
from phasewatch.events import ENTROPY_EXPLOSION
from phasewatch.monitor import Monitor
from phasewatch.replay import (
    normalise_column,
    read_csv,
    read_jsonl,
    read_source,
    replay,
    resolve_columns,
)
from phasewatch.synthetic import generate

from conftest import shared_path

KL_LOG = "rl-logs/reasoning-from-scratch/7_5_plus_kl_metrics.csv"
STABLE_LOG = "rl-logs/reasoning-from-scratch/7_4_plus_clip_ratio_metrics.csv"


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path, header, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _event_keys(result) -> list[tuple]:
    return [(e.kind, e.step, e.onset, e.series) for e in result.events]


def test_real_log_explosion_is_reported():
    source = read_csv(shared_path(KL_LOG))
    assert source.columns == {
        "step": "step", "entropy": "entropy_avg", "reward": "reward_avg", "response_length": "avg_response_len"
    }
    assert len(source.records) == 500
    result = replay(source)
    explosions = [e for e in result.events if e.kind == ENTROPY_EXPLOSION]
    assert explosions, "entropy goes 0.44 -> 1.51 -> 11.9 from step 55; it must be flagged"
    # the data README documents the jump at step 56; onset is estimated, detection follows it
    assert 50 <= explosions[0].onset <= 60 and explosions[0].onset <= explosions[0].step <= 65


def test_stable_real_log_raises_no_explosion_or_collapse():
    result = replay(read_csv(shared_path(STABLE_LOG)))
    assert not [e for e in result.events if e.kind in ("entropy_explosion", "entropy_collapse")]


def test_wandb_export_csv_reads_like_the_original(tmp_path):
    """W&B "Export CSV" of a panel: `Step`, `<run> - <metric>` plus __MIN/__MAX companions,
    and blank cells where a metric was not logged at a step."""
    rows = _rows(shared_path(KL_LOG))
    header = ["Step"]
    metrics = {"train/entropy": "entropy_avg", "train/reward": "reward_avg",
               "train/completions/mean_length": "avg_response_len"}
    for name in metrics:
        header += [f"grpo-kl - {name}", f"grpo-kl - {name}__MIN", f"grpo-kl - {name}__MAX"]
    out = []
    for row in rows:
        cells = [row["step"]]
        for column in metrics.values():
            cells += [row[column], "-1", "999"]  # companions must never be read as values
        out.append(cells)
    out.append(["501", "", "", "", "", "", "", "", "", ""])  # a step with nothing logged
    wandb = tmp_path / "wandb_export.csv"
    _write_csv(wandb, header, out)
    source = read_csv(wandb)
    assert source.columns == {
        "step": "Step", "entropy": "grpo-kl - train/entropy", "reward": "grpo-kl - train/reward",
        "response_length": "grpo-kl - train/completions/mean_length",
    }
    assert source.skipped_rows == 1
    original = read_csv(shared_path(KL_LOG))
    assert source.records == original.records
    assert _event_keys(replay(source)) == _event_keys(replay(original))


def test_blank_cells_skip_only_that_field(tmp_path):
    path = tmp_path / "gaps.csv"
    _write_csv(path, ["step", "entropy", "reward"], [["0", "0.5", "1"], ["1", "", "0.5"], ["2", "nan", ""]])
    records = read_csv(path).records
    assert [r.values for r in records] == [{"entropy": 0.5, "reward": 1.0}, {"reward": 0.5}]
    assert read_csv(path).skipped_rows == 1


def test_repeated_steps_keep_the_later_row(tmp_path):
    """A restarted run logs its first steps again; the rows that continue win."""
    path = tmp_path / "restarted.csv"
    _write_csv(path, ["step", "entropy"], [["1", "0.9"], ["2", "0.8"], ["1", "0.7"], ["2", "0.6"], ["3", "0.5"]])
    source = read_csv(path)
    assert [(r.step, r.values["entropy"]) for r in source.records] == [(1, 0.7), (2, 0.6), (3, 0.5)]
    assert source.duplicate_steps == 2


def test_column_resolution_rules():
    assert normalise_column("my run - train/phasewatch/entropy/planning") == "entropy/planning"
    assert normalise_column("my run - train/entropy__MAX") is None
    # exact canonical name beats an alias
    assert resolve_columns(["step", "entropy_avg", "entropy"])["entropy"] == "entropy"
    # two W&B runs in one export: ambiguous, and the error says how to choose
    with pytest.raises(ValueError, match=r"--map entropy=COLUMN"):
        resolve_columns(["Step", "a - train/entropy", "b - train/entropy"])
    chosen = resolve_columns(["Step", "a - train/entropy", "b - train/entropy"], {"entropy": "b - train/entropy"})
    assert chosen == {"step": "Step", "entropy": "b - train/entropy"}
    with pytest.raises(ValueError, match="no such column"):
        resolve_columns(["step", "x"], {"entropy": "missing"})


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (["iteration_count", "entropy"], [["1", "0.5"]], "no step column"),
        (["step", "loss", "lr"], [["1", "0.5", "1e-6"]], "no usable field"),
        (["step", "entropy"], [["1", "high"]], r"line 2: field 'entropy'"),
        (["step", "entropy"], [["1.5", "0.5"]], "line 2: step"),
    ],
)
def test_unusable_files_are_clear_errors(tmp_path, header, rows, message):
    path = tmp_path / "bad.csv"
    _write_csv(path, header, rows)
    with pytest.raises(ValueError, match=message):
        read_csv(path)


def test_map_points_a_field_at_another_column(tmp_path):
    path = tmp_path / "custom.csv"
    _write_csv(path, ["it", "H_plan"], [[str(i), str(0.5 + i / 100)] for i in range(5)])
    source = read_source(path, {"step": "it", "entropy/planning": "H_plan"})
    assert [r.values for r in source.records][-1] == {"entropy/planning": 0.54}


def test_jsonl_flat_and_verl_forms_match_the_csv(tmp_path):
    original = read_csv(shared_path(KL_LOG))
    flat = tmp_path / "flat.jsonl"
    verl = tmp_path / "verl.jsonl"
    with open(flat, "w") as f_flat, open(verl, "w") as f_verl:
        for r in original.records:
            f_flat.write(json.dumps({**r.to_json(), "run": "kl", "stats": {"ignored": 1}}) + "\n")
            data = {"actor/entropy": r.values.get("entropy"), "critic/rewards/mean": r.values.get("reward"),
                    "response_length/mean": r.values.get("response_length"), "timing_s/step": 1.0}
            f_verl.write(json.dumps({"step": r.step, "elapsed_seconds": 1.0, "data": data}) + "\n")
    assert read_jsonl(flat).records == original.records
    verl_source = read_source(verl)
    assert verl_source.format == "jsonl"
    assert verl_source.columns["entropy"] == "data/actor/entropy"
    assert verl_source.records == original.records


def test_jsonl_with_several_runs_needs_run(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text('{"run": "a", "step": 0, "entropy": 1}\n{"run": "b", "step": 0, "entropy": 2}\n')
    with pytest.raises(ValueError, match="--run"):
        read_jsonl(path)
    assert read_jsonl(path, run="b").records[0].values == {"entropy": 2.0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "entropy": 1}\n{"step": 1, \n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_jsonl(bad)


def test_store_replays_to_the_monitors_events(tmp_path):
    records = list(generate("clear_shift", 0).records())
    db = tmp_path / "runs.db"
    with Monitor(db) as monitor:
        for r in records:
            monitor.observe("grpo-1", r.step, r)
        expected = [(e.kind, e.step, e.onset, e.series) for e in monitor.events("grpo-1")]
        monitor.observe("other", 0, {"entropy": 1.0})
    with pytest.raises(ValueError, match="several runs"):
        read_source(db)
    result = replay(read_source(db, run="grpo-1"))
    assert result.steps == len(records) and result.phase == "planning"
    assert _event_keys(result) == expected


def test_cli_json_document(tmp_path, capsys):
    assert main(["replay", str(shared_path(KL_LOG)), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == 500 and doc["phase"] in ("warmup", "execution", "planning")
    assert doc["events"] and all({"kind", "step", "onset", "series", "statistic", "threshold"} <= set(e) for e in doc["events"])
    assert ENTROPY_EXPLOSION in [e["kind"] for e in doc["events"]]


def test_cli_report_and_plot(tmp_path, capsys):
    png = tmp_path / "out" / "kl.png"
    assert main(["replay", str(shared_path(KL_LOG)), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "500 steps" in out and "entropy_explosion" in out and "entropy <- 'entropy_avg'" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 500 and height > 300


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main(["replay", str(shared_path(KL_LOG)), "--map", "entropyy=entropy_avg"]) == 2
    assert "not a canonical field" in capsys.readouterr().err


def test_progress_bar_for_long_files(tmp_path, capsys):
    path = tmp_path / "long.csv"
    _write_csv(path, ["step", "entropy"], [[str(i), str(0.5 + 0.01 * math.sin(i))] for i in range(300)])
    replay(read_csv(path), progress=True)
    assert "replay" in capsys.readouterr().err
    replay(read_csv(path))  # short file: no bar by default
    assert capsys.readouterr().err == ""
