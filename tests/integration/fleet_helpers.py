"""A small real fleet for the integration tests: `edge serve` processes behind one gslb.

`Fleet` starts one origin per edge (edge_helpers.Origin on a LoopThread), three real
`python -m edge serve -c FILE` processes on 127.0.0.11-13 (fra, iad, nrt, as in the gslb test
config) with their admin ports and a purge token, and a real `gslb serve` that probes the
edges' `/__edge/status` with short settings and purges them with its own token. Each edge
can be killed (kill -9), hung (SIGSTOP) or resumed, and restarted on the same ports (its
config is rewritten with the ports it bound first), and its origin stopped and started.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.integration.edge_helpers import Handler, Origin
from tests.integration.gslb_helpers import EDGE_IPS, ROOT, GslbProcess, stop_process
from tests.integration.status_helpers import LoopThread, edge_toml, eventually

PLACES = {"fra": (50.11, 8.68), "iad": (39.04, -77.49), "nrt": (35.68, 139.69)}
API_TOKEN = "gslb-api-token-0123456789"
EDGE_TOKEN = "edge-admin-token-0123456789"
HOST = "www.example.test"  # the Host every edge caches under, so one URL names them all

# Probe settings of the fleet's gslb (fast, for tests) and of each edge's origin probes.
HEALTH = {"interval": 0.25, "timeout": 0.25, "rise": 2, "fall": 2, "jitter": 0.05}
EDGE_PROBE = {"interval": 0.2, "timeout": 0.2, "rise": 1, "fall": 1}

GSLB_CONFIG = """
[api]
listen = "127.0.0.1:0"
token_file = "api.token"

[server]
listen = ["127.0.0.1:0"]

[geo]
database = "{geo_db}"

[health]
interval = {interval}
timeout = {timeout}
rise = {rise}
fall = {fall}
jitter = {jitter}

[purge]
token_file = "edge.token"
timeout = 1.0
attempts = 3
backoff = 0.1

[[zone]]
origin = "example.test."
soa = {{ mname = "ns1", rname = "hostmaster" }}
records = ["@ NS ns1", "ns1 A 127.0.0.1"]

{edges}
[[pool]]
name = "www.example.test."
edges = ["fra", "iad", "nrt"]
ttl = {ttl}
"""

EDGE_CONFIG = """
[server]
listen = ["{ip}:{port}"]

[pool]
origins = ["{origin}"]

[pool.probe]
path = "/health"
interval = {interval}
timeout = {timeout}
rise = {rise}
fall = {fall}
jitter = 0

[admin]
listen = "{ip}:{admin_port}"
token_file = "edge.token"

[log]
access_log = ""
level = "warning"
"""


class EdgeServe:
    """`python -m edge serve ARGS` with its output read on a thread; ready once it printed
    `edge: ready`. `addresses` maps http/admin to the first "host:port" of each kind."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "serve", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.addresses: dict[str, str] = {}
        self.ready = threading.Event()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 60
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("edge did not become ready:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.strip()
            self.lines.append(line)
            if line.startswith("edge: listening"):
                _, _, kind, addr = line.split(" ", 3)
                self.addresses.setdefault(kind, addr)
            if line == "edge: ready":
                self.ready.set()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        stop_process(self.proc, self._reader, timeout=15)


def cacheable(body: bytes) -> Any:
    """An origin route answering `body`, cacheable for ten minutes."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Cache-Control": "max-age=600"})

    return handler


@dataclass
class FleetEdge:
    name: str
    ip: str
    origin: Origin
    config: Path
    process: EdgeServe | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://{self.ip}:{self.ports['http']}"

    @property
    def status_url(self) -> str:
        return f"http://{self.ip}:{self.ports['admin']}/__edge/status"

    def write_config(self) -> None:
        text = EDGE_CONFIG.format(
            ip=self.ip,
            port=self.ports.get("http", 0),
            admin_port=self.ports.get("admin", 0),
            origin=self.origin.url,
            **EDGE_PROBE,
        )
        self.config.write_text(text, encoding="utf-8")

    def start(self) -> None:
        self.write_config()
        self.process = EdgeServe("-c", str(self.config))
        for kind in ("http", "admin"):
            self.ports[kind] = int(self.process.addresses[kind].rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        """kill -9: no goodbye, the ports refuse connections at once."""
        assert self.process is not None
        self.process.signal(signal.SIGKILL)
        self.process.proc.wait(timeout=10)
        self.stop()

    def get(self, path: str) -> tuple[int, str]:
        """GET `path` through this edge as www.example.test; (status, Cache-Status)."""
        req = urllib.request.Request(self.http + path, headers={"Host": HOST})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return resp.status, resp.headers.get("Cache-Status", "")


class Fleet:
    """See the module docstring. `gslb` is None until start_gslb()."""

    def __init__(self, directory: Path, loop_thread: LoopThread) -> None:
        self.dir = directory
        self.loop_thread = loop_thread
        (directory / "edge.token").write_text(EDGE_TOKEN + "\n", encoding="ascii")
        (directory / "api.token").write_text(API_TOKEN + "\n", encoding="ascii")
        self.edges: dict[str, FleetEdge] = {}
        for name in PLACES:
            origin = Origin(f"origin-{name}")
            loop_thread.run(origin.start())
            self.edges[name] = FleetEdge(
                name, EDGE_IPS[name], origin, directory / f"edge-{name}.toml"
            )
        self.gslb: GslbProcess | None = None

    def start_edges(self) -> None:
        for edge in self.edges.values():
            edge.start()

    def gslb_config(
        self, geo_db: Path, *, ttl: int = 5, health: dict[str, Any] | None = None
    ) -> Path:
        edges = [
            edge_toml(name, e.ip, *PLACES[name], e.status_url) for name, e in self.edges.items()
        ]
        text = GSLB_CONFIG.format(
            geo_db=str(geo_db), edges="\n".join(edges), ttl=ttl, **(health or HEALTH)
        )
        path = self.dir / "gslb.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def start_gslb(self, geo_db: Path, **kw: Any) -> GslbProcess:
        self.gslb = GslbProcess(self.gslb_config(geo_db, **kw))
        return self.gslb

    def wait_all_up(self) -> None:
        gslb = self.gslb
        assert gslb is not None

        def all_up() -> bool:
            status, body = gslb.http("GET", "/v1/edges")
            return status == 200 and all(
                body["edges"][n]["up"] and body["edges"][n].get("probe", {}).get("last_ok")
                for n in self.edges
            )

        eventually(all_up, "every edge up in gslb", timeout=30)

    def close(self) -> None:
        try:
            if self.gslb is not None:
                assert self.gslb.stop() == 0, self.gslb.log_text()
        finally:
            for edge in self.edges.values():
                edge.stop()
                self.loop_thread.run(edge.origin.stop())


@contextlib.contextmanager
def running_fleet(
    directory: Path, loop_thread: LoopThread, geo_db: Path, routes: Mapping[str, Handler]
) -> Iterator[Fleet]:
    """A started fleet whose origins all serve `routes`, every edge up in gslb."""
    fleet = Fleet(directory, loop_thread)
    try:
        for edge in fleet.edges.values():
            edge.origin.routes.update(routes)
        fleet.start_edges()
        fleet.start_gslb(geo_db)
        fleet.wait_all_up()
        yield fleet
    finally:
        fleet.close()
