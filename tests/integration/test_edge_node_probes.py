"""One prober per edge node: a real `edge serve` with two workers and an admin port, in front
of real origins (HTTP, and TCP ones behind a `[[stream]]`) that note which worker process
each request or connection came from.

A probe's connection is still open while the origin answers it, so the origin finds the
process holding the other end: the kernel's socket table (/proc/net/tcp) gives the inode
of the edge's socket for the request's peer port, and the process with that inode among
its descriptors sent it. Each worker's own view of the pool is read from the record it
publishes in the node's run directory.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from edge import nodestats
from tests.integration.edge_helpers import Origin, origins, running, until
from tests.integration.stream_helpers import TcpOrigin
from tests.integration.test_edge_cli import EdgeProcess, _children, edge_process


def _socket_inode(port: int, peer_port: int) -> str | None:
    """The inode of the IPv4 loopback socket 127.0.0.1:port connected to :peer_port."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{peer_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[9]
    return None


def _owner(request: web.Request, pids: set[int]) -> int | None:
    """Which of `pids` holds the client end of `request`'s connection."""
    assert request.transport is not None
    return _sender(request.transport, pids)


def _sender(transport: asyncio.BaseTransport, pids: set[int]) -> int | None:
    """Which of `pids` holds the other end of the connection of `transport`."""
    peer_port = transport.get_extra_info("peername")[1]
    own_port = transport.get_extra_info("sockname")[1]
    inode = _socket_inode(peer_port, own_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


class Senders:
    """The origins' view of the node: who sent each probe, who sent each request."""

    def __init__(self) -> None:
        self.parent = 0  # the edge's parent process, once started
        self.probes: list[int | None] = []  # the sending worker of each probe
        self.requests: dict[str, set[int | None]] = {}  # origin name -> sending workers

    def watch(self, origin: Origin) -> None:
        async def probe(request: web.Request) -> web.Response:
            if self.parent:
                self.probes.append(_owner(request, _children(self.parent)))
            return web.Response(status=200 if origin.healthy else 503)

        async def who(request: web.Request) -> web.Response:
            sender = _owner(request, _children(self.parent))
            self.requests.setdefault(origin.name, set()).add(sender)
            return web.json_response({"origin": origin.name})

        origin.routes["/probe"] = probe
        origin.routes["/who"] = who

    async def probe_senders(self, count: int = 10) -> set[int | None]:
        """The workers that sent the next `count` probes."""
        start = len(self.probes)
        assert await until(lambda: len(self.probes) >= start + count, tries=400)
        return set(self.probes[start : start + count])


def _config(path: Path, *origin_urls: str) -> Path:
    listed = ", ".join(f'"{u}"' for u in origin_urls)
    path.write_text(
        '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n[log]\naccess_log = ""\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'
        f"[pool]\norigins = [{listed}]\n"
        '[pool.probe]\npath = "/probe"\ninterval = 0.2\ntimeout = 0.5\njitter = 0.0\n'
        "rise = 2\nfall = 2\n"
    )
    return path


def _pools(run_root: Path) -> dict[int, dict[str, bool]]:
    """Each worker's origins (url -> up) from the records in the node's run directory."""
    out = {}
    for run_dir in run_root.glob("geoedge-workers-*"):
        for file in run_dir.glob("worker-*.json"):
            try:
                rec = nodestats.decode(file.read_bytes())
            except (OSError, nodestats.RecordError):
                continue
            out[rec.pid] = {o.url: o.up for o in rec.origins}
    return out


def _every_worker(run_root: Path, parent: int, check: Callable[[dict[str, bool]], bool]) -> bool:
    pools = _pools(run_root)
    workers = _children(parent)
    return len(workers) == 2 and all(pid in pools and check(pools[pid]) for pid in workers)


async def _who(edge: EdgeProcess, n: int = 20) -> None:
    fresh = aiohttp.TCPConnector(force_close=True)  # new connections: both workers
    async with aiohttp.ClientSession(connector=fresh) as s:
        for _ in range(n):
            async with s.get(edge.url() + "/who") as r:
                assert r.status == 200


async def _health_follows_probes(
    edge: EdgeProcess, run_root: Path, senders: Senders, b: Origin
) -> None:
    """Origin b fails its probes: both workers take it out, then put it back."""
    parent = edge.proc.pid
    b.healthy = False
    assert await until(
        lambda: _every_worker(run_root, parent, lambda p: p.get(b.url) is False), tries=300
    )
    senders.requests.clear()
    await _who(edge)
    assert "b" not in senders.requests, senders.requests
    assert senders.requests["a"] == _children(parent)  # both workers served, from a only
    b.healthy = True
    assert await until(
        lambda: _every_worker(run_root, parent, lambda p: p.get(b.url) is True), tries=300
    )
    senders.requests.clear()
    for _ in range(10):  # round robin per worker: each worker sends to b within a few
        await _who(edge)
        if senders.requests.get("b") == _children(parent):
            break
    assert senders.requests.get("b") == _children(parent), senders.requests


async def test_one_worker_probes_for_the_node_and_both_follow_its_verdicts(
    tmp_path: Path,
) -> None:
    senders = Senders()
    async with origins("a", "b") as (a, b):
        senders.watch(a)
        senders.watch(b)
        conf = _config(tmp_path / "edge.toml", a.url, b.url)
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path)) as edge:
            assert edge.proc.pid is not None
            senders.parent = edge.proc.pid
            assert await until(lambda: len(_children(senders.parent)) == 2)
            probers = await senders.probe_senders(20)
            assert len(probers) == 1 and probers <= _children(senders.parent), probers
            await _health_follows_probes(edge, tmp_path, senders, b)
            assert await senders.probe_senders() == probers
            # /metrics counts the node's probes once: what the origins received.
            async with (
                aiohttp.ClientSession() as s,
                s.get(edge.url("admin") + "/metrics") as r,
            ):
                text = await r.text()
            assert 'edge_probes_total{origin="' + a.url + '",result="ok"}' in text


