"""Helpers for the edge integration tests: a real origin server and an in-process edge.

The origin is an aiohttp app on 127.0.0.1 port 0 whose behaviour each test sets through
plain attributes (a dict of canned responses, a health flag); it counts what it receives.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

from aiohttp import web

from edge.app import EdgeRuntime
from edge.config import EdgeConfig, from_mapping

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Origin:
    """A real HTTP origin on 127.0.0.1; `routes` maps a path to a handler."""

    def __init__(self, name: str = "origin") -> None:
        self.name = name
        self.routes: dict[str, Handler] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[web.Request] = []
        self.peers: list[tuple[str, int]] = []
        self.healthy = True
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/health":
            self.hits["/health"] += 1
            return web.Response(status=200 if self.healthy else 503, text=self.name)
        self.hits[path] += 1
        self.requests.append(request)
        if request.transport is not None:
            self.peers.append(request.transport.get_extra_info("peername")[:2])
        handler = self.routes.get(path, self._echo)
        return await handler(request)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        body: dict[str, Any] = {
            "origin": self.name,
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})


class Server(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


@asynccontextmanager
async def running(servers: list[S]) -> AsyncIterator[list[S]]:
    """Start test servers (origins), and stop them all on the way out."""
    for s in servers:
        await s.start()
    try:
        yield servers
    finally:
        for s in servers:
            await s.stop()


def origins(*names: str) -> AbstractAsyncContextManager[list[Origin]]:
    return running([Origin(n) for n in names])


def edge_config(origin_list: list[Origin], **sections: Any) -> EdgeConfig:
    """An edge config on port 0 in front of the origins; `sections` merge into the TOML tree."""
    data: dict[str, Any] = {
        "server": {"listen": ["127.0.0.1:0"]},
        "admin": {"listen": "127.0.0.1:0"},
        "log": {"access_log": ""},
        "pool": {
            "origins": [{"url": o.url} for o in origin_list],
            "probe": {"enabled": False},
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_mapping(data, "<test>")


@asynccontextmanager
async def running_edge(config: EdgeConfig) -> AsyncIterator[EdgeRuntime]:
    runtime = EdgeRuntime(config)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def base_url(runtime: EdgeRuntime, kind: str = "http") -> str:
    addr = runtime.addresses[kind][0]
    scheme = "https" if kind == "https" else "http"
    return f"{scheme}://{addr}"


def raw_reply(data: bytes) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An origin route that writes `data` as the whole raw reply and closes the connection:
    a broken, cut short or close-delimited response aiohttp itself would not send."""

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(data)
        request.transport.close()
        await asyncio.sleep(0.05)
        return web.Response()

    return handler


async def until(predicate: Callable[[], bool], *, tries: int = 200, step: float = 0.05) -> bool:
    """Poll `predicate` a bounded number of times; True once it holds."""
    for _ in range(tries):
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def early_hints(cache_control: str) -> Handler:
    """An origin route that sends a 103 Early Hints (a Link), then "final" with
    `cache_control`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        await asyncio.sleep(0.05)
        return web.Response(text="final", headers={"Cache-Control": cache_control})

    return handler


def slow_version(version: dict[str, bytes], size: int, **headers: str) -> Handler:
    """An origin route that answers `size` bytes of `version["v"]` (as it was when asked)
    over about a second, cacheable for ten minutes, with `headers` besides: a fill still
    on its way when a test changes the version and purges."""

    async def handler(request: web.Request) -> web.StreamResponse:
        v = version["v"]
        fields = {"Cache-Control": "max-age=600", "Content-Length": str(size), **headers}
        resp = web.StreamResponse(headers=fields)
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(v * (size // 10))
            await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp

    return handler
