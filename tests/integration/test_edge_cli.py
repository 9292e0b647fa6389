"""The real `edge` process: quick start, persistence across kill -9, SIGHUP reload, workers,
check-config."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.edge_helpers import origins, slow_version, until
from tests.integration.proc_helpers import children as _children
from tests.integration.proc_helpers import gone, kill_all

ROOT = Path(__file__).resolve().parents[2]
HOST = {"Host": "www.cache.test"}  # the cache key names the host; ports differ across restarts


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class EdgeProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.addresses: dict[str, str] = {}
        self.lines: list[str] = []

    async def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        for _ in range(50):
            raw = await asyncio.wait_for(self.proc.stdout.readline(), 30)
            if not raw:
                raise AssertionError(f"edge exited: {self.lines}")
            line = raw.decode().strip()
            self.lines.append(line)
            if line.startswith("edge: listening"):
                _, _, kind, addr = line.split(" ", 3)
                self.addresses.setdefault(kind, addr)
            if line == "edge: ready":
                return
        raise AssertionError(f"no ready line: {self.lines}")

    def url(self, kind: str = "http") -> str:
        return f"http://{self.addresses[kind]}"


@asynccontextmanager
async def edge_process(
    *args: str, tmpdir: str | None = None, stderr: Path | None = None, command: str = "serve"
) -> AsyncIterator[EdgeProcess]:
    """`edge serve ARGS` (or `edge COMMAND ARGS`); its log (stderr) goes to the file `stderr`
    if given."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    err = os.open(stderr, flags, 0o600) if stderr is not None else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        command,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=err if err is not None else asyncio.subprocess.DEVNULL,
        env=_env(TMPDIR=tmpdir) if tmpdir else _env(),
        cwd=ROOT,
    )
    edge = EdgeProcess(proc)
    try:
        await edge.wait_ready()
        yield edge
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if err is not None:
            os.close(err)


def _cacheable_origin_route(body: bytes):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Cache-Control": "max-age=600"})

    return handler


async def test_quick_start_cache_survives_kill_9(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    async with origins("a") as (origin,):
        origin.routes["/persist"] = _cacheable_origin_route(b"kept across restarts")
        args = (
            "--listen",
            "127.0.0.1:0",
            "--origin",
            origin.url,
            "--cache-dir",
            str(cache_dir),
            "--admin",
            "127.0.0.1:0",
        )
        async with edge_process(*args) as edge, aiohttp.ClientSession() as s:
            for expected in ("miss", "hit"):
                async with s.get(edge.url() + "/persist", headers=HOST) as r:
                    assert await r.read() == b"kept across restarts"
                    assert expected in r.headers["Cache-Status"]
            async with s.get(edge.url("admin") + "/__edge/status") as r:
                assert (await r.json())["healthy"] is True
            edge.proc.send_signal(signal.SIGKILL)
            await edge.proc.wait()
        assert origin.hits["/persist"] == 1
        async with edge_process(*args) as edge:
            if shutil.which("curl"):
                proc = await asyncio.create_subprocess_exec(
                    "curl",
                    "-sS",
                    "-D",
                    "-",
                    "-H",
                    "Host: www.cache.test",
                    edge.url() + "/persist",
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 20)
                assert b"kept across restarts" in out
                assert b"; hit" in out
            else:  # pragma: no cover - curl is in APT_TEST_PACKAGES
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(edge.url() + "/persist", headers=HOST) as r,
                ):
                    assert "hit" in r.headers["Cache-Status"]
        assert origin.hits["/persist"] == 1


