"""The origin behind both proxies in bench/edge.sh: fixed binary objects, cacheable for an hour.

  GET /1k, /100k, /<n>k   n KiB of bytes, Cache-Control: public, max-age=3600, ETag
  GET /o/<i>/<n>k         n KiB of bytes of their own for each i (a working set of many
                          distinct objects: no two bodies alike, so no tier can share them)
  GET /text/<n>k          n KiB of HTML (text/html, compressible, as web pages are), sent
                          uncompressed whatever the request's Accept-Encoding
  GET /t/<i>/<n>k         n KiB of HTML of its own for each i (a working set of pages)
  GET /__origin/stats     {"requests": N}: object requests served so far, so the harness can
                          check that a measured run was all cache hits (N does not move)

usage: python bench/origin.py PORT    (listens on 127.0.0.1 only)
"""

from __future__ import annotations

import functools
import hashlib
import sys

from aiohttp import web

MAX_KIB = 10 * 1024
LAST_MODIFIED = "Thu, 26 Nov 2026 00:00:00 GMT"
COUNT = web.AppKey("count", list[int])


@functools.lru_cache(maxsize=64)
def body(kib: int, seed: str = "") -> bytes:
    pattern = hashlib.sha256(f"{seed}{kib}".encode()).digest()  # incompressible enough
    return (pattern * (kib * 1024 // len(pattern) + 1))[: kib * 1024]


async def obj(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    seed = request.match_info.get("seed", "")
    if not name.endswith("k") or not name[:-1].isdigit() or not 0 < int(name[:-1]) <= MAX_KIB:
        raise web.HTTPNotFound()
    if seed and not seed.isdigit():
        raise web.HTTPNotFound()
    request.app[COUNT][0] += 1
    data = body(int(name[:-1]), f"{seed}:" if seed else "")
    headers = {
        "Cache-Control": "public, max-age=3600",
        "ETag": f'"{hashlib.sha256(data).hexdigest()[:16]}"',
        "Last-Modified": LAST_MODIFIED,
        # As a static file server says it: a proxy may then answer ranges of what it holds.
        "Accept-Ranges": "bytes",
    }
    return web.Response(body=data, headers=headers, content_type="application/octet-stream")


@functools.lru_cache(maxsize=8)
def page(kib: int) -> bytes:
    rows = "".join(
        f'<tr><td class="n">{i}</td><td>item {i * 7919 % 10007}</td><td>in stock</td></tr>\n'
        for i in range(kib * 20)
    )
    return f"<!doctype html><html><body><table>\n{rows}</table></body></html>\n".encode()[
        : kib * 1024
    ]


async def html(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    seed = request.match_info.get("seed", "")
    if not name.endswith("k") or not name[:-1].isdigit() or not 0 < int(name[:-1]) <= 1024:
        raise web.HTTPNotFound()
    if seed and not seed.isdigit():
        raise web.HTTPNotFound()
    request.app[COUNT][0] += 1
    data = page(int(name[:-1]))
    if seed:  # a page of its own: its number first, the same length
        mark = f"<!-- {seed} -->\n".encode()
        data = mark + data[: len(data) - len(mark)]
    headers = {
        "Cache-Control": "public, max-age=3600",
        "ETag": f'"{hashlib.sha256(data).hexdigest()[:16]}"',
        "Last-Modified": LAST_MODIFIED,
    }
    return web.Response(body=data, headers=headers, content_type="text/html")


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"requests": request.app[COUNT][0]})


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].isdigit():
        sys.exit(__doc__)
    app = web.Application()
    app[COUNT] = [0]
    app.router.add_get("/__origin/stats", stats)
    app.router.add_get("/{name}", obj)
    app.router.add_get("/text/{name}", html)
    app.router.add_get("/o/{seed}/{name}", obj)
    app.router.add_get("/t/{seed}/{name}", html)
    web.run_app(app, host="127.0.0.1", port=int(argv[0]), access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
