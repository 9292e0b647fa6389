"""Stream (L4) benchmark: our `[[stream]]` TCP pass-through against HAProxy `mode tcp` in
front of the same origin, alternating within one run.

Both proxies run on core 0, the origin and the load generator (this script's threads) on
core 1; neither proxy logs connections, HAProxy runs one thread (`nbthread 1`) and no
health checks, our edge one worker (uvloop) with probes off. Scenarios:

  throughput  one connection downloads --size MiB from the origin through the proxy
              (checked: every byte arrives); MiB/s         goal >= 0.5x HAProxy
              HAProxy runs twice: as installed (16 KiB buffers, copying through user
              space like us) and with `option splice-request` and `splice-response`
              (kernel splice both ways, as operators of bulk TCP run it); the goal is
              against each.
  cps         --clients threads each connect, read the origin's 1-byte greeting and
              close, for --duration seconds; connections/s  no goal (the Python load
              generator is the ceiling as much as the proxies are: compare, do not quote)

Run through bench/stream.sh (installs haproxy) or `make bench-stream`.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from _common import (
    LOADGEN_CPU,
    LOOPBACK,
    SERVER_CPU,
    BenchError,
    Proc,
    alternate,
    arg_parser,
    free_port,
    log,
    machine_summary,
    parse_lists,
    pick,
    result_row,
    run_main,
    start_harness,
    table,
    wait_until,
)

SCENARIOS = ("throughput", "cps")
SERVERS = ("ours", "haproxy", "haproxy-splice")
CHUNK = 1 << 20


# ------------------------------------------------------------------------------- the origin


def serve_origin(bulk_port: int, tiny_port: int, size: int) -> None:
    """The origin (run as `stream.py --origin BULK TINY SIZE`): BULK sends `size` bytes and
    closes, TINY sends one byte and closes."""
    block = b"\xa5" * CHUNK

    class Bulk(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            left = size
            try:
                while left > 0:
                    n = min(left, CHUNK)
                    self.request.sendall(block[:n])
                    left -= n
            except OSError:
                pass

    class Tiny(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                self.request.sendall(b"x")
            except OSError:
                pass

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 1024

    servers = [Server((LOOPBACK, bulk_port), Bulk), Server((LOOPBACK, tiny_port), Tiny)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ------------------------------------------------------------------------------- proxies


@dataclass
class Proxy:
    label: str
    bulk: int
    tiny: int
    proc: Proc


def _listening(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1):
        return True


def start_ours(workdir: Path, logdir: Path, bulk: int, tiny: int) -> Proxy:
    ports = free_port(), free_port()
    config = workdir / "edge-stream.toml"
    streams = "".join(
        f"""
[[stream]]
name = "{name}"
listen = "tcp://{LOOPBACK}:{port}"
origins = ["{LOOPBACK}:{origin}"]
probe = {{ enabled = false }}
"""
        for name, port, origin in (("bulk", ports[0], bulk), ("tiny", ports[1], tiny))
    )
    config.write_text(f'[log]\naccess_log = ""\nlevel = "warning"\n{streams}')
    argv = [sys.executable, "-m", "edge", "serve", "-c", str(config)]
    proc = Proc("ours", argv, SERVER_CPU, logdir / "ours.log")
    wait_until("our edge", lambda: all(_listening(p) for p in ports), 30, proc)
    return Proxy("ours", ports[0], ports[1], proc)


def start_haproxy(
    workdir: Path, logdir: Path, bulk: int, tiny: int, *, splice: bool = False
) -> Proxy:
    label = "haproxy-splice" if splice else "haproxy"
    ports = free_port(), free_port()
    config = workdir / f"{label}.cfg"
    options = "    option splice-request\n    option splice-response\n" if splice else ""
    config.write_text(
        f"""global
    maxconn 4000
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
{options}
listen bulk
    bind {LOOPBACK}:{ports[0]}
    server o1 {LOOPBACK}:{bulk}

listen tiny
    bind {LOOPBACK}:{ports[1]}
    server o1 {LOOPBACK}:{tiny}
"""
    )
    argv = ["haproxy", "-db", "-f", str(config)]
    proc = Proc(label, argv, SERVER_CPU, logdir / f"{label}.log")
    wait_until(label, lambda: all(_listening(p) for p in ports), 30, proc)
    return Proxy(label, ports[0], ports[1], proc)


# ------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Run:
    value: float  # MiB/s or connections/s
    unit: str
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.value

    @property
    def latency(self) -> str:
        return self.detail or "-"


def download(port: int, size: int) -> Run:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    start = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        while n := sock.recv_into(view):
            got += n
    elapsed = time.perf_counter() - start
    if got != size:
        raise BenchError(f"port {port}: {got} bytes of {size} arrived")
    return Run(size / elapsed / (1 << 20), "MiB/s", f"{elapsed:.2f} s")


def connections(port: int, clients: int, duration: float) -> Run:
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + duration

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
                    if sock.recv(1) == b"x":
                        counts[i] += 1
                    else:
                        errors[i] += 1
            except OSError:
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return Run(sum(counts) / elapsed, "conn/s", f"{sum(errors)} errors")


# ------------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    if argv[:1] == ["--origin"]:
        serve_origin(int(argv[1]), int(argv[2]), int(argv[3]))
        return 0
    p: argparse.ArgumentParser = arg_parser(
        __doc__, what="proxy", warmup=0.0, warmup_help="unused (kept for the shared options)"
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma separated")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma separated")
    p.add_argument("--size", type=int, default=1024, help="MiB per throughput download")
    p.add_argument("--clients", type=int, default=8, help="connecting threads for cps")
    args = parse_lists(p, argv, SCENARIOS, SERVERS)
    workdir, logdir = start_harness("stream", ["haproxy", "taskset"], "bench/stream.sh")
    size = args.size << 20
    bulk, tiny = free_port(), free_port()
    origin_argv = [sys.executable, __file__, "--origin", str(bulk), str(tiny), str(size)]
    origin = Proc("origin", origin_argv, LOADGEN_CPU, logdir / "origin.log")
    wait_until("origin", lambda: _listening(tiny), 30, origin)
    starters: dict[str, Callable[[Path, Path, int, int], Proxy]] = {
        "ours": start_ours,
        "haproxy": start_haproxy,
        "haproxy-splice": partial(start_haproxy, splice=True),
    }
    proxies = {name: starters[name](workdir, logdir, bulk, tiny) for name in args.servers}
    measures: dict[str, Callable[[Proxy], Run]] = {
        "throughput": lambda px: download(px.bulk, size),
        "cps": lambda px: connections(px.tiny, args.clients, args.duration),
    }
    goals = {"throughput": 0.5, "cps": None}
    rows = []
    for scenario in args.scenarios:
        log(f"{scenario}: {args.rounds} rounds per proxy")
        results = alternate(args.rounds, proxies, measures[scenario])
        ours = pick(args.pick, results.get("ours", []))
        for peer in (s for s in args.servers if s != "ours"):
            theirs = pick(args.pick, results[peer])
            unit = (ours or theirs or Run(0, "")).unit
            title = f"{scenario} ({unit}) vs {peer}"
            rows.append(result_row(title, ours, theirs, goals[scenario]))
    for proxy in proxies.values():
        proxy.proc.stop()
    origin.stop()
    print(machine_summary())
    headers = ["scenario", "ours", "peer", "ratio", "goal", "verdict", "ours", "peer"]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    run_main(main, "bench/stream.py")
