"""The fast hit path and the full handler give the same answer (issue 7, "two paths, two
answers"): a differential property test over generated requests.

A real edge (fast hits on) in front of a real origin runs in a thread of its own. Each
generated request is sent twice to the same stored entries: once as one segment, which the
fast path may answer from the memory tier, and once cut in two segments a moment apart,
which only aiohttp's parser and the full handler can answer. Status, header fields (but
Date, and Age within a second) and body must be the same. The fast path once answered 200
where the full handler said 508 (CDN-Loop naming this node). Screening rules (edge.screening)
are configured, and their refusals must match as well.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.app import EdgeRuntime
from edge.config import from_mapping

NODE = "edge-diff"
PATHS = ["/plain", "/text", "/etag", "/q?x=1"]
TEXT = ("<p>" + "differential " * 300 + "</p>").encode()


# Misses: /m/<unique>/<kind> answers by kind alone, so two new URLs get the same response.
# Fast plain misses answer "plain", "gone" and "named" themselves; the rest (not storable,
# compressed on the fly, too big to take whole, chunked, bodiless) are handed over.
MISS_KINDS = ["plain", "text", "nostore", "big", "chunked", "gone", "named", "empty"]


async def _miss_handler(request: web.Request) -> web.StreamResponse:
    kind = request.match_info["kind"]
    headers = {"Cache-Control": "max-age=3600", "Content-Type": "application/octet-stream"}
    if kind == "text":
        return web.Response(body=TEXT, headers={**headers, "Content-Type": "text/html"})
    if kind == "nostore":
        return web.Response(body=b"n" * 3000, headers={**headers, "Cache-Control": "no-store"})
    if kind == "big":
        return web.Response(body=bytes(range(256)) * 400, headers=headers)
    if kind == "chunked":
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp
    if kind == "gone":
        return web.Response(status=404, body=b"gone", headers=headers)
    if kind == "named":
        return web.Response(status=200, reason="Fine Thanks", body=b"named", headers=headers)
    if kind == "empty":
        return web.Response(status=204, headers=headers)
    return web.Response(body=b"p" * 3000, headers={**headers, "ETag": '"p"'})


async def _origin_handler(request: web.Request) -> web.Response:
    headers = {"Cache-Control": "max-age=3600"}
    if request.path == "/text":
        return web.Response(body=TEXT, headers={**headers, "Content-Type": "text/html"})
    if request.path == "/etag":
        headers.update(ETag='"v1"', **{"Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"})
    return web.Response(body=request.path_qs.encode() * 50, headers=headers)


# Screening decisions must agree too (issue 11): a deny by header and path, and a budget
# that the first request carrying X-Spent spends (every later one is refused with 429).
RULES = [
    {
        "name": "no-curl-text",
        "action": "deny",
        "path_prefix": "/text",
        "header": "user-agent",
        "header_regex": "^curl/",
    },
    {
        "name": "spent",
        "action": "limit",
        "rate": "1/h",
        "burst": 1,
        "header": "x-spent",
        "key": "header:x-spent",
    },
    {"name": "not-this", "action": "deny", "methods": ["POST"]},
]


class EdgeThread:
    """An origin and an edge on 127.0.0.1, served by an event loop in a thread."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EdgeThread:
        self._thread.start()
        assert self._ready.wait(30), "edge did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/m/{unique}/{kind}", _miss_handler)
        app.router.add_get("/{tail:.*}", _origin_handler)
        self._origin = web.AppRunner(app, access_log=None)
        await self._origin.setup()
        await web.TCPSite(self._origin, "127.0.0.1", 0).start()
        origin_port = self._origin.addresses[0][1]
        config = from_mapping(
            {
                "server": {"listen": ["127.0.0.1:0"], "node_id": NODE, "fast_hits": True},
                "log": {"access_log": ""},
                "cache": {"dir": str(self.cache_dir)},
                "screening": {"rule": RULES},
                "pool": {
                    "origins": [{"url": f"http://127.0.0.1:{origin_port}"}],
                    "probe": {"enabled": False},
                },
            },
            "<test>",
        )
        self.edge = EdgeRuntime(config)
        await self.edge.start()
        self.port = self.edge.addresses["http"][0].port

    async def _stop(self) -> None:
        await self.edge.stop()
        await self._origin.cleanup()


