"""The monitoring kit (monitoring/): valid for promtool, and naming only metrics that exist.

promtool (Debian's `prometheus` package, in the Makefile's APT_TEST_PACKAGES) checks the
rules and the scrape config and runs the rules' unit tests. Then every metric name the
alert rules, the Grafana dashboard and docs/monitoring.md use must be exported by a real
running gslb or a real running edge: both are scraped here (a fleet_helpers fleet), and
their metric families (with the _total, _bucket, _sum, _count names of counters and
histograms) are compared with the names in the expressions. Recording rules the dashboard
reads must be in the rules; the alerts docs/monitoring.md names must be the kit's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.fleet_helpers import Fleet
from tests.integration.gslb_helpers import ROOT

KIT = ROOT / "monitoring"
# A metric name of ours: gslb_... or edge_..., not inside a recording rule's name.
NAME = re.compile(r"(?<![\w:])((?:gslb|edge)_[a-z0-9_]+)(?![\w:])")
RECORDED = re.compile(r"\b(geoedge:[a-z0-9_]+:[a-z0-9_]+)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (make apt-test installs Debian's prometheus)")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, check=False, cwd=KIT
    )


def test_promtool_accepts_the_rules_the_config_and_the_rule_tests() -> None:
    for args in (
        ("check", "rules", "alerts.yml"),
        ("check", "config", "prometheus.yml"),
        ("test", "rules", "alerts_test.yml"),
    ):
        done = promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def rule_exprs() -> list[str]:
    doc = yaml.safe_load((KIT / "alerts.yml").read_text(encoding="utf-8"))
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    doc = yaml.safe_load((KIT / "alerts.yml").read_text(encoding="utf-8"))
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def dashboard_exprs() -> list[str]:
    doc = json.loads((KIT / "grafana-dashboard.json").read_text(encoding="utf-8"))

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(doc))


def names_in(exprs: Iterable[str]) -> set[str]:
    return {m.group(1) for e in exprs for m in NAME.finditer(e)}


def exported(url: str) -> set[str]:
    """Every sample name the /metrics at `url` can carry (families without samples too)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(text):
        out.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return out


def test_every_metric_the_kit_uses_is_exported(fleet: Fleet) -> None:
    assert fleet.gslb is not None
    edge = fleet.edges["fra"]
    edge.get("/")  # one request, so the per-origin series exist too
    gslb = exported(fleet.gslb.api + "/metrics")
    edges = exported(edge.status_url.removesuffix("/__edge/status") + "/metrics")
    assert "gslb_pool_fallback" in gslb and "edge_requests_total" in edges
    # docs/monitoring.md: the names in its code spans (expressions, metric names).
    page = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    in_page = re.findall(r"`([^`\n]+)`", page)
    for what, exprs in (
        ("alerts.yml", rule_exprs()),
        ("the dashboard", dashboard_exprs()),
        ("docs/monitoring.md", in_page),
    ):
        used = names_in(exprs)
        assert used, what
        missing = sorted(used - gslb - edges)
        assert not missing, f"{what} uses metrics nobody exports: {missing}"
    wanted = {m.group(1) for e in dashboard_exprs() for m in RECORDED.finditer(e)}
    assert wanted <= recorded(), f"the dashboard reads unrecorded series {wanted - recorded()}"
    # The alerts the kit promises, by name.
    doc = yaml.safe_load((KIT / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "EdgeDown",
        "PoolOnFallback",
        "OriginDown",
        "HitRatioDrop",
        "RateLimitingDropping",
        "EdgeProbeFailures",
    } <= alerts
    # The alerts docs/monitoring.md names as the kit's (in its paragraph on the kit).
    kit = page[page.index("The monitoring kit in") :].split("\n\n", 1)[0]
    named = {n for n in re.findall(r"`([^`\n]+)`", kit) if re.fullmatch(r"(?:[A-Z][a-z]+)+", n)}
    assert named and named <= alerts, named - alerts
