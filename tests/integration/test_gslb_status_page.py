"""The status page at GET / of the gslb API, in a real browser.

A real `gslb serve` process probes three fake edges (real HTTP status servers on
127.0.0.1, tests/integration/status_helpers.py) and knows two more whose state is set
through the API; headless Chromium (Debian's chromium and chromium-driver, driven by
selenium) loads the page. The test checks that every edge is drawn where it is with its
state, that the map and the catchment are drawn, then stops one edge's status server and
watches the page turn that edge down and list the change with its reason, and asks the
page's explain form who answers a London client now. Every wait is bounded.

The screenshot goes to the test's tmp_path; with GEOEDGE_SCREENSHOT=FILE set it is also
written there (how docs/status-page.png is made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.gslb_helpers import GslbProcess, serving
from tests.integration.status_helpers import (
    HEALTHY,
    LoopThread,
    StatusServer,
    edge_toml,
    eventually,
    status_servers,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 20.0  # seconds: probes every 0.25 s (fall 2), the page polls every 3 s

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make apt-test installs them)",
)

PROBED = {"fra": (50.11, 8.68), "iad": (39.04, -77.49), "nrt": (35.68, 139.69)}
API_ONLY = {"syd": (-33.87, 151.21), "gru": (-23.55, -46.63)}

CONFIG = """
[server]
listen = ["127.0.0.1:0"]

[api]
listen = "127.0.0.1:0"

[geo]
database = "{geo_db}"

[health]
interval = 0.25
timeout = 0.25
rise = 2
fall = 2
jitter = 0.05

[[zone]]
origin = "example.test."
soa = {{ mname = "ns1", rname = "hostmaster" }}
records = ["@ NS ns1", "ns1 A 127.0.0.1", "alias CNAME www"]
{edges}
[[pool]]
name = "www.example.test."
edges = ["fra", "iad", "nrt", "syd", "gru"]

[[pool]]
name = "weighted.example.test."
edges = ["fra", "iad"]
policy = "weighted"

