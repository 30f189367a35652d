"""The shipped Grafana dashboard, built in code.

Generating the JSON here (rather than hand-editing a 1,000-line file) keeps every panel
consistent: one place decides the datasource reference, the ``run`` filter, units and legend
style, and ``phasewatch dashboards push`` can send the dashboard without the repository's
``dashboards/`` folder being installed. ``dashboards/phasewatch.json`` is this module's output
(``phasewatch dashboards export``); a test fails when the two drift apart.

The model is Grafana's dashboard JSON v1 at ``schemaVersion`` 42. Every query uses the
``$datasource`` and ``$run`` template variables, so the same dashboard works on the shipped
docker-compose stack (datasource uid :data:`DATASOURCE_UID`) and on a user's own Grafana.
"""

from __future__ import annotations

import json
from typing import Any

from phasewatch.exporter import PHASE_CODES, UNKNOWN_PHASE_CODE

#: uid of the dashboard (stable across pushes, so a push updates rather than duplicates).
DASHBOARD_UID = "phasewatch"
DASHBOARD_TITLE = "phasewatch: RL training phases"
#: uid of the Prometheus datasource in ``dashboards/provisioning/datasources``.
DATASOURCE_UID = "phasewatch-prometheus"
SCHEMA_VERSION = 42

_DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
_RUN = 'run=~"$run"'

#: Display name and colour of each phase code, for value mappings.
_PHASE_DISPLAY: dict[str, tuple[str, str]] = {
    "warmup": ("warmup", "text"),
    "execution": ("execution", "blue"),
    "planning": ("planning", "purple"),
}


# -- building blocks ---------------------------------------------------------------------


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {
        "datasource": dict(_DS),
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        "instant": False,
        "refId": ref,
    }