async def test_a_miss_answered_before_its_commit_is_stored_by_a_graceful_stop(
    tmp_path: Path,
) -> None:
    """A small miss is answered before its commit (edge.fill.GroupCommit.submit): a stop
    (SIGTERM) right after the answer still commits it, and the next process has it."""
    cache_dir = tmp_path / "cache"
    async with origins("a") as (origin,):
        origin.routes["/soon"] = _cacheable_origin_route(b"committed on the way out")
        args = ("--listen", "127.0.0.1:0", "--origin", origin.url, "--cache-dir", str(cache_dir))
        async with edge_process(*args) as edge, aiohttp.ClientSession() as s:
            async with s.get(edge.url() + "/soon", headers=HOST) as r:
                assert await r.read() == b"committed on the way out"
                assert "stored" in r.headers["Cache-Status"]
            edge.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(edge.proc.wait(), 30) == 0
        async with edge_process(*args) as edge, aiohttp.ClientSession() as s:
            async with s.get(edge.url() + "/soon", headers=HOST) as r:
                assert await r.read() == b"committed on the way out"
                assert "hit" in r.headers["Cache-Status"]
        assert origin.hits["/soon"] == 1


async def test_sighup_reloads_and_keeps_config_on_error(tmp_path: Path) -> None:
    async with origins("a", "b") as (a, b):
        conf = tmp_path / "edge.toml"

        def write(origin_url: str, extra: str = "") -> None:
            conf.write_text(
                '[server]\nlisten = ["127.0.0.1:0"]\n[log]\naccess_log = ""\n'
                f'[pool]\norigins = ["{origin_url}"]\n[pool.probe]\nenabled = false\n{extra}'
            )

        write(a.url)
        log = tmp_path / "edge.log"
        async with (
            edge_process("-c", str(conf), stderr=log) as edge,
            aiohttp.ClientSession() as s,
        ):

            async def who() -> str:
                async with s.get(edge.url() + "/who") as r:
                    return str((await r.json())["origin"])

            assert await who() == "a"
            write(b.url)
            edge.proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                if await who() == "b":
                    break
                await asyncio.sleep(0.05)
            assert await who() == "b"
            write(a.url, extra="bogus_key = 1\n")
            edge.proc.send_signal(signal.SIGHUP)
            # Polled, not slept on: the refused reload says so, naming the key.
            assert await until(lambda: "bogus_key" in log.read_text())
            assert "reload failed, keeping the running configuration" in log.read_text()
            assert {await who() for _ in range(5)} == {"b"}


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_corrupt_cache_database_is_set_aside_and_the_node_starts_empty(
    tmp_path: Path, workers: int
) -> None:
    # Issue 7: zeroing the first 100 bytes of cache.db made `edge serve` exit with a
    # traceback (with workers, the whole node). The cache is disposable.
    cache_dir = tmp_path / "cache"
    log = tmp_path / "edge.log"
    async with origins("a") as (origin,):
        origin.routes["/c"] = _cacheable_origin_route(b"cached body")
        args = ("--listen", "127.0.0.1:0", "--origin", origin.url, "--cache-dir", str(cache_dir))
        args += ("--admin", "127.0.0.1:0", "--workers", str(workers))
        async with edge_process(*args) as edge, aiohttp.ClientSession() as s:
            async with s.get(edge.url() + "/c", headers=HOST) as r:
                assert await r.read() == b"cached body"
        db = cache_dir / "cache.db"
        db.write_bytes(bytes(100) + db.read_bytes()[100:])
        for wal in ("cache.db-wal", "cache.db-shm"):  # pages there would mend the header
            (cache_dir / wal).unlink(missing_ok=True)
        async with edge_process(*args, stderr=log) as edge, aiohttp.ClientSession() as s:
            for expected in ("miss", "hit"):
                async with s.get(edge.url() + "/c", headers=HOST) as r:
                    assert r.status == 200
                    assert await r.read() == b"cached body"
                    assert expected in r.headers["Cache-Status"]
            async with s.get(edge.url("admin") + "/metrics") as r:
                families = {f.name: f for f in text_string_to_metric_families(await r.text())}
            resets = families["edge_cache_store_resets"].samples
            assert sum(x.value for x in resets if x.name.endswith("_total")) == 1
            assert await until(lambda: not list(cache_dir.glob("corrupt-*")))
        lines = [line for line in log.read_text().splitlines() if "was corrupt" in line]
        assert len(lines) == 1, log.read_text()
        assert "Traceback" not in log.read_text()
        assert origin.hits["/c"] == 2


