"""grafana/: every dashboard query and alert rule reads metrics the code exports; promtool agrees.

Needs Debian's ``prometheus`` package (``promtool``); the test fails, never skips, without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.observe.metrics import Metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ghl-consumer.json"
ALERTS = GRAFANA / "alerts.yml"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan"}
)
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords, label names or parts of numbers and durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before in ".$":
            continue  # 5m, 1e3, $__rate_interval
        if re.match(r"\s*\(", text[match.end() :]) or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, set[str]]]:
    board = dashboard()
    queries = [
        (f"panel {panel['title']!r}", metric_names(target["expr"]))
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue  # the datasource variable queries no metric
        query = variable["query"]["query"]
        queries.append((f"variable {variable['name']}", set(_LABEL_VALUES.findall(query))))
    return queries


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    return Metrics(integrations={"default": "loc"}, topics=["events"]).series_names()


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, integration) (rate('
        'ghl_http_request_duration_seconds_bucket{job=~"$job", status_class="2xx"}'
        "[$__rate_interval]))) > 1e3 and on (job) ghl_buffered_records offset 5m "
        "unless ghl_nope:recorded"
    )
    assert metric_names(expr) == {
        "ghl_http_request_duration_seconds_bucket",
        "ghl_buffered_records",
        "ghl_nope:recorded",
    }


def test_every_dashboard_query_reads_exported_metrics(exported: frozenset[str]) -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    for where, names in queries:
        assert names, f"{where}: no metric found in its query"
        assert names <= exported, f"{where} queries {sorted(names - exported)}"


def test_every_alert_rule_reads_exported_metrics(exported: frozenset[str]) -> None:
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']} queries {sorted(names - exported)}"


def test_dashboard_covers_what_operators_watch() -> None:
    titles = {panel["title"] for panel in all_panels(dashboard()["panels"])}
    for wanted in (
        "Throughput",
        "Drops by reason",
        "Delivery outcomes",
        "HighLevel latency percentiles",
        "Window budget remaining",
        "Daily budget remaining",
        "Lag per partition",
        "Dead letters by reason",
        "Parked and replayed",
        "OAuth token expiry and state",
        "OAuth refreshes and failures",
        "OAuth reconnects",
        "Identity stitching across partitions",
    ):
        assert wanted in titles


def test_dashboard_queries_go_through_its_datasource_variable() -> None:
    """No hard-coded datasource uid: a `datasource` variable over the Prometheus datasources
    (the provisioned one is the default), so the dashboard imports into any Grafana."""
    board = dashboard()
    variables = board["templating"]["list"]
    [source] = [v for v in variables if v["name"] == "datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [s["type"] for s in provisioned if s.get("isDefault")] == ["prometheus"]
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text())
    assert set(uids) == {board["uid"], "${datasource}"}  # the dashboard's own uid, nothing else
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for variable in variables:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]


def test_alerts_cover_what_the_issue_asks_for() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {
        "GhlPartitionStalled",
        "GhlAuthFailures",
        "GhlRateLimited",
        "GhlDailyBudgetNearlySpent",
        "GhlDeadLettersGrowing",
        "GhlOAuthInstallationBroken",
        "GhlOAuthReconnects",
        "GhlProfileRestoreSlow",
    } <= names
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: apt-get install prometheus (tools/system-deps.sh)"
    return path


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_fire_on_synthetic_series(tmp_path: Path) -> None:
    """``promtool test rules``: the stalled-partition, auth, daily-budget and slow profile
    restore alerts fire when they should, with their annotations rendered, and stay quiet
    otherwise."""
    description = {rule["alert"]: rule["annotations"]["description"] for rule in rules()}
    partition = 'job="c",topic="events",partition="{}"'
    series = [
        # partition 0: work pending, commit point frozen, backlog -> stalled
        (f"ghl_partition_incomplete{{{partition.format(0)}}}", "5x40"),
        (f"ghl_partition_committed_offset{{{partition.format(0)}}}", "100x40"),
        (f"ghl_partition_lag{{{partition.format(0)}}}", "50x40"),
        # partition 1: same backlog but committing -> fine
        (f"ghl_partition_incomplete{{{partition.format(1)}}}", "5x40"),
        (f"ghl_partition_committed_offset{{{partition.format(1)}}}", "100+10x40"),
        (f"ghl_partition_lag{{{partition.format(1)}}}", "50x40"),
        ('ghl_integration_healthy{job="c",integration="acme"}', "1x10 0x30"),
        ('ghl_ratelimit_daily_remaining{job="c",location="loc-acme"}', "30000-1000x40"),
        ('ghl_buffered_records{job="c"}', "0x40"),
        ('ghl_oauth_installation_broken{job="c",installation="agency"}', "0x10 1x30"),
        (
            'ghl_oauth_reconnects_total{job="c",installation="agency",trigger="auto",'
            'result="ok"}',
            "0x10 1x10 3x20",
        ),
        (
            'ghl_oauth_reconnects_total{job="c",installation="agency",trigger="command",'
            'result="ok"}',
            "0x10 5x30",
        ),
        # partition 2's state rebuilt in 5 s, then (moved back after it grew) in 150 s
        ('ghl_profile_restore_seconds{job="c",partition="2"}', "5x10 150x30"),
        ('ghl_profile_restore_seconds{job="c",partition="3"}', "30x40"),
    ]
    expectations = [
        ("GhlPartitionStalled", "30m", [{
            "exp_labels": {"severity": "critical", "job": "c", "topic": "events",
                           "partition": "0"},
            "exp_annotations": {"summary": "Partition events[0] makes no progress",
                                "description": description["GhlPartitionStalled"]},
        }]),
        ("GhlIntegrationUnauthorized", "5m", []),
        ("GhlIntegrationUnauthorized", "20m", [{
            "exp_labels": {"severity": "critical", "job": "c", "integration": "acme"},
            "exp_annotations": {
                "summary": "HighLevel refuses the token of integration acme",
                "description": description["GhlIntegrationUnauthorized"],
            },
        }]),
        ("GhlDailyBudgetNearlySpent", "5m", []),
        ("GhlDailyBudgetNearlySpent", "20m", [{
            "exp_labels": {"severity": "warning", "location": "loc-acme"},
            "exp_annotations": {
                "summary": "Location loc-acme has spent 90% of its daily budget",
                "description": "10k requests left today. At 0 its events are held until the "
                "budget resets.",
            },
        }]),
        ("GhlConsumerAbsent", "20m", []),
        ("GhlOAuthInstallationBroken", "11m", []),
        ("GhlOAuthInstallationBroken", "20m", [{
            "exp_labels": {"severity": "critical", "job": "c", "installation": "agency"},
            "exp_annotations": {
                "summary": "OAuth installation agency is broken",
                "description": description["GhlOAuthInstallationBroken"].replace(
                    "{{ $labels.installation }}", "agency"
                ),
            },
        }]),
        ("GhlOAuthReconnects", "15m", []),  # one automatic reconnect: nothing to say
        ("GhlOAuthReconnects", "40m", [{
            "exp_labels": {"severity": "warning", "job": "c", "installation": "agency"},
            "exp_annotations": {
                "summary": "OAuth installation agency keeps losing its refresh token",
                "description": description["GhlOAuthReconnects"].replace(
                    "{{ $value | humanize }}", "3"
                ),
            },
        }]),
    ]
    expectations += [
        ("GhlProfileRestoreSlow", "5m", []),
        ("GhlProfileRestoreSlow", "20m", [{
            "exp_labels": {"severity": "warning", "job": "c", "partition": "2"},
            "exp_annotations": {
                "summary": "Restoring profile partition 2 took 2m 30s",
                "description": description["GhlProfileRestoreSlow"],
            },
        }]),
    ]
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    spec = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [
                {"eval_time": at, "alertname": name, "exp_alerts": alerts}
                for name, at, alerts in expectations
            ],
        }],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
