"""``phasewatch replay``: readers (CSV, W&B export CSV, JSON lines, store), the report, the
plot, and the command line, on real GRPO logs (rasbt/reasoning-from-scratch)."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest

from phasewatch.cli import main
from phasewatch.events import ENTROPY_EXPLOSION, Event
from phasewatch.monitor import Monitor
from phasewatch.plot import plot_run
from phasewatch.replay import (
    ReplaySource,
    format_report,
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


# -- found by using phasewatch as a user would (qa) ------------------------------------------

NO_ENTROPY_LOG = "rl-logs/reasoning-from-scratch/ch06_rlvr_grpo_original_no_kl_metrics.csv"


def test_phasewatch_column_wins_a_tie_with_the_trainers_own(tmp_path):
    """A TRL run watched by phasewatch logs TRL's "entropy" and phasewatch's "phasewatch/entropy";
    replaying its log (or its W&B export) used to stop with "all look like 'entropy'"."""
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(
        json.dumps({"step": s, "entropy": 5.0, "phasewatch/entropy": 4.0, "phasewatch/entropy/planning": 3.0}) + "\n"
        for s in (1, 2)
    ))
    source = read_source(path)
    assert source.columns["entropy"] == "phasewatch/entropy"
    assert source.records[0].values == {"entropy": 4.0, "entropy/planning": 3.0}
    wandb = ["Step", "run-a - train/entropy", "run-a - train/phasewatch/entropy", "run-a - train/phasewatch/entropy__MIN"]
    assert resolve_columns(wandb)["entropy"] == "run-a - train/phasewatch/entropy"
    # two runs that both carry phasewatch's column stay ambiguous
    with pytest.raises(ValueError, match=r"--map entropy=COLUMN"):
        resolve_columns(["Step", "a - train/phasewatch/entropy", "b - train/phasewatch/entropy", "a - train/entropy"])


def test_trl_trainer_state_and_json_arrays_are_read(tmp_path):
    rows = [{"step": s, "entropy": 1.0 + s, "reward": 0.5, "phasewatch/entropy/planning": 2.0 + s} for s in (1, 2, 3)]
    # TRL's trainer_state.json: the per-step rows are its log_history; the last row is the summary
    state = {"global_step": 3, "best_metric": None,
             "log_history": rows + [{"step": 3, "train_runtime": 5.3, "train_loss": 0.1, "epoch": 0.1}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state, indent=2))
    source = read_source(tmp_path / "trainer_state.json")
    assert [r.step for r in source.records] == [1, 2, 3]
    assert source.records[0].values == {"entropy": 2.0, "entropy/planning": 3.0, "reward": 0.5}
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    assert read_source(tmp_path / "rows.json").records == source.records
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows))  # JSON lines named .json
    assert read_source(tmp_path / "lines.json").records == source.records
    (tmp_path / "bad.json").write_text(json.dumps([rows[0], {"step": 2, "entropy": "high"}]))
    with pytest.raises(ValueError, match=r"bad.json, entry 2: field 'entropy'"):
        read_source(tmp_path / "bad.json")


def test_unreadable_files_are_errors_that_name_the_file(tmp_path):
    binary = tmp_path / "export.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match=r"export.csv: not UTF-8 text \(byte 0x89 at offset 0\)"):
        read_source(binary)
    semicolons = tmp_path / "excel.csv"
    semicolons.write_text("step;entropy\n1;0,5\n")
    with pytest.raises(ValueError, match="looks semicolon-separated"):
        read_source(semicolons)


def test_run_is_refused_where_it_selects_nothing(tmp_path):
    csv_path = tmp_path / "m.csv"
    _write_csv(csv_path, ["step", "entropy"], [["1", "0.5"]])
    with pytest.raises(ValueError, match="a CSV holds one run"):
        read_source(csv_path, run="grpo-1")
    lines = tmp_path / "m.jsonl"
    lines.write_text('{"step": 1, "entropy": 0.5}\n')
    with pytest.raises(ValueError, match=r"no line has a \"run\" field"):
        read_source(lines, run="grpo-1")


def test_report_says_why_the_phase_stays_warmup():
    no_entropy = replay(read_csv(shared_path(NO_ENTROPY_LOG)))
    assert len(no_entropy.notes) == 2
    report = format_report(no_entropy)
    assert "note: phase detection needs per-class fields" in report
    assert "note: health alarms need an entropy field" in report
    total_only = replay(read_csv(shared_path(KL_LOG)))
    assert [n.split(" (")[0] for n in total_only.notes] == ["phase detection needs per-class fields"]
    assert total_only.to_json()["notes"] == total_only.notes
    per_class = replay(ReplaySource(Path("synthetic"), "jsonl", list(generate("clear_shift", 0).records())[:30]))
    assert per_class.notes == [] and "note:" not in format_report(per_class)


def test_plot_legends_keep_clear_of_the_title_and_the_data():
    """Before: the event legend sat on the title, and each panel's legend on its own lines."""
    records = read_csv(shared_path(KL_LOG)).records
    events = [Event(kind, step, step - 2, "entropy", "health", 1.0, 0.5)
              for kind, step in (("level_shift", 150), ("entropy_explosion", 160), ("entropy_collapse", 400))]
    fig = plot_run(records, events, shift_step=300, title="7_5_plus_kl_metrics.csv: phase warmup")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    (event_legend,) = fig.legends
    legend_box = event_legend.get_window_extent(renderer)
    assert not title.overlaps(legend_box)
    assert [t.get_text() for t in event_legend.get_texts()] == [
        "entropy_collapse", "entropy_explosion", "level_shift", "planning phase (from step 300)"]
    for ax in fig.axes:
        assert not legend_box.overlaps(ax.get_window_extent(renderer))
        panel_legend = ax.get_legend().get_window_extent(renderer)
        assert panel_legend.x0 >= ax.get_window_extent(renderer).x1  # beside the panel, not on the lines


def test_cli_output_into_a_closed_pipe_is_not_an_error(tmp_path, monkeypatch, capsys):
    """`phasewatch replay ... | head -1`: the reader leaves, the command must not end in a traceback."""
    for extra in (["--json"], []):
        read_end, write_end = os.pipe()
        os.close(read_end)
        with os.fdopen(write_end, "w") as closed_pipe:
            monkeypatch.setattr(sys, "stdout", closed_pipe)
            assert main(["replay", str(shared_path(KL_LOG)), *extra]) == 0
            monkeypatch.undo()