async def test_the_slot_0_replacement_probes_again_after_a_kill_9(tmp_path: Path) -> None:
    senders = Senders()
    async with origins("a", "b") as (a, b):
        senders.watch(a)
        senders.watch(b)
        conf = _config(tmp_path / "edge.toml", a.url, b.url)
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path)) as edge:
            assert edge.proc.pid is not None
            parent = senders.parent = edge.proc.pid
            assert await until(lambda: len(_children(parent)) == 2)
            (leader,) = await senders.probe_senders()
            assert leader is not None
            first = _children(parent)
            os.kill(leader, signal.SIGKILL)
            assert await until(lambda: len(_children(parent) - first) == 1, tries=300)
            (replacement,) = _children(parent) - first
            # The follower may have probed meanwhile; once the replacement leads, only it does.
            probers: set[int | None] = set()
            for _ in range(20):
                probers = await senders.probe_senders()
                if probers == {replacement}:
                    break
            assert probers == {replacement}
            await _health_follows_probes(edge, tmp_path, senders, b)


async def test_a_follower_probes_while_the_leader_is_silent(tmp_path: Path) -> None:
    senders = Senders()
    errlog = tmp_path / "err"
    async with origins("a") as (a,):
        senders.watch(a)
        conf = _config(tmp_path / "edge.toml", a.url)
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path), stderr=errlog) as edge:
            assert edge.proc.pid is not None
            parent = senders.parent = edge.proc.pid
            assert await until(lambda: len(_children(parent)) == 2)
            (leader,) = await senders.probe_senders()
            assert leader is not None
            (follower,) = _children(parent) - {leader}
            os.kill(leader, signal.SIGSTOP)  # alive, but it neither probes nor publishes
            try:
                probers: set[int | None] = set()
                for _ in range(20):
                    probers = await senders.probe_senders()
                    if probers == {follower}:
                        break
                assert probers == {follower}
                assert "probing here" in errlog.read_text()
            finally:
                os.kill(leader, signal.SIGCONT)
            for _ in range(20):
                probers = await senders.probe_senders()
                if probers == {leader}:
                    break
            assert probers == {leader}
            assert await until(lambda: "is back: following its verdicts" in errlog.read_text())


