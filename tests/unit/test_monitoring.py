"""The operator's kit in `deploy/monitoring` queries only metrics projector serves, is valid for
Prometheus (promtool) and the Prometheus Operator, and fires the alerts it promises.

promtool comes from Debian's `prometheus` package (`.ci/run` installs it); a missing promtool
skips those tests on a developer's machine and fails them in CI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from docgen import reference
from tests.support.postgres import give_up

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = MONITORING / "prometheus-rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
RULE_TESTS = Path(__file__).parent / "monitoring" / "alerts-test.yaml"
DOCS = ROOT / "docs"
RUNBOOK_BASE = "http://127.0.0.1:8000/"  # where `make docs` serves the site

# Prometheus' own series, which a rule may use beside projector's: `up` is the scrape's health.
PROMETHEUS_SERIES = frozenset({"up"})
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: what is left once label matchers, ranges, strings,
    Grafana's variables, functions and grouping clauses are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in PROMQL_WORDS}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            yield f"variable {variable['name']}", re.sub(r"label_values\((.*), \w+\)", r"\1", query)


def rules(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in document["groups"] for rule in group["rules"]]


def plain_rules() -> list[dict[str, Any]]:
    return rules(yaml.safe_load(RULES.read_text()))


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    words = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", words)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        give_up("promtool is not installed (apt-get install prometheus)")
    return found


def run_promtool(*args: str) -> str:
    done = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# -- the dashboard ----------------------------------------------------------------------------


def test_every_metric_the_dashboard_queries_is_one_projector_serves() -> None:
    served = reference.metric_series()
    for title, expr in dashboard_queries():
        unknown = metric_names(expr) - served
        assert not unknown, f"panel {title!r} queries {unknown}, which projector does not serve"


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    queried = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    wanted = {
        "projector_events_handled_total",  # events per second
        "projector_lag_events",
        "projector_lag_seconds",
        "projector_streams_retrying",
        "projector_streams_parked",
        "projector_streams_stuck",
        "projector_handler_failures_total",  # failing calls, each retried
        "projector_handler_duration_seconds_bucket",  # handler latency
        "projector_database_outages_total",
        "projector_reconnects_total",
        "projector_buckets_owned",  # elastic members and their buckets
    }
    assert wanted <= queried, f"no panel shows {wanted - queried}"


def test_the_dashboards_panels_have_ids_of_their_own_and_fit_the_grid() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions only within rules: each query becomes a recording rule, with
    # Grafana's variables given the values Grafana would.
    grafana = {"$__rate_interval": "1m", "$group": ".*", "$category": ".*"}
    recorded = []
    for index, (_, expr) in enumerate(dashboard_queries()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        recorded.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))

    run_promtool("check", "rules", str(path))


# -- the alert rules --------------------------------------------------------------------------


def test_the_rules_alert_on_what_issue_25_asks_for() -> None:
    alerts = {rule["alert"] for rule in plain_rules()}
    assert alerts == {
        "ProjectorLagGrowing",
        "ProjectorStreamParked",
        "ProjectorStreamStuck",
        "ProjectorRunnerDown",
        "ProjectorBucketsUnowned",
        "ProjectorDatabaseOutage",
    }


def test_every_metric_a_rule_uses_is_one_projector_serves() -> None:
    served = reference.metric_series() | PROMETHEUS_SERIES
    for rule in plain_rules():
        unknown = metric_names(rule["expr"]) - served
        assert not unknown, f"{rule['alert']} uses {unknown}, which projector does not serve"


def test_every_rule_has_a_runbook_on_a_section_of_the_docs() -> None:
    for rule in plain_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        path, _, anchor = url.removeprefix(RUNBOOK_BASE).partition("#")
        page = DOCS / (path.rstrip("/") + ".md")
        assert page.exists(), f"{rule['alert']}: no page {page}"
        headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
        anchors = {slug(heading) for heading in headings}
        assert anchor in anchors, f"{rule['alert']}: {page.name} has no section #{anchor}"
        assert anchor == rule["alert"].lower()


def test_promtool_accepts_the_rules_and_the_prometheusrules_spec(tmp_path: Path) -> None:
    spec = tmp_path / "prometheusrule-spec.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]))

    for path in (RULES, spec):
        assert "SUCCESS: 6 rules found" in run_promtool("check", "rules", str(path))


def test_the_alerts_fire_on_sample_series_as_promised() -> None:
    # Parked, lag growing (and not when shrinking), a member with no runner, an outage, and
    # buckets with no member: see the cases in tests/unit/monitoring/alerts-test.yaml.
    run_promtool("test", "rules", str(RULE_TESTS))


def test_the_prometheusrule_holds_the_same_rules_as_the_plain_file() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())

    assert resource["spec"] == yaml.safe_load(RULES.read_text())


# What the Prometheus Operator's CRD (monitoring.coreos.com/v1, PrometheusRule) accepts, for the
# fields a rule file has. kubernetes-validate knows only the built-in API, so the CRD's schema
# is written out here from the operator's API reference, with unknown fields refused as
# `kubectl apply --validate=strict` refuses them.
_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _STRINGS,
                "annotations": _STRINGS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "query_offset": {"type": "string", "pattern": _DURATION},
                            "limit": {"type": "integer"},
                            "labels": _STRINGS,
                            "partial_response_strategy": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": _DURATION},
                                        "keep_firing_for": {
                                            "type": "string",
                                            "pattern": _DURATION,
                                        },
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def test_the_prometheusrule_is_valid_for_the_prometheus_operators_crd() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())

    jsonschema.validate(resource, PROMETHEUS_RULE_SCHEMA)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (group) (rate(projector_events_read_total{group=~"$g"}[5m]))',
            {"projector_events_read_total"},
        ),
        ("a > 60 and on (group, job) increase(b[2m]) > 0", {"a", "b"}),
        ("time() - projector_up unless on (group) up == 1", {"projector_up", "up"}),
    ],
)
def test_metric_names_are_what_an_expression_selects(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
