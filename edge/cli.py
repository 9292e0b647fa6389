"""`edge` command line: serve (config file or quick start), check-config, demo-origin.

    edge serve -c edge.toml
    edge serve --listen 127.0.0.1:8080 --origin http://127.0.0.1:9001 [--origin URL ...]
               [--cache-dir DIR] [--admin 127.0.0.1:9090] [--workers N]
    edge stream --listen tcp://127.0.0.1:7000 --origin 127.0.0.1:7001 [--origin H:P ...]
                [--algorithm round_robin|least_connections|hash] [--proxy-protocol v1|v2]
                [--admin 127.0.0.1:9090]     one L4 stream (edge.stream), no HTTP
    edge check-config edge.toml
    edge demo-origin [--listen 127.0.0.1:9001] [--name NAME]   the demo site (edge.demo_origin)

On start, one line per bound address is printed to stdout (`edge: listening http
127.0.0.1:8080`, `edge: listening tcp 127.0.0.1:7000` for a stream), so tests and scripts
can use port 0. SIGHUP reloads the config file atomically (a bad file is logged and the
running config kept); SIGTERM/SIGINT stop.
With --workers N > 1 the parent forks N workers that each bind the same ports with
SO_REUSEPORT (port 0 is resolved first by the parent, so all workers share it); the
parent prints `edge: ready` once every worker is listening. With an admin port, the parent
also makes a private run directory where the workers publish their counters, so whichever
worker answers /__edge/status or /metrics reports the whole node (edge.nodestats); there
the worker in slot 0 (and its replacement) probes the origins for the node and publishes
its verdicts, which the other workers apply (edge.probes.ProbeFollower). The parent also
maps the screening rules' rate-limit table before it forks, so the workers share its budgets
and concurrency counts (edge.ratelimit; a worker counts in the column of its slot, which its
replacement zeroes). Each worker dies
with the parent (geoedge.lifetime): a `kill -9` of the parent leaves no worker serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace

from edge import collector
from edge.config import (
    STREAM_ALGORITHMS,
    Address,
    EdgeConfig,
    load,
    parse_address,
    quick_start,
    stream_quick_start,
)
from edge.errors import ConfigError
from edge.ratelimit import RateTable
from geoedge.lifetime import die_with_launcher, die_with_parent

log = logging.getLogger("edge")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="GeoEdge caching reverse proxy")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the edge proxy")
    serve.add_argument("-c", "--config", help="TOML configuration file")
    serve.add_argument("--listen", help="quick start: HOST:PORT to serve on")
    serve.add_argument("--origin", action="append", default=[], help="quick start: origin URL")
    serve.add_argument("--cache-dir", help="quick start: persistent cache directory")
    serve.add_argument("--admin", help="quick start: HOST:PORT of the admin port")
    serve.add_argument("--workers", type=int, help="worker processes (overrides the config)")
    stream = sub.add_parser("stream", help="quick start: one TCP or UDP stream, no HTTP")
    stream.add_argument("--listen", required=True, help="tcp://HOST:PORT or udp://HOST:PORT")
    stream.add_argument("--origin", action="append", default=[], help="HOST:PORT of an origin")
    stream.add_argument("--algorithm", choices=STREAM_ALGORITHMS, default="round_robin")
    stream.add_argument("--proxy-protocol", choices=("v1", "v2"), default="")
    stream.add_argument("--admin", help="HOST:PORT of the admin port")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    demo = sub.add_parser("demo-origin", help="serve the demo site (an origin for make run)")
    demo.add_argument("--listen", default="127.0.0.1:9001", help="HOST:PORT to serve on")
    demo.add_argument("--name", default="origin", help="shown in pages and X-Origin")
    return p


def _config_from_args(args: argparse.Namespace) -> EdgeConfig:
    if args.command == "stream":
        if not args.origin:
            raise ConfigError("<command line>", "--origin", "at least one origin is required")
        return stream_quick_start(
            args.listen,
            args.origin,
            algorithm=args.algorithm,
            proxy_protocol=args.proxy_protocol,
            admin=args.admin,
        )
    if args.config:
        if args.origin or args.listen:
            raise ConfigError("<command line>", "--config", "use either -c or --listen/--origin")
        config = load(args.config)
    else:
        if not args.origin:
            raise ConfigError("<command line>", "--origin", "at least one origin is required")
        config = quick_start(
            args.listen or "127.0.0.1:8080", args.origin, args.cache_dir, args.admin
        )
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("<command line>", "--workers", "must be at least 1")
        config = replace(config, server=replace(config.server, workers=args.workers))
    return config


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()  # started by `gslb run`: stop when it does, however it does
    args = _parser().parse_args(argv)
    if args.command == "demo-origin":
        return _demo_origin(args.listen, args.name)
    if args.command == "check-config":
        try:
            config = load(args.file)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        streams = f", {len(config.streams)} streams" if config.streams else ""
        rules = len(config.screening.rules)
        screening = f", {rules} screening rules" if rules else ""
        print(f"{args.file}: ok ({len(config.pool.origins)} origins{streams}{screening})")
        return 0
    try:
        config = _config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from edge.app import apply_log_level

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s", stream=sys.stderr
    )
    apply_log_level(config.log.level)
    path = None if args.command == "stream" else args.config
    if config.server.workers > 1:
        return _run_workers(config, path)
    return _run(config, path, reuse_port=False)


def _demo_origin(listen: str, name: str) -> int:
    from edge.demo_origin import serve_demo

    try:
        address = parse_address(listen)
    except ValueError as exc:
        print(f"error: <command line>: --listen: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_demo(address, name))
    except OSError as exc:
        print(f"error: {address}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _run(
    config: EdgeConfig,
    path: str | None,
    *,
    reuse_port: bool,
    announce: bool = True,
    ready_fd: int | None = None,
    stats_dir: str | None = None,
    slot: int = 0,
    rate_table: RateTable | None = None,
) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    collector.tune()
    try:
        asyncio.run(
            _serve(
                config,
                path,
                reuse_port=reuse_port,
                announce=announce,
                ready_fd=ready_fd,
                stats_dir=stats_dir,
                slot=slot,
                rate_table=rate_table,
            )
        )
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(
    config: EdgeConfig,
    path: str | None,
    *,
    reuse_port: bool,
    announce: bool,
    ready_fd: int | None = None,
    stats_dir: str | None = None,
    slot: int = 0,
    rate_table: RateTable | None = None,
) -> None:
    from edge.app import EdgeRuntime

    runtime = EdgeRuntime(
        config, reuse_port=reuse_port, stats_dir=stats_dir, slot=slot, rate_table=rate_table
    )
    await runtime.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        if path is None:
            log.warning("SIGHUP: no config file to reload (quick start)")
            return
        try:
            new = load(path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        runtime.reload(new)

    # Before saying ready: a SIGHUP sent on "ready" must find the handler (until then a
    # worker ignores it, see _fork_workers).
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, runtime.reopen_logs)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if announce:
        for kind in ("http", "https", "tcp", "udp", "admin"):
            for addr in runtime.addresses[kind]:
                print(f"edge: listening {kind} {addr}", flush=True)
    if ready_fd is not None:
        os.write(ready_fd, b"R")  # the parent says "ready" once every worker is listening
        os.close(ready_fd)
    elif announce:
        print("edge: ready", flush=True)
    try:
        await stop.wait()
    finally:
        await runtime.stop()


def _resolve_ports(config: EdgeConfig) -> tuple[EdgeConfig, list[socket.socket]]:
    """Give port-0 listeners a concrete port shared by all workers (bound, never listening)."""
    holders: list[socket.socket] = []

    def fix(addr: Address, kind: int = socket.SOCK_STREAM) -> Address:
        if addr.port != 0:
            return addr
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((addr.host, 0))
        holders.append(sock)
        return Address(addr.host, sock.getsockname()[1])

    server = replace(config.server, listen=tuple(fix(a) for a in config.server.listen))
    tls_cfg = replace(config.tls, listen=tuple(fix(a) for a in config.tls.listen))
    admin_cfg = config.admin
    if admin_cfg.listen is not None:
        admin_cfg = replace(admin_cfg, listen=fix(admin_cfg.listen))
    streams = tuple(
        replace(
            s,
            listen=fix(s.listen, socket.SOCK_DGRAM if s.protocol == "udp" else socket.SOCK_STREAM),
        )
        for s in config.streams
    )
    resolved = replace(config, server=server, tls=tls_cfg, admin=admin_cfg, streams=streams)
    return resolved, holders


def _run_workers(config: EdgeConfig, path: str | None) -> int:
    config, holders = _resolve_ports(config)
    # Only the admin routes read the other workers' records; without them nobody publishes.
    stats_dir = None
    if config.admin.listen is not None:
        stats_dir = tempfile.mkdtemp(prefix="geoedge-workers-")  # mode 0700
    parent = os.getpid()
    # The screening budgets of the node: one table in memory every worker maps (forked
    # from here, replacements included), so the workers enforce one budget, not N.
    rates = RateTable.shared(config.screening.table_slots, config.server.workers)
    try:
        return _fork_workers(config, path, holders, stats_dir, rates)
    finally:
        if stats_dir is not None and os.getpid() == parent:  # not a worker leaving by error
            shutil.rmtree(stats_dir, ignore_errors=True)


MAX_RESTARTS = 5  # per worker slot over the parent's lifetime


def _fork_workers(
    config: EdgeConfig,
    path: str | None,
    holders: list[socket.socket],
    stats_dir: str | None,
    rates: RateTable,
) -> int:
    """Fork the workers and watch them. Once the node is ready, a worker that dies is
    replaced (at most MAX_RESTARTS times per slot, after a growing delay), reading the
    config file as it is then; before that, any worker exiting stops the node."""
    count = config.server.workers
    slots: dict[int, int] = {}  # pid -> slot
    restarts = dict.fromkeys(range(count), 0)
    stopping = False
    ready_r, ready_w = os.pipe()
    parent = os.getpid()

    def spawn(slot: int, ready_fd: int | None) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            if ready_fd is not None:
                os.close(ready_r)
            for s in holders:
                s.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # Until the worker's loop installs its handlers, SIGHUP and SIGUSR1 must not kill it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            die_with_parent(parent)  # after SIGTERM is back to its default: see lifetime
            worker_config = config if ready_fd is not None else _respawn_config(config, path)
            code = _run(
                worker_config,
                path,
                reuse_port=True,
                announce=ready_fd is not None and slot == 0,
                ready_fd=ready_fd,
                stats_dir=stats_dir,
                slot=slot,
                rate_table=rates,
            )
            os._exit(code)
        slots[pid] = slot

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(slots):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for n in range(count):
        spawn(n, ready_w)
    os.close(ready_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    ready = 0
    while ready < count:
        got = os.read(ready_r, 64)
        if not got:  # the workers exited (or failed) before all of them were listening
            break
        ready += len(got)
    os.close(ready_r)
    node_ready = ready == count
    if node_ready:
        print("edge: ready", flush=True)
    status = 0
    while slots:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        slot = slots.pop(pid, None)
        if slot is None or stopping:
            continue
        restarts[slot] += 1
        if not node_ready or restarts[slot] > MAX_RESTARTS:
            log.error("worker %d exited (status %d): stopping the node", slot, code)
            status = 1
            forward(signal.SIGTERM, None)
            continue
        delay = min(30.0, 0.5 * 2 ** (restarts[slot] - 1))
        log.warning("worker %d exited (status %d): restarting it in %.1fs", slot, code, delay)
        time.sleep(delay)  # a SIGTERM meanwhile sets stopping
        if not stopping:
            spawn(slot, None)
    for s in holders:
        s.close()
    return status


def _respawn_config(started: EdgeConfig, path: str | None) -> EdgeConfig:
    """What a replacement worker runs: the config file as it is now (the others may have
    reloaded it since the start), on the listeners the node started with (those need a
    restart to change); the start-up config if the file no longer loads."""
    if path is None:
        return started
    try:
        current = load(path)
    except ConfigError as exc:
        log.error("replacement worker: %s; it runs the start-up configuration", exc)
        return started
    listens = {s.name: s.listen for s in started.streams}
    return replace(
        current,
        streams=tuple(replace(s, listen=listens.get(s.name, s.listen)) for s in current.streams),
        server=replace(current.server, listen=started.server.listen),
        tls=replace(current.tls, listen=started.tls.listen),
        admin=replace(current.admin, listen=started.admin.listen),
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
