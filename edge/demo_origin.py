"""The demo origin behind the edges of `make run`: `edge demo-origin --listen HOST:PORT`.

A small site with one response of each kind worth watching through an edge:

    /               HTML               public, max-age=60            Surrogate-Key: site html
    /style.css      CSS                public, max-age=3600          Surrogate-Key: site css
    /logo.svg       SVG, drawn here    public, max-age=86400         Surrogate-Key: site img
    /badge.png      PNG, drawn here    public, max-age=86400         Surrogate-Key: site img
    /large.bin      4 MiB, fixed bytes public, max-age=3600          Surrogate-Key: site large
    /api/products   JSON               max-age=30                    Surrogate-Key: api products
    /api/time       JSON, the time     max-age=5, stale-while-revalidate=30
    /api/random     JSON, random       no-store
    /api/me         JSON, "a user's"   private, max-age=60
    /health         for probes         no-store

Static bodies are built once, deterministically (no files, nothing downloaded): the same on
every instance and every run, so the instances of a pool agree on ETags, and a conditional
GET with a matching If-None-Match gets 304 from any of them. Every response names the
instance that made it in `X-Origin`, so a miss shows which origin of the pool answered.
The content is pure (`site`, `png`, `svg`); the aiohttp app around it is thin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import signal
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final

from aiohttp import web

from edge.config import Address

__all__ = ["LARGE_SIZE", "Page", "make_app", "png", "serve_demo", "site"]

LARGE_SIZE: Final = 4 << 20
LAST_MODIFIED: Final = "Tue, 01 Dec 2026 00:00:00 GMT"
Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Page:
    """A static response: its body and the fields that say how caches may keep it."""

    body: bytes
    content_type: str
    cache_control: str
    surrogate_key: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'


def png(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """An 8-bit RGB PNG of `pixel(x, y)` (PNG spec: signature, IHDR, one IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(
        b"\0" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _badge_pixel(x: int, y: int) -> tuple[int, int, int]:
    """A blue-to-green gradient with three light dots: the three edges."""
    for cx in (24, 48, 72):
        if (x - cx) ** 2 + (y - 16) ** 2 <= 36:
            return (250, 250, 250)
    return (20 + x * 2, 90 + y * 3, 200 - x)


SVG: Final = """<svg xmlns="http://www.w3.org/2000/svg" width="160" height="160"
     viewBox="0 0 160 160">
  <title>GeoEdge</title>
  <circle cx="80" cy="80" r="70" fill="#1b4f72" stroke="#5dade2" stroke-width="4"/>
  <ellipse cx="80" cy="80" rx="30" ry="70" fill="none" stroke="#5dade2" stroke-width="2"/>
  <line x1="10" y1="80" x2="150" y2="80" stroke="#5dade2" stroke-width="2"/>
  <circle cx="62" cy="52" r="7" fill="#f7dc6f"/>
  <circle cx="40" cy="66" r="7" fill="#f7dc6f"/>
  <circle cx="128" cy="70" r="7" fill="#f7dc6f"/>
</svg>
"""

CSS: Final = """body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
       line-height: 1.5; color: #1c2833; background: #fdfefe; }
header { display: flex; align-items: center; gap: 1rem; }
header img { width: 64px; height: 64px; }
code { background: #eaf2f8; padding: 0 .25em; border-radius: 3px; }
table { border-collapse: collapse; width: 100%; }
td, th { border-bottom: 1px solid #d5dbdb; padding: .3em .5em; text-align: left; }
"""

_ROWS: Final = (
    ("/", "this page", "public, max-age=60"),
    ("/style.css", "the style sheet", "public, max-age=3600"),
    ("/logo.svg", "an SVG, compressed by the edge", "public, max-age=86400"),
    ("/badge.png", "a PNG, sent as it is", "public, max-age=86400"),
    ("/large.bin", "4 MiB, streamed from the edge's disk", "public, max-age=3600"),
    ("/api/products", "JSON, purge it by Surrogate-Key", "max-age=30"),
    ("/api/time", "the origin's clock", "max-age=5, stale-while-revalidate=30"),
    ("/api/random", "never stored", "no-store"),
    ("/api/me", "one user's: shared caches keep out", "private, max-age=60"),
)


def _html() -> str:
    rows = "\n".join(
        f'<tr><td><a href="{path}"><code>{path}</code></a></td><td>{what}</td>'
        f"<td><code>{cc}</code></td></tr>"
        for path, what, cc in _ROWS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>GeoEdge demo site</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header><img src="/logo.svg" alt="GeoEdge logo"><h1>GeoEdge demo site</h1></header>
<p>Served by a demo origin through a GeoEdge edge. Fetch any path twice and compare the
<code>Cache-Status</code> of the answers (a miss, then a hit); ask for
<code>Accept-Encoding: br</code> to get text compressed by the edge. <code>X-Origin</code>
names the origin instance that made the response.</p>
<p><img src="/badge.png" alt="a badge drawn by the origin"></p>
<table>
<tr><th>path</th><th>what</th><th>Cache-Control</th></tr>
{rows}
</table>
</body>
</html>
"""


def site() -> dict[str, Page]:
    """The static pages by path: deterministic, the same on every instance."""
    year = "public, max-age=86400"
    return {
        "/": Page(_html().encode(), "text/html; charset=utf-8", "public, max-age=60", "site html"),
        "/style.css": Page(CSS.encode(), "text/css", "public, max-age=3600", "site css"),
        "/logo.svg": Page(SVG.encode(), "image/svg+xml", year, "site img"),
        "/badge.png": Page(png(96, 32, _badge_pixel), "image/png", year, "site img"),
        "/large.bin": Page(
            hashlib.shake_256(b"GeoEdge demo large object").digest(LARGE_SIZE),
            "application/octet-stream",
            "public, max-age=3600",
            "site large",
        ),
        "/api/products": Page(
            json.dumps(
                [
                    {"id": 1, "name": "edge node", "price": 120},
                    {"id": 2, "name": "anycast address", "price": 40},
                    {"id": 3, "name": "GeoIP update", "price": 5},
                ]
            ).encode(),
            "application/json",
            "max-age=30",
            "api products",
        ),
    }


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _static(page: Page, name: str) -> Handler:
    headers = {
        "Cache-Control": page.cache_control,
        "Surrogate-Key": page.surrogate_key,
        "ETag": page.etag,
        "Last-Modified": LAST_MODIFIED,
        "X-Origin": name,
    }
    full = headers | {"Content-Type": page.content_type}

    async def handler(request: web.Request) -> web.StreamResponse:
        if _matches(request.headers.get("If-None-Match", ""), page.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=page.body, headers=full)

    return handler


def _dynamic(name: str, cache_control: str, body: Callable[[], dict[str, object]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"origin": name, **body()}, headers={"Cache-Control": cache_control, "X-Origin": name}
        )

    return handler


def make_app(name: str, clock: Clock = time.time) -> web.Application:
    """The demo site as served by the origin instance `name`."""
    app = web.Application()
    for path, page in site().items():
        app.router.add_get(path, _static(page, name))

    def now() -> dict[str, object]:
        t = clock()
        return {"time": formatdate(t, usegmt=True), "unix": round(t, 3)}

    app.router.add_get("/api/time", _dynamic(name, "max-age=5, stale-while-revalidate=30", now))
    app.router.add_get(
        "/api/random", _dynamic(name, "no-store", lambda: {"value": secrets.token_hex(8)})
    )
    app.router.add_get(
        "/api/me", _dynamic(name, "private, max-age=60", lambda: {"user": "demo", "plan": "free"})
    )
    app.router.add_get("/health", _dynamic(name, "no-store", lambda: {"status": "ok"}))
    return app


async def serve_demo(listen: Address, name: str) -> None:
    """Serve the demo site on `listen` until SIGTERM or SIGINT; print the bound address."""
    runner = web.AppRunner(make_app(name), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
        for host, port, *_ in runner.addresses:
            print(f"edge demo-origin: listening http {Address(host, port)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
