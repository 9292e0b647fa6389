"""Running `gslb serve`: one process, or a supervising parent and N worker processes.

One worker (the default): a single process binds the DNS sockets, answers queries, runs the
HTTP API and holds the only health store. No fork.

N workers (`--workers N`, N > 1): the parent binds each listen address once to fix its port
(port 0 becomes a concrete port; UDP and TCP share the number), then spawns N worker processes
(multiprocessing "spawn": a fresh interpreter, no inherited event loop). Every worker binds
its own UDP and TCP sockets on those ports with SO_REUSEPORT, so the kernel spreads queries
across them. Once the first workers are ready the parent closes its own UDP socket (the kernel
would otherwise hand it a share of the packets) and keeps its TCP socket bound but not
listening, which reserves the port without taking connections.

The parent runs the HTTP API, owns the authoritative `HealthStore` and runs the edge status
probes (gslb.poller), which write to that store like the API does. Each worker has a
duplex multiprocessing pipe to the parent carrying small dicts:
  parent -> worker  {"type": "health", "snapshot": {...}}  after every change and at start
                    {"type": "reload", "level": "debug"}    on SIGHUP, once the parent
                                                            validated the new config (the
                                                            log level to apply first)
                    {"type": "stop"}                        graceful stop
  worker -> parent  {"type": "ready"} once serving, {"type": "metrics", "data": export}
                    about once a second (cumulative counters, summed by the parent's /metrics),
                    {"type": "applied", "version": n} once a health snapshot is applied.
A worker applies a snapshot to its replica store, which moves the generations of exactly the
pools whose members changed (gslb.health), so only those pools' cached answers are dropped;
it acknowledges after that, in the same callback, so once `Supervisor.synced()` saw every
ready worker acknowledge a version, none answers an affected pool from the older state.
A worker whose pipe closes (the parent died) stops; one that is still starting (no loop
yet, or blocked) is ended by the kernel when the parent dies (geoedge.lifetime), so a
`kill -9` of the parent leaves no worker. The parent restarts a worker that dies
(at most MAX_RESTARTS per slot, with a growing delay), forwards SIGTERM/SIGINT as a stop to
every worker and SIGHUP as a reload; workers ignore SIGHUP themselves so a signal sent to the
whole process group does not reload twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from geo.errors import GeoError
from geoedge.lifetime import die_with_parent
from gslb.api import make_app, start_api
from gslb.config import GslbConfig
from gslb.cookies import new_secret
from gslb.errors import GslbError
from gslb.health import HealthError, HealthStore
from gslb.metrics import merge_exports
from gslb.poller import EdgePoller
from gslb.server import BoundPair, format_addr
from gslb.service import (
    GEO_CHECK_INTERVAL,
    TABLE_POLL_INTERVAL,
    ConfigSource,
    DnsRuntime,
    api_address,
    bind_all,
    config_edge_names,
    config_pools,
    listen_addresses,
    make_locator,
)

log = logging.getLogger("gslb")

__all__ = ["run", "serve_parent", "serve_single"]

MAX_RESTARTS = 5  # per worker slot over the parent's lifetime
METRICS_INTERVAL = 1.0  # seconds between a worker's metrics reports
READY_TIMEOUT = 60.0  # seconds the parent waits for the first workers
STOP_TIMEOUT = 5.0  # seconds a worker gets to stop before it is killed
SYNC_TIMEOUT = 2.0  # seconds an API change waits for the workers to apply it


# Cyclic GC thresholds for serving processes (CPython's default is 700, 10, 10). The answer
# path makes no reference cycles, but its caches hold hundreds of thousands of container
# objects and a GeoIP record decode allocates dozens of dicts: with the defaults a flood of new
# client subnets ran a young collection every few queries and a full one, walking every cached
# object for 100+ ms, every few seconds. Garbage cycles from elsewhere are still collected.
GC_THRESHOLDS: Final = (50_000, 50, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()  # what start-up built (modules, config) is never garbage: stop walking it
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop when it is installed, else on the stdlib loop."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _loop_name() -> str:
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def configure_logging(level: str, prefix: str = "") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
    )
    root.addHandler(handler)
    set_log_level(level)


def set_log_level(level: str) -> None:
    """Log at `level` from now on (at start, and on every reload)."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # APScheduler logs every job run at INFO: one line per probe round is noise.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))


