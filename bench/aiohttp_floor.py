"""The floor of a miss through aiohttp: a bare reverse proxy, no cache, no checks.

One aiohttp server handler that forwards each GET to the origin with one keep-alive
`ClientSession` (no decompression) and returns the origin's status, Cache-Control and body:
the least work any aiohttp-based proxy does for a miss. bench/edgebench.py runs it beside
our edge in the miss scenarios, pinned like the proxies, to show how much of a miss's cost
is aiohttp's own client and server.

    python bench/aiohttp_floor.py PORT ORIGIN_PORT
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

ORIGIN = web.AppKey("origin", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.Response:
    url = request.app[ORIGIN] + request.path_qs
    async with request.app[SESSION].get(url, headers={"Host": request.host}) as up:
        body = await up.read()
        headers = {"Cache-Control": up.headers.get("Cache-Control", "")}
        return web.Response(status=up.status, body=body, headers=headers)


async def session(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app[SESSION].close()


def main(argv: list[str]) -> int:
    port, origin_port = int(argv[1]), int(argv[2])
    app = web.Application()
    app[ORIGIN] = f"http://127.0.0.1:{origin_port}"
    app.cleanup_ctx.append(session)
    app.router.add_get("/{path:.*}", forward)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