async def test_two_workers_share_the_port(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        args = ("--listen", "127.0.0.1:0", "--origin", origin.url, "--workers", "2")
        async with edge_process(*args) as edge:
            for _ in range(20):
                async with aiohttp.ClientSession() as s, s.get(edge.url() + "/w") as r:
                    assert r.status == 200
            assert await until(lambda: origin.hits["/w"] == 20)
            # Each worker has its own pooled connections to the origin, so requests that
            # arrived through both workers come from at least two client ports.
            assert (
                len(
                    {
                        peer
                        for req, peer in zip(origin.requests, origin.peers, strict=True)
                        if req.path == "/w"
                    }
                )
                >= 2
            )


async def test_a_purge_through_either_worker_holds_against_the_others_fills(
    tmp_path: Path,
) -> None:
    # Four slow misses, each filled by whichever worker took its connection, and a purge
    # of each through a connection of its own (so, by SO_REUSEPORT, as often as not
    # another worker): none of the fills asked for before its purge may be stored after
    # it. Before purges were recorded in the store, a purge through the other worker
    # missed a fill that ended after its 250 ms second pass (each of the four half the
    # time).
    version = {"v": b"1"}
    paths = [f"/slow/{i}" for i in range(4)]

    async def get(url: str) -> bytes:
        async with aiohttp.ClientSession() as s, s.get(url, headers=HOST) as r:
            body = await r.read()
            assert r.status == 200 and len(body) == 10000 and len(set(body)) == 1
            return body[:1]

    async with origins("a") as (origin,):
        for path in paths:
            origin.routes[path] = slow_version(version, 10_000)
        args = ("--listen", "127.0.0.1:0", "--origin", origin.url, "--workers", "2")
        args += ("--cache-dir", str(tmp_path / "cache"), "--admin", "127.0.0.1:0")
        async with edge_process(*args) as edge:
            first = [asyncio.create_task(get(edge.url() + p)) for p in paths]
            assert await until(lambda: all(origin.hits[p] == 1 for p in paths))
            await asyncio.sleep(0.2)
            version["v"] = b"2"
            for path in paths:
                purge = {"url": f"http://{HOST['Host']}{path}"}
                async with aiohttp.ClientSession() as s:
                    async with s.post(edge.url("admin") + "/__edge/purge", json=purge) as r:
                        assert r.status == 200, await r.text()
            assert await asyncio.gather(*first) == [b"1"] * 4  # each client gets all of v1
            await asyncio.sleep(0.3)  # the fills' commits (20 ms of linger) are over
            for path in paths:
                assert await get(edge.url() + path) == b"2", path
                assert origin.hits[path] == 2


async def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        args = ("--listen", "127.0.0.1:0", "--origin", origin.url, "--workers", "2")
        async with edge_process(*args) as edge:
            workers = _children(edge.proc.pid)
            assert len(workers) == 2
            try:
                async with aiohttp.ClientSession() as s, s.get(edge.url() + "/before") as r:
                    assert r.status == 200
                edge.proc.kill()  # SIGKILL: the parent cannot tell its workers anything
                # Not proc.wait(): asyncio waits for the stdout pipe too, which workers hold.
                left = await asyncio.to_thread(gone, {edge.proc.pid, *workers})  # bounded poll
                assert not left, f"{left} outlived the parent"
            finally:
                kill_all(workers)


async def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        args = ("--listen", "127.0.0.1:0", "--origin", origin.url, "--admin", "127.0.0.1:0")
        async with edge_process(*args, "--workers", "2", tmpdir=str(tmp_path)) as edge:
            parent = edge.proc.pid
            assert await until(lambda: len(_children(parent)) == 2)
            first = _children(parent)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            assert await until(lambda: len(_children(parent) - first) == 1, tries=300)
            assert len(_children(parent)) == 2 and victim not in _children(parent)
            fresh = aiohttp.TCPConnector(force_close=True)  # new connections reach both
            async with aiohttp.ClientSession(connector=fresh) as s:
                for _ in range(20):
                    async with s.get(edge.url() + "/after") as r:
                        assert r.status == 200
                pids: set[int] = set()
                for _ in range(100):  # the replacement publishes its record within a second
                    async with s.get(edge.url("admin") + "/__edge/status") as r:
                        pids = {w["pid"] for w in (await r.json())["workers"]}
                    if pids == _children(parent):
                        break
                    await asyncio.sleep(0.05)
                assert pids == _children(parent)
            edge.proc.terminate()
            assert await asyncio.wait_for(edge.proc.wait(), 15) == 0


async def test_a_replacement_worker_runs_the_reloaded_config(tmp_path: Path) -> None:
    async with origins("a", "b") as (a, b):
        conf = tmp_path / "edge.toml"

        def write(origin_url: str) -> None:
            conf.write_text(
                '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n[log]\naccess_log = ""\n'
                '[admin]\nlisten = "127.0.0.1:0"\n'
                f'[pool]\norigins = ["{origin_url}"]\n[pool.probe]\nenabled = false\n'
            )

        write(a.url)
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path)) as edge:
            fresh = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=fresh) as s:

                async def origins_seen(n: int = 12) -> set[str]:
                    seen = set()
                    for _ in range(n):
                        async with s.get(edge.url() + "/who") as r:
                            seen.add(str((await r.json())["origin"]))
                    return seen

                assert await origins_seen() == {"a"}
                write(b.url)
                edge.proc.send_signal(signal.SIGHUP)
                for _ in range(100):
                    if await origins_seen() == {"b"}:
                        break
                    await asyncio.sleep(0.05)
                parent = edge.proc.pid
                first = _children(parent)
                os.kill(min(first), signal.SIGKILL)
                assert await until(lambda: len(_children(parent) - first) == 1, tries=300)
                (replacement,) = _children(parent) - first
                for _ in range(100):  # until the replacement listens and has published
                    async with s.get(edge.url("admin") + "/__edge/status") as r:
                        if replacement in {w["pid"] for w in (await r.json())["workers"]}:
                            break
                    await asyncio.sleep(0.05)
                assert await origins_seen(20) == {"b"}


