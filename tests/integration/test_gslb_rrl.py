"""Response rate limiting on a real `gslb serve` process: a burst of UDP queries from one
client gets a few full answers, truncated slips and silence; TCP and other names are not
limited; the counters show in /metrics; a SIGHUP reload can exempt the client; `dig`
follows a slip to TCP."""

from __future__ import annotations

import math
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import pytest

from tests.integration.gslb_helpers import GslbProcess, dig, write_config

RATE = 2  # replies per second per client network and response class
BURST = 40


def _config(path: Path, geo_db: Path, rrl: str) -> Path:
    write_config(path, geo_db)
    path.write_text(path.read_text() + f"\n[rrl]\n{rrl}\n", encoding="utf-8")
    return path


@pytest.fixture
def gslb(tmp_path: Path, geo_db: Path) -> Iterator[GslbProcess]:
    config = _config(tmp_path / "gslb.toml", geo_db, f"enabled = true\nrate = {RATE}\nslip = 2")
    proc = GslbProcess(config)
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


def _burst(gslb: GslbProcess, name: str, count: int) -> tuple[int, int, int, float]:
    """Send `count` queries for `name` from one UDP socket as fast as it goes; return the
    full answers, the truncated ones, the unanswered, and the seconds the sending took."""
    query = dns.message.make_query(name, "A")
    full = cut = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        start = time.monotonic()
        for i in range(count):
            query.id = i
            s.sendto(query.to_wire(), (gslb.host, gslb.port))
        took = time.monotonic() - start
        s.settimeout(1.0)  # the server answers within microseconds; silence means dropped
        for _ in range(count):
            try:
                reply = dns.message.from_wire(s.recv(65535))
            except TimeoutError:
                break
            if reply.flags & dns.flags.TC:
                assert not reply.answer
                cut += 1
            else:
                assert reply.answer
                full += 1
    return full, cut, count - full - cut, took


def _limited(gslb: GslbProcess) -> dict[str, float]:
    with urllib.request.urlopen(gslb.api + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.findall(r'^gslb_rate_limited_total\{action="(\w+)"\} (\S+)$', text, re.M)
    return {action: float(value) for action, value in found}


def test_a_udp_burst_is_limited_with_slips_and_tcp_is_not(gslb: GslbProcess) -> None:
    full, cut, silent, took = _burst(gslb, "static.example.test.", BURST)
    # The bucket holds RATE replies and refills at RATE per second while we send.
    assert 1 <= full <= RATE + math.ceil(took * RATE) + 1
    limited = BURST - full
    assert cut >= limited // 2 - 1 and silent >= limited // 2 - 1, (full, cut, silent)
    # Another name is another bucket; TCP is never limited.
    assert gslb.addresses("mail.example.test.") == ["127.0.0.20"]
    for _ in range(10):
        reply = gslb.query("static.example.test.", tcp=True)
        assert [rr.to_text() for rrset in reply.answer for rr in rrset] == ["127.0.0.30"]
    counts = _limited(gslb)
    assert counts["slip"] == cut and counts["drop"] == silent, counts


def test_dig_retries_a_slip_over_tcp(tmp_path: Path, geo_db: Path) -> None:
    # One reply per ten seconds, and every limited reply slips.
    config = _config(
        tmp_path / "gslb.toml", geo_db, "enabled = true\nrate = 0.1\nburst = 1\nslip = 1"
    )
    proc = GslbProcess(config)
    try:
        args = (f"@{proc.host}", "-p", str(proc.port), "static.example.test.", "A", "+tries=1")
        answer = r"static\.example\.test\.\s+300\s+IN\s+A\s+127\.0\.0\.30"
        first = dig(*args)
        assert re.search(answer, first) and "Truncated" not in first, first
        second = dig(*args)
        assert "Truncated, retrying in TCP mode" in second, second
        assert re.search(answer, second), second
    finally:
        assert proc.stop() == 0, proc.log_text()


def test_reload_exempts_a_network(tmp_path: Path, geo_db: Path, gslb: GslbProcess) -> None:
    config = Path(gslb.proc.args[gslb.proc.args.index("-c") + 1])
    full, _, _, _ = _burst(gslb, "static.example.test.", BURST)
    assert full < BURST
    text = config.read_text().replace("slip = 2", 'slip = 2\nexempt = ["127.0.0.0/8"]')
    config.write_text(text, encoding="utf-8")
    mark = len(gslb.lines)
    gslb.signal(signal.SIGHUP)
    gslb.wait_for("reloaded config", start=mark)
    full, cut, silent, _ = _burst(gslb, "static.example.test.", BURST)
    assert (full, cut, silent) == (BURST, 0, 0)


def test_off_by_default(tmp_path: Path, geo_db: Path) -> None:
    proc = GslbProcess(write_config(tmp_path / "gslb.toml", geo_db))
    try:
        full, cut, silent, _ = _burst(proc, "static.example.test.", BURST)
        assert (full, cut, silent) == (BURST, 0, 0)
    finally:
        assert proc.stop() == 0, proc.log_text()