class _Stopper:
    """Signal handling for an asyncio main: stop on SIGTERM/SIGINT, call on_hup on SIGHUP."""

    def __init__(self, on_hup: Callable[[], object] | None, *, worker: bool = False) -> None:
        self.event = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop, signal.SIGTERM)
        if worker:
            # Ctrl-C reaches the whole process group: the parent stops the workers in order.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            loop.add_signal_handler(signal.SIGINT, self.stop, signal.SIGINT)
        if on_hup is not None:
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        else:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def stop(self, sig: int | None = None) -> None:
        if sig is not None and not self.event.is_set():
            log.info("%s: stopping", signal.Signals(sig).name)
        self.event.set()


async def _every(interval: float, fn: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            fn()
        except Exception:
            log.exception("periodic task failed")


# -- one process --------------------------------------------------------------------------------


async def serve_single(
    source: ConfigSource, config: GslbConfig, log_level: str | None = None
) -> int:
    """Serve in this process. `log_level` (--log-level) overrides log.level, on reloads too."""
    health = HealthStore(config_pools(config), config_edge_names(config))
    runtime = DnsRuntime(source, config, health=health)
    poller = EdgePoller(health, config)
    pairs = bind_all(listen_addresses(config))
    runner = None
    try:
        await runtime.start(pairs)
        await poller.start()
        api = api_address(config)
        if api is not None:
            runner, port = await start_api(
                make_app(
                    health,
                    runtime.metrics.export,
                    probes=poller,
                    token=lambda: runtime.config.api.token,
                ),
                api[0],
                port=api[1],
            )
            log.info("api listening http://%s", format_addr(api[0], port))

        def on_config(new: GslbConfig) -> None:
            set_log_level(log_level or new.log.level)
            poller.reconfigure(new)

        stopper = _Stopper(lambda: runtime.reload(on_config=on_config))
        log.info("gslb ready (1 process, %s, config %s)", _loop_name(), source.describe())
        geo_tasks = [
            asyncio.create_task(_every(GEO_CHECK_INTERVAL, runtime.refresh_geo)),
            asyncio.create_task(_every(TABLE_POLL_INTERVAL, runtime.poll_geo)),
        ]
        try:
            await stopper.event.wait()
        finally:
            for task in geo_tasks:
                task.cancel()
            for task in geo_tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await poller.close()
        if runner is not None:
            await runner.cleanup()
        await runtime.close()
    log.info("stopped")
    return 0


# -- parent ---------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, slot: int, process: Any, conn: Connection) -> None:
        self.slot = slot
        self.process = process
        self.conn = conn
        self.ready = False
        self.applied = -1  # the parent's health version this worker last applied
        self.metrics: dict[str, Any] = {}


class Supervisor:
    """Starts, feeds, watches and restarts the worker processes (see the module docstring)."""

    def __init__(
        self,
        source: ConfigSource,
        addresses: list[tuple[str, int]],
        count: int,
        health: HealthStore,
        level: str,
        cookie_secret: bytes,
    ) -> None:
        self.source = source
        self.addresses = addresses
        # The DNS cookie secret of this start (used when the config names none): every
        # worker, restarted ones too, gets it as an argument, so each accepts the others'.
        self._cookie_secret = cookie_secret
        self.count = count
        self.health = health
        self.level = level
        self.workers: dict[int, _Worker] = {}
        self.restarts: dict[int, int] = dict.fromkeys(range(count), 0)
        self.retired: list[dict[str, Any]] = []  # final metrics of workers that exited
        self.stopping = False
        self.failed = asyncio.Event()  # every worker slot gave up
        self.any_ready = asyncio.Event()
        self.all_ready = asyncio.Event()
        self._applied = asyncio.Event()  # pulsed whenever a worker acknowledges a snapshot
        self._ctx = multiprocessing.get_context("spawn")
        self._pending: set[asyncio.TimerHandle] = set()
        self._all_gone = asyncio.Event()

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        path = str(self.source.path) if self.source.path is not None else None
        process = self._ctx.Process(
            target=worker_entry,
            args=(
                child_conn,
                path,
                self.addresses,
                slot,
                self.level,
                os.getpid(),
                self._cookie_secret,
            ),
            name=f"gslb-worker-{slot}",
        )
        process.start()
        child_conn.close()
        worker = _Worker(slot, process, parent_conn)
        self.workers[slot] = worker
        self._send(worker, {"type": "health", "snapshot": self.health.snapshot()})
        loop.add_reader(parent_conn.fileno(), self._on_message, worker)
        loop.add_reader(process.sentinel, self._on_exit, worker)
        log.info("worker %d started (pid %d)", slot, process.pid)

    def _send(self, worker: _Worker, message: dict[str, Any]) -> None:
        try:
            worker.conn.send(message)
        except (OSError, ValueError):
            pass  # the worker is gone; _on_exit handles it

    def broadcast(self, message: dict[str, Any]) -> None:
        for worker in list(self.workers.values()):
            self._send(worker, message)

    def _on_message(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "metrics":
                    worker.metrics = message.get("data") or {}
                elif kind == "applied":
                    worker.applied = int(message.get("version", -1))
                    self._applied.set()
                elif kind == "ready":
                    worker.ready = True
                    self._send(worker, {"type": "health", "snapshot": self.health.snapshot()})
                    log.info("worker %d ready", worker.slot)
                    self.any_ready.set()
                    if len(self.workers) == self.count and all(
                        w.ready for w in self.workers.values()
                    ):
                        self.all_ready.set()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())

    def _on_exit(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(worker.conn.fileno())
        worker.process.join(0)
        code = worker.process.exitcode
        worker.conn.close()
        if worker.metrics:
            self.retired.append({**worker.metrics, "tcp_open": 0})  # its connections are gone
        self.workers.pop(worker.slot, None)
        if self.stopping:
            if not self.workers:
                self._all_gone.set()
            return
        self.restarts[worker.slot] += 1
        n = self.restarts[worker.slot]
        if n > MAX_RESTARTS:
            log.error(
                "worker %d exited (code %s) %d times: not restarting it", worker.slot, code, n
            )
            if not self.workers and not self._pending:
                self.failed.set()
            return
        delay = min(0.2 * 2 ** (n - 1), 5.0)
        log.warning("worker %d exited (code %s): restarting in %.1fs", worker.slot, code, delay)
        handle: asyncio.TimerHandle | None = None

        def restart() -> None:
            if handle is not None:
                self._pending.discard(handle)
            if not self.stopping:
                self._spawn(worker.slot)

        handle = loop.call_later(delay, restart)
        self._pending.add(handle)

    async def synced(self) -> bool:
        """Wait until every ready worker applied the current health version (bounded)."""
        version = self.health.version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SYNC_TIMEOUT
        while any(w.ready and w.applied < version for w in self.workers.values()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("not every worker acknowledged health version %d in time", version)
                return False
            self._applied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._applied.wait(), remaining)
        return True

    def info(self) -> dict[str, Any]:
        """Per-worker status for /healthz (queries: as last reported by the worker)."""
        workers = []
        for slot, worker in sorted(self.workers.items()):
            queries = sum(int(row[3]) for row in worker.metrics.get("queries", ()))
            workers.append(
                {"slot": slot, "pid": worker.process.pid, "ready": worker.ready, "queries": queries}
            )
        return {"workers": workers, "restarts": sum(self.restarts.values())}

    def merged_metrics(self) -> dict[str, Any]:
        return merge_exports([*self.retired, *(w.metrics for w in self.workers.values())])

    async def stop(self) -> None:
        self.stopping = True
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        self.broadcast({"type": "stop"})
        if self.workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), STOP_TIMEOUT)
        for worker in list(self.workers.values()):
            log.warning("worker %d did not stop: killing it", worker.slot)
            worker.process.kill()
            worker.process.join(1.0)
            self._on_exit(worker)


