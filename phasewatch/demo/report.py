"""The demo's report: ``report.png``, ``report.html`` and ``report.json``, built from the store.

Everything in the report about the run's statistics and events is read back from the SQLite
store the monitor wrote (the same file ``phasewatch replay`` reads), so the report and the
store cannot disagree; the trainer's own log adds what the store does not hold (the HICRA
alpha applied at each step) and the verifier adds which plans the model used.

The figure is :func:`phasewatch.plot.plot_run` (per-class entropy, semantic entropy, NLL,
planning fraction, reward and length over steps, events as vertical lines, the planning phase
shaded), with the first reweighted step marked on every panel.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from phasewatch.demo.corpus import KINDS, PLANS, SOLVING_PLAN
from phasewatch.events import PHASE_NAMES, PHASE_SHIFT, Event
from phasewatch.record import StepRecord
from phasewatch.replay import jsonable

#: Steps averaged for the "first" and "last" level of a series in the summary.
EDGE_STEPS = 20
#: Steps of verifier outcomes compared at the start and the end of the run.
PLAN_WINDOW = 50

SERIES = ("entropy/execution", "entropy/planning", "semantic_entropy", "nll/planning", "planning_frac", "reward")


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def series_levels(records: Sequence[StepRecord], edge: int = EDGE_STEPS) -> dict[str, dict[str, float | None]]:
    """Mean of each series over the first and the last ``edge`` steps that carry it."""
    out: dict[str, dict[str, float | None]] = {}
    for name in SERIES:
        values = [r.values[name] for r in records if name in r.values]
        out[name] = {"first": _mean(values[:edge]), "last": _mean(values[-edge:]), "steps": len(values)}
    return out


def reweighting_start(logs_by_step: Mapping[int, Mapping[str, float]]) -> int | None:
    """The first step whose advantages were reweighted (``phasewatch/alpha`` > 0 in the trainer's log)."""
    for step in sorted(logs_by_step):
        if logs_by_step[step].get("phasewatch/alpha", 0.0) > 0.0:
            return step
    return None


def plan_table(outcomes: Any, first: bool, window: int = PLAN_WINDOW) -> dict[str, Any]:
    """Share of each plan and of solved completions per kind, over the first or last
    ``window`` generation batches of the verifier."""
    from phasewatch.demo.task import StepOutcomes

    batches = list(getattr(outcomes, "batches", []))
    chosen = batches[:window] if first else batches[-window:]
    merged = StepOutcomes.merged(chosen)
    table: dict[str, Any] = {}
    for kind in KINDS:
        total = merged.total[kind]
        if not total:
            continue
        table[kind] = {
            "completions": total,
            "solved": merged.solved[kind] / total,
            "plans": {(p if p is not None else "none"): n / total for p, n in merged.plans[kind].items()},
        }
    return table


def verdict(
    levels: Mapping[str, Mapping[str, Any]],
    shift: Mapping[str, Any] | None,
    reweight_from: int | None,
    events: Sequence[Mapping[str, Any]] = (),
) -> str:
    """One honest paragraph on what the run showed."""
    ex = levels.get("entropy/execution", {})
    se = levels.get("semantic_entropy", {})
    ex_first, ex_last = ex.get("first"), ex.get("last")
    se_first, se_last = se.get("first"), se.get("last")
    parts = []
    if ex_first and ex_last is not None:
        parts.append(
            f"Execution-token entropy went from {ex_first:.3f} to {ex_last:.3f} nats"
            + (" (execution consolidated)." if ex_last < 0.6 * ex_first else " (no clear consolidation).")
        )
    rose = se_first is not None and se_last is not None and se_last > se_first + 0.15
    if se_first is not None and se_last is not None:
        parts.append(
            f"Semantic entropy (diversity of planning phrases) went from {se_first:.2f} to {se_last:.2f} nats"
            + (" (planning diversified)." if rose else " (planning stayed narrow).")
        )
    if shift is not None:
        parts.append(
            f"The monitor confirmed the execution-to-planning shift at step {shift['step']} (onset ~{shift['onset']})"
            + (f"; HICRA reweighted planning tokens from step {reweight_from}." if reweight_from else
               "; it came too late in the run for reweighting to start.")
        )
    elif rose:
        parts.append(
            "Planning diversity rose, but the monitor did not confirm a phase shift: the rise was not"
            " strong or clean enough for its test, so reweighting stayed off."
        )
    else:
        parts.append(
            "No phase shift happened in this run: the model kept its habitual plan. This tiny run does not"
            " always reach the planning phase; try more --steps or another --seed (the README lists what we"
            " measured over several seeds)."
        )
    collapses = sorted({e["series"] for e in events if e.get("kind") == "entropy_collapse"})
    if collapses:
        parts.append(
            f"The entropy_collapse alarm(s) on {', '.join(collapses)} mean the policy became nearly deterministic"
            " (here: the tiny model has learned its task); in a real run that alarm warns that exploration is gone."
        )
    return " ".join(parts)


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def read_store(store_path: str | Path, run: str) -> tuple[list[StepRecord], list[Event]]:
    """The run's records (in step order) and events from the demo's store."""
    from phasewatch.store import Store

    with Store(store_path, readonly=True) as store:
        if not store.has_run(run):
            return [], []
        return store.records(run), store.events(run)


def write_figure(records: Sequence[StepRecord], events: Sequence[Event], shift_step: int | None,
                 reweight_from: int | None, path: Path, title: str) -> None:
    """``plot_run``'s figure with the first reweighted step marked on every panel."""
    from phasewatch.plot import plot_run

    fig = plot_run(records, events, shift_step=shift_step, title=title)
    if reweight_from is not None:
        axes = fig.axes
        for ax in axes:
            ax.axvline(reweight_from, color="tab:green", linestyle="-.", linewidth=1.4)
        axes[0].annotate(
            f"HICRA reweighting from step {reweight_from}",
            xy=(reweight_from, 1.0), xycoords=("data", "axes fraction"), xytext=(4, -10),
            textcoords="offset points", fontsize=8, color="tab:green", va="top",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")


def write_report(
    store_path: str | Path,
    run: str,
    out: str | Path,
    *,
    logs_by_step: Mapping[int, Mapping[str, float]] | None = None,
    outcomes: Any = None,
    settings: Mapping[str, Any] | None = None,
    timing: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write report.png, report.html and report.json into ``out``; return the JSON content."""
    out = Path(out)
    logs_by_step = logs_by_step or {}
    records, events = read_store(store_path, run)
    shifts = [e for e in events if e.kind == PHASE_SHIFT]
    shift = shifts[0] if shifts else None
    reweight_from = reweighting_start(logs_by_step)
    levels = series_levels(records)
    phase = "planning" if shift is not None else ("execution" if records else "warmup")
    if logs_by_step:
        last_logged = logs_by_step[max(logs_by_step)].get("phasewatch/phase")
        if shift is None and last_logged is not None:
            phase = PHASE_NAMES.get(int(last_logged), phase)
    shift_json = None if shift is None else jsonable(shift.to_json())
    report: dict[str, Any] = {
        "run": run,
        "store": str(Path(store_path)),
        "steps": len(records),
        "first_step": records[0].step if records else None,
        "last_step": records[-1].step if records else None,
        "phase": phase,
        "phase_shift": shift_json,
        "reweighting_from_step": reweight_from,
        "events": [jsonable(e.to_json()) for e in events],
        "series": levels,
        "plans": {"first": plan_table(outcomes, True), "last": plan_table(outcomes, False), "window": PLAN_WINDOW},
        "alpha": [[s, logs_by_step[s].get("phasewatch/alpha", 0.0)] for s in sorted(logs_by_step)],
        "verdict": verdict(levels, shift_json, reweight_from, [e.to_json() for e in events]),
        "settings": dict(settings or {}),
        "timing": dict(timing or {"warmup_s": 0.0, "grpo_s": 0.0, "total_s": 0.0}),
        "machine": _machine(),
        "files": {"png": "report.png", "html": "report.html", "json": "report.json", "store": Path(store_path).name},
    }
    png = out / "report.png"
    if records:
        title = f"phasewatch demo (seed {report['settings'].get('seed', '?')}): phase {phase}"
        write_figure(records, events, None if shift is None else shift.step, reweight_from, png, title)
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_html(report, png if records else None), encoding="utf-8")
    return report


def _num(value: Any) -> str:
    try:
        return format(float(value), ".3g")
    except (TypeError, ValueError):
        return html.escape(str(value))


def render_html(report: Mapping[str, Any], png: Path | None) -> str:
    """A single self-contained page: the figure (inlined), the verdict, events and plans."""
    from phasewatch.demo.run import summary_lines

    esc = html.escape
    image = ""
    if png is not None and png.exists():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        image = f'<img alt="series over steps" src="data:image/png;base64,{data}" style="max-width:100%">'
    rows = "".join(
        f"<tr><td>{e['step']}</td><td>{e['onset']}</td><td>{esc(e['kind'])}</td><td>{esc(e['series'])}</td>"
        f"<td>{esc(e['detector'])}</td><td>{_num(e['statistic'])}</td><td>{_num(e['threshold'])}</td></tr>"
        for e in report["events"]
    ) or '<tr><td colspan="7">no events</td></tr>'
    plan_rows = ""
    for kind in KINDS:
        for when in ("first", "last"):
            entry = report["plans"][when].get(kind)
            if not entry:
                continue
            shares = ", ".join(
                f"{esc(PLANS.get(p, p))} {v:.0%}"
                for p, v in sorted(entry["plans"].items(), key=lambda kv: -kv[1])
                if v >= 0.005
            )
            plan_rows += (
                f"<tr><td>{kind}</td><td>{when} {report['plans']['window']} steps</td>"
                f"<td>{esc(PLANS[SOLVING_PLAN[kind]])}</td><td>{shares}</td><td>{entry['solved']:.0%}</td></tr>"
            )
    summary = esc("\n".join(summary_lines(dict(report), Path("."))).strip())
    settings = esc(json.dumps(report["settings"], indent=1))
    machine = esc(json.dumps(report["machine"], indent=1))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>phasewatch demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:90%}}
pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}</style></head><body>
<h1>phasewatch demo</h1>
<p>{esc(report['verdict'])}</p>
{image}
<h2>Summary</h2><pre>{summary}</pre>
<h2>Events (from the store)</h2>
<p><b>phase_shift</b>: planning signals (semantic entropy, planning-token entropy/NLL) turned upward after
execution had consolidated; with <code>reweight="auto"</code> HICRA starts on the next step and ramps up.
<b>entropy_collapse</b> / <b>entropy_explosion</b> / <b>level_shift</b>: health alarms on an entropy series
(fell below 20% of its baseline / climbed toward a uniform policy / moved to a new level). Late collapse
alarms in this demo mean the tiny model has solved its task and become nearly deterministic; in a real
run the same alarm warns that exploration is gone.</p>
<table><tr><th>step</th><th>onset</th><th>kind</th><th>series</th><th>detector</th><th>statistic</th><th>threshold</th></tr>{rows}</table>
<h2>Plans the model used</h2>
<table><tr><th>problem</th><th>window</th><th>plan that solves it</th><th>plans used</th><th>solved</th></tr>{plan_rows}</table>
<h2>Settings</h2><pre>{settings}</pre><h2>Machine</h2><pre>{machine}</pre>
</body></html>
"""
