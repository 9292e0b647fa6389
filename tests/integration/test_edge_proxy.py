"""Proxy semantics of the edge: methods, bodies, header rewriting, host checks, limits."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from edge.aiohttp_internals import EdgeServer, ListenerOptions
from edge.app import EdgeRuntime
from edge.config import from_mapping
from tests.integration.edge_helpers import (
    base_url,
    early_hints,
    edge_config,
    origins,
    running_edge,
)


async def _raw(port: int, data: bytes, *, read: int = 65536) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(read), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_methods_query_body_and_end_to_end_headers_pass(method: str) -> None:
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        body = b"payload-" + method.encode() if method not in ("GET", "OPTIONS") else b""
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method,
                URL(base_url(edge) + "/p/a%20th?x=1&y=%2F&x=2", encoded=True),
                data=body or None,
                headers={"X-Custom": "v1", "Accept-Language": "de"},
            ) as r,
        ):
            assert r.status == 200
            doc = json.loads(await r.read())
            assert r.headers["Via"].endswith("1.1 geoedge")
            assert r.headers["Cache-Status"].startswith("GeoEdge; fwd=")
        assert doc["method"] == method
        assert doc["path_qs"] == "/p/a%20th?x=1&y=%2F&x=2"
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
        sent = dict((k.lower(), v) for k, v in doc["headers"])
        assert sent["x-custom"] == "v1"
        assert sent["accept-language"] == "de"
        assert sent["via"] == "1.1 geoedge"


async def test_hop_by_hop_removed_and_forwarding_headers_set() -> None:
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        port = edge.addresses["http"][0].port
        raw = await _raw(
            port,
            b"GET /h HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n"
            b"X-Kept: yes\r\n\r\n",
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        sent = {k.lower(): v for k, v in json.loads(body)["headers"]}
        for name in ("x-secret", "keep-alive", "te", "proxy-authorization", "forwarded"):
            assert name not in sent, name
        assert sent["x-kept"] == "yes"
        assert sent["x-forwarded-for"] == "127.0.0.1"
        assert sent["x-forwarded-proto"] == "http"
        assert sent["x-forwarded-host"] == "127.0.0.1"


async def test_trusted_proxy_chain_is_extended() -> None:
    async with origins("a") as (origin,):
        config = edge_config(
            [origin], server={"trusted_proxies": ["127.0.0.0/8"], "forwarded": "both"}
        )
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
            async with s.get(base_url(edge) + "/t", headers=headers) as r:
                sent = {k.lower(): v for k, v in json.loads(await r.read())["headers"]}
        assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert sent["x-forwarded-proto"] == "https"
        assert sent["forwarded"].startswith("for=127.0.0.1;proto=http")


async def test_response_hop_by_hop_removed() -> None:
    async with origins("a") as (origin,):

        async def handler(request: web.Request) -> web.Response:
            return web.Response(
                text="x",
                headers={"Connection": "X-Internal", "X-Internal": "1", "X-Public": "2"},
            )

        origin.routes["/r"] = handler
        async with running_edge(edge_config([origin])) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/r") as r:
                assert r.status == 200
                assert "X-Internal" not in r.headers
                assert r.headers["X-Public"] == "2"


async def test_big_bodies_stream_both_ways() -> None:
    size = 24 * 1024 * 1024
    block = os.urandom(1 << 20)
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)

    async def upload():  # type: ignore[no-untyped-def]
        for _ in range(size // len(block)):
            yield block

    async with origins("a") as (origin,):

        async def download(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
            await resp.prepare(request)
            for _ in range(size // len(block)):
                await resp.write(block)
            await resp.write_eof()
            return resp

        origin.routes["/big"] = download
        async with running_edge(edge_config([origin])) as edge, aiohttp.ClientSession() as s:
            async with s.post(base_url(edge) + "/up", data=upload()) as r:
                doc = json.loads(await r.read())
            assert doc["body_size"] == size
            assert doc["body_sha256"] == expected.hexdigest()
            got = hashlib.sha256()
            total = 0
            async with s.get(base_url(edge) + "/big") as r:
                assert r.status == 200
                async for chunk in r.content.iter_chunked(1 << 16):
                    got.update(chunk)
                    total += len(chunk)
            assert total == size
            assert got.hexdigest() == expected.hexdigest()


async def test_connect_refused_and_foreign_hosts_rejected() -> None:
    async with origins("a") as (origin,):
        config = edge_config([origin], server={"hosts": ["www.example.test"]})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            raw = await _raw(port, b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 405")
            assert b"\r\nCache-Status: GeoEdge; fwd=request" in raw
            raw = await _raw(
                port, b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n"
            )
            assert raw.startswith(b"HTTP/1.1 421")
            raw = await _raw(
                port,
                b"GET http://evil.test/x HTTP/1.1\r\nHost: www.example.test\r\n"
                b"Connection: close\r\n\r\n",
            )
            assert raw.startswith(b"HTTP/1.1 421")
            raw = await _raw(
                port,
                b"GET /ok HTTP/1.1\r\nHost: WWW.example.test:80\r\nConnection: close\r\n\r\n",
            )
            assert raw.startswith(b"HTTP/1.1 200")
        assert origin.hits["/ok"] == 1
        assert sum(origin.hits.values()) == 1


async def test_absolute_form_for_another_host_is_not_proxied_in_quick_start_mode() -> None:
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        port = edge.addresses["http"][0].port
        raw = await _raw(
            port,
            b"GET http://evil.test/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 421")
        assert sum(origin.hits.values()) == 0


async def test_limits() -> None:
    async with origins("a") as (origin,):
        limits = {
            "max_headers": 20,
            "max_header_bytes": 2048,
            "max_url_length": 512,
            "max_body_bytes": 1000,
        }
        config = edge_config([origin], limits=limits)
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
            raw = await _raw(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
            assert raw.startswith(b"HTTP/1.1 431") or raw.startswith(b"HTTP/1.0 431")
            big = b"X-Big: " + b"v" * 3000 + b"\r\n"
            raw = await _raw(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")
            assert raw.split(b" ", 2)[1] == b"431"
            assert b"\r\nCache-Status: GeoEdge; fwd=request" in raw
            split = b"".join(b"X-S%d: " % i + b"v" * 300 + b"\r\n" for i in range(10))
            raw = await _raw(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + split + b"\r\n")
            assert raw.split(b" ", 2)[1] == b"431"
            url = b"/" + b"u" * 600
            raw = await _raw(port, b"GET " + url + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            assert raw.split(b" ", 2)[1] == b"414"
            url = b"/" + b"u" * 5000
            raw = await _raw(port, b"GET " + url + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            assert raw.split(b" ", 2)[1] == b"414"
            raw = await _raw(
                port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
            )
            assert raw.split(b" ", 2)[1] == b"413"
            chunked = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
            raw = await _raw(
                port,
                b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
            )
            assert raw.split(b" ", 2)[1] == b"413"
            async with (
                aiohttp.ClientSession() as s,
                s.post(base_url(edge) + "/s", data=b"z" * 900) as r,
            ):
                assert r.status == 200


async def test_slow_request_headers_are_cut_off() -> None:
    async with origins("a") as (origin,):
        config = edge_config([origin], limits={"header_timeout": 0.5})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
            closed = False
            # Trickle one header byte at a time, far slower than the deadline allows.
            for i in range(100):
                try:
                    writer.write(b"X-Slow-%d: 1\r\n" % i)
                    await writer.drain()
                except (ConnectionError, OSError):
                    closed = True
                    break
                try:
                    data = await asyncio.wait_for(reader.read(1024), 0.1)
                except TimeoutError:
                    continue
                closed = True
                assert data == b"" or data.startswith(b"HTTP/1.1 408")
                break
            writer.close()
            assert closed
            assert origin.hits["/slow"] == 0


async def _stored(request: web.Request) -> web.Response:
    """An origin route the edge stores (ten minutes) and the fast path answers whole."""
    return web.Response(body=b"f" * 100, headers={"Cache-Control": "max-age=600"})


async def test_a_connection_that_sends_nothing_gets_the_header_deadline() -> None:
    async with origins("a") as (origin,):
        config = edge_config([origin], limits={"header_timeout": 0.3, "keepalive_timeout": 60})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # Within 10 s, not the keep-alive timeout's 60: the 408 and the close.
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert data.startswith(b"HTTP/1.1 408"), data


async def test_after_fast_path_answers_a_slow_head_still_gets_the_header_deadline() -> None:
    async with origins("a") as (origin,):
        config = edge_config([origin], limits={"header_timeout": 0.5, "keepalive_timeout": 60})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            origin.routes["/fast"] = _stored
            async with aiohttp.ClientSession() as s:
                for _ in range(50):  # until stored: a hit
                    async with s.get(base_url(edge) + "/fast", headers={"Host": "a"}) as r:
                        if "hit" in r.headers["Cache-Status"]:
                            break
                    await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(2):  # hits, answered by the fast path: aiohttp's loop not started
                writer.write(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200") and b"hit" in head, head
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 5)
            assert origin.hits["/fast"] == 1
            # Then half a head, and nothing more: the deadline ends the connection.
            writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert data.startswith(b"HTTP/1.1 408"), data
            assert origin.hits["/slow"] == 0


async def test_stopping_closes_a_connection_only_the_fast_path_served() -> None:
    async with origins("a") as (origin,):
        origin.routes["/fast"] = _stored
        runtime = EdgeRuntime(edge_config([origin], limits={"keepalive_timeout": 60}))
        await runtime.start()
        try:
            port = runtime.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")  # a plain miss
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"fwd=uri-miss" in head, head
            await asyncio.wait_for(reader.readexactly(100), 5)
        finally:
            # Idle and kept alive for a minute: stopping must not wait for that.
            await asyncio.wait_for(runtime.stop(), 10)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_an_idle_connection_only_the_fast_path_served_is_closed() -> None:
    async with origins("a") as (origin,):
        origin.routes["/fast"] = _stored
        config = edge_config([origin], limits={"keepalive_timeout": 0.3, "header_timeout": 60})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")  # a plain miss
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"fwd=uri-miss" in head, head
            await asyncio.wait_for(reader.readexactly(100), 5)
            # Closed by the keep-alive deadline, well within the header timeout's minute.
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()


async def test_a_close_before_aiohttps_request_loop_first_ran_still_closes() -> None:
    # Half a head makes the protocol start aiohttp's request loop (a task); a graceful
    # stop's close() lands before that task first ran. The loop must not then wait for a
    # request close() can no longer cancel (the connection waited for its head deadline).
    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(text="x")

    options = ListenerOptions(
        header_timeout=30, url_limit=8190, refused_token="t", refusal=web.Response
    )
    protocol = EdgeServer(handler, options, keepalive_timeout=75)()
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
    try:
        theirs.setblocking(False)
        await loop.sock_sendall(theirs, b"GET / HTTP/1.1\r\n")
        for _ in range(1000):  # a turn at a time: the task exists, and has not run
            if protocol._task_handler is not None:
                break
            await asyncio.sleep(0)
        assert protocol._task_handler is not None and protocol._waiter is None
        protocol.close()
        assert await asyncio.wait_for(loop.sock_recv(theirs, 100), 5) == b""
    finally:
        transport.close()
        theirs.close()


async def test_keepalive_connection_reused_for_requests() -> None:
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        port = edge.addresses["http"][0].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(3):
            writer.write(b"GET /k%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 200")
            length = 0
            while True:
                line = await asyncio.wait_for(reader.readline(), 5)
                if line == b"\r\n":
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        writer.close()
        assert origin.hits["/k2"] == 1


async def test_idle_keepalive_connection_is_closed() -> None:
    async with origins("a") as (origin,):
        config = edge_config([origin], limits={"keepalive_timeout": 0.3})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            data = b""
            # Read the response, then keep reading until the server closes the idle socket.
            for _ in range(100):
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    break
                data += chunk
            writer.close()
            assert data.startswith(b"HTTP/1.1 200")
            assert reader.at_eof()


async def test_json_access_log(tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    async with origins("a") as (origin,):
        config = edge_config([origin], log={"access_log": str(log_file)})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/logged?q=1", headers={"User-Agent": "t/1"}) as r:
                assert r.status == 200
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["method"] == "GET"
    assert entry["path"] == "/logged?q=1"
    assert entry["status"] == 200
    assert entry["user_agent"] == "t/1"
    assert entry["origin"] == origin.url
    assert entry["cache"] == "miss"
    assert entry["bytes"] > 0


async def test_expect_100_continue_with_curl(tmp_path: Path) -> None:
    if shutil.which("curl") is None:  # pragma: no cover - curl is in APT_TEST_PACKAGES
        pytest.skip("curl missing")
    payload = tmp_path / "upload.bin"
    payload.write_bytes(os.urandom(300_000))
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--expect100-timeout",
            "30",
            "-H",
            "Expect: 100-continue",
            "-X",
            "PUT",
            "--data-binary",
            f"@{payload}",
            base_url(edge) + "/put",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    doc = json.loads(out)
    assert doc["method"] == "PUT"
    assert doc["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()


async def test_http10_client_gets_close_delimited_body() -> None:
    async with origins("a") as (origin,):

        async def chunked(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await resp.write(part)
            await resp.write_eof()
            return resp

        origin.routes["/chunked"] = chunked
        async with running_edge(edge_config([origin])) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /chunked HTTP/1.0\r\nHost: a\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 10)  # until the server closes
            writer.close()
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
            assert b"transfer-encoding" not in head.lower()
            assert body == b"one,two,three"


async def test_interim_103_forwarded_before_the_final_response() -> None:
    async with origins("a") as (origin,):
        origin.routes["/hints"] = early_hints("no-store")
        async with running_edge(edge_config([origin])) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /hints HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        interim, _, rest = raw.partition(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n")
        assert b"Link: </s.css>; rel=preload" in interim
        assert rest.startswith(b"HTTP/1.1 200 OK")
        assert rest.endswith(b"final")


async def test_origin_encoded_bodies_pass_through_byte_for_byte() -> None:
    encoded = gzip.compress(b"already compressed by the origin " * 100)
    async with origins("a") as (origin,):

        async def pre_encoded(request: web.Request) -> web.Response:
            return web.Response(
                body=encoded,
                headers={
                    "Content-Encoding": "gzip",
                    "Content-Type": "text/html",
                    "Cache-Control": "no-store",
                },
            )

        origin.routes["/gz"] = pre_encoded
        async with running_edge(edge_config([origin])) as edge:
            async with aiohttp.ClientSession(auto_decompress=False) as s:
                for accept in ("gzip", "br", "identity"):
                    async with s.get(
                        base_url(edge) + "/gz", headers={"Accept-Encoding": accept}
                    ) as r:
                        assert r.headers["Content-Encoding"] == "gzip"
                        assert await r.read() == encoded


async def test_host_that_is_no_authority_is_refused_and_cannot_compose_another_key() -> None:
    # Host "a.example:8080/x" with target /y used to be keyed as http://a.example:8080/x/y
    # and to pass the host check: /y's response then answered requests for /x/y.
    async with origins("a") as (origin,):

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=request.path, headers={"Cache-Control": "max-age=60"})

        origin.routes["/y"] = page
        origin.routes["/x/y"] = page
        config = edge_config([origin], server={"hosts": ["a.example"]})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            for host in (b"a.example:8080/x", b"a.example:8080?", b"a.example:80#", b"u@a.example"):
                raw = await _raw(port, b"GET /y HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                assert raw.startswith(b"HTTP/1.1 400"), (host, raw)
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{port}/x/y"
                async with s.get(url, headers={"Host": "a.example:8080"}) as r:
                    assert r.status == 200
                    assert await r.text() == "/x/y"
            # The fast path (a fresh hit in memory for that key now) refuses it as well.
            raw = await _raw(port, b"GET /y HTTP/1.1\r\nHost: a.example:8080/x\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 400"), raw
        assert origin.hits["/y"] == 0


async def test_pipelined_request_head_left_unfinished_is_cut_off() -> None:
    # A complete request and the start of the next in one segment: the second head's
    # deadline used to be lost (the connection waited for the keep-alive timeout).
    async with origins("a") as (origin,):
        config = edge_config([origin], limits={"header_timeout": 0.5, "keepalive_timeout": 600.0})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n")
            await writer.drain()
            data = b""
            for _ in range(100):  # bounded: 20 s at most, the deadline is 0.5 s
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.2)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                data += chunk
            writer.close()
            assert data.startswith(b"HTTP/1.1 200")
            assert b"HTTP/1.1 408 Request Timeout" in data
            assert origin.hits["/two"] == 0


async def test_http10_expect_100_continue_is_ignored() -> None:
    # An HTTP/1.0 client knows no interim responses: a "100 Continue" would be taken for
    # the final response (and the real one for the next).
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        port = edge.addresses["http"][0].port
        raw = await _raw(
            port,
            b"PUT /p HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        )
        assert raw.startswith(b"HTTP/1.0 200") or raw.startswith(b"HTTP/1.1 200"), raw[:40]
        assert b" 100 Continue" not in raw


async def test_origin_transfer_coding_other_than_chunked_is_a_bad_gateway() -> None:
    # "Transfer-Encoding: gzip, chunked": aiohttp removes the chunking only, and the
    # field is hop-by-hop, so clients (and the cache) used to get gzip bytes as the body.
    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            body = gzip.compress(b"hello")
            writer.write(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                b"Transfer-Encoding: gzip, chunked\r\n\r\n"
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n0\r\n\r\n"
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = from_mapping(
        {
            "server": {"listen": ["127.0.0.1:0"]},
            "log": {"access_log": ""},
            "pool": {
                "origins": [{"url": f"http://127.0.0.1:{port}"}],
                "probe": {"enabled": False},
                "retry": False,
            },
        },
        "<test>",
    )
    try:
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.get(base_url(edge) + "/te") as r:
                    assert r.status == 502
    finally:
        server.close()
        await server.wait_closed()


async def test_request_transfer_coding_other_than_chunked_is_not_implemented() -> None:
    # The gzip-coded body used to reach the origin as if it were the plain body.
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        port = edge.addresses["http"][0].port
        body = gzip.compress(b"hello")
        raw = await _raw(
            port,
            b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 501"), raw[:40]
        assert origin.hits["/p"] == 0


def _loops(edge: EdgeRuntime, reason: str) -> float:
    value = edge.proxy.metrics.registry.get_sample_value(
        "edge_loops_detected_total", {"reason": reason}
    )
    return value or 0.0


async def test_an_edge_whose_origin_is_itself_answers_508_without_recursing() -> None:
    async with origins("a") as (origin,):
        # Few connections and a short total timeout: without loop detection the recursion
        # stalls on the connection limit and ends in a 504, not in a hang.
        limits = {"connections_per_origin": 4, "total_timeout": 5.0}
        config = edge_config([origin], server={"node_id": "self-test"}, pool=limits)
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            own = base_url(edge)
            edge.reload(
                edge_config(
                    [origin], server={"node_id": "self-test"}, pool={**limits, "origins": [own]}
                )
            )
            async with s.get(own + "/x") as r:
                status = r.status
                await r.read()
            assert status == 508
            # One request from the client, one it made to itself: no more.
            assert sum(edge.proxy.metrics.counts.values()) == 2
            assert _loops(edge, "loop") == 1
        assert origin.hits["/x"] == 0


async def test_two_edges_pointing_at_each_other_answer_508() -> None:
    async with origins("a") as (origin,):
        limits = {"connections_per_origin": 4, "total_timeout": 5.0}
        config_a = edge_config([origin], server={"node_id": "edge-a"}, pool=limits)
        config_b = edge_config([origin], server={"node_id": "edge-b"}, pool=limits)
        async with (
            running_edge(config_a) as a,
            running_edge(config_b) as b,
            aiohttp.ClientSession() as s,
        ):
            a.reload(
                edge_config(
                    [origin],
                    server={"node_id": "edge-a"},
                    pool={**limits, "origins": [base_url(b)]},
                )
            )
            b.reload(
                edge_config(
                    [origin],
                    server={"node_id": "edge-b"},
                    pool={**limits, "origins": [base_url(a)]},
                )
            )
            async with s.get(base_url(a) + "/x") as r:
                assert r.status == 508
                await r.read()
            assert (_loops(a, "loop"), _loops(b, "loop")) == (1, 0)
            assert sum(a.proxy.metrics.counts.values()) == 2
            assert sum(b.proxy.metrics.counts.values()) == 1
        assert origin.hits["/x"] == 0


async def test_a_chain_of_edges_passes_and_extends_cdn_loop() -> None:
    async with origins("a") as (origin,):
        config_b = edge_config([origin], server={"node_id": "shield:8080"})
        async with running_edge(config_b) as b, aiohttp.ClientSession() as s:
            config_a = edge_config(
                [origin], server={"node_id": "edge-a"}, pool={"origins": [base_url(b)]}
            )
            async with running_edge(config_a) as a:
                async with s.get(base_url(a) + "/c", headers={"CDN-Loop": "other-cdn"}) as r:
                    assert r.status == 200
                    sent = {k.lower(): v for k, v in json.loads(await r.read())["headers"]}
                assert sent["cdn-loop"] == "other-cdn, edge-a, shield:8080"
                assert sent["via"] == "1.1 geoedge, 1.1 geoedge"
                # A client's CDN-Loop naming a node is that node's loop, wherever it enters.
                async with s.get(base_url(a) + "/c", headers={"CDN-Loop": "Shield:8080"}) as r:
                    assert r.status == 508
                    assert "fwd-status=508" in r.headers["Cache-Status"]
                    assert r.headers["Cache-Control"] == "no-store"
                hops = ", ".join(f"cdn{i}" for i in range(17))
                async with s.get(base_url(a) + "/c", headers={"CDN-Loop": hops}) as r:
                    assert r.status == 508
                    assert 'detail="too-many-hops"' in r.headers["Cache-Status"]
                assert _loops(a, "too-many-hops") == 1
            assert _loops(b, "loop") == 1
        assert origin.hits["/c"] == 1


async def test_unkeyed_routing_headers_do_not_reach_the_origin() -> None:
    routing = {
        "X-Original-URL": "/admin",
        "X-Rewrite-URL": "/admin",
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
        "X-Forwarded-Server": "evil.example",
        "X-Host": "evil.example",
        "X-Debug-Route": "/internal",
    }
    async with origins("a") as (origin,):
        # Even from a trusted proxy: these fields are no part of the cache key.
        config = edge_config([origin], server={"trusted_proxies": ["127.0.0.0/8"]})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/r", headers=routing) as r:
                sent = {k.lower() for k, _ in json.loads(await r.read())["headers"]}
            assert sent & {k.lower() for k in routing} == {"x-debug-route"}
            # The configured list replaces the default one, on reload too.
            edge.reload(
                edge_config(
                    [origin],
                    server={
                        "trusted_proxies": ["127.0.0.0/8"],
                        "strip_request_headers": ["X-Debug-Route"],
                    },
                )
            )
            async with s.get(base_url(edge) + "/r", headers=routing) as r:
                sent = {k.lower() for k, _ in json.loads(await r.read())["headers"]}
            assert "x-debug-route" not in sent
            assert "x-original-url" in sent and "x-http-method-override" in sent


async def test_a_stripped_field_does_not_select_a_stored_variant() -> None:
    async with origins("a") as (origin,):

        async def varying(request: web.Request) -> web.Response:
            seen = request.headers.get("X-Host", "-")
            return web.Response(
                text=seen, headers={"Cache-Control": "max-age=60", "Vary": "X-Host"}
            )

        origin.routes["/v"] = varying
        async with running_edge(edge_config([origin])) as edge, aiohttp.ClientSession() as s:
            for value in ("a.example", "b.example"):
                async with s.get(base_url(edge) + "/v", headers={"X-Host": value}) as r:
                    assert await r.text() == "-"
        # The origin never sees X-Host, so it cannot tell the two requests apart: one fetch.
        assert origin.hits["/v"] == 1


async def test_refused_requests_are_not_cache_misses_in_the_hit_ratio() -> None:
    async with origins("a") as (origin,):

        async def cached(request: web.Request) -> web.Response:
            return web.Response(body=b"c", headers={"Cache-Control": "max-age=60"})

        origin.routes["/c"] = cached
        config = edge_config([origin], server={"node_id": "edge-x"}, limits={"max_headers": 8})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            for _ in range(20):  # a miss, then hits once the fill is committed
                async with s.get(base_url(edge) + "/c") as r:
                    assert r.status == 200
                    if r.headers["Cache-Status"].startswith("GeoEdge; hit; ttl="):
                        if "collapsed" not in r.headers["Cache-Status"]:
                            break
                await asyncio.sleep(0.02)
            async with s.get(base_url(edge, "admin") + "/__edge/status") as r:
                before = (await r.json())["hit_ratio"]
            assert 0 < before < 1
            async with s.get(base_url(edge) + "/x", headers={"CDN-Loop": "edge-x"}) as r:
                assert r.status == 508
            many = {f"X-H{i}": "v" for i in range(20)}  # refused by the parser: 431
            async with s.get(base_url(edge) + "/c", headers=many) as r:
                assert r.status == 431
            async with s.get(base_url(edge, "admin") + "/__edge/status") as r:
                assert (await r.json())["hit_ratio"] == before  # neither looked anything up
            async with s.get(base_url(edge, "admin") + "/metrics") as r:
                text = await r.text()
            counted = [line for line in text.splitlines() if line.startswith("edge_requests")]
            assert 'edge_requests_total{cache="refused",status="508"} 1.0' in counted, counted
            assert 'edge_requests_total{cache="refused",status="431"} 1.0' in counted, counted


async def test_a_background_job_that_fails_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A fill or refresh task that dies is reported when it dies, with its traceback."""

    async def broken_job() -> None:
        raise RuntimeError("the commit went wrong")

    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        task = edge.proxy.spawn(broken_job())
        with pytest.raises(RuntimeError):
            await task
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    failures = [r for r in caplog.records if "background job" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelname == "ERROR"
    assert failures[0].exc_info is not None and "the commit went wrong" in str(
        failures[0].exc_info[1]
    )


async def test_a_request_line_of_another_major_version_gets_505() -> None:
    # Issue 7: `GET / HTTP/2.0` over HTTP/1 was answered `HTTP/2.0 200`.
    async with origins("a") as (origin,), running_edge(edge_config([origin])) as edge:
        port = edge.addresses["http"][0].port
        raw = await _raw(port, b"GET /v HTTP/2.0\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), raw[:60]
        assert b"Connection: close" in raw
        # aiohttp's parser itself refuses other versions (400): never passed on either.
        raw = await _raw(port, b"GET /v HTTP/3.0\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.0 400 "), raw[:60]
        assert origin.hits["/v"] == 0
