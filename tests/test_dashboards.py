"""The shipped Grafana dashboard and the docker-compose / provisioning files.

The dashboard is validated against Grafana's own JSON Schemas (../shared/data/grafana-jsonschema:
dashboard v1, the time-series / stat / state-timeline panel options and Prometheus queries),
every query is checked against the metrics the exporter really emits, and the panels are
checked for what makes a dashboard explain itself (descriptions, units, thresholds, phase value
mappings). No Docker engine runs here, so the compose and provisioning files are checked as
far as files can be: YAML structure, paths that exist, values that must agree across files,
and ``promtool check config`` on the Prometheus configuration.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import PROJECT_ROOT, shared_path
from phasewatch.dashboard import DASHBOARD_UID, DATASOURCE_UID, build_dashboard, dashboard_json, queries
from phasewatch.events import PHASE_SHIFT
from phasewatch.exporter import DEFAULT_METRICS_PORT, PHASE_CODES, PrometheusExporter, metric_names

DASHBOARDS = PROJECT_ROOT / "dashboards"
SHIPPED = DASHBOARDS / "phasewatch.json"
PANEL_SCHEMAS = {"timeseries": "timeseries", "stat": "stat", "state-timeline": "statetimeline"}


def _schema(name: str) -> dict:
    return json.loads(shared_path(f"grafana-jsonschema/{name}.jsonschema.json").read_text())


def _validator(name: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    schema = _schema(name)
    if definition is not None:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(schema)


def schema_errors(dashboard: dict) -> list[str]:
    """Every schema violation in a dashboard: the dashboard model, then each panel's
    plugin options, custom field config and Prometheus targets."""
    errors = [f"dashboard {list(e.absolute_path)}: {e.message[:200]}"
              for e in _validator("dashboard").iter_errors(dashboard)]
    prometheus = _validator("prometheus")
    for panel in dashboard.get("panels", []):
        name = PANEL_SCHEMAS.get(panel.get("type"))
        if name is None:
            errors.append(f"panel {panel.get('id')}: type {panel.get('type')!r} has no schema here")
            continue
        where = f"panel {panel.get('id')} ({panel.get('title')})"
        errors += [f"{where} options {list(e.absolute_path)}: {e.message[:200]}"
                   for e in _validator(name, "Options").iter_errors(panel.get("options", {}))]
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            field_schema = "FieldConfig" if "FieldConfig" in _schema(name)["definitions"] else None
            if field_schema is None:
                errors.append(f"{where}: custom field config given but {name} defines none")
            else:
                errors += [f"{where} custom {list(e.absolute_path)}: {e.message[:200]}"
                           for e in _validator(name, field_schema).iter_errors(custom)]
        for target in panel.get("targets", []):
            errors += [f"{where} target {target.get('refId')}: {e.message[:200]}"
                       for e in prometheus.iter_errors(target)]
    return errors


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(SHIPPED.read_text())


@pytest.fixture(scope="module")
def populated_exporter() -> PrometheusExporter:
    """An exporter holding one series of every family, to read real label sets from."""
    from phasewatch.events import Decision, DetectorReading, Event, Observation
    from phasewatch.record import StepRecord

    ex = PrometheusExporter()
    values = {"entropy": 1.0, "entropy/planning": 1.2, "entropy/execution": 0.8, "semantic_entropy": 2.0,
              "nll/planning": 1.0, "nll/execution": 0.5, "planning_frac": 0.1, "reward": 0.4,
              "response_length": 300.0}
    event = Event(PHASE_SHIFT, 5, 3, "semantic_entropy", "cusum_up", 11.0, 10.0)
    ex(Observation("r", StepRecord(5, values), Decision(5, "planning", 0.1, 5, (event,)),
                   (DetectorReading("cusum_up", "semantic_entropy", 11.0, 10.0),)))
    return ex


def test_shipped_json_is_the_generated_dashboard():
    assert SHIPPED.read_text() == dashboard_json(), (
        "dashboards/phasewatch.json is out of date: run `phasewatch dashboards export -o dashboards/phasewatch.json`"
    )


def test_dashboard_is_valid_against_grafana_schemas(dashboard):
    assert dashboard["schemaVersion"] == 42
    assert schema_errors(dashboard) == []


def test_schema_check_catches_legacy_and_misspelt_fields(dashboard):
    legacy = copy.deepcopy(dashboard)
    legacy["rows"] = []  # pre-v5 dashboards had rows; schema v1 forbids them
    broken_panel = copy.deepcopy(dashboard)
    broken_panel["panels"][0]["options"]["colourMode"] = "value"
    broken_target = copy.deepcopy(dashboard)
    del broken_target["panels"][6]["targets"][0]["expr"]
    for bad in (legacy, broken_panel, broken_target):
        assert schema_errors(bad), "the schema check accepted an invalid dashboard"


# -- queries name real metrics ------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "inf", "nan"}


def metrics_in(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (identifiers that are not functions,
    keywords, label names, label values or durations)."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)  # grouping labels
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # range durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_extraction_sees_what_it_should():
    assert metrics_in('sum by (kind) (increase(phasewatch_events_total{run=~"$run", kind!="x"}[$__range]))') \
        == {"phasewatch_events_total"}
    assert metrics_in("time() - foo_seconds{a=\"b\"} / bar") == {"foo_seconds", "bar"}


def test_every_query_uses_only_metrics_phasewatch_exports(dashboard):
    exported = metric_names()
    found = queries(dashboard)
    assert len(found) >= 20
    for where, expr in found:
        used = metrics_in(expr)
        assert used, f"{where}: no metric in {expr!r}"
        assert used <= exported, f"{where}: {sorted(used - exported)} are not exported by phasewatch"
        assert 'run=~"$run"' in expr, f"{where}: query ignores the run selector: {expr!r}"


def test_legends_and_variables_name_labels_the_series_carry(dashboard, populated_exporter):
    labels_of: dict[str, set[str]] = {}
    for family in populated_exporter.registry.collect():
        for sample in family.samples:
            labels_of.setdefault(sample.name, set()).update(sample.labels)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            grouping = re.findall(r"\bby\s*\(([^)]*)\)", expr)
            if grouping:
                available = {name.strip() for name in grouping[-1].split(",")}
            elif re.match(r"\s*sum\s*\(", expr):
                available = set()
            else:
                available = set().union(*(labels_of.get(m, set()) for m in metrics_in(expr)))
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert used <= available, f"panel {panel['title']!r}: legend uses {used - available}, series carry {available}"
    run_variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "run")
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", run_variable["query"]).groups()
    assert metric in metric_names() and label in labels_of[metric]


# -- the dashboard explains itself --------------------------------------------------------


def _panels_using(dashboard, metric, panel_type=None, contains=""):
    return [p for p in dashboard["panels"]
            if (panel_type is None or p["type"] == panel_type)
            and any(metric in t["expr"] and contains in t["expr"] for t in p.get("targets", []))]


def test_required_panels_are_present(dashboard):
    assert _panels_using(dashboard, "phasewatch_token_entropy_nats", "timeseries")
    assert _panels_using(dashboard, "phasewatch_semantic_entropy_nats", "timeseries")
    assert _panels_using(dashboard, "phasewatch_tokens_ratio", "timeseries", 'token_class="planning"')
    assert _panels_using(dashboard, "phasewatch_phase", "state-timeline")
    assert _panels_using(dashboard, "phasewatch_reweight_alpha", "timeseries")
    assert _panels_using(dashboard, "phasewatch_detector_statistic", "timeseries", "phasewatch_detector_threshold")
    assert _panels_using(dashboard, "phasewatch_events_total", contains='kind!="phase_shift"')
    assert _panels_using(dashboard, "phasewatch_records_ingested_total")
    assert _panels_using(dashboard, "phasewatch_records_dropped_total")
    assert _panels_using(dashboard, "phasewatch_update_latency_seconds_bucket")


def test_phase_events_are_marked_on_the_time_series(dashboard):
    annotations = dashboard["annotations"]["list"]
    prometheus = [a for a in annotations if a.get("datasource", {}).get("type") == "prometheus"]
    shift = [a for a in prometheus if 'kind="phase_shift"' in a["expr"]]
    alarms = [a for a in prometheus if 'kind!="phase_shift"' in a["expr"]]
    assert shift and alarms and all(a["enable"] for a in shift + alarms)
    for a in prometheus:
        assert a["target"]["expr"] == a["expr"]
    # the built-in Grafana annotations show the events posted by GrafanaAnnotator
    assert any(a.get("builtIn") == 1 and a.get("type") == "dashboard" for a in annotations)


def test_every_panel_has_a_description_unit_and_thresholds(dashboard):
    for panel in dashboard["panels"]:
        title = panel["title"]
        assert len(panel.get("description", "")) >= 120, f"{title!r}: description too thin to explain the panel"
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{title!r}: no unit"
        assert defaults.get("thresholds", {}).get("steps"), f"{title!r}: no thresholds"
        assert defaults["thresholds"]["steps"][0]["value"] is None, f"{title!r}: first threshold step must be the base"


def test_phase_panels_map_every_phase_code_to_its_name(dashboard):
    phase_panels = _panels_using(dashboard, "phasewatch_phase")
    assert {p["type"] for p in phase_panels} == {"stat", "state-timeline"}
    for panel in phase_panels:
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        assert mapping["type"] == "value"
        for phase, code in PHASE_CODES.items():
            assert mapping["options"][str(code)]["text"] == phase


def test_entropy_units_are_nats_and_fractions_are_ratios(dashboard):
    for metric, unit in [("phasewatch_token_entropy_nats", "suffix: nats"),
                         ("phasewatch_semantic_entropy_nats", "suffix: nats"),
                         ("phasewatch_tokens_ratio", "percentunit"),
                         ("phasewatch_update_latency_seconds_bucket", "s")]:
        for panel in _panels_using(dashboard, metric):
            assert panel["fieldConfig"]["defaults"]["unit"] == unit, panel["title"]


def test_datasource_is_a_variable_defaulting_to_the_provisioned_uid(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    assert build_dashboard(datasource_uid="mine")["templating"]["list"][0]["current"]["value"] == "mine"


def test_layout_has_unique_ids_and_no_overlapping_panels(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_uid_is_validated():
    assert build_dashboard()["uid"] == DASHBOARD_UID
    with pytest.raises(ValueError, match="uid"):
        build_dashboard(uid="x" * 41)


# -- provisioning, Prometheus config, docker compose ----------------------------------------


def _yaml(path: Path):
    assert path.is_file(), f"missing {path}"
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(DASHBOARDS / "docker-compose.yml")


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path (relative to dashboards/) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = source
    return out


def test_compose_mounts_exist_and_wire_the_services_together(compose):
    services = compose["services"]
    assert set(services) >= {"prometheus", "grafana"}
    for name, service in services.items():
        assert service["image"].split(":")[-1] not in ("", "latest"), f"{name}: pin the image version"
        for target, source in _mounts(service).items():
            assert (DASHBOARDS / source).exists(), f"{name}: mounts {source}, which does not exist"
    prom_mounts = _mounts(services["prometheus"])
    config_arg = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    assert prom_mounts[config_arg.split("=", 1)[1]] == "./prometheus.yml"
    graf_mounts = _mounts(services["grafana"])
    assert graf_mounts["/etc/grafana/provisioning"] == "./provisioning"
    # the dashboard provider reads the folder the dashboard JSON is mounted into
    provider = _yaml(DASHBOARDS / "provisioning/dashboards/phasewatch.yml")["providers"][0]
    dashboard_target = next(t for t, s in graf_mounts.items() if s == "./phasewatch.json")
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    assert provider["type"] == "file"
    # Grafana reaches Prometheus where Prometheus listens
    listen = next(a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address="))
    datasource = _yaml(DASHBOARDS / "provisioning/datasources/phasewatch.yml")["datasources"][0]
    assert datasource["url"] == "http://" + listen.split("=", 1)[1]
    # host networking: phasewatch binds 127.0.0.1, unreachable from a bridge network
    assert services["prometheus"].get("network_mode") == "host"


def test_datasource_provisioning_matches_the_dashboard_and_scrape_interval():
    doc = _yaml(DASHBOARDS / "provisioning/datasources/phasewatch.yml")
    assert doc["apiVersion"] == 1
    (datasource,) = doc["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["isDefault"] is True
    scrape = _yaml(DASHBOARDS / "prometheus.yml")["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape


def test_prometheus_config_scrapes_the_default_metrics_port():
    config = _yaml(DASHBOARDS / "prometheus.yml")
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"127.0.0.1:{DEFAULT_METRICS_PORT}" in targets
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])


def test_promtool_accepts_the_prometheus_config():
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)
    if promtool is None:
        if os.environ.get("PHASEWATCH_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("PHASEWATCH_REQUIRE_PROMETHEUS=1 but promtool (Debian package prometheus) is missing")
        pytest.skip("promtool is not installed (it comes with Debian's prometheus package)")
    result = subprocess.run([promtool, "check", "config", str(DASHBOARDS / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