async def serve_parent(
    source: ConfigSource, config: GslbConfig, count: int, log_level: str | None = None
) -> int:
    """Supervise `count` workers. `log_level` (--log-level) overrides log.level, on reloads
    too; a reload applies the level in the parent and in every worker."""
    level = log_level or config.log.level
    health = HealthStore(config_pools(config), config_edge_names(config))
    make_locator(config).close()  # fail here, once, rather than in every worker
    probes: list[BoundPair] = bind_all(listen_addresses(config))
    addresses = [(p.host, p.port) for p in probes]
    supervisor = Supervisor(source, addresses, count, health, level, new_secret())
    poller = EdgePoller(health, config)
    current = [config]  # the parent's view of the config, for the API's token
    health.add_listener(
        lambda store: supervisor.broadcast({"type": "health", "snapshot": store.snapshot()})
    )

    def reload() -> None:
        try:
            new = source.load()
            make_locator(new).close()  # the workers will open it: check it here first
        except (GslbError, GeoError, OSError) as exc:
            log.error("reload failed, keeping the old config: %s", exc)
            return
        supervisor.level = log_level or new.log.level  # (re)started workers start with it
        set_log_level(supervisor.level)
        supervisor.broadcast({"type": "reload", "level": supervisor.level})
        health.reconfigure(config_pools(new), config_edge_names(new))  # pushes a snapshot too
        poller.reconfigure(new)
        current[0] = new
        log.info("reloaded config %s (workers reload it too)", source.describe())

    runner = None
    try:
        stopper = _Stopper(reload)
        supervisor.start()
        await poller.start()
        ready = asyncio.ensure_future(supervisor.all_ready.wait())
        failed = asyncio.ensure_future(supervisor.failed.wait())
        stopped = asyncio.ensure_future(stopper.event.wait())
        await asyncio.wait(
            {ready, failed, stopped}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        for fut in (ready, failed, stopped):
            fut.cancel()
        if stopper.event.is_set():
            return 0
        if not supervisor.any_ready.is_set():
            log.error("no worker became ready")
            return 1
        for pair in probes:
            pair.udp.close()  # keep pair.tcp: bound, not listening, it reserves the port
        for host, port in addresses:
            log.info("listening udp %s", format_addr(host, port))
            log.info("listening tcp %s", format_addr(host, port))
        api = api_address(config)
        if api is not None:
            app = make_app(
                health,
                supervisor.merged_metrics,
                info=supervisor.info,
                synced=supervisor.synced,
                probes=poller,
                token=lambda: current[0].api.token,
            )
            runner, port = await start_api(app, api[0], api[1])
            log.info("api listening http://%s", format_addr(api[0], port))
        log.info("gslb ready (%d workers, %s, config %s)", count, _loop_name(), source.describe())
        stopped = asyncio.ensure_future(stopper.event.wait())
        failed = asyncio.ensure_future(supervisor.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (stopped, failed):
            fut.cancel()
        return 1 if supervisor.failed.is_set() else 0
    finally:
        await poller.close()
        if runner is not None:
            await runner.cleanup()
        await supervisor.stop()
        for pair in probes:
            pair.close()
        log.info("stopped")


# -- worker ---------------------------------------------------------------------------------------


def worker_entry(
    conn: Connection,
    path: str | None,
    addresses: list[tuple[str, int]],
    slot: int,
    level: str,
    parent: int,
    cookie_secret: bytes,
) -> None:
    """A worker process's main (spawned by Supervisor, whose pid is `parent`, which gives
    every worker the same `cookie_secret`)."""
    die_with_parent(parent)  # SIGTERM: a graceful stop once the loop runs, else the default
    configure_logging(level, prefix=f"[worker {slot}] ")
    source = ConfigSource(Path(path) if path is not None else None)
    try:
        code = run(_worker_main(conn, source, addresses, cookie_secret))
    except (GslbError, GeoError, OSError) as exc:
        log.error("worker failed: %s", exc)
        code = 2
    os._exit(code)  # skip multiprocessing's atexit machinery: nothing else to flush


async def _worker_main(
    conn: Connection, source: ConfigSource, addresses: list[tuple[str, int]], cookie_secret: bytes
) -> int:
    loop = asyncio.get_running_loop()
    config = source.load()
    health = HealthStore(config_pools(config), config_edge_names(config))
    runtime = DnsRuntime(source, config, health=health, cookie_secret=cookie_secret)
    stopper = _Stopper(None, worker=True)

    def send(message: dict[str, Any]) -> None:
        try:
            conn.send(message)
        except (OSError, ValueError):
            stopper.stop()

    def on_message() -> None:
        try:
            while conn.poll():
                message = conn.recv()
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "health":
                    snapshot = message.get("snapshot") or {}
                    try:
                        health.apply(snapshot)
                    except HealthError as exc:
                        log.error("%s", exc)
                    send({"type": "applied", "version": snapshot.get("version", -1)})
                elif kind == "reload":
                    set_log_level(str(message.get("level") or "info"))
                    runtime.reload()
                elif kind == "stop":
                    stopper.stop()
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            stopper.stop()  # the parent is gone

    # The parent queued the current health state right after spawning us: apply it before
    # serving, so a (re)started worker never answers from a stale all-up state.
    if conn.poll(READY_TIMEOUT):
        on_message()
    pairs = bind_all(addresses)
    tasks: list[asyncio.Task[None]] = []
    try:
        await runtime.server.start(pairs)
        loop.add_reader(conn.fileno(), on_message)
        send({"type": "ready"})
        tasks.append(
            asyncio.create_task(
                _every(
                    METRICS_INTERVAL,
                    lambda: send({"type": "metrics", "data": runtime.metrics.export()}),
                )
            )
        )
        tasks.append(asyncio.create_task(_every(GEO_CHECK_INTERVAL, runtime.refresh_geo)))
        tasks.append(asyncio.create_task(_every(TABLE_POLL_INTERVAL, runtime.poll_geo)))
        await stopper.event.wait()
        send({"type": "metrics", "data": runtime.metrics.export()})
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
        await runtime.close()
    return 0
