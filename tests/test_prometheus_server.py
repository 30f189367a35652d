"""End to end with a real Prometheus: monitor -> exporter -> /metrics -> Prometheus -> every
PromQL expression of the shipped dashboard returns data.

Two runs go through a real :class:`~phasewatch.monitor.Monitor`: a synthetic run with an
execution-to-planning shift and one with an entropy explosion (``phasewatch.synthetic``, whose
truth is known). They are fed in two parts with a Prometheus scrape in between, as in a live
run, so counters are seen before and after the events (which ``increase()`` needs).

Prometheus is Debian's binary, started on a free loopback port with a generated config
(scrape interval 1s) and stopped at the end. Where the binary is missing the test skips, except
under ``PHASEWATCH_REQUIRE_PROMETHEUS=1`` (CI), where it fails.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest

from _prometheus import PrometheusServer, prometheus_binary
from conftest import PROJECT_ROOT
from phasewatch.dashboard import queries
from phasewatch.events import ENTROPY_EXPLOSION, PHASE_SHIFT
from phasewatch.exporter import PHASE_CODES, PrometheusExporter
from phasewatch.synthetic import FIELDS, generate

SHIFT_RUN, ALARM_RUN = "shift-run", "alarm-run"
FIRST_PART = 8  # records fed before the first scrape: inside the detectors' warm-up


def _complete_run(situation: str):
    """The first seed of ``situation`` whose run reports every field (so every panel has data)."""
    for seed in range(20):
        run = generate(situation, seed)
        records = list(run.records())
        if {name for r in records for name in r.values} >= set(FIELDS):
            return records
    pytest.fail(f"no synthetic {situation} run with all of {FIELDS} among seeds 0-19")


def substitute(expr: str, run_regex: str, range_s: int) -> str:
    """Expand the Grafana variables the dashboard uses, as Grafana would before querying."""
    out = expr.replace("$run", run_regex).replace("$__range", f"{range_s}s")
    out = out.replace("$__rate_interval", "1m").replace("$__interval", "1s")
    assert "$" not in out, f"unexpanded variable in {out!r}"
    return out


def _last_values(result) -> dict[tuple, float]:
    """{(label items): last value} of a range-query result."""
    return {tuple(sorted(r["metric"].items())): float(r["values"][-1][1]) for r in result}


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """A Prometheus that has scraped both runs before and after their events."""
    prometheus_binary()  # skip or fail early, before any work
    from phasewatch.monitor import Monitor

    runs = {SHIFT_RUN: _complete_run("clear_shift"), ALARM_RUN: _complete_run("explosion")}
    exporter = PrometheusExporter()
    monitor = Monitor(listeners=[exporter])
    server = exporter.serve(port=0, announce=False)
    prom = PrometheusServer(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{server.port}"])
    try:
        prom.start()
        t0 = time.time()
        for run, records in runs.items():
            for record in records[:FIRST_PART]:
                monitor.observe(run, record.step, record)
        assert monitor.flush(10)
        for run, records in runs.items():
            prom.wait_until(
                f'phasewatch_step{{run="{run}"}}',
                lambda res, s=records[FIRST_PART - 1].step: bool(res) and float(res[0]["value"][1]) == s,
            )
        t_before_events = time.time()
        events = {run: [] for run in runs}
        for run, records in runs.items():
            for record in records[FIRST_PART:]:
                events[run] += monitor.observe(run, record.step, record).events
        assert monitor.flush(10)
        for run, records in runs.items():
            prom.wait_until(
                f'phasewatch_step{{run="{run}"}}',
                lambda res, s=records[-1].step: bool(res) and float(res[0]["value"][1]) == s,
            )
        # one more scrape so that rate() windows hold two samples of the final state
        prom.wait_until("count_over_time(up[1m])", lambda res, n=_scrapes(prom) + 1: _scrapes(prom) >= n)
        yield {"prom": prom, "monitor": monitor, "t0": t0, "t_before_events": t_before_events, "events": events,
               "exporter": exporter}
    finally:
        prom.stop()
        server.close()
        monitor.close()


def _scrapes(prom: PrometheusServer) -> int:
    result = prom.query("count_over_time(up[1m])")
    return int(float(result[0]["value"][1])) if result else 0


def test_the_runs_raised_the_events_the_dashboard_shows(fed):
    kinds = {run: {e.kind for e in events} for run, events in fed["events"].items()}
    assert PHASE_SHIFT in kinds[SHIFT_RUN], f"the monitor found no phase shift in the clear_shift run: {kinds}"
    assert ENTROPY_EXPLOSION in kinds[ALARM_RUN], f"the monitor found no explosion in the explosion run: {kinds}"
    (target,) = fed["prom"].targets()
    assert target["health"] == "up", target


def test_every_dashboard_query_returns_data(fed):
    prom = fed["prom"]
    dashboard = json.loads((PROJECT_ROOT / "dashboards" / "phasewatch.json").read_text())
    end = time.time()
    range_s = int(end - fed["t0"]) + 60
    empty = []
    for where, expr in queries(dashboard):
        result = prom.query_range(substitute(expr, ".*", range_s), fed["t0"] - 1, end, 1.0)
        if not result:
            empty.append(f"{where}: {expr}")
    assert empty == [], "queries without data:\n" + "\n".join(empty)


def test_run_variable_lists_both_runs(fed):
    dashboard = json.loads((PROJECT_ROOT / "dashboards" / "phasewatch.json").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "run")
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]).groups()
    # Grafana resolves label_values() with the series API; ask the same question
    values = fed["prom"].api(f"label/{label}/values", **{"match[]": metric})
    assert set(values) == {SHIFT_RUN, ALARM_RUN}


def test_values_in_prometheus_match_the_monitor(fed):
    prom, monitor = fed["prom"], fed["monitor"]
    for run in (SHIFT_RUN, ALARM_RUN):
        decision = monitor.decision(run)
        (phase,) = prom.query(f'phasewatch_phase{{run="{run}"}}')
        assert float(phase["value"][1]) == PHASE_CODES[decision.phase]
        (alpha,) = prom.query(f'phasewatch_reweight_alpha{{run="{run}"}}')
        assert math.isclose(float(alpha["value"][1]), decision.alpha)
        n_events = {}
        for e in monitor.events(run):
            n_events[e.kind] = n_events.get(e.kind, 0) + 1
        for sample in prom.query(f'phasewatch_events_total{{run="{run}"}}'):
            assert float(sample["value"][1]) == n_events.get(sample["metric"]["kind"], 0)
    (shift,) = prom.query(f'phasewatch_shift_step{{run="{SHIFT_RUN}"}}')
    assert float(shift["value"][1]) == monitor.decision(SHIFT_RUN).shift_step


def test_event_markers_appear_only_after_the_events(fed):
    prom = fed["prom"]
    dashboard = json.loads((PROJECT_ROOT / "dashboards" / "phasewatch.json").read_text())
    annotations = {a["name"]: a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a}
    shift_expr = substitute(annotations["Phase shift"], ".*", 60)
    alarm_expr = substitute(annotations["Health alarms"], ".*", 60)
    before = prom.query_range(shift_expr, fed["t0"] - 1, fed["t_before_events"], 1.0)
    assert before == [], "the phase-shift marker fired before any phase shift"
    after = prom.query_range(shift_expr, fed["t0"] - 1, time.time(), 1.0)
    assert {r["metric"]["run"] for r in after} == {SHIFT_RUN}
    alarms = prom.query_range(alarm_expr, fed["t0"] - 1, time.time(), 1.0)
    assert (ALARM_RUN, ENTROPY_EXPLOSION) in {(r["metric"]["run"], r["metric"]["kind"]) for r in alarms}


def test_prometheus_stores_no_created_series(fed):
    """prometheus_client's ``*_created`` samples would be stored as one more series per counter
    and histogram child (Prometheus 2.x); phasewatch's registry leaves them out."""
    series = fed["prom"].api("series", **{"match[]": '{__name__=~"phasewatch_.+"}'})
    names = {s["__name__"] for s in series}
    assert {"phasewatch_events_total", "phasewatch_records_ingested_total",
            "phasewatch_update_latency_seconds_count"} <= names
    assert sorted(n for n in names if n.endswith("_created")) == []
