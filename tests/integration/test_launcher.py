"""`gslb run` as a real process tree: a topology on loopback answers DNS and HTTP, and nothing
outlives the launcher, whether it stops on SIGTERM or is killed with SIGKILL.

Each test writes a small topology (gslb, Frankfurt and Ashburn edges, one demo origin) on
addresses of its own in 127.0.0.0/8 (127.<from the pid>.<n>.x) and free ports, so a
developer's `make run` on 127.0.0.1-13 does not get in the way. The client network is a
London prefix the bundled GeoLite2 snapshot places in Great Britain.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import brotli
import dns.edns
import dns.message
import dns.query

from bench._common import free_port
from tests.integration.gslb_helpers import LoggedProcess
from tests.integration.proc_helpers import descendants, gone, kill_all

LONDON = ("81.2.69.0", 24)
READY = r"^GeoEdge is running"


@dataclass(frozen=True)
class Layout:
    path: Path
    run_dir: Path
    dns: tuple[str, int]
    fra: tuple[str, int]
    iad: tuple[str, int]


def _layout(tmp_path: Path, n: int) -> Layout:
    net = f"127.{100 + os.getpid() % 150}.{n}"
    gslb, fra, iad = f"{net}.1", f"{net}.11", f"{net}.12"
    dns_port = free_port(udp_too=True, host=gslb)
    fra_port, iad_port = free_port(host=fra), free_port(host=iad)
    text = f"""
[probes]
interval = 0.5
rise = 1
fall = 2

[gslb]
listen = "{gslb}:{dns_port}"
api = "{gslb}:{free_port(host=gslb)}"

[[edge]]
name = "fra"
place = "Frankfurt"
latitude = 50.11
longitude = 8.68
listen = "{fra}:{fra_port}"
admin = "{fra}:{free_port(host=fra)}"

[[edge]]
name = "iad"
place = "Ashburn"
latitude = 39.04
longitude = -77.49
listen = "{iad}:{iad_port}"
admin = "{iad}:{free_port(host=iad)}"
workers = 2

[[origin]]
name = "origin"
listen = "{gslb}:{free_port(host=gslb)}"

[[client]]
place = "London"
subnet = "{LONDON[0]}/{LONDON[1]}"
"""
    path = tmp_path / "topology.toml"
    path.write_text(text, encoding="utf-8")
    return Layout(path, tmp_path / "run", (gslb, dns_port), (fra, fra_port), (iad, iad_port))


def _launch(layout: Layout) -> LoggedProcess:
    return LoggedProcess(
        [
            sys.executable,
            "-m",
            "gslb",
            "run",
            "--topology",
            str(layout.path),
            "--run-dir",
            str(layout.run_dir),
        ]
    )


def _ask_from_london(layout: Layout) -> list[str]:
    query = dns.message.make_query(
        "www.example.test", "A", use_edns=0, options=[dns.edns.ECSOption(*LONDON)]
    )
    reply = dns.query.udp(query, layout.dns[0], port=layout.dns[1], timeout=5)
    return sorted(rr.to_text() for rrset in reply.answer for rr in rrset)


def _get(edge: tuple[str, int], path: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://{edge[0]}:{edge[1]}{path}",
        headers={"Host": "www.example.test", "Accept-Encoding": "br"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers), response.read()


@contextmanager
def _running(tmp_path: Path, n: int) -> Iterator[tuple[Layout, LoggedProcess, set[int]]]:
    """`gslb run` on layout `n`, ready; with every process below it. Whatever a failed test
    leaves running is killed."""
    layout = _layout(tmp_path, n)
    launcher = _launch(layout)
    tree: set[int] = set()
    try:
        launcher.wait_for(READY)
        tree = descendants(launcher.proc.pid)
        # gslb, fra, iad and its 2 workers, the origin
        assert len(tree) >= 6, launcher.log_text()
        yield layout, launcher, tree
    finally:
        launcher.stop()
        kill_all(tree)


def test_a_topology_answers_dns_and_http_then_stops_on_sigterm(tmp_path: Path) -> None:
    with _running(tmp_path, 1) as (layout, launcher, tree):
        hint = launcher.wait_for(r"# London: (\S+) \(fra, Frankfurt\)")
        assert hint.group(1) == layout.fra[0]

        assert _ask_from_london(layout) == [layout.fra[0]]

        first, body = _get(layout.fra, "/")
        second, again = _get(layout.fra, "/")
        assert "fwd=uri-miss" in first["Cache-Status"], first
        assert "; hit" in second["Cache-Status"], second
        assert first["Content-Encoding"] == second["Content-Encoding"] == "br"
        assert brotli.decompress(body) == brotli.decompress(again)
        assert brotli.decompress(body).startswith(b"<!doctype html>")
        assert first["X-Origin"] == "origin"

        launcher.signal(signal.SIGTERM)
        assert launcher.proc.wait(timeout=30) == 0, launcher.log_text()
        assert not gone(tree), launcher.log_text()
        assert "stopped" in launcher.log_text()


def test_nothing_outlives_a_launcher_killed_with_sigkill(tmp_path: Path) -> None:
    with _running(tmp_path, 2) as (_, launcher, tree):
        launcher.proc.kill()
        launcher.proc.wait(timeout=10)
        left = gone(tree)
        assert not left, f"{sorted(left)} outlived the launcher"


def test_an_address_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    layout = _layout(tmp_path, 3)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(layout.iad)
        squatter.listen()
        launcher = _launch(layout)
        try:
            assert launcher.proc.wait(timeout=30) == 1
        finally:
            launcher.stop()
    expected = f"edge[1].listen: cannot listen on tcp {layout.iad[0]}:{layout.iad[1]}"
    assert f"{layout.path}: {expected}" in launcher.log_text()
    assert not (layout.run_dir / "logs").exists()  # no process was started
