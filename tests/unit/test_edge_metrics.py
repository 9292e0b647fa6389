"""edge.metrics: what the hot path counts plainly comes out as prometheus_client would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import Metrics, OriginLatency

A, B = "http://a.test:8080", "http://b.test"
# On a bound (counted in it: le), between bounds, past the last (+Inf only), zero.
SECONDS = [0.005, 0.0051, 0.003, 0.25, 0.7, 30.0, 31.5, 0.0, 2.5, 0.01]
NAME = "edge_origin_latency_seconds"


def _latency(registry: CollectorRegistry) -> tuple[str, list[tuple[str, tuple, float]]]:
    """The family's type and samples as scraped, `_created` left out."""
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == NAME:
            samples = [
                (s.name, tuple(sorted(s.labels.items())), s.value)
                for s in family.samples
                if not s.name.endswith("_created")
            ]
            return family.type, sorted(samples)
    raise AssertionError(f"{NAME} not exposed")


def test_origin_latency_is_exposed_as_prometheus_clients_histogram() -> None:
    ours = Metrics()
    reference = CollectorRegistry()
    histogram = Histogram(
        NAME, "latency", ["origin"], registry=reference, buckets=OriginLatency.BOUNDS
    )
    for i, seconds in enumerate(SECONDS):
        origin = A if i % 3 else B
        ours.origin_latency.observe(origin, seconds)
        histogram.labels(origin).observe(seconds)
    kind, got = _latency(ours.registry)
    assert (kind, got) == _latency(reference)
    assert kind == "histogram"
    # B: 0.005 (on the bound), 0.25, 31.5 (past the last), 0.01
    counts = {labels: v for name, labels, v in got if name == NAME + "_bucket"}
    assert counts[(("le", "0.005"), ("origin", B))] == 1
    assert counts[(("le", "30.0"), ("origin", B))] == 3
    assert counts[(("le", "+Inf"), ("origin", B))] == 4
    sums = {labels: v for name, labels, v in got if name == NAME + "_sum"}
    assert sums[(("origin", B),)] == pytest.approx(0.005 + 0.25 + 31.5 + 0.01)


def test_no_origin_asked_yet_exposes_an_empty_family() -> None:
    exposed = generate_latest(Metrics().registry).decode()
    assert f"# TYPE {NAME} histogram" in exposed
    assert f"{NAME}_bucket" not in exposed
