"""How long failover takes, measured with real processes (docs/failover.md).

Two real `edge serve` processes, fra and iad, each with its own origin (bench/origin.py),
sit behind a real `gslb serve` whose pool `www.bench.test` is a failover pool [fra, iad]:
it answers fra while fra is up. For each kind of failure, --reps times:

  kill     kill -9 of fra's edge process; repaired by starting it again (same ports)
  stop     SIGSTOP of fra (hung: it accepts connections and never answers); SIGCONT
  origin   fra's only origin stopped (fra's own probes take it out, its status turns
           unhealthy, then gslb's probes take fra out); the origin started again

the harness waits a random fraction of a probe interval (so failures land at every phase of
the probe schedule), breaks fra, and queries gslb over UDP every 10 ms until the answer names
iad: that is the *detection* time. Then it repairs fra and queries until the answer names fra
again: the *recovery* time (from the repair; for `kill`, from the restarted edge being ready).

It prints min, median and max of each, beside the bounds of gslb.edgeprobe.detection_bound:
detection <= fall x (interval + jitter) + timeout (for `origin`, plus the edge's own origin
probe bound), recovery <= rise x (interval + jitter) + timeout, and what a client can see:
detection + the pool's TTL (a resolver keeps the old answer that long).

  python bench/failover.py                  # the default [health] settings (5 s, 2 s, 2, 3)
  python bench/failover.py --fast --reps 5  # the tests' settings (0.25 s, 0.25 s, 2, 2)

With the defaults, a repetition takes up to ~35 s (origin), so 20 of each kind take ~20 min.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from _common import LOOPBACK, REPO, BenchError, Proc, free_port, log, run_main, start_harness

sys.path.insert(0, str(REPO))
from gslb.edgeprobe import detection_bound  # this checkout's, not an installed copy

FRA, IAD = "127.0.0.11", "127.0.0.12"
KINDS = ("kill", "stop", "origin")
TTL = 30  # the pool's TTL (the config default)
POLL = 0.01  # seconds between DNS queries while waiting for the answer to move


@dataclass(frozen=True)
class Probes:
    """Probe settings: gslb's [health] and the edges' [pool.probe]."""

    interval: float
    timeout: float
    rise: int
    fall: int
    jitter: float
    edge_interval: float
    edge_timeout: float
    edge_rise: int
    edge_fall: int
    edge_jitter: float

    def down(self, kind: str) -> float:
        """Detection bound: `fall` probes (for `origin`, the edge's `fall` first)."""
        return self._bound(kind, self.fall, self.edge_fall)

    def up(self, kind: str) -> float:
        """Recovery bound: `rise` probes (for `origin`, the edge's `rise` first)."""
        return self._bound(kind, self.rise, self.edge_rise)

    def _bound(self, kind: str, probes: int, edge_probes: int) -> float:
        bound = detection_bound(self.interval, self.timeout, self.jitter, probes)
        if kind == "origin":
            bound += detection_bound(
                self.edge_interval, self.edge_timeout, self.edge_jitter, edge_probes
            )
        return bound


DEFAULT = Probes(5.0, 2.0, 2, 3, 0.5, 5.0, 2.0, 2, 3, 0.5)  # both configs' defaults
FAST = Probes(0.25, 0.25, 2, 2, 0.05, 0.2, 0.2, 1, 1, 0.0)  # tests/integration/fleet_helpers

GSLB = """
[server]
listen = ["{host}:{dns_port}"]

[api]
listen = "{host}:{api_port}"

[log]
level = "warning"

[health]
interval = {p.interval}
timeout = {p.timeout}
rise = {p.rise}
fall = {p.fall}
jitter = {p.jitter}

[[zone]]
origin = "bench.test."
soa = {{ mname = "ns1", rname = "hostmaster" }}
records = ["@ NS ns1", "ns1 A {host}"]

[[edge]]
name = "fra"
ipv4 = "{fra}"
latitude = 50.11
longitude = 8.68
status_url = "http://{host}:{fra_admin}/__edge/status"

[[edge]]
name = "iad"
ipv4 = "{iad}"
latitude = 39.04
longitude = -77.49
status_url = "http://{host}:{iad_admin}/__edge/status"

[[pool]]
name = "www.bench.test."
edges = ["fra", "iad"]
policy = "failover"
ttl = {ttl}
"""

EDGE = """
[server]
listen = ["{host}:{port}"]

[pool]
origins = ["http://{host}:{origin_port}"]

[pool.probe]
path = "/1k"
interval = {p.edge_interval}
timeout = {p.edge_timeout}
rise = {p.edge_rise}
fall = {p.edge_fall}
jitter = {p.edge_jitter}

[admin]
listen = "{host}:{admin_port}"

[log]
access_log = ""
level = "warning"
"""


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait(what: str, check: Callable[[], bool], timeout: float, proc: Proc | None = None) -> float:
    """Poll `check` every POLL seconds; the seconds until it held. BenchError past `timeout`
    or when `proc` exits."""
    start = time.monotonic()
    deadline = start + timeout
    while not check():
        if proc is not None and not proc.alive:
            raise BenchError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - start


class Bench:
    def __init__(self, workdir: Path, logdir: Path, probes: Probes) -> None:
        self.workdir = workdir
        self.logdir = logdir
        self.probes = probes
        self.python = [sys.executable]
        self.ports = {
            name: free_port()
            for name in ("fra", "fra_admin", "fra_origin", "iad", "iad_admin", "iad_origin")
        }
        self.ports["api"] = free_port()
        self.ports["dns"] = free_port(udp_too=True)
        self.procs: dict[str, Proc] = {}

    def start(self, name: str) -> None:
        """Start (or start again) `name`: fra, iad (edges), fra_origin, iad_origin, gslb."""
        logfile = self.logdir / f"{name}.log"
        if name.endswith("_origin"):
            argv = [*self.python, str(REPO / "bench" / "origin.py"), str(self.ports[name])]
            proc = Proc(name, argv, None, logfile)
            url = f"http://{LOOPBACK}:{self.ports[name]}/1k"
        elif name == "gslb":
            config = self.workdir / "gslb.toml"
            config.write_text(
                GSLB.format(
                    host=LOOPBACK,
                    dns_port=self.ports["dns"],
                    api_port=self.ports["api"],
                    fra=FRA,
                    iad=IAD,
                    fra_admin=self.ports["fra_admin"],
                    iad_admin=self.ports["iad_admin"],
                    p=self.probes,
                    ttl=TTL,
                )
            )
            proc = Proc(
                name, [*self.python, "-m", "gslb", "serve", "-c", str(config)], None, logfile
            )
            url = f"http://{LOOPBACK}:{self.ports['api']}/healthz"
        else:
            config = self.workdir / f"{name}.toml"
            config.write_text(
                EDGE.format(
                    host=LOOPBACK,
                    port=self.ports[name],
                    admin_port=self.ports[f"{name}_admin"],
                    origin_port=self.ports[f"{name}_origin"],
                    p=self.probes,
                )
            )
            proc = Proc(
                name, [*self.python, "-m", "edge", "serve", "-c", str(config)], None, logfile
            )
            url = f"http://{LOOPBACK}:{self.ports[f'{name}_admin']}/__edge/status"
        self.procs[name] = proc
        wait(f"{name} to answer {url}", lambda: http_ok(url), 60, proc)

    def stop(self, name: str) -> None:
        self.procs.pop(name).stop()

    def answer(self) -> list[str]:
        query = dns.message.make_query("www.bench.test", "A")
        try:
            reply = dns.query.udp(query, LOOPBACK, port=self.ports["dns"], timeout=1)
        except (OSError, dns.exception.Timeout):
            return []
        return sorted(rr.to_text() for rrset in reply.answer for rr in rrset)

    def on(self, ip: str) -> Callable[[], bool]:
        return lambda: self.answer() == [ip]

    def repetition(self, kind: str) -> tuple[float, float]:
        """Break fra, time until answers name iad; repair it, time until they name fra."""
        p = self.probes
        wait("answers on fra", self.on(FRA), 3 * p.up(kind) + 30)
        time.sleep(random.uniform(0, p.interval))  # a random phase of gslb's probe rounds
        fra = self.procs["fra"]
        if kind == "kill":
            os.kill(fra.popen.pid, signal.SIGKILL)
        elif kind == "stop":
            os.kill(fra.popen.pid, signal.SIGSTOP)
        else:
            self.stop("fra_origin")
        detected = wait(f"answers off fra ({kind})", self.on(IAD), 3 * p.down(kind) + 30)
        if kind == "kill":
            self.stop("fra")
            self.start("fra")
        elif kind == "stop":
            os.kill(fra.popen.pid, signal.SIGCONT)
        else:
            self.start("fra_origin")
        recovered = wait(f"answers back on fra ({kind})", self.on(FRA), 3 * p.up(kind) + 30)
        return detected, recovered


def summary(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):6.2f} {max(values):6.2f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20, help="repetitions of each kind")
    parser.add_argument("--kinds", default=",".join(KINDS), help="a subset of kill,stop,origin")
    parser.add_argument(
        "--fast", action="store_true", help="the tests' short probe settings, not the defaults"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.reps < 1 or not kinds or set(kinds) - set(KINDS):
        parser.error("--reps must be >= 1 and --kinds a subset of kill,stop,origin")
    workdir, logdir = start_harness("failover", [], "nothing")
    probes = FAST if args.fast else DEFAULT
    bench = Bench(workdir, logdir, probes)
    for name in ("fra_origin", "iad_origin", "fra", "iad", "gslb"):
        bench.start(name)
    results: dict[str, list[tuple[float, float]]] = {}
    for kind in kinds:
        for i in range(args.reps):
            down, up = bench.repetition(kind)
            log(f"{kind} {i + 1}/{args.reps}: detected {down:.3f}s, recovered {up:.3f}s")
            results.setdefault(kind, []).append((down, up))
    for name in list(bench.procs):
        bench.stop(name)
    settings = "fast (tests)" if args.fast else "default"
    p = probes
    print(
        f"# probe settings: {settings}: gslb interval {p.interval:g}s, timeout {p.timeout:g}s, "
        f"rise {p.rise}, fall {p.fall}, jitter {p.jitter:g}s; edge origin probes interval "
        f"{p.edge_interval:g}s, timeout {p.edge_timeout:g}s, rise {p.edge_rise}, "
        f"fall {p.edge_fall}, jitter {p.edge_jitter:g}s; pool TTL {TTL}s; {args.reps} reps"
    )
    print(
        f"{'kind':<8} {'detection min/med/max s':>24} {'bound':>7} {'+TTL':>7}   "
        f"{'recovery min/med/max s':>23} {'bound':>7}"
    )
    for kind, rows in results.items():
        downs = [d for d, _ in rows]
        ups = [u for _, u in rows]
        print(
            f"{kind:<8} {summary(downs):>24} {p.down(kind):7.2f} {p.down(kind) + TTL:7.2f}   "
            f"{summary(ups):>23} {p.up(kind):7.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main, "bench/failover.py")