[[pool]]
name = "backup.example.test."
edges = ["nrt", "syd"]
policy = "failover"
"""


def render(geo_db: Path, urls: dict[str, str]) -> str:
    edges = [
        edge_toml(name, f"127.0.0.{11 + i}", lat, lon, urls.get(name))
        for i, (name, (lat, lon)) in enumerate({**PROBED, **API_ONLY}.items())
    ]
    return CONFIG.format(geo_db=str(geo_db), edges="\n".join(edges))


@pytest.fixture(scope="module")
def servers(loop_thread: LoopThread) -> Iterator[dict[str, StatusServer]]:
    with status_servers(loop_thread, PROBED) as started:
        yield started


@pytest.fixture(scope="module")
def gslb(
    tmp_path_factory: pytest.TempPathFactory, geo_db: Path, servers: dict[str, StatusServer]
) -> Iterator[GslbProcess]:
    text = render(geo_db, {n: s.url for n, s in servers.items()})
    with serving(tmp_path_factory.mktemp("status-page"), text) as proc:
        yield proc


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1440,1350",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path / "chromedriver.log"
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise AssertionError(f"chromium did not start: {exc}\n{tail}") from exc
    try:
        yield driver
    finally:
        driver.quit()


# The page redraws itself every few seconds, so element handles go stale: it is read in
# one script run, atomically.
_READ = """
const q = (s) => Array.from(document.querySelectorAll(s));
return {
  circles: Object.fromEntries(q("#edges circle").map((c) => [c.dataset.edge, {
    status: c.dataset.status, cx: +c.getAttribute("cx"), cy: +c.getAttribute("cy"),
    r: +c.getAttribute("r")}])),
  rows: Object.fromEntries(q("#edges-table tr[data-edge]").map((r) => [r.dataset.edge,
    r.querySelector("td.status").textContent])),
  land: q("#land path").length,
  regions: [...new Set(q("#catchment rect").map((r) => r.dataset.edge))].sort(),
  pools: q("#pools-table tr[data-pool]").map((r) => r.dataset.pool),
  changes: q("#changes-table tr[data-edge]").map((r) => ({edge: r.dataset.edge,
    kind: r.dataset.kind, text: r.textContent})),
  explain: document.getElementById("explain-out").textContent,
};
"""


def read(driver: webdriver.Chrome) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(_READ)
    return state


def _wait(driver: webdriver.Chrome, what: str, check: Callable[[dict[str, Any]], Any]) -> Any:
    """Poll the page until `check(read(page))` is truthy (bounded); returns that value."""
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(
        lambda d: check(read(d)), message=what
    )


def test_status_page_shows_edges_and_follows_a_failure(
    gslb: GslbProcess,
    servers: dict[str, StatusServer],
    loop_thread: LoopThread,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    # Loads that make the dots' sizes and colours differ, and a drained edge.
    servers["iad"].doc = {**HEALTHY, "load_factor": 0.35}
    servers["nrt"].doc = {**HEALTHY, "load_factor": 0.9}  # over 0.8: overloaded
    assert gslb.http("POST", "/v1/edges/gru", {"load": 0.2})[0] == 200
    assert gslb.http("POST", "/v1/edges/syd/drain")[0] == 200

    def probed(name: str, load: float) -> bool:
        status, body = gslb.http("GET", f"/v1/edges/{name}")
        return status == 200 and body["probe"]["last_ok"] is True and body["load"] == load

    for name, load in (("fra", 0.0), ("iad", 0.35), ("nrt", 0.9)):
        eventually(lambda n=name, x=load: probed(n, x), f"{name} probed with load {load}")

    browser.get(gslb.api + "/")
    expected = {"fra": "up", "iad": "up", "nrt": "overloaded", "syd": "drained", "gru": "up"}

    def drawn(page: dict[str, Any]) -> bool:
        return all(
            page["circles"].get(n, {}).get("status") == s and page["rows"].get(n, "").startswith(s)
            for n, s in expected.items()
        ) and bool(page["regions"])

    _wait(browser, f"the edges drawn as {expected}, and a catchment", drawn)
    page = read(browser)
    # fra is drawn at its coordinates (the map is longitude + 180, 90 - latitude).
    fra = page["circles"]["fra"]
    assert (fra["cx"], fra["cy"]) == (pytest.approx(188.68), pytest.approx(39.89))
    assert page["circles"]["nrt"]["r"] > fra["r"]  # a bigger load, a bigger dot
    # The land from Natural Earth and the catchment of the nearest pool are drawn.
    assert page["land"] > 100
    assert page["regions"] == ["fra", "gru", "iad"]  # nrt overloaded, syd drained: none
    assert page["pools"] == [
        "www.example.test.",
        "weighted.example.test.",
        "backup.example.test.",
    ]
    overloaded = [c for c in page["changes"] if c["edge"] == "nrt"]
    assert overloaded and overloaded[0]["kind"] == "overloaded"
    assert "load 0.90 >= load_threshold 0.8" in overloaded[0]["text"]

    # One edge's status server goes away: the page turns it down and says why.
    start = len(gslb.lines)
    loop_thread.run(servers["fra"].stop())
    try:
        gslb.wait_for(r"edge fra is down: 2 failed probe\(s\)", start=start)

        def down(page: dict[str, Any]) -> bool:
            return (
                page["circles"]["fra"]["status"] == "down"
                and page["rows"]["fra"].startswith("down")
                and "fra" not in page["regions"]
            )

        _wait(browser, "fra drawn as down, its row down, its region gone", down)
        change = next(c for c in read(browser)["changes"] if c["edge"] == "fra")
        assert change["kind"] == "down"
        assert "up → down" in change["text"] and "2 failed probe(s)" in change["text"]

        # The explain form: a London client (192.0.2.0/24 in the test GeoIP database) now
        # gets iad, because fra is down.
        form = browser.find_element(By.ID, "explain-form")
        form.find_element(By.NAME, "name").send_keys("www.example.test")
        form.find_element(By.NAME, "client").send_keys("192.0.2.1")
        form.find_element(By.CSS_SELECTOR, "button").click()
        out = _wait(browser, "an explanation", lambda page: page["explain"])
        assert "answer: iad 127.0.0.12" in out and "nearest" in out
        assert "not named: down" in out

        shot = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(shot))
        target = os.environ.get("GEOEDGE_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
        errors = [
            entry["message"]
            for entry in browser.get_log("browser")
            if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]
        ]
        assert not errors, errors
    finally:
        loop_thread.run(servers["fra"].start())