async def test_two_workers_report_the_whole_node(tmp_path: Path) -> None:
    """Whichever worker answers the admin port, /__edge/status and /metrics count the
    requests both workers served."""
    async with origins("a") as (origin,):
        origin.routes["/c"] = _cacheable_origin_route(b"counted")
        args = ("--listen", "127.0.0.1:0", "--origin", origin.url, "--admin", "127.0.0.1:0")
        async with edge_process(*args, "--workers", "2", tmpdir=str(tmp_path)) as edge:
            # A new connection per request, so SO_REUSEPORT spreads them over the workers.
            fresh = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=fresh) as s:
                sent = hits = 0
                for _ in range(40):
                    async with s.get(edge.url() + "/c", headers=HOST) as r:
                        assert await r.read() == b"counted"
                        sent += 1
                        hits += "; hit" in r.headers["Cache-Status"]
                for _ in range(20):  # not cacheable: every one goes to the origin
                    async with s.get(edge.url() + "/u", headers=HOST) as r:
                        assert r.status == 200
                        sent += 1

                async def status() -> dict[str, Any]:
                    async with s.get(edge.url("admin") + "/__edge/status") as r:
                        assert r.status == 200
                        doc: dict[str, Any] = await r.json()
                        return doc

                # Each worker publishes its counters about once a second, so an answer is
                # complete once the other worker's record is current. Once each worker has
                # answered with the full count, both records are, and no count changes.
                complete: set[int] = set()
                for _ in range(300):
                    doc = await status()
                    if sum(w["requests"] for w in doc["workers"]) == sent:
                        complete.add(doc["workers"][0]["pid"])  # the answering worker is first
                        if len(complete) == 2:
                            break
                    await asyncio.sleep(0.05)
                assert len(complete) == 2, doc
                for _ in range(10):
                    doc = await status()
                    workers = doc["workers"]
                    assert {w["pid"] for w in workers} == complete, doc
                    assert sum(w["requests"] for w in workers) == sent, doc
                    assert all(w["requests"] > 0 for w in workers), doc
                    assert doc["hit_ratio"] == round(hits / sent, 4), doc
                    assert doc["active_requests"] == 0
                    assert doc["healthy"] is True
                    rps = sum(w["requests_per_second"] for w in workers)
                    assert doc["requests_per_second"] == pytest.approx(rps, abs=0.01)
                    assert doc["load_factor"] == pytest.approx(
                        min(1.0, doc["requests_per_second"] / doc["capacity_rps"]), abs=1e-3
                    )
                for _ in range(4):
                    async with s.get(edge.url("admin") + "/metrics") as r:
                        text = await r.text()
                    samples = [
                        sample
                        for family in text_string_to_metric_families(text)
                        if family.name == "edge_requests"
                        for sample in family.samples
                        if sample.name == "edge_requests_total"
                    ]
                    assert sum(x.value for x in samples) == sent
                    assert sum(x.value for x in samples if x.labels["cache"] == "hit") == hits
                    # Histograms too: every origin request either worker made, once.
                    latency = [
                        sample.value
                        for family in text_string_to_metric_families(text)
                        for sample in family.samples
                        if sample.name == "edge_origin_latency_seconds_count"
                    ]
                    assert sum(latency) == origin.hits["/u"] + origin.hits["/c"], text
        # The parent removed the workers' run directory on its way out.
        assert not [p for p in os.listdir(tmp_path) if p.startswith("geoedge-workers-")]


