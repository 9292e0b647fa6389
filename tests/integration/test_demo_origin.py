"""The demo origin served on 127.0.0.1 port 0: every kind of Cache-Control, Surrogate-Key,
conditional GETs and the instance's name in X-Origin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from edge.demo_origin import make_app


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    runner = web.AppRunner(make_app("here", clock=lambda: 1_800_000_000.0), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_each_kind_of_response(origin: str) -> None:
    seen: dict[str, str] = {}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for path in (
            "/",
            "/style.css",
            "/logo.svg",
            "/badge.png",
            "/large.bin",
            "/api/products",
            "/api/time",
            "/api/random",
            "/api/me",
            "/health",
        ):
            async with s.get(origin + path) as r:
                assert r.status == 200, path
                assert r.headers["X-Origin"] == "here"
                seen[path] = r.headers["Cache-Control"]
                body = await r.read()
                if path == "/large.bin":
                    assert len(body) == 4 << 20
                if path == "/api/time":
                    assert (await r.json())["unix"] == 1_800_000_000.0
        async with s.get(origin + "/api/products") as r:
            assert r.headers["Surrogate-Key"] == "api products"
            etag = r.headers["ETag"]
        async with s.get(origin + "/api/products", headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b""
        async with s.get(origin + "/api/products", headers={"If-None-Match": '"x"'}) as r:
            assert r.status == 200
    assert seen["/"] == "public, max-age=60"
    assert seen["/api/time"] == "max-age=5, stale-while-revalidate=30"
    assert seen["/api/random"] == seen["/health"] == "no-store"
    assert seen["/api/me"] == "private, max-age=60"