def _targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    return [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": value, "color": color} for value, color in steps]}


_NO_THRESHOLDS = _thresholds((None, "green"))


def _phase_mappings() -> list[dict[str, Any]]:
    options: dict[str, Any] = {}
    for index, (phase, code) in enumerate(sorted(PHASE_CODES.items(), key=lambda kv: kv[1])):
        text, color = _PHASE_DISPLAY[phase]
        options[str(code)] = {"text": text, "color": color, "index": index}
    options[str(UNKNOWN_PHASE_CODE)] = {"text": "unknown", "color": "orange", "index": len(options)}
    return [{"type": "value", "options": options}]


def _legend() -> dict[str, Any]:
    return {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}


def _timeseries(
    panel_id: int,
    title: str,
    description: str,
    grid: tuple[int, int, int, int],
    targets: list[dict[str, Any]],
    *,
    unit: str,
    thresholds: dict[str, Any] | None = None,
    thresholds_style: str = "off",
    minimum: float | None = None,
    maximum: float | None = None,
    draw_style: str = "line",
    interpolation: str = "linear",
    decimals: int | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "thresholds": thresholds or _NO_THRESHOLDS,
        "custom": {
            "drawStyle": draw_style,
            "lineInterpolation": interpolation,
            "lineWidth": 2,
            "fillOpacity": 0 if draw_style == "line" else 80,
            "showPoints": "never",
            "spanNulls": False,
            "axisPlacement": "auto",
            "thresholdsStyle": {"mode": thresholds_style},
        },
    }
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "timeseries",
        "id": panel_id,
        "title": title,
        "description": description,
        "datasource": dict(_DS),
        "gridPos": _grid(grid),
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": _legend(), "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def _stat(
    panel_id: int,
    title: str,
    description: str,
    grid: tuple[int, int, int, int],
    targets: list[dict[str, Any]],
    *,
    unit: str,
    thresholds: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    decimals: int | None = None,
    color_mode: str = "value",
    no_value: str | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or _thresholds((None, "text")),
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value is not None:
        defaults["noValue"] = no_value
    return {
        "type": "stat",
        "id": panel_id,
        "title": title,
        "description": description,
        "datasource": dict(_DS),
        "gridPos": _grid(grid),
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "graphMode": "none",
            "colorMode": color_mode,
            "justifyMode": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def _grid(grid: tuple[int, int, int, int]) -> dict[str, int]:
    x, y, w, h = grid
    return {"x": x, "y": y, "w": w, "h": h}


# -- the dashboard -----------------------------------------------------------------------


def _panels() -> list[dict[str, Any]]:
    p: list[dict[str, Any]] = []
    # Row 1: where the run stands now.
    p.append(
        _stat(
            1,
            "Current phase",
            "The monitor's verdict on the run. warmup: too few steps to judge yet. execution: the model is "
            "still consolidating procedural skills (execution-token entropy falling). planning: the "
            "execution-to-planning shift is confirmed; further gains come from better strategies, so "
            "phasewatch (reweight=\"auto\") now ramps up HICRA reweighting of planning tokens. If you run "
            "with reweight=\"off\", this is the moment to consider switching it on.",
            (0, 0, 4, 5),
            _targets((f"phasewatch_phase{{{_RUN}}}", "{{run}}")),
            unit="none",
            mappings=_phase_mappings(),
            color_mode="background",
        )
    )
    p.append(
        _stat(
            2,
            "Shift confirmed at step",
            "Training step at which the execution-to-planning shift was confirmed; empty until it happens. "
            "Checkpoints after this step were trained with planning-token reweighting (if enabled): compare "
            "evaluation scores on both sides of it.",
            (4, 0, 4, 5),
            _targets((f"phasewatch_shift_step{{{_RUN}}}", "{{run}}")),
            unit="none",
            decimals=0,
            no_value="not yet",
        )
    )
    p.append(
        _stat(
            3,
            "Reweighting alpha",
            "HICRA strength in use now: planning-token advantages become A + alpha*|A|; 0 means plain "
            "GRPO/PPO. With reweight=\"auto\" it stays 0 until the shift, then ramps to Config.alpha over "
            "ramp_steps. If reward falls after alpha rises, lower Config.alpha.",
            (8, 0, 4, 5),
            _targets((f"phasewatch_reweight_alpha{{{_RUN}}}", "{{run}}")),
            unit="none",
            decimals=3,
        )
    )
    p.append(
        _stat(
            4,
            "Last step",
            "Last training step the monitor received. If it stops increasing while the trainer runs, "
            "look at 'Time since last record' and at the trainer's log for a phasewatch warning.",
            (12, 0, 4, 5),
            _targets((f"phasewatch_step{{{_RUN}}}", "{{run}}")),
            unit="none",
            decimals=0,
        )
    )
    p.append(
        _stat(
            5,
            "Records dropped (time range)",
            "Step records lost before the monitor saw them in the selected time range (hook buffer full, "
            "send failed, or rejected as invalid). Training is never slowed to avoid a drop; any non-zero "
            "value means gaps in phasewatch's history. If it grows, check that the monitor "
            "(phasewatch serve) is reachable from the trainer; see 'Ingest' below for the reason.",
            (16, 0, 4, 5),
            _targets((f"sum(increase(phasewatch_records_dropped_total{{{_RUN}}}[$__range]))", "dropped")),
            unit="none",
            decimals=0,
            thresholds=_thresholds((None, "green"), (1, "red")),
        )
    )
    p.append(
        _stat(
            6,
            "Time since last record",
            "Seconds since the monitor last received a record for the run. Orange after 2 minutes, red "
            "after 10: a run that is still training but not reporting has lost its connection to the "
            "monitor (check the trainer's log and the network path to phasewatch serve). A finished run "
            "naturally turns red.",
            (20, 0, 4, 5),
            _targets((f"time() - phasewatch_last_record_timestamp_seconds{{{_RUN}}}", "{{run}}")),
            unit="s",
            decimals=0,
            thresholds=_thresholds((None, "green"), (120, "orange"), (600, "red")),
        )
    )
    # Row 2: the signal itself.
    p.append(
        _timeseries(
            7,
            "Token entropy by class",
            "Mean token entropy per step, in nats, over all completion tokens, over planning tokens (those "
            "inside strategic-gram phrases) and over execution tokens (the rest). In a healthy RL run "
            "execution entropy falls early and flattens while planning entropy stays high or rises: that "
            "is the execution-to-planning shift. Markers: purple = phase shift confirmed, red = health "
            "alarm (hover for the kind). The dashed line is the collapse floor (0.02 nats): entropy stuck "
            "below it means the policy stopped exploring; raise the sampling temperature or the entropy "
            "bonus, or resume from an earlier checkpoint. Points are sampled at Prometheus's scrape "
            "interval; the full per-step history is in phasewatch's store.",
            (0, 5, 24, 9),
            _targets((f"phasewatch_token_entropy_nats{{{_RUN}}}", "{{run}} {{token_class}}")),
            unit="suffix: nats",
            thresholds=_thresholds((None, "green"), (0.02, "red")),
            thresholds_style="dashed",
            minimum=0,
        )
    )
    p.append(
        {
            "type": "state-timeline",
            "id": 8,
            "title": "Phase over time",
            "description": "The run's phase over time: warmup (grey), execution (blue), planning (purple). A "
            "run normally moves warmup -> execution -> planning and stays in planning. With "
            "reweight=\"auto\", HICRA reweighting is active only while the run is in planning.",
            "datasource": dict(_DS),
            "gridPos": _grid((0, 14, 24, 5)),
            "targets": _targets((f"phasewatch_phase{{{_RUN}}}", "{{run}}")),
            "fieldConfig": {
                "defaults": {
                    "unit": "none",
                    "color": {"mode": "thresholds"},
                    "thresholds": _thresholds((None, "text")),
                    "mappings": _phase_mappings(),
                    "custom": {"lineWidth": 0, "fillOpacity": 80, "spanNulls": False},
                },
                "overrides": [],
            },
            "options": {
                "showValue": "auto",
                "rowHeight": 0.9,
                "mergeValues": True,
                "alignValue": "left",
                "legend": _legend(),
                "tooltip": {"mode": "single", "sort": "none"},
            },
        }
    )
    p.append(
        _timeseries(
            9,
            "Semantic entropy of planning phrases",
            "Shannon entropy, in nats, of how often each strategic-gram phrase was used in the step. It "
            "rises when the model draws on a wider variety of planning moves, the clearest sign of the "
            "planning phase. A slide towards 0 means the model keeps repeating the same few phrases: its "
            "strategic diversity is collapsing, often before accuracy plateaus.",
            (0, 19, 8, 8),
            _targets((f"phasewatch_semantic_entropy_nats{{{_RUN}}}", "{{run}}")),
            unit="suffix: nats",
            minimum=0,
        )
    )
    p.append(
        _timeseries(
            10,
            "Planning token fraction",
            "Share of completion tokens that belong to planning phrases (typically a few percent). HICRA "
            "amplifies the updates of exactly these tokens. A fraction near 0 means the labeller finds no "
            "planning phrases in your model's outputs: check the lexicon against a few completions with "
            "'phasewatch label'.",
            (8, 19, 8, 8),
            _targets((f'phasewatch_tokens_ratio{{{_RUN}, token_class="planning"}}', "{{run}}")),
            unit="percentunit",
            minimum=0,
        )
    )
    p.append(
        _timeseries(
            11,
            "Reweighting alpha over time",
            "HICRA strength applied at each step (planning-token advantages become A + alpha*|A|). With "
            "reweight=\"auto\" it is 0 before the shift and ramps to Config.alpha afterwards; with "
            "\"always\" it is constant; with \"off\" it stays 0.",
            (16, 19, 8, 8),
            _targets((f"phasewatch_reweight_alpha{{{_RUN}}}", "{{run}}")),
            unit="none",
            minimum=0,
            maximum=1,
            interpolation="stepAfter",
        )
    )
    # Row 3: the detectors' evidence.
    p.append(
        _timeseries(
            12,
            "Detector statistic / threshold",
            "Each detector's statistic divided by its alarm threshold, per watched series: a line that "
            "reaches 100% (the dashed red line) raises an event. Lines creeping towards 100% warn that an "
            "alarm is near; lines far below mean the series is steady. A detector that sits near 100% for "
            "long without firing, or fires too often, is the one to tune in DetectionConfig.",
            (0, 27, 12, 8),
            _targets(
                (
                    f"phasewatch_detector_statistic{{{_RUN}}} / phasewatch_detector_threshold{{{_RUN}}}",
                    "{{run}} {{detector}} {{series}}",
                )
            ),
            unit="percentunit",
            thresholds=_thresholds((None, "green"), (1, "red")),
            thresholds_style="dashed",
        )
    )
    p.append(
        _timeseries(
            13,
            "Detector statistic vs threshold",
            "The same detectors in their own units: for each detector and series, the line named "
            "'... statistic' is the running statistic and '... threshold' its alarm level (step-shaped). "
            "Use it to see by how much a statistic is above or below its threshold, e.g. when choosing "
            "DetectionConfig values.",
            (12, 27, 12, 8),
            _targets(
                (f"phasewatch_detector_statistic{{{_RUN}}}", "{{run}} {{detector}} {{series}} statistic"),
                (f"phasewatch_detector_threshold{{{_RUN}}}", "{{run}} {{detector}} {{series}} threshold"),
            ),
            unit="none",
        )
    )
    # Row 4: health.
    p.append(
        _stat(
            14,
            "Health alarms (time range)",
            "Health alarms raised in the selected time range, by kind. entropy_collapse: entropy fell to a "
            "small fraction of its early level (the policy became nearly deterministic): raise the "
            "temperature or entropy bonus, lower the learning rate, or resume from an earlier checkpoint. "
            "entropy_explosion: entropy jumped several-fold towards a uniform policy, usually with reward "
            "collapsing: stop the run and resume from the last good checkpoint with a lower learning rate "
            "or tighter clipping. level_shift: a sustained jump in an entropy series: check whether a "
            "config, data or code change coincides with it.",
            (0, 35, 8, 8),
            _targets(
                (
                    f'sum by (kind) (increase(phasewatch_events_total{{{_RUN}, kind!="phase_shift"}}[$__range]))',
                    "{{kind}}",
                )
            ),
            unit="none",
            decimals=0,
            thresholds=_thresholds((None, "green"), (1, "red")),
            color_mode="background",
        )
    )
    p.append(
        _stat(
            15,
            "Step of the last event",
            "Training step at which the most recent event of each kind was raised (phase_shift and the "
            "health alarms). Use it to pick the checkpoint just before an alarm.",
            (8, 35, 8, 8),
            _targets((f"phasewatch_last_event_step{{{_RUN}}}", "{{run}} {{kind}}")),
            unit="none",
            decimals=0,
        )
    )
    p.append(
        _timeseries(
            16,
            "Token NLL by class",
            "Mean negative log-likelihood, in nats, of the sampled planning and execution tokens. It "
            "follows entropy but reflects the tokens actually chosen: execution NLL falling towards 0 "
            "means procedures have become near-deterministic, which is expected in the planning phase.",
            (16, 35, 8, 8),
            _targets((f"phasewatch_token_nll_nats{{{_RUN}}}", "{{run}} {{token_class}}")),
            unit="suffix: nats",
            minimum=0,
        )
    )
    # Row 5: ingest health and context.
    p.append(
        _timeseries(
            17,
            "Ingest: records per second",
            "Records per second that the monitor processed (ingested), repeated steps it ignored "
            "(duplicate, e.g. after a trainer restart re-sends steps) and records lost before reaching "
            "it (dropped, by reason). 'ingested' should follow your training step rate; 'dropped' should "
            "stay at 0.",
            (0, 43, 8, 8),
            _targets(
                (f"rate(phasewatch_records_ingested_total{{{_RUN}}}[$__rate_interval])", "{{run}} ingested"),
                (f"rate(phasewatch_records_duplicate_total{{{_RUN}}}[$__rate_interval])", "{{run}} duplicate"),
                (
                    f"rate(phasewatch_records_dropped_total{{{_RUN}}}[$__rate_interval])",
                    "{{run}} dropped ({{reason}})",
                ),
            ),
            unit="suffix: rec/s",
            minimum=0,
        )
    )
    p.append(
        _timeseries(
            18,
            "Monitor update latency",
            "Time the monitor took to process one step record (p50, p95, p99). A few milliseconds is "
            "normal, tens while a changepoint is being confirmed. The trainer does not wait for it, but "
            "seconds sustained mean the monitor cannot keep up and records will be dropped: run it as "
            "'phasewatch serve' on a less loaded machine.",
            (8, 43, 8, 8),
            _targets(
                *(
                    (
                        f"histogram_quantile({q}, sum by (le, run) "
                        f"(rate(phasewatch_update_latency_seconds_bucket{{{_RUN}}}[$__rate_interval])))",
                        f"{{{{run}}}} p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                )
            ),
            unit="s",
            minimum=0,
            thresholds=_thresholds((None, "green"), (1, "red")),
            thresholds_style="dashed",
        )
    )
    p.append(
        _timeseries(
            19,
            "Reward",
            "Mean reward of each step's rollouts, for context: an entropy explosion usually comes with a "
            "reward collapse, and gains after the phase shift should show up here.",
            (16, 43, 8, 8),
            _targets((f"phasewatch_reward{{{_RUN}}}", "{{run}}")),
            unit="none",
        )
    )
    return p


def _annotations() -> list[dict[str, Any]]:
    def prometheus_annotation(name: str, color: str, selector: str, title: str) -> dict[str, Any]:
        expr = f"increase(phasewatch_events_total{{{_RUN}, {selector}}}[1m]) > 0"
        return {
            "name": name,
            "datasource": dict(_DS),
            "enable": True,
            "hide": False,
            "iconColor": color,
            "expr": expr,
            "step": "30s",
            "titleFormat": title,
            "textFormat": "run {{run}}: see 'Step of the last event' for the training step",
            "tagKeys": "run,kind",
            "useValueForTime": False,
            "target": {"expr": expr, "interval": "30s", "refId": "Anno"},
        }

    return [
        {
            "builtIn": 1,
            "name": "Annotations & Alerts",
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "type": "dashboard",
            "target": {"limit": 100, "matchAny": False, "tags": [], "type": "dashboard"},
        },
        prometheus_annotation("Phase shift", "purple", 'kind="phase_shift"', "phase shift"),
        prometheus_annotation("Health alarms", "red", 'kind!="phase_shift"', "{{kind}}"),
    ]


def _variables(datasource_uid: str) -> list[dict[str, Any]]:
    run_query = "label_values(phasewatch_step, run)"
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes phasewatch.",
            "query": "prometheus",
            "current": {"text": "Prometheus", "value": datasource_uid},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "includeAll": False,
            "multi": False,
            "options": [],
        },
        {
            "type": "query",
            "name": "run",
            "label": "Run",
            "description": "phasewatch run id(s) to show (Config.run / $PHASEWATCH_RUN).",
            "datasource": dict(_DS),
            "query": run_query,
            "definition": run_query,
            "refresh": 2,
            "sort": 1,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"text": ["All"], "value": ["$__all"]},
            "options": [],
            "regex": "",
        },
    ]


def build_dashboard(*, uid: str = DASHBOARD_UID, datasource_uid: str = DATASOURCE_UID) -> dict[str, Any]:
    """The phasewatch dashboard model (JSON v1, ``schemaVersion`` 42), ready for Grafana."""
    if not uid or len(uid) > 40:
        raise ValueError(f"uid: expected 1-40 characters, got {uid!r}")
    return {
        "uid": uid,
        "title": DASHBOARD_TITLE,
        "description": "Planning vs execution token statistics, the execution-to-planning phase shift, "
        "HICRA reweighting and health alarms of RL fine-tuning runs watched by phasewatch.",
        "tags": ["phasewatch", "rl", "llm"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m", "15m"]},
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "panels": _panels(),
        "templating": {"list": _variables(datasource_uid)},
        "annotations": {"list": _annotations()},
    }


def dashboard_json(**kwargs: Any) -> str:
    """:func:`build_dashboard` as the text of ``dashboards/phasewatch.json``."""
    return json.dumps(build_dashboard(**kwargs), indent=2, sort_keys=False) + "\n"


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL expression in a dashboard, as ``(where, expr)`` pairs (panels, annotations)."""
    out: list[tuple[str, str]] = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            out.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return out
