"""Helpers for the GSLB integration tests: a real `python -m gslb serve` subprocess.

`LoggedProcess` is any process whose output is read line by line (also `gslb run`).

`GslbProcess` starts the server on 127.0.0.1 port 0, reads its log on a thread, and finds the
bound ports in the startup lines ("listening udp 127.0.0.1:53412", "api listening http://...").
`write_config` writes a test config that uses the test GeoIP database (fixture `geo_db`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0

# Client subnets the test GeoIP database places in these cities.
LONDON = "192.0.2.0/24"
NEW_YORK = "198.51.100.0/24"
TOKYO = "203.0.113.0/24"
FRANKFURT6 = "2001:db8::/56"

EDGE_IPS = {"fra": "127.0.0.11", "iad": "127.0.0.12", "nrt": "127.0.0.13"}

BASE_CONFIG = """
[server]
listen = [{listen}]
tcp_idle_timeout = {idle}
tcp_max_connections = {max_conn}

[api]
listen = "127.0.0.1:0"

[log]
level = "info"
query_log = {query_log}

[geo]
database = "{geo_db}"

[[zone]]
origin = "example.test."
ttl = 3600
records = [
  "@              NS    ns1",
  "@              NS    ns2",
  "ns1            A     127.0.0.1",
  "ns2            AAAA  ::1",
  "@              MX    10 mail",
  "mail           A     127.0.0.20",
  "@              TXT   \\"v=spf1 mx -all\\"",
  "static  300    A     127.0.0.30",
  "alias          CNAME www",
  "alias2         CNAME static",
  "*.wild         A     127.0.0.40",
  "sub            NS    ns.sub",
  "ns.sub         A     127.0.0.53",
{extra_records}
]

[zone.soa]
mname = "ns1.example.test."
rname = "hostmaster.example.test."
serial = 1
refresh = 7200
retry = 3600
expire = 1209600
minimum = 300

[[edge]]
name = "fra"
ipv4 = "127.0.0.11"
ipv6 = "fd00::11"
latitude = 50.11
longitude = 8.68
weight = 3.0

[[edge]]
name = "iad"
ipv4 = "127.0.0.12"
ipv6 = "fd00::12"
latitude = 39.04
longitude = -77.49
weight = 1.0

[[edge]]
name = "nrt"
ipv4 = "127.0.0.13"
latitude = 35.68
longitude = 139.69
weight = 1.0

[[pool]]
name = "www.example.test."
edges = ["fra", "iad", "nrt"]
policy = "nearest"
ttl = 30

[[pool]]
name = "two.example.test."
edges = ["fra", "iad", "nrt"]
policy = "nearest"
answers = 2

[[pool]]
name = "weighted.example.test."
edges = ["fra", "iad"]
policy = "weighted"

[[pool]]
name = "failover.example.test."
edges = ["nrt", "iad", "fra"]
policy = "failover"

[[pool]]
name = "all.example.test."
edges = ["fra", "iad", "nrt"]
policy = "all"

[[pool]]
name = "spare.example.test."
edges = ["fra", "iad"]
fallback = ["nrt"]
"""

# Enough TXT data that the answer does not fit in 512 bytes (TC over UDP without EDNS).
BIG_TXT = [f'"big            TXT   \\"{c * 200}\\""' for c in "abcdef"]


def write_config(
    path: Path,
    geo_db: Path,
    *,
    listen: tuple[str, ...] = ("127.0.0.1:0",),
    idle: float = 2.0,
    max_conn: int = 8,
    query_log: bool = False,
    extra_records: list[str] | None = None,
) -> Path:
    records = BIG_TXT + (extra_records or [])
    text = BASE_CONFIG.format(
        listen=", ".join(json.dumps(a) for a in listen),
        idle=idle,
        max_conn=max_conn,
        query_log="true" if query_log else "false",
        geo_db=str(geo_db).replace("\\", "\\\\"),
        extra_records=",\n".join("  " + r for r in records),
    )
    path.write_text(text, encoding="utf-8")
    return path


class LoggedProcess:
    """A process started with its output (stdout and stderr) read on a thread, line by line."""

    def __init__(self, argv: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(
        self, pattern: str, *, start: int = 0, timeout: float = START_TIMEOUT
    ) -> re.Match[str]:
        """The first log line from index `start` matching `pattern` (bounded wait)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    if m := regex.search(self.lines[index]):
                        return m
                    index += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no log line matching {pattern!r}:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(remaining, 0.5))

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        return stop_process(self.proc, self._reader, timeout=20)