def exchange(port: int, request: bytes, cut: int | None = None) -> bytes:
    """Send `request` (in one segment, or two cut at `cut` a moment apart) on a new
    connection; the response, read to the end of its Content-Length body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cut is None:
            sock.sendall(request)
        else:
            sock.sendall(request[:cut])
            time.sleep(0.03)
            sock.sendall(request[cut:])
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            if name.strip().lower() == b"transfer-encoding":
                while not body.endswith(b"0\r\n\r\n"):
                    chunk = sock.recv(65536)
                    assert chunk, (head, body)
                    body += chunk
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, (head, len(body), length)
            body += chunk
        return head + b"\r\n\r\n" + body


def parse(raw: bytes) -> tuple[bytes, list[tuple[str, str]], int | None, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = []
    age = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "date":
            continue
        if name in ("age", "retry-after"):  # both count seconds down: within a second
            age = int(value)
            continue
        if name == "ratelimit":
            value = re.sub(r";t=\d+", ";t=N", value)
        if name == "cache-status" and "ttl=" in value:
            # Like Age, the ttl counts down: compared within a second, apart from the rest.
            ttl = re.search(r"ttl=(-?\d+)", value)
            assert ttl is not None
            fields.append(("cache-status-ttl", ttl.group(1)))
            value = value.replace(ttl.group(0), "ttl=N")
        fields.append((name, value))
    return lines[0].encode(), sorted(fields), age, body


def close_enough(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> bool:
    """Equal, but for a Cache-Status ttl that may be one second apart."""
    ta = [int(v) for k, v in a if k == "cache-status-ttl"]
    tb = [int(v) for k, v in b if k == "cache-status-ttl"]
    rest_a = [f for f in a if f[0] != "cache-status-ttl"]
    rest_b = [f for f in b if f[0] != "cache-status-ttl"]
    same_ttls = len(ta) == len(tb) and all(abs(x - y) <= 1 for x, y in zip(ta, tb, strict=True))
    return rest_a == rest_b and same_ttls


def settle(port: int, request: bytes) -> None:
    """Send `request` until its answer no longer changes the cache: the variant it selects
    (Accept-Encoding...) stored, and no fill of it still in flight (a follower's answer says
    `collapsed`). Bounded; a request the cache never answers (a loop) settles at once."""
    for _ in range(50):
        _, fields, _, _ = parse(exchange(port, request))
        status = dict(fields).get("cache-status", "")
        if "collapsed" not in status and "stored" not in status:
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeThread]:
    with EdgeThread(tmp_path_factory.mktemp("diff-cache")) as running:
        for path in PATHS:  # fill the cache: every later plain GET is a memory-tier hit
            for _ in range(2):
                exchange(running.port, f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        yield running


FIELDS = st.lists(
    st.sampled_from(
        [
            ("User-Agent", "curl/8.0"),
            ("Accept", "*/*"),
            ("Accept-Encoding", "br"),
            ("Accept-Encoding", "gzip, deflate"),
            ("Connection", "keep-alive"),
            ("Connection", "close"),
            ("X-Request-Id", "abc"),
            ("CDN-Loop", NODE),
            ("CDN-Loop", "other-cdn"),
            ("CDN-Loop", "a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u"),
            ("Via", f"1.1 {NODE}"),
            ("Via", "1.1 proxy.example"),
            ("If-None-Match", '"v1"'),
            ("If-None-Match", 'W/"v1", "v2"'),
            ("If-None-Match", "*"),
            ("If-None-Match", '"nope"'),
            ("If-Modified-Since", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("If-Modified-Since", "Mon, 30 Nov 2026 10:00:00 GMT"),
            ("If-Modified-Since", "not a date"),
            ("X-Spent", "yes"),
            ("Range", "bytes=0-9"),
            ("Range", "bytes=-7"),
            ("Range", "bytes=100-"),
            ("Range", "bytes=0-0, 5-9"),
            ("Range", "bytes=99999-"),
            ("Range", "lines=1-2"),
            ("If-Range", '"v1"'),
        ]
    ),
    max_size=5,
    unique=True,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(PATHS), fields=FIELDS, cut=st.integers(min_value=1, max_value=12))
@example(path="/plain", fields=[("Connection", "close")], cut=5)  # the fast path closes too
@example(path="/plain", fields=[("Proxy-Connection", "close")], cut=5)  # aiohttp reads it too
@example(path="/etag", fields=[("If-None-Match", '"v1"'), ("Connection", "close")], cut=5)
def test_fast_and_full_paths_answer_alike(
    edge: EdgeThread, path: str, fields: list[tuple[str, str]], cut: int
) -> None:
    head = f"GET {path} HTTP/1.1\r\nHost: a.test\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
    request = (head + "\r\n").encode()
    settle(edge.port, request)
    one = parse(exchange(edge.port, request))
    two = parse(exchange(edge.port, request, cut=cut))
    assert one[0] == two[0], (request, one[0], two[0])
    assert close_enough(one[1], two[1]), (request, one[1], two[1])
    assert one[3] == two[3], request
    if one[2] is not None or two[2] is not None:
        assert one[2] is not None and two[2] is not None
        assert abs(one[2] - two[2]) <= 1


MISSES = iter(range(1_000_000))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(MISS_KINDS), fields=FIELDS, cut=st.integers(min_value=1, max_value=12))
def test_fast_and_full_paths_answer_a_miss_alike(
    edge: EdgeThread, kind: str, fields: list[tuple[str, str]], cut: int
) -> None:
    """A miss of a new URL in one segment (the fast path's plain miss, answered by it or
    handed over to the full handler) and one of another new URL cut in two (the full
    handler's from the start): the same origin response gives the same answer."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in fields)

    def request(path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: a.test\r\n{extra}\r\n".encode()

    exchange(edge.port, request(f"/m/{next(MISSES)}/{kind}"))  # spends a screening budget
    one = parse(exchange(edge.port, request(f"/m/{next(MISSES)}/{kind}")))
    two = parse(exchange(edge.port, request(f"/m/{next(MISSES)}/{kind}"), cut=cut))
    assert one[0] == two[0], (kind, fields, one[0], two[0])
    assert one[1] == two[1], (kind, fields, one[1], two[1])
    assert one[3] == two[3], (kind, fields)
    if one[2] is not None or two[2] is not None:  # a refusal's Retry-After
        assert one[2] is not None and two[2] is not None
        assert abs(one[2] - two[2]) <= 1
