"""`gslb run`: start a whole GeoEdge topology on this machine, and stop all of it again.

The launcher takes a `RunPlan` (gslb.topology: configs, command lines, logs) and
1. locks and empties its run directory (`RunDir`: one launcher per directory; a directory
   that is neither empty nor marked as a run directory is refused, never emptied);
2. checks that every address of the topology is free, before anything starts;
3. writes the rendered configs and starts every process (`python -m ...`, in its own
   session, output to logs/NAME.log), asking each to die with the launcher
   (geoedge.lifetime): a `kill -9` of the launcher leaves nothing behind;
4. waits, with a bounded number of polls, until everything answers: each origin's /health,
   each edge's /__edge/status (healthy), and gslb: a DNS answer for the pool and every edge
   probed up through its API;
5. asks gslb where each client network of the topology goes, and prints what to try;
6. runs until SIGINT, SIGTERM or SIGHUP, or until gslb exits. An edge or an origin that
   exits is reported (with the end of its log) and the rest keeps running: that is a
   failure to watch, not a reason to stop;
7. stops gslb, then the edges, then the origins: SIGTERM to each (and SIGCONT, in case it
   was frozen with SIGSTOP), then SIGKILL to its process group after STOP_TIMEOUT. A second
   signal while stopping kills at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, TextIO

import aiohttp
from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption

from geo.location import IPNetwork
from geoedge.lifetime import launcher_env
from gslb.ecs import OPTION_CODE, ClientSubnet
from gslb.errors import TopologyError
from gslb.server import format_addr
from gslb.topology import Process, RunPlan, Topology, http_url, listeners

__all__ = ["Launcher", "RunDir", "check_free", "hints"]

READY_TIMEOUT: Final = 60.0  # seconds for the whole topology to answer
READY_STEP: Final = 0.2  # seconds between readiness polls
DNS_TIMEOUT: Final = 1.0  # seconds for one DNS answer (a poll, or asking for a client)
HTTP_TIMEOUT: Final = 1.0  # seconds for one readiness poll over HTTP
STOP_TIMEOUT: Final = 10.0  # seconds a process gets to stop after SIGTERM
LOG_TAIL: Final = 12  # log lines shown for a process that failed
STOP_ORDER: Final = ("gslb", "edge", "origin")


class RunDir:
    """The run directory: locked while a launcher uses it, emptied of the last run's files."""

    MARKER: Final = ".geoedge-run"
    PARTS: Final = ("etc", "logs", "cache")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> None:
        """Lock the directory and remove what the last run left. Raises TopologyError."""
        marker = self.path / self.MARKER
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not marker.exists() and any(self.path.iterdir()):
                raise TopologyError(
                    f"{self.path}: not empty and not a run directory (no {self.MARKER}): "
                    "choose another one with --run-dir"
                )
            fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        except OSError as exc:
            raise TopologyError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TopologyError(f"{self.path}: in use by another `gslb run`") from None
        self._fd = fd
        for part in self.PARTS:
            shutil.rmtree(self.path / part, ignore_errors=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def check_free(topology: Topology) -> None:
    """Raise TopologyError naming the first address of `topology` that cannot be bound."""
    for key, (host, port) in listeners(topology):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if key == "gslb.listen" else [])
        for kind in kinds:
            with socket.socket(family, kind) as sock:
                if kind == socket.SOCK_STREAM:  # as the servers do: a TIME_WAIT is no conflict
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
                    raise TopologyError(
                        f"{topology.source}: {key}: cannot listen on {proto} "
                        f"{format_addr(host, port)}: {exc.strerror or exc} (another `make run`?)"
                    ) from None


# -- asking gslb ----------------------------------------------------------------------------------


def dns_query(name: str, subnet: IPNetwork | None, qid: int) -> bytes:
    """An A query for `name`, with an EDNS Client Subnet option for `subnet` if given."""
    query = DNSRecord.question(name, "A")
    query.header.id = qid
    options = []
    if subnet is not None:
        options.append(EDNSOption(OPTION_CODE, ClientSubnet.for_network(subnet).encode(0)[4:]))
    query.add_ar(EDNS0(udp_len=1232, opts=options))
    return bytes(query.pack())


