"""Fake edges for the GSLB integration tests: real HTTP status servers on 127.0.0.1.

`StatusServer` serves one edge's `/__edge/status` document (the one gslb.edgeprobe reads)
from an aiohttp server; a test sets `doc` to change what the next probe sees, or stops the
server to make the edge unreachable and starts it again on the same port. The servers run
on a `LoopThread` (an event loop of their own on a thread), so the blocking DNS and HTTP
clients of the tests never stall them. `eventually` is the bounded polling loop every wait
uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from aiohttp import web

DEADLINE = 20.0  # seconds any state change may take to show (normally well under one)

T = TypeVar("T")

HEALTHY: dict[str, Any] = {
    "healthy": True,
    "origins": {"up": ["http://127.0.0.1:1"], "down": [], "detail": []},
    "active_requests": 0,
    "requests_per_second": 0.0,
    "capacity_rps": 1000.0,
    "load_factor": 0.0,
    "hit_ratio": 0.0,
    "cache": {},
}


def edge_toml(name: str, ipv4: str, lat: float, lon: float, status_url: str | None) -> str:
    """One [[edge]] table of a gslb config."""
    lines = [
        "[[edge]]",
        f'name = "{name}"',
        f'ipv4 = "{ipv4}"',
        f"latitude = {lat}",
        f"longitude = {lon}",
    ]
    if status_url:
        lines.append(f'status_url = "{status_url}"')
    return "\n".join(lines) + "\n"


def eventually(check: Callable[[], T], what: str, *, timeout: float = DEADLINE) -> T:
    """Poll `check` until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.05)


class StatusServer:
    """One edge's /__edge/status on 127.0.0.1; `doc` is what it serves next."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.doc: dict[str, Any] = dict(HEALTHY)
        self.hits = 0
        self.port = 0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/__edge/status"

    async def _status(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(self.doc)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/__edge/status", self._status)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        # The same port again after a stop (reuse_address), so the configured URL stays valid.
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class LoopThread:
    """An event loop on a daemon thread; `run(coro)` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextlib.contextmanager
def status_servers(
    loop_thread: LoopThread, names: Iterable[str]
) -> Iterator[dict[str, StatusServer]]:
    """A healthy status server per name, running for the duration of the block."""
    started = {name: StatusServer(name) for name in names}
    for s in started.values():
        loop_thread.run(s.start())
    try:
        yield started
    finally:
        for s in started.values():
            loop_thread.run(s.stop())
