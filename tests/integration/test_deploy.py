"""The shipped Grafana dashboard and Prometheus rules: promtool accepts and tests the rules, and
every expression names only series (and labels) that a running bridge exports."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import promtool
import pytest
import yaml
from brokers import Mosquitto
from prometheus_client.parser import text_string_to_metric_families
from test_bridge_run import (  # the fixture is used by name
    BridgeProcess,
    bridges,  # noqa: F401
    config,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "customer-bridge-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "customer-bridge-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "customer-bridge.json"
# Prometheus adds these to every scraped series; `le` and `quantile` belong to histograms.
SCRAPE_LABELS = frozenset({"instance", "job", "le"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NAME = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*(\w+)\s*\)$")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    found = _LABEL_VALUES.match(expr.strip())
    if found:  # a Grafana variable query, not PromQL
        return {found.group(1)}, {found.group(2)}
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for matchers in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(matchers))
    text = _RANGE.sub("", _MATCHERS.sub("", text))
    for grouping in _GROUPING.findall(text):
        labels.update(label.strip() for label in grouping.split(",") if label.strip())
    text = _GROUPING.sub("", text)
    metrics = set()
    for match in _NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        if match.group() not in _KEYWORDS and not rest.startswith("("):
            metrics.add(match.group())
    return metrics, labels


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets, variables, annotations."""
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs: list[str] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(document["panels"]):
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    exprs.extend(a["expr"] for a in document["annotations"]["list"] if "expr" in a)
    return exprs


def rule_exprs() -> dict[str, str]:
    """Each alert's expression, by alert name."""
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in document["groups"] for rule in group["rules"]}


@pytest.fixture
def exported(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> dict[str, set[str]]:
    """The sample names of a running bridge's /metrics, each with the label names it has."""
    sinks = [
        {"type": "jsonl", "name": "file", "path": str(tmp_path / "out.jsonl")},
        {"type": "python", "name": "crm", "handler": "handlers:Refusing"},
    ]
    bridge = bridges(config(mosquitto, sinks)).start().wait_ready()
    port = bridge.wait_event("started")[0]["health_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    """`promtool check rules` accepts the file; `promtool test rules` fires each alert when it
    should and none on a healthy bridge."""
    if promtool.promtool() is None:
        pytest.skip("promtool is not installed (scripts/test fetches it)")
    checked = promtool.check("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in checked.stdout
    tested = promtool.check("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_expression_names_only_exported_series(exported: dict[str, set[str]]) -> None:
    """Each metric and label the dashboard and the rules query is one the bridge exports."""
    labels_of_all = set().union(*exported.values()) | SCRAPE_LABELS
    unknown: list[str] = []
    used: set[str] = set()
    for expr in [*dashboard_exprs(), *rule_exprs().values()]:
        metrics, labels = names_in(expr)
        assert metrics, f"no metric found in {expr!r}"
        used |= metrics
        unknown += [f"{name} in {expr!r}" for name in metrics if name not in exported]
        unknown += [f"label {name} in {expr!r}" for name in labels - labels_of_all]
    assert unknown == []
    assert len(used) >= 20  # the parser found the dashboard's series, not a handful


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    """Intake, forwarded / rejected / alarms, spool, dead letters, per-sink delivery, retries,
    latency, readiness and the process each have a panel."""
    used = set().union(*(names_in(expr)[0] for expr in dashboard_exprs()))
    assert {
        "bridge_messages_received_total",
        "bridge_records_forwarded_total",
        "bridge_rejections_total",
        "bridge_alarms_total",
        "bridge_spool_pending",
        "bridge_dead_letters_stored",
        "bridge_sink_retries_total",
        "bridge_processing_seconds_bucket",
        "bridge_delivery_seconds_bucket",
        "bridge_ready",
        "bridge_ready_check",
        "process_cpu_seconds_total",
    } <= used
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in document["panels"])


def test_the_rules_alert_on_what_needs_a_person() -> None:
    """Not ready, back-pressure, growing dead letters, a failing sink and the watchdog each
    have an alert reading the series that says so."""
    reads = {alert: names_in(expr)[0] for alert, expr in rule_exprs().items()}
    assert reads["CustomerBridgeNotReady"] == {"bridge_ready_check"}
    assert reads["CustomerBridgeBackPressure"] == {"bridge_backpressure"}
    assert reads["CustomerBridgeDeadLettersGrowing"] == {"bridge_dead_letters_stored"}
    assert reads["CustomerBridgeSinkFailing"] == {"bridge_sink_failing"}
    assert reads["CustomerBridgeWatchdog"] == {
        "bridge_heartbeat_age_seconds",
        "bridge_heartbeat_limit_seconds",
    }


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        (
            'sum by (sink, le) (rate(a_bucket{instance=~"$i", x="{b}"}[$__rate_interval]))',
            {"a_bucket"},
            {"sink", "le", "instance", "x"},
        ),
        ("b > ignoring(component) group_left c offset 30m", {"b", "c"}, {"component"}),
        ("time() - max by (instance) (d)", {"d"}, {"instance"}),
        ("label_values(e, instance)", {"e"}, {"instance"}),
        ("histogram_quantile(0.95, f)", {"f"}, set()),
    ],
)
def test_the_expression_reader_finds_metrics_and_labels(
    expr: str, metrics: set[str], labels: set[str]
) -> None:
    """The reader the checks above rely on: functions, keywords, durations and strings are
    not taken for metric names."""
    assert names_in(expr) == (metrics, labels)