def answer_addresses(reply: bytes, qid: int) -> list[str] | None:
    """The A records of `reply`, or None if it is not a good answer to query `qid`."""
    try:
        record = DNSRecord.parse(reply)
    except Exception:  # dnslib raises more than DNSError on bad input (STYLE.md)
        return None
    if record.header.id != qid or record.header.rcode != 0:
        return None
    return sorted(str(rr.rdata) for rr in record.rr if rr.rtype == QTYPE.A)


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


async def ask(server: tuple[str, int], name: str, subnet: IPNetwork | None) -> list[str] | None:
    """The addresses gslb at `server` answers for `name` (from `subnet`); None if it does
    not answer well within DNS_TIMEOUT."""
    loop = asyncio.get_running_loop()
    qid = int.from_bytes(os.urandom(2), "big")
    try:
        transport, protocol = await loop.create_datagram_endpoint(_Reply, remote_addr=server)
    except OSError:
        return None
    try:
        transport.sendto(dns_query(name, subnet, qid))
        reply = await asyncio.wait_for(protocol.future, DNS_TIMEOUT)
    except (OSError, TimeoutError):
        return None
    finally:
        transport.close()
    return answer_addresses(reply, qid)


# -- readiness ----------------------------------------------------------------------------------


def edge_ready(status: Any) -> str | None:
    """None when an edge's /__edge/status document says it can serve, else why not."""
    if isinstance(status, dict) and status.get("healthy") is True:
        return None
    return "not healthy yet (no origin up)"


def gslb_ready(edges_doc: Any, names: list[str]) -> str | None:
    """None when gslb's /v1/edges shows every edge of `names` probed and up, else why not."""
    states = edges_doc.get("edges") if isinstance(edges_doc, dict) else None
    if not isinstance(states, dict):
        return "no edge list from its API"
    waiting = [
        n
        for n in names
        if not (
            isinstance(states.get(n), dict)
            and states[n].get("up") is True
            and (states[n].get("probe") or {}).get("last_ok") is True
        )
    ]
    return f"edges not probed up yet: {', '.join(waiting)}" if waiting else None


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, None


# -- what to try --------------------------------------------------------------------------------