def _paths(log: Path) -> list[str]:
    """The paths of the access log's lines (none if the file is not there)."""
    if not log.exists():
        return []
    return [json.loads(line)["path"] for line in log.read_text().splitlines()]


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigusr1_reopens_the_access_log_after_rotation(tmp_path: Path, workers: int) -> None:
    """logrotate's way: the file is renamed, SIGUSR1 (to the parent, which tells every
    worker) makes the edge write a new file of the configured name."""
    access, rotated, errlog = tmp_path / "access.log", tmp_path / "access.log.1", tmp_path / "err"
    conf = tmp_path / "edge.toml"
    async with origins("a") as (origin,):
        conf.write_text(
            f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = {workers}\n'
            f'[log]\nlevel = "info"\naccess_log = "{access}"\n'
            f'[pool]\norigins = ["{origin.url}"]\n[pool.probe]\nenabled = false\n'
        )
        async with edge_process("-c", str(conf), stderr=errlog) as edge:
            fresh = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=fresh) as s:

                async def get(path: str) -> None:
                    async with s.get(edge.url() + path) as r:
                        assert r.status == 200

                await get("/before")
                assert await until(lambda: _paths(access) == ["/before"])
                access.rename(rotated)
                assert edge.proc.pid is not None
                os.kill(edge.proc.pid, signal.SIGUSR1)
                assert await until(
                    lambda: errlog.read_text().count("access log reopened") == workers
                )
                after = [f"/after-{n}" for n in range(12)]  # new connections: both workers
                for path in after:
                    await get(path)
                assert await until(lambda: sorted(_paths(access)) == sorted(after)), _paths(access)
                assert _paths(rotated) == ["/before"]