class GslbProcess(LoggedProcess):
    """A running `python -m gslb serve` with its log captured."""

    def __init__(self, config: Path | None, *args: str) -> None:
        source = ["-c", str(config)] if config is not None else []
        super().__init__([sys.executable, "-m", "gslb", "serve", *source, *args])
        self.udp: list[tuple[str, int]] = []
        self.tcp: list[tuple[str, int]] = []
        self.api = ""
        try:
            self.wait_for(r"gslb ready")
        except Exception:
            self.stop()
            raise
        for line in self.lines:
            if m := re.search(
                r"(?<!worker \d\] )gslb: listening (udp|tcp) \[?([0-9a-f.:]+?)\]?:(\d+)$", line
            ):
                target = self.udp if m.group(1) == "udp" else self.tcp
                target.append((m.group(2), int(m.group(3))))
            if m := re.search(r"api listening (http://\S+)", line):
                self.api = m.group(1)
        assert self.udp and self.tcp and self.api, "\n".join(self.lines)

    @property
    def host(self) -> str:
        return self.udp[0][0]

    @property
    def port(self) -> int:
        return self.udp[0][1]

    # -- clients ------------------------------------------------------------------------------

    def query(
        self,
        name: str,
        rdtype: str = "A",
        *,
        tcp: bool = False,
        subnet: str | None = None,
        edns: bool = True,
        payload: int = 1232,
    ) -> dns.message.Message:
        options = []
        if subnet is not None:
            addr, _, prefix = subnet.partition("/")
            options.append(dns.edns.ECSOption(addr, int(prefix)))
        q = dns.message.make_query(
            name,
            rdtype,
            use_edns=0 if (edns or options) else False,
            options=options,
            payload=payload,
        )
        if tcp:
            return dns.query.tcp(q, self.host, port=self.port, timeout=5)
        return dns.query.udp(q, self.host, port=self.port, timeout=5)

    def addresses(self, name: str, rdtype: str = "A", **kw: Any) -> list[str]:
        reply = self.query(name, rdtype, **kw)
        return sorted(
            rr.to_text() for rrset in reply.answer for rr in rrset if rrset.rdtype in (1, 28)
        )

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()


def stop_process(proc: subprocess.Popen[str], reader: threading.Thread, *, timeout: float) -> int:
    """SIGTERM (after SIGCONT, so a stopped process hears it), up to `timeout` seconds to
    exit, then SIGKILL; join the thread reading its output. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


@contextlib.contextmanager
def running(config: Path, *args: str) -> Iterator[GslbProcess]:
    """`gslb serve -c config *args` for the duration of the block; it must stop cleanly."""
    proc = GslbProcess(config, *args)
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


@contextlib.contextmanager
def serving(directory: Path, text: str, *args: str) -> Iterator[GslbProcess]:
    """`running` a config written from `text` into `directory`/gslb.toml."""
    path = directory / "gslb.toml"
    path.write_text(text, encoding="utf-8")
    with running(path, *args) as proc:
        yield proc


def reset_edges(gslb: GslbProcess, names: Iterable[str]) -> None:
    """Every named edge up, undrained, with no load (through the API)."""
    for name in names:
        status, body = gslb.http(
            "POST", f"/v1/edges/{name}", {"up": True, "drained": False, "load": 0}
        )
        assert status == 200, body


def tcp_open(gslb: GslbProcess) -> int:
    """The server's open DNS TCP connections, as /metrics says (gslb_tcp_connections)."""
    _, text = gslb.http("GET", "/metrics")
    m = re.search(r"^gslb_tcp_connections (\S+)$", text, re.M)
    assert m, text
    return int(float(m.group(1)))


def gslb_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m gslb ARGS` to completion (at most 60 s)."""
    return subprocess.run(
        [sys.executable, "-m", "gslb", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dig(*args: str) -> str:
    """Run the real `dig` and return its output."""
    exe = shutil.which("dig")
    if exe is None:
        raise AssertionError("dig is not installed (make apt-test installs bind9-dnsutils)")
    out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout + out.stderr