async def test_followers_take_the_verdicts_of_origins_a_reload_added(tmp_path: Path) -> None:
    senders = Senders()
    async with origins("a", "b") as (a, b):
        senders.watch(a)
        senders.watch(b)
        conf = _config(tmp_path / "edge.toml", a.url)
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path)) as edge:
            assert edge.proc.pid is not None
            parent = senders.parent = edge.proc.pid
            assert await until(lambda: len(_children(parent)) == 2)
            b.healthy = False  # failing from its first probe on
            _config(conf, a.url, b.url)
            edge.proc.send_signal(signal.SIGHUP)
            await _health_follows_probes(edge, tmp_path, senders, b)
            _config(conf, a.url)  # and removed again: verdicts on b no longer apply anywhere
            edge.proc.send_signal(signal.SIGHUP)
            assert await until(lambda: _every_worker(tmp_path, parent, lambda p: b.url not in p))
            senders.requests.clear()
            await _who(edge)
            assert set(senders.requests) == {"a"}


class _StreamOrigin:
    """A TCP origin behind a stream: answers the probe's PING with PONG while `healthy`
    (DOWN otherwise) and anything else with its name, noting the sending worker of each."""

    def __init__(self, name: str, parent: list[int]) -> None:
        self.tcp = TcpOrigin(name)
        self.tcp.handler = self._handle
        self.healthy = True
        self.parent = parent  # [the edge's parent pid], once started
        self.probes: list[int | None] = []
        self.data: list[int | None] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(64)
        if not self.parent:
            return
        sender = _sender(writer.transport, _children(self.parent[0]))
        if first == b"PING\n":
            self.probes.append(sender)
            writer.write(b"PONG\n" if self.healthy else b"DOWN\n")
        else:
            self.data.append(sender)
            writer.write(self.tcp.name.encode())
        await writer.drain()


async def _through(address: str, n: int) -> list[bytes]:
    """The answers of `n` connections through the edge's stream (new connections: both
    workers accept them)."""
    host, _, port = address.rpartition(":")
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"hello")
        out.append(await reader.read(64))
        writer.close()
        await writer.wait_closed()
    return out


async def test_one_worker_probes_the_stream_pools_and_both_follow(tmp_path: Path) -> None:
    parent: list[int] = []
    a, b = _StreamOrigin("a", parent), _StreamOrigin("b", parent)
    async with running([a.tcp, b.tcp]):
        conf = tmp_path / "edge.toml"
        conf.write_text(
            '[server]\nworkers = 2\n[admin]\nlisten = "127.0.0.1:0"\n[log]\naccess_log = ""\n'
            '[[stream]]\nname = "tcp"\nlisten = "tcp://127.0.0.1:0"\n'
            f'origins = ["{a.tcp.address}", "{b.tcp.address}"]\n'
            '[stream.probe]\nsend = "PING\\n"\nexpect = "PONG"\ninterval = 0.2\n'
            "timeout = 0.5\njitter = 0.0\nrise = 1\nfall = 1\n"
        )
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path)) as edge:
            parent.append(edge.proc.pid)
            address = edge.addresses["tcp"]
            assert await until(lambda: len(a.probes) >= 2 and len(b.probes) >= 2, tries=400)
            start = (len(a.probes), len(b.probes))
            assert await until(
                lambda: len(a.probes) >= start[0] + 10 and len(b.probes) >= start[1] + 10,
                tries=400,
            )
            senders = set(a.probes[start[0] :] + b.probes[start[1] :])
            workers = _children(edge.proc.pid)
            assert len(senders) == 1 and senders <= workers, (senders, workers)

            answers = await _through(address, 20)
            assert set(answers) == {b"a", b"b"}  # round robin over both while both are up

            b.healthy = False  # its probes fail; connections to it would still work
            for _ in range(100):
                a.data.clear()
                answers = await _through(address, 20)
                if set(answers) == {b"a"} and set(a.data) == workers:
                    break
                await asyncio.sleep(0.1)
            assert set(answers) == {b"a"}, answers
            assert set(a.data) == workers  # both workers route around b, by the one verdict
            # And the other worker never probed meanwhile: it followed the leader's verdict.
            assert set(a.probes[start[0] :] + b.probes[start[1] :]) == senders