def hints(plan: RunPlan, pids: dict[str, int], answers: list[list[str] | None]) -> str:
    """What to try, once everything answers. `answers[i]` is what gslb answered for the
    topology's client i (for the pool without a client subnet when there is none)."""
    t = plan.topology
    g = t.gslb
    by_address = {e.listen[0]: e for e in t.edges}
    dns = f"dig @{g.listen[0]} -p {g.listen[1]} {g.pool_name.rstrip('.')} A"
    api = http_url(g.api)
    logs = _shown(plan.logs)
    lines = [
        f"GeoEdge is running: gslb, {len(t.edges)} edge(s), {len(t.origins)} origin(s). "
        f"Logs: {logs}/",
        "",
        f"  {'gslb':10} DNS {format_addr(*g.listen)}, API {api}  (pid {pids['gslb']})",
    ]
    lines += [
        f"  {e.name:10} {e.place}: {e.url}, admin {http_url(e.admin)}  (pid {pids[e.name]})"
        for e in t.edges
    ]
    lines += [f"  {o.name:10} demo origin {o.url}  (pid {pids[o.name]})" for o in t.origins]
    lines += ["", "Which edge does a client get? (the nearest healthy one, by EDNS Client Subnet)"]
    clients = [(c.place, f" +subnet={c.subnet}") for c in t.clients] or [("this host", "")]
    width = max(len(dns + s) for _, s in clients) + 8
    for (place, subnet), answer in zip(clients, answers, strict=True):
        named = ", ".join(
            f"{a} ({by_address[a].name}, {by_address[a].place})" if a in by_address else a
            for a in answer or []
        )
        lines.append(f"  {dns + subnet + ' +short':{width}} # {place}: {named or 'no answer'}")
    first = next((a[0] for a in answers if a and a[0] in by_address), t.edges[0].listen[0])
    shown = by_address[first]
    host = g.pool_name.rstrip(".")
    port = shown.listen[1]
    lines += [
        "",
        f"Fetch through {shown.name} twice: Cache-Status says a miss, then a hit; "
        "Content-Encoding: br",
        f"  curl -s -o /dev/null -D - -H 'Accept-Encoding: br' --resolve {host}:{port}:{first} "
        f"http://{host}:{port}/",
        "  more: /style.css /logo.svg /badge.png /large.bin (4 MiB) /api/products /api/time "
        "/api/random /api/me",
        "",
        f"The status page (map, catchments, state changes): {api}/",
        "What gslb knows about the edges, why a client gets its edge, what an edge tells it:",
        f"  curl -s {api}/v1/topology",
        f"  gslb explain {host} {t.clients[0].subnet if t.clients else '127.0.0.1'} --api {api}",
        f"  curl -s {shown.status_url}",
        "",
        f"Fail {shown.name} and watch its clients move (probes every {t.probes.interval:g} s; "
        f"out after {t.probes.fall} failed, back after {t.probes.rise} good):",
        f"  kill -STOP -- -{pids[shown.name]}      # freeze {shown.name} (its process group)",
        f"  {dns}{clients[0][1]} +short      # a few seconds later: the next nearest edge",
        f"  kill -CONT -- -{pids[shown.name]}      # {shown.name} answers again",
        f"  curl -s -X POST {api}/v1/edges/{shown.name}/drain     # or by hand; /undrain ends it",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- the supervisor -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    spec: Process
    proc: asyncio.subprocess.Process
    exited: asyncio.Task[int]


class Launcher:
    """Runs one `RunPlan`; see the module docstring."""

    def __init__(
        self,
        plan: RunPlan,
        *,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.plan = plan
        self.out = out
        self.err = err
        self.ready_timeout = ready_timeout
        self.children: list[_Child] = []
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()

    def _say(self, text: str, *, error: bool = False) -> None:
        stream = self.err if error else self.out
        print(text, file=stream, flush=True)

    async def run(self) -> int:
        """Start, wait for readiness, print what to try, supervise, stop. Returns the exit
        status: 0 after a signal, 1 when the topology did not start or gslb exited."""
        run_dir = RunDir(self.plan.run_dir)
        run_dir.open()
        try:
            check_free(self.plan.topology)
            self._write()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                await self._start()
                if not await self._wait_ready():
                    return 0 if self._stop.is_set() else 1
                answers = await self._ask_clients()
                pids = {c.spec.name: c.proc.pid for c in self.children}
                self._say(hints(self.plan, pids, answers))
                return await self._watch()
            finally:
                await self._stop_all()
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
        finally:
            run_dir.close()

    def _on_signal(self, sig: int) -> None:
        if self._stop.is_set():
            self._hurry.set()
            return
        self._say(f"{signal.Signals(sig).name}: stopping (again to kill at once)")
        self._stop.set()

    def _write(self) -> None:
        plan = self.plan
        for directory in (plan.etc, plan.logs, *plan.cache_dirs):
            directory.mkdir(parents=True, exist_ok=True)
        for path, text in plan.configs:
            path.write_text(text, encoding="utf-8")

    async def _start(self) -> None:
        env = launcher_env() | {"PYTHONUNBUFFERED": "1"}
        for spec in self.plan.processes:
            with _log_file(spec) as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *spec.args,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches the launcher only; it stops them
                )
            self.children.append(_Child(spec, proc, asyncio.create_task(proc.wait())))
        self._say(
            f"started {', '.join(f'{c.spec.name} ({c.proc.pid})' for c in self.children)}; "
            "waiting until everything answers"
        )

    # -- readiness --

    def _checks(
        self, session: aiohttp.ClientSession
    ) -> dict[str, Callable[[], Awaitable[str | None]]]:
        t = self.plan.topology
        checks: dict[str, Callable[[], Awaitable[str | None]]] = {}

        async def origin(url: str) -> str | None:
            status, _ = await _get_json(session, f"{url}/health")
            return None if status == 200 else f"/health answered {status}"

        async def edge(url: str) -> str | None:
            status, doc = await _get_json(session, url)
            return edge_ready(doc) if status == 200 else f"/__edge/status answered {status}"

        async def gslb() -> str | None:
            if not await ask(t.gslb.listen, t.gslb.pool_name, None):
                return f"no DNS answer for {t.gslb.pool_name} yet"
            status, doc = await _get_json(session, http_url(t.gslb.api, "/v1/edges"))
            if status != 200:
                return f"/v1/edges answered {status}"
            return gslb_ready(doc, [e.name for e in t.edges])

        for o in t.origins:
            checks[o.name] = functools.partial(origin, o.url)
        for e in t.edges:
            checks[e.name] = functools.partial(edge, e.status_url)
        checks["gslb"] = gslb
        return checks

    async def _wait_ready(self) -> bool:
        started = time.monotonic()
        why: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            pending = self._checks(session)

            async def check(name: str) -> tuple[str, str | None]:
                try:
                    return name, await pending[name]()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    return name, f"not answering ({type(exc).__name__})"

            for _ in range(max(1, round(self.ready_timeout / READY_STEP))):
                dead = [c for c in self.children if c.proc.returncode is not None]
                if dead:
                    for child in dead:
                        self._report_exit(child)
                    self._say("not starting: a process exited", error=True)
                    return False
                for name, problem in await asyncio.gather(*(check(n) for n in list(pending))):
                    if problem is None:
                        del pending[name]
                        why.pop(name, None)
                    else:
                        why[name] = problem
                if not pending:
                    self._say(f"ready in {time.monotonic() - started:.1f} s")
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), READY_STEP)
                if self._stop.is_set():
                    return False
        self._say(f"not ready after {self.ready_timeout:g} s:", error=True)
        for child in self.children:
            if child.spec.name in why:
                self._say(f"  {child.spec.name}: {why[child.spec.name]}", error=True)
                self._say(self._tail(child.spec), error=True)
        return False

    async def _ask_clients(self) -> list[list[str] | None]:
        t = self.plan.topology
        subnets: list[IPNetwork | None] = [c.subnet for c in t.clients] or [None]
        return list(
            await asyncio.gather(*(ask(t.gslb.listen, t.gslb.pool_name, s) for s in subnets))
        )

    # -- running --

    async def _watch(self) -> int:
        watched = {c.exited: c for c in self.children}
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while watched:
                done, _ = await asyncio.wait({stop, *watched}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return 0
                for task in done:
                    child = watched.pop(task)
                    self._report_exit(child)
                    if child.spec.role == "gslb":
                        self._say("gslb is gone: stopping the rest", error=True)
                        return 1
                    self._say(f"{child.spec.name} stays down; the rest keeps running")
            return 1
        finally:
            stop.cancel()

    def _report_exit(self, child: _Child) -> None:
        code = child.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else code
        self._say(f"{child.spec.name} (pid {child.proc.pid}) exited ({how})", error=True)
        self._say(self._tail(child.spec), error=True)

    def _tail(self, spec: Process) -> str:
        try:
            lines = spec.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        shown = "\n".join(f"    | {line}" for line in lines[-LOG_TAIL:])
        return f"    last lines of {_shown(spec.log)}:\n{shown}" if lines else "    (no output)"

    # -- stopping --

    async def _stop_all(self) -> None:
        for role in STOP_ORDER:
            tier = [c for c in self.children if c.spec.role == role and c.proc.returncode is None]
            for child in tier:
                _signal(child.proc.pid, signal.SIGTERM)
                _signal(-child.proc.pid, signal.SIGCONT)  # a frozen process cannot stop
            if not tier:
                continue
            exited = asyncio.gather(*(c.exited for c in tier))
            hurry = asyncio.ensure_future(self._hurry.wait())
            either: set[asyncio.Future[Any]] = {hurry, exited}
            await asyncio.wait(either, timeout=STOP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
            for child in tier:
                if child.proc.returncode is None:
                    self._say(f"{child.spec.name} did not stop: killing it", error=True)
                    _signal(-child.proc.pid, signal.SIGKILL)  # its process group
            await exited
        if self.children:
            self._say("stopped")


def _log_file(spec: Process) -> BinaryIO:
    """The log a process writes to (its stdout and stderr), truncated."""
    return spec.log.open("wb")


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process (pid > 0) or a process group (pid < 0) we started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
