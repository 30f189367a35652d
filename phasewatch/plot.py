"""Plot a run's series with its events marked: for ``phasewatch replay --plot`` and reports.

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``), so plotting never
touches the global backend or figure state of a user's notebook or trainer process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from phasewatch.events import ENTROPY_COLLAPSE, ENTROPY_EXPLOSION, LEVEL_SHIFT, PHASE_SHIFT, Event
from phasewatch.record import StepRecord

#: One panel per group; a panel is drawn only when the run has data for one of its series.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("token entropy (nats)", ("entropy", "entropy/planning", "entropy/execution")),
    ("semantic entropy (nats)", ("semantic_entropy",)),
    ("NLL (nats)", ("nll/planning", "nll/execution")),
    ("planning fraction", ("planning_frac",)),
    ("reward", ("reward",)),
    ("response length (tokens)", ("response_length",)),
)

EVENT_STYLE: dict[str, dict[str, Any]] = {
    PHASE_SHIFT: {"color": "tab:purple", "linestyle": "-", "linewidth": 1.6},
    ENTROPY_EXPLOSION: {"color": "tab:red", "linestyle": "--", "linewidth": 1.2},
    ENTROPY_COLLAPSE: {"color": "tab:cyan", "linestyle": "--", "linewidth": 1.2},
    LEVEL_SHIFT: {"color": "tab:gray", "linestyle": ":", "linewidth": 1.0},
}


def series_of(records: Sequence[StepRecord], name: str) -> tuple[list[int], list[float]]:
    """Steps and values of one field (steps where it is missing are left out)."""
    steps: list[int] = []
    values: list[float] = []
    for r in records:
        v = r.values.get(name)
        if v is not None:
            steps.append(r.step)
            values.append(v)
    return steps, values


def plot_run(
    records: Sequence[StepRecord],
    events: Iterable[Event] = (),
    *,
    shift_step: int | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    dpi: int = 110,
):
    """Draw every present series, one panel per group, with events as vertical lines (at the
    detection step; a phase shift also shades its onset-to-detection span) and the planning
    phase (from ``shift_step``) shaded. Returns the matplotlib ``Figure``; writes a PNG to
    ``path`` when given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("plot: no records to plot")
    events = list(events)
    panels = [(label, [s for s in names if any(s in r.values for r in records)]) for label, names in PANELS]
    panels = [(label, names) for label, names in panels if names]
    if not panels:
        raise ValueError("plot: the records carry none of the canonical fields")
    # constrained layout keeps the legends (outside the panels, to their right) and the event
    # legend (under the step axis) clear of the data and of each other
    fig = Figure(figsize=(11, 1.9 * len(panels) + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    last = records[-1].step
    seen_kinds: set[str] = set()
    for ax, (label, names) in zip(axes, panels):
        for name in names:
            xs, ys = series_of(records, name)
            ax.plot(xs, ys, linewidth=1.0, label=name)
        if shift_step is not None:
            ax.axvspan(shift_step, last, color="tab:purple", alpha=0.07, linewidth=0)
        for e in events:
            style = EVENT_STYLE.get(e.kind, {"color": "black", "linestyle": "-."})
            ax.axvline(e.step, **style, label=None)
            if e.kind == PHASE_SHIFT and e.onset < e.step:
                ax.axvspan(e.onset, e.step, color=style["color"], alpha=0.15, linewidth=0)
            seen_kinds.add(e.kind)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False, borderaxespad=0.0)
    axes[-1].set_xlabel("step")
    if seen_kinds or shift_step is not None:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles = [Line2D([], [], **EVENT_STYLE.get(k, {"color": "black", "linestyle": "-."})) for k in sorted(seen_kinds)]
        names = sorted(seen_kinds)
        if shift_step is not None:
            handles.append(Patch(color="tab:purple", alpha=0.15, linewidth=0))
            names.append(f"planning phase (from step {shift_step})")
        fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi, format="png")
    return fig
