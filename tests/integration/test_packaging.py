"""packaging/: the systemd units' commands, run as written (without systemd) against configs
rendered the way Terraform renders them (tests/unit/test_terraform.py), must start, answer,
reload on ExecReload's SIGHUP, reopen the edge's access log on logrotate's SIGUSR1 and stop
cleanly on SIGTERM (systemd's KillSignal), so that Restart=on-failure stays quiet.

Paths are substituted (/opt/geoedge/bin -> this interpreter's scripts, /etc/geoedge and
/var -> tmp_path); gslb gets port 53 when we run as root and it is free, a free high port
otherwise.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import dns.message
import dns.query
import pytest

from tests.unit.tfexamples import aws_nodes, hetzner_nodes, node_config

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "packaging" / "systemd"
BIN = Path(sys.executable).parent


def service_lines(unit: Path) -> dict[str, list[str]]:
    """[Service] settings of a unit, every value of a repeated key (ExecReload=) in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def as_run_here(command: str, config: Path, pid: int | None = None) -> list[str]:
    """A unit's command line with this checkout's paths; $MAINPID as systemd expands it."""
    argv = shlex.split(command.replace("$MAINPID", str(pid or 0)))
    out = []
    for arg in argv:
        if arg.startswith("/opt/geoedge/bin/"):
            arg = str(BIN / Path(arg).name)
        elif re.fullmatch(r"/etc/geoedge/\w+\.toml", arg):
            arg = str(config)
        out.append(arg)
    return out


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_53_free() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", 53))
    except OSError:
        return False
    return True


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Started:
    """Processes a test started, their stderr in files; killed and closed at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[tuple[subprocess.Popen[bytes], Path, BinaryIO]] = []

    def __call__(self, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"stderr-{len(self.procs)}"
        out = open(log, "wb")  # closed by close()
        proc = subprocess.Popen(argv, env=env(), stderr=out)
        self.procs.append((proc, log, out))
        return proc

    def stderr(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log.read_text()[-3000:] for p, log, _ in self.procs if p is proc)

    def close(self) -> None:
        for proc, _, out in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    s = Started(tmp_path)
    yield s
    s.close()


def until(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # retried until the deadline
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out; last error: {last!r}")


def run_all(commands: list[str], config: Path, pid: int | None = None) -> None:
    for command in commands:
        result = subprocess.run(
            as_run_here(command, config, pid), env=env(), capture_output=True, timeout=60
        )
        assert result.returncode == 0, (command, result.stderr.decode()[-2000:])


def test_gslb_unit(tmp_path: Path, started: Started) -> None:
    unit = service_lines(SYSTEMD / "geoedge-gslb.service")
    assert unit["User"] == ["geoedge"] and unit["Restart"] == ["on-failure"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CacheDirectory"] == ["geoedge-gslb"]  # the GeoIP /24 tables
    inputs = next(v for v in hetzner_nodes(False).values() if v["role"] == "gslb")
    port = 53 if port_53_free() else free_port(socket.SOCK_DGRAM)
    api = free_port()
    inputs["gslb"] = inputs["gslb"] | {
        "listen": [f"127.0.0.1:{port}"],
        "api_listen": f"127.0.0.1:{api}",
    }
    config = tmp_path / "gslb.toml"
    config.write_text(node_config(inputs)["config"])

    run_all(unit["ExecStartPre"], config)
    (start,) = unit["ExecStart"]
    proc = started(as_run_here(start, config))

    def answer() -> list[str]:
        query = dns.message.make_query("ns1.example.com.", "A")
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=1)
        return [r.to_text() for rrset in reply.answer for r in rrset]

    until(lambda: answer() == ["192.0.2.1"])
    run_all(unit["ExecReload"], config, proc.pid)  # check-config, then SIGHUP
    time.sleep(0.5)
    assert proc.poll() is None and answer() == ["192.0.2.1"]
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=5) as r:
        assert r.status == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, started.stderr(proc)


class _Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"from the origin\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=60")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_edge_unit_and_logrotate(tmp_path: Path, started: Started) -> None:
    unit = service_lines(SYSTEMD / "geoedge-edge.service")
    assert unit["CacheDirectory"] == ["geoedge"] and unit["LogsDirectory"] == ["geoedge"]
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    try:
        inputs = next(v for v in aws_nodes(False).values() if v["role"] == "edge")
        port, admin = free_port(), free_port()
        inputs["edge"] = inputs["edge"] | {
            "listen": [f"127.0.0.1:{port}"],
            "admin_listen": f"127.0.0.1:{admin}",
            "origins": [{"url": f"http://127.0.0.1:{origin.server_address[1]}"}],
            "workers": 1,
        }
        text = node_config(inputs | {"ssm": None})["config"]
        # CacheDirectory= and LogsDirectory= are systemd's; here they are under tmp_path.
        log = tmp_path / "log" / "access.log"
        log.parent.mkdir()
        text = text.replace('"/var/cache/geoedge"', f'"{tmp_path / "cache"}"')
        text = text.replace('"/var/log/geoedge/access.log"', f'"{log}"')
        config = tmp_path / "edge.toml"
        config.write_text(text)

        run_all(unit["ExecStartPre"], config)
        (start,) = unit["ExecStart"]
        proc = started(as_run_here(start, config))

        def get(path: str = "/", p: int = port) -> bytes:
            req = urllib.request.Request(f"http://127.0.0.1:{p}{path}")
            req.add_header("Host", inputs["edge"]["hosts"][0])
            with urllib.request.urlopen(req, timeout=5) as r:
                return bytes(r.read())

        until(lambda: get() == b"from the origin\n")
        status = json.loads(get("/__edge/status", admin))
        assert status, status
        run_all(unit["ExecReload"], config, proc.pid)
        time.sleep(0.5)
        assert proc.poll() is None and get() == b"from the origin\n"

        # logrotate: the file is renamed, then postrotate sends USR1 to the main process.
        rotate = (ROOT / "packaging" / "logrotate" / "geoedge-edge").read_text()
        assert re.search(r"postrotate\s+systemctl kill --kill-whom=main --signal=USR1 ", rotate)
        until(lambda: log.stat().st_size > 0)
        log.rename(log.with_suffix(".log.1"))
        proc.send_signal(signal.SIGUSR1)
        until(lambda: log.exists())
        get("/again")
        until(lambda: log.stat().st_size > 0)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, started.stderr(proc)
    finally:
        origin.shutdown()
        origin.server_close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys, bad values and missing commands are reported
    (the commands pointed at this checkout's, /usr/bin/geoipupdate at /bin/true)."""
    units = []
    for unit in sorted(SYSTEMD.iterdir()):
        text = unit.read_text(encoding="utf-8").replace("/opt/geoedge/bin/", f"{BIN}/")
        (tmp_path / unit.name).write_text(text.replace("/usr/bin/geoipupdate", "/bin/true"))
        units.append(str(tmp_path / unit.name))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result