async def test_reload_applies_the_access_log_target_and_the_log_level(tmp_path: Path) -> None:
    first, second, errlog = tmp_path / "first.log", tmp_path / "second.log", tmp_path / "err"
    conf = tmp_path / "edge.toml"
    async with origins("a") as (origin,):

        def write(level: str, access: Path) -> None:
            conf.write_text(
                f'[server]\nlisten = ["127.0.0.1:0"]\n[log]\nlevel = "{level}"\n'
                f'access_log = "{access}"\n'
                f'[pool]\norigins = ["{origin.url}"]\n[pool.probe]\nenabled = false\n'
            )

        write("warning", first)
        async with (
            edge_process("-c", str(conf), stderr=errlog) as edge,
            aiohttp.ClientSession() as s,
        ):
            async with s.get(edge.url() + "/one") as r:
                assert r.status == 200
            write("info", second)
            edge.proc.send_signal(signal.SIGHUP)
            # Logged at info after the new level applies: at "warning" it would never show.
            assert await until(lambda: "configuration reloaded" in errlog.read_text())
            async with s.get(edge.url() + "/two") as r:
                assert r.status == 200
            assert await until(lambda: _paths(second) == ["/two"])
            assert _paths(first) == ["/one"]


def test_check_config_reports_file_key_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[pool]\norigins = ["ftp://x"]\n')
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", str(bad)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 1
    assert f"{bad}: pool.origins[0].url: expected http(s)://host[:port]" in res.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[pool]\norigins = ["http://127.0.0.1:1"]\n[cache]\nsize = 1\n')
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", str(unknown)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 1
    assert f"{unknown}: cache.size: unknown key" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", str(ROOT / "edge" / "example.toml")],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ("[pool]\norigins = []\n", "pool.origins", "at least one origin"),
        (
            '[pool]\norigins = ["http://a:1"]\nalgorithm = "random"\n',
            "pool.algorithm",
            "must be one of",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[limits]\nheader_timeout = -1\n',
            "limits.header_timeout",
            "positive",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[server]\nlisten = ["1.2.3.4"]\n',
            "server.listen",
            "missing port",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[cache]\nsize_limit = "lots"\n',
            "cache.size_limit",
            "not a size",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[cache]\ndefault_ttl = inf\n',
            "cache.default_ttl",
            "must be a finite number, got inf",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[cache]\nheuristic_max = nan\n',
            "cache.heuristic_max",
            "must be a finite number, got nan",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[tls]\nlisten = ["127.0.0.1:0"]\n',
            "tls.certificates",
            "no certificate",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[server]\nnode_id = "edge 1"\n',
            "server.node_id",
            "cdn-id",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[server]\nmax_hops = 0\n',
            "server.max_hops",
            "at least 1",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[server]\nstrip_request_headers = ["X-A", "Host"]\n',
            "server.strip_request_headers[1]",
            "Host cannot be stripped",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[server]\nstrip_request_headers = ["X A"]\n',
            "server.strip_request_headers[0]",
            "not a header field name",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[admin]\ntoken_file = "missing"\n',
            "admin.token_file",
            "cannot read",
        ),
        (
            '[pool]\norigins = ["http://a:1"]\n[admin]\ntoken_file = "short"\n',
            "admin.token_file",
            "16+ visible characters",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, toml: str, key: str, problem: str) -> None:
    from edge.config import load
    from edge.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(toml)
    (tmp_path / "short").write_text("abc\n")  # too short a token
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert problem in info.value.problem


def test_node_id_defaults_to_host_name_and_port_and_strip_list_is_replaced() -> None:
    from edge.config import DEFAULT_STRIP_REQUEST, from_mapping

    origin = {"origins": ["http://a:1"]}
    host = socket.gethostname().lower()
    config = from_mapping({"server": {"listen": ["127.0.0.1:8081"]}, "pool": origin}, "<t>")
    assert config.server.node_id in (f"{host}:8081", "geoedge:8081")
    assert config.server.strip_request_headers == DEFAULT_STRIP_REQUEST
    assert config.server.max_hops == 16
    config = from_mapping(
        {
            "server": {
                "node_id": "shield-1.fra",
                "strip_request_headers": ["X-Debug-Route", "x-debug-route", "X-Original-URL"],
            },
            "pool": origin,
        },
        "<t>",
    )
    assert config.server.node_id == "shield-1.fra"
    assert config.server.strip_request_headers == ("x-debug-route", "x-original-url")
