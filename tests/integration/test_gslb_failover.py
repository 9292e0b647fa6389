"""Failover, proven with real processes: gslb's answers leave a failed edge and come back.

Three real `edge serve` processes (fleet_helpers.Fleet) sit behind a real `gslb serve` that
probes their admin `/__edge/status` every 0.25 s (timeout 0.25 s, rise 2, fall 2, jitter
0.05 s). A client in London (ECS 192.0.2.0/24, real DNS over UDP) is answered with fra; each
test breaks fra one way (kill -9, SIGSTOP, its only origin gone) and polls the answer until
it names iad, the next nearest edge, then repairs fra and polls until London is back on fra.

The deadlines are the bounds of docs/failover.md, gslb.edgeprobe.detection_bound (for the
origin case plus the edge's own origin-probe bound), with SLACK for a loaded 2-core CI
machine: the polls stop as soon as the answer moves, so the slack only matters when
something is wrong. The measured times are printed (pytest -s shows them).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from gslb.edgeprobe import detection_bound
from tests.integration.fleet_helpers import EDGE_PROBE, HEALTH, Fleet
from tests.integration.gslb_helpers import EDGE_IPS, LONDON

FRA, IAD = EDGE_IPS["fra"], EDGE_IPS["iad"]
SLACK = 3.0  # seconds on top of every bound, for a busy machine (never reached when healthy)

DOWN = detection_bound(HEALTH["interval"], HEALTH["timeout"], HEALTH["jitter"], HEALTH["fall"])
UP = detection_bound(HEALTH["interval"], HEALTH["timeout"], HEALTH["jitter"], HEALTH["rise"])
# The edge's own verdict on its origin (its probes have no jitter here).
ORIGIN_DOWN = detection_bound(EDGE_PROBE["interval"], EDGE_PROBE["timeout"], 0, EDGE_PROBE["fall"])
ORIGIN_UP = detection_bound(EDGE_PROBE["interval"], EDGE_PROBE["timeout"], 0, EDGE_PROBE["rise"])


def london(fleet: Fleet) -> list[str]:
    assert fleet.gslb is not None
    return fleet.gslb.addresses("www.example.test", subnet=LONDON)


def seconds_until(check: Callable[[], bool], what: str, bound: float) -> float:
    """Poll `check` from now until it holds; seconds it took. Fails past bound + SLACK."""
    start = time.monotonic()
    deadline = start + bound + SLACK
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound:.2f}s + {SLACK}s slack")
        time.sleep(0.02)
    return time.monotonic() - start


def fails_over(fleet: Fleet, bound: float, what: str) -> float:
    took = seconds_until(lambda: london(fleet) != [FRA], f"London off fra after {what}", bound)
    assert london(fleet) == [IAD]  # the next nearest edge, not the fallback of everything
    print(f"\n{what}: answers left fra after {took:.3f}s (bound {bound:.2f}s)")
    return took


def comes_back(fleet: Fleet, bound: float, what: str) -> float:
    took = seconds_until(lambda: london(fleet) == [FRA], f"London back on fra after {what}", bound)
    print(f"{what}: answers back on fra after {took:.3f}s (bound {bound:.2f}s)")
    return took


def test_kill_9(fleet: Fleet) -> None:
    fra = fleet.edges["fra"]
    assert london(fleet) == [FRA]
    fra.kill()
    try:
        fails_over(fleet, DOWN, "kill -9")
    finally:
        fra.start()  # same ports, so gslb's status_url reaches it again
    comes_back(fleet, UP, "restart")


def test_sigstop(fleet: Fleet) -> None:
    fra = fleet.edges["fra"]
    assert fra.process is not None
    assert london(fleet) == [FRA]
    # A hung edge accepts connections (the kernel does) and never answers: each probe
    # takes the whole timeout, which the bound counts.
    fra.process.signal(signal.SIGSTOP)
    try:
        fails_over(fleet, DOWN, "SIGSTOP")
    finally:
        fra.process.signal(signal.SIGCONT)
    comes_back(fleet, UP, "SIGCONT")


def test_all_origins_gone(fleet: Fleet) -> None:
    fra = fleet.edges["fra"]
    assert london(fleet) == [FRA]
    fleet.loop_thread.run(fra.origin.stop())
    try:
        # The edge's probes take its only origin out, its status says unhealthy, then
        # gslb's probes take the edge out.
        fails_over(fleet, ORIGIN_DOWN + DOWN, "origin stopped")
        assert fleet.gslb is not None
        _, state = fleet.gslb.http("GET", "/v1/edges/fra")
        assert state["probe"]["last_error"] == "the edge reports unhealthy", state
    finally:
        fleet.loop_thread.run(fra.origin.start())  # the same port
    comes_back(fleet, ORIGIN_UP + UP, "origin back")
