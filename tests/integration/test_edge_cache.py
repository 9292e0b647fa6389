"""Caching end to end through a real edge in front of a real origin."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import re
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from edge.config import EdgeConfig, from_mapping
from tests.integration.edge_helpers import (
    Origin,
    base_url,
    edge_config,
    origins,
    raw_reply,
    running_edge,
    slow_version,
    until,
)


def _cacheable(body: bytes, cache_control: str = "max-age=60", **headers: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            headers={
                "Cache-Control": cache_control,
                "Content-Type": "application/octet-stream",
                **headers,
            },
        )

    return handler


async def _negotiated(request: web.Request) -> web.Response:
    lang = request.headers.get("Accept-Language", "en")
    return web.Response(
        text=f"hello in {lang}",
        headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
    )


def _cfg(origin: Origin, tmp_path: Path, **sections):  # type: ignore[no-untyped-def]
    cache = {"dir": str(tmp_path / "cache")}
    cache.update(sections.pop("cache", {}))
    return edge_config([origin], cache=cache, **sections)


async def test_hit_age_head_and_client_conditionals(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        origin.routes["/c"] = _cacheable(b"0123456789", ETag='"v1"', Age="5")
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/c?x=1"
            async with s.get(url) as r:
                assert r.status == 200
                assert await r.read() == b"0123456789"
                # RFC 9211 `stored` on the miss that filled the cache (issue 7).
                assert r.headers["Cache-Status"] == "GeoEdge; fwd=uri-miss; fwd-status=200; stored"
            async with s.get(url) as r:
                assert r.status == 200
                assert await r.read() == b"0123456789"
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
                assert int(r.headers["Age"]) >= 5
                assert r.headers["Content-Length"] == "10"
            async with s.head(url) as r:
                assert r.status == 200
                assert r.headers["Content-Length"] == "10"
                assert "hit" in r.headers["Cache-Status"]
            async with s.get(url, headers={"If-None-Match": '"v1"'}) as r:
                assert r.status == 304
                assert "hit" in r.headers["Cache-Status"]
            async with s.get(url, headers={"Range": "bytes=2-5"}) as r:
                assert r.status == 206
                assert await r.read() == b"2345"
                assert r.headers["Content-Range"] == "bytes 2-5/10"
            async with s.get(url, headers={"Range": "bytes=50-60"}) as r:
                assert r.status == 416
            async with s.get(base_url(edge) + "/c?x=2") as r:
                assert "miss" in r.headers["Cache-Status"]
            origin.routes["/n"] = _cacheable(b"never kept", "no-store")
            async with s.get(base_url(edge) + "/n") as r:
                assert "stored" not in r.headers["Cache-Status"]
        assert origin.hits["/c"] == 2


async def test_revalidation_with_304_updates_the_entry(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        seen_validators: list[str | None] = []

        async def validated(request: web.Request) -> web.Response:
            seen_validators.append(request.headers.get("If-None-Match"))
            headers = {
                "ETag": '"e1"',
                "Cache-Control": "max-age=0",
                "X-Version": str(len(seen_validators)),
            }
            if request.headers.get("If-None-Match") == '"e1"':
                return web.Response(status=304, headers=headers)
            return web.Response(body=b"payload", headers=headers)

        origin.routes["/v"] = validated
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(base_url(edge) + "/v") as r:
                    assert r.status == 200
                    assert await r.read() == b"payload"
                    last = r.headers
        assert seen_validators == [None, '"e1"', '"e1"']
        assert "fwd=stale" in last["Cache-Status"] and "fwd-status=304" in last["Cache-Status"]
        assert last["X-Version"] == "3"  # stored headers updated from the 304


async def test_vary_keeps_variants_apart(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        origin.routes["/l"] = _negotiated
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            for _ in range(2):
                for lang in ("en", "de"):
                    async with s.get(base_url(edge) + "/l", headers={"Accept-Language": lang}) as r:
                        assert await r.text() == f"hello in {lang}"
        assert origin.hits["/l"] == 2


async def test_vary_miss_offers_every_stored_etag_and_a_304_reuses_that_variant(
    tmp_path: Path,
) -> None:
    async with origins("a") as (origin,):
        seen: list[str | None] = []

        async def negotiated(request: web.Request) -> web.Response:
            # "en" and "en-gb" get the same representation; "de" its own.
            lang = request.headers.get("X-Lang", "en")[:2]
            seen.append(request.headers.get("If-None-Match"))
            etag = f'"{lang}-1"'
            headers = {
                "ETag": etag,
                "Cache-Control": "max-age=60",
                "Vary": "X-Lang",
                "X-Version": str(len(seen)),
            }
            offered = [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]
            if etag in offered:
                return web.Response(status=304, headers=headers)
            return web.Response(text=f"hello in {lang}", headers=headers)

        origin.routes["/n"] = negotiated
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/n"
            for lang in ("en", "de"):
                async with s.get(url, headers={"X-Lang": lang}) as r:
                    assert await r.text() == f"hello in {lang}"
            async with s.get(url, headers={"X-Lang": "en-gb"}) as r:
                assert r.status == 200
                assert await r.text() == "hello in en"
                assert "fwd=vary-miss" in r.headers["Cache-Status"]
                assert "fwd-status=304" in r.headers["Cache-Status"]
                assert r.headers["X-Version"] == "3"  # stored fields updated from the 304
            async with s.get(url, headers={"X-Lang": "en-gb"}) as r:
                assert await r.text() == "hello in en"
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
            async with s.get(url, headers={"X-Lang": "en"}) as r:
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
                assert r.headers["X-Version"] == "3"
        assert seen[0] is None
        assert seen[1] == '"en-1"'
        assert seen[2] is not None and sorted(seen[2].split(", ")) == ['"de-1"', '"en-1"']
        assert len(seen) == 3


async def test_vary_miss_304_selecting_no_variant_refetches(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        seen: list[str | None] = []

        async def stubborn(request: web.Request) -> web.Response:
            # Answers any conditional request with a 304 naming a tag nobody stored.
            seen.append(request.headers.get("If-None-Match"))
            headers = {"ETag": '"other"', "Cache-Control": "max-age=60", "Vary": "X-Lang"}
            if "If-None-Match" in request.headers:
                return web.Response(status=304, headers=headers)
            headers["ETag"] = f'"{request.headers.get("X-Lang", "")}"'
            return web.Response(text=request.headers.get("X-Lang", ""), headers=headers)

        origin.routes["/s"] = stubborn
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/s"
            async with s.get(url, headers={"X-Lang": "en"}) as r:
                assert await r.text() == "en"
            async with s.get(url, headers={"X-Lang": "de"}) as r:
                assert r.status == 200
                assert await r.text() == "de"
        assert seen == [None, '"en"', None]


async def test_concurrent_misses_collapse_into_one_origin_request(tmp_path: Path) -> None:
    async with origins("a") as (origin,):

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(0.3)
            return web.Response(body=b"z" * 5000, headers={"Cache-Control": "max-age=60"})

        origin.routes["/slow"] = slow
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:

            async def one() -> tuple[int, bytes, str]:
                async with s.get(base_url(edge) + "/slow") as r:
                    return r.status, await r.read(), r.headers["Cache-Status"]

            results = await asyncio.gather(*(one() for _ in range(10)))
        assert origin.hits["/slow"] == 1
        assert all(st == 200 and body == b"z" * 5000 for st, body, _ in results)
        assert sum("collapsed" in cs for _, _, cs in results) == 9


async def test_purge_needs_the_admin_token_when_one_is_configured(tmp_path: Path) -> None:
    token = "s3cret-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    admin_section = {"token_file": str(tmp_path / "token")}
    async with origins("a") as (origin,):
        origin.routes["/t"] = _cacheable(b"t")
        config = _cfg(origin, tmp_path, admin=admin_section)
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/t"
            host = f"127.0.0.1:{edge.addresses['http'][0].port}"
            purge = base_url(edge, "admin") + "/__edge/purge"
            body = {"url": f"http://{host}/t"}
            for _ in range(2):
                async with s.get(url) as r:
                    assert await r.read() == b"t"
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                async with s.post(purge, json=body, headers=headers) as r:
                    assert r.status == 401
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with s.get(url) as r:
                assert "hit" in r.headers["Cache-Status"]  # nothing was purged
            async with s.get(base_url(edge, "admin") + "/__edge/status") as r:
                assert r.status == 200  # reads stay open: the DNS tier polls this
            auth = {"Authorization": f"Bearer {token}"}
            async with s.post(purge, json=body, headers=auth) as r:
                assert r.status == 200 and (await r.json())["purged"] == 1


async def test_purge_api_and_unsafe_invalidation(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        for path in ("/p/one", "/p/two", "/q/tagged"):
            origin.routes[path] = _cacheable(path.encode(), **{"Surrogate-Key": "grp other"})
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            host = f"127.0.0.1:{edge.addresses['http'][0].port}"

            async def get(path: str) -> str:
                async with s.get(base_url(edge) + path) as r:
                    assert await r.read() == path.encode()
                    return r.headers["Cache-Status"]

            for path in ("/p/one", "/p/two", "/q/tagged"):
                await get(path)
                assert "hit" in await get(path)
            admin = base_url(edge, "admin") + "/__edge/purge"
            async with s.post(admin, json={"url": f"http://{host}/p/one"}) as r:
                assert r.status == 200
                assert (await r.json())["purged"] == 1
            assert "miss" in await get("/p/one")
            assert "hit" in await get("/p/two")
            async with s.post(admin, json={"prefix": f"http://{host}/p/"}) as r:
                assert (await r.json())["purged"] == 2
            assert "miss" in await get("/p/two")
            async with s.post(admin, json={"surrogate_key": "grp"}) as r:
                assert (await r.json())["purged"] >= 1
            assert "miss" in await get("/q/tagged")
            async with s.post(admin, json={"nothing": 1}) as r:
                assert r.status == 400
            # An unsafe method with a non-error response invalidates the URL.
            assert "hit" in await get("/q/tagged")
            async with s.post(base_url(edge) + "/q/tagged", data=b"x") as r:
                assert r.status == 200
            assert "miss" in await get("/q/tagged")


async def test_a_purge_past_its_wait_is_accepted_and_goes_on(tmp_path: Path) -> None:
    """A purge request may say how long the edge may take ("wait", seconds; gslb's fleet
    purge sends most of its timeout). A removal that outlasts it is answered 202 (accepted,
    still removing) and goes on: here another process holds the cache database's write
    lock, as another worker's long transaction would. What it names is no longer served
    meanwhile. Once the lock goes, the removal ends (logged). Stopping the edge meanwhile
    waits for it, so nothing named is left stored."""
    from edge.cache_policy import cache_key
    from edge.store import _REMOVE_MAX, Store

    async with origins("a") as (origin,):
        for path in ("/w/one", "/w/two", "/w/three"):
            origin.routes[path] = _cacheable(path.encode(), **{"Surrogate-Key": "grp"})
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            host = f"127.0.0.1:{edge.addresses['http'][0].port}"
            admin = base_url(edge, "admin") + "/__edge/purge"

            async def cache_status(path: str) -> str:
                async with s.get(base_url(edge) + path) as r:
                    assert await r.read() == path.encode()
                    return r.headers["Cache-Status"]

            for path in ("/w/one", "/w/two", "/w/three"):
                await cache_status(path)
                assert "hit" in await cache_status(path)
            for bad in ("1", 0, -1, True, 3601, None):
                body = {"surrogate_key": "grp", "wait": bad}
                async with s.post(admin, data=json.dumps(body).replace("null", "NaN")) as r:
                    assert r.status == 400 and '"wait"' in (await r.json())["error"], bad
            async with s.post(admin, json={"url": f"http://{host}/w/one", "wait": 5}) as r:
                assert r.status == 200 and await r.json() == {
                    "purged": 1,
                    "url": f"http://{host}/w/one",
                }
            held = sqlite3.connect(tmp_path / "cache" / "cache.db", isolation_level=None)
            held.execute("BEGIN IMMEDIATE")  # the write lock, as another worker's transaction
            try:
                t0 = time.monotonic()
                async with s.post(admin, json={"prefix": f"http://{host}/w/", "wait": 0.3}) as r:
                    assert r.status == 202, await r.text()
                    assert await r.json() == {
                        "purged": None,
                        "removing": True,
                        "prefix": f"http://{host}/w/",
                    }
                assert 0.3 <= time.monotonic() - t0 < 5
                # Not removed yet (the lock), but no longer served: asked of the origin.
                assert "fwd=uri-miss" in await cache_status("/w/three")
                async with s.post(admin, json={"surrogate_key": "grp", "wait": 0.2}) as r:
                    assert r.status == 202 and (await r.json())["removing"] is True
            finally:
                held.rollback()
                held.close()
            assert await until(lambda: not edge.proxy.cache._purges)  # type: ignore[union-attr]
            assert "miss" in await cache_status("/w/two")
            assert "hit" in await cache_status("/w/two")  # stored again, and kept
            # More keys than one removal transaction takes (store._REMOVE_MAX): the edge
            # stops between two of them unless it waits for the purge.
            many = [f"/w/{n}" for n in range(_REMOVE_MAX + 44)]
            for path in many:
                origin.routes[path] = _cacheable(path.encode())
                await cache_status(path)
            # A hit once committed: the fills commit in order, so all of them are.
            assert "hit" in await cache_status(many[-1])
            held = sqlite3.connect(tmp_path / "cache" / "cache.db", isolation_level=None)
            held.execute("BEGIN IMMEDIATE")
            async with s.post(admin, json={"prefix": f"http://{host}/w/", "wait": 0.2}) as r:
                assert r.status == 202
            asyncio.get_running_loop().call_later(0.5, held.rollback)
            # running_edge stops the edge here, which waits for the removal to end.
    held.close()
    with Store(tmp_path / "cache") as store:
        for path in ("/w/two", *many):
            assert store.variants(cache_key("http", host, path)) == (), path
        assert store.stats().records == 0


@pytest.mark.parametrize("size", [10_000, 1_000_000])  # read whole, and streamed
@pytest.mark.parametrize("kind", ["url", "prefix", "surrogate_key"])
async def test_a_fill_asked_for_before_a_purge_is_not_stored_after_it(
    tmp_path: Path, size: int, kind: str
) -> None:
    # The origin answers slowly with v1, publishes v2, and the operator purges while the
    # edge is still filling v1: v1 must not be stored, and a request after the purge must
    # not be answered from that fill.
    version = {"v": b"1"}
    async with origins("a") as (origin,):
        origin.routes["/s/obj"] = slow_version(version, size, **{"Surrogate-Key": "grp"})
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            host = f"127.0.0.1:{edge.addresses['http'][0].port}"

            async def get() -> tuple[bytes, str]:
                async with s.get(base_url(edge) + "/s/obj") as r:
                    body = await r.read()
                    assert len(body) == size and len(set(body)) == 1
                    return body[:1], r.headers["Cache-Status"]

            first = asyncio.create_task(get())
            assert await until(lambda: origin.hits["/s/obj"] == 1)
            await asyncio.sleep(0.2)
            version["v"] = b"2"
            value = {
                "url": f"http://{host}/s/obj",
                "prefix": f"http://{host}/s/",
                "surrogate_key": "grp",
            }[kind]
            async with s.post(base_url(edge, "admin") + "/__edge/purge", json={kind: value}) as r:
                assert r.status == 200
            assert (await get())[0] == b"2"  # asked of the origin again, not of the old fill
            assert (await first)[0] == b"1"  # its own client still gets the whole of it
            await asyncio.sleep(0.5)  # past the old fill's commit
            assert (await get())[0] == b"2"
            assert origin.hits["/s/obj"] == 2


async def test_a_fill_another_worker_asked_for_before_a_purge_is_refused_at_its_commit(
    tmp_path: Path,
) -> None:
    """Another worker process answers a miss before its commit (CacheLayer._take_whole),
    so its commit may land after a purge made through this one: the purge is recorded in
    the store, and that commit stores nothing. A fill it asked for after the purge is
    stored."""
    from edge.cache_policy import CacheEntry, CacheRequest, make_entry
    from edge.store import Store

    async with origins("a") as (origin,):
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            host = f"127.0.0.1:{edge.addresses['http'][0].port}"
            request = CacheRequest("GET", "http", host, "/w", ())
            asked = time.time()
            admin = base_url(edge, "admin") + "/__edge/purge"
            async with s.post(admin, json={"url": f"http://{host}/w"}) as r:
                assert (await r.json())["purged"] == 0

            def fill(at: float) -> CacheEntry | None:
                # The other worker's commit: a store of its own on the same directory.
                stored = make_entry(
                    request, 200, "OK", [("Cache-Control", "max-age=60")], request_time=at,
                    response_time=at, body_length=0, sha256="0" * 64, now=at,
                )  # fmt: skip
                with Store(tmp_path / "cache") as other:
                    return other.put(stored, b"old")

            assert fill(asked) is None
            async with s.get(base_url(edge) + "/w") as r:
                assert "miss" in r.headers["Cache-Status"]
            assert fill(time.time()) is not None


async def test_a_miss_in_flight_purged_through_another_worker_leads_no_later_request(
    tmp_path: Path,
) -> None:
    """A slow fill is on its way when another worker records a purge of it: a request
    made since does not read that fill (the old response) but asks the origin again."""
    from edge.store import Store

    version = {"v": b"1"}
    size = 1_000_000
    async with origins("a") as (origin,):
        origin.routes["/f"] = slow_version(version, size)
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            host = f"127.0.0.1:{edge.addresses['http'][0].port}"

            async def get() -> bytes:
                async with s.get(base_url(edge) + "/f") as r:
                    body = await r.read()
                    assert len(body) == size and len(set(body)) == 1
                    return body[:1]

            first = asyncio.create_task(get())
            assert await until(lambda: origin.hits["/f"] == 1)
            await asyncio.sleep(0.2)
            version["v"] = b"2"
            with Store(tmp_path / "cache") as other:  # the other worker's purge
                key = f"http://{host}/f"
                assert other.purge("url", key, asked_before=time.time()) == 0
            assert await get() == b"2"
            assert await first == b"1"
            assert origin.hits["/f"] == 2
            assert await get() == b"2"  # stored: the second fill, not the first


async def test_stale_if_error_and_stale_while_revalidate(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        mode = {"fail": False}

        async def flaky(request: web.Request) -> web.Response:
            if mode["fail"]:
                return web.Response(status=500, text="down")
            return web.Response(
                body=b"good",
                headers={"Cache-Control": "max-age=0, stale-if-error=600", "ETag": '"g"'},
            )

        async def swr(request: web.Request) -> web.Response:
            return web.Response(
                body=b"v%d" % origin.hits["/swr"],
                headers={"Cache-Control": "max-age=0, stale-while-revalidate=600", "ETag": '"s"'},
            )

        origin.routes["/sie"] = flaky
        origin.routes["/swr"] = swr
        config = _cfg(origin, tmp_path, pool={"retry": False, "max_fails": 100})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/sie") as r:
                assert await r.read() == b"good"
            mode["fail"] = True
            async with s.get(base_url(edge) + "/sie") as r:
                assert r.status == 200
                assert await r.read() == b"good"
                assert "stale-if-error" in r.headers["Cache-Status"]
            async with s.get(base_url(edge) + "/swr") as r:
                assert await r.read() == b"v1"
            async with s.get(base_url(edge) + "/swr") as r:
                assert await r.read() == b"v1"
                assert "stale-while-revalidate" in r.headers["Cache-Status"]
            assert await until(lambda: origin.hits["/swr"] == 2)
            await origin.stop()
            async with s.get(base_url(edge) + "/sie") as r:
                assert r.status == 200
                assert await r.read() == b"good"


async def test_incomplete_origin_body_is_never_stored(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        origin.routes["/cut"] = raw_reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\nabc"
        )
        origin.routes["/cd"] = raw_reply(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nConnection: close\r\n\r\nall"
        )
        config = _cfg(origin, tmp_path, pool={"retry": False, "max_fails": 100})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            for _ in range(2):
                try:
                    async with s.get(base_url(edge) + "/cut") as r:
                        await r.read()
                except aiohttp.ClientPayloadError:
                    pass
                async with s.get(base_url(edge) + "/cd") as r:
                    assert await r.read() == b"all"
        assert origin.hits["/cut"] == 2
        assert origin.hits["/cd"] == 2


async def test_big_object_cached_and_streamed_from_disk(tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    async with origins("a") as (origin,):
        origin.routes["/big"] = _cacheable(body)
        config = _cfg(origin, tmp_path, cache={"memory_object_max": 1024})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.get(base_url(edge) + "/big") as r:
                    data = await r.read()
                    assert hashlib.sha256(data).digest() == hashlib.sha256(body).digest()
            assert "hit" in r.headers["Cache-Status"]
            async with s.get(base_url(edge) + "/big", headers={"Range": "bytes=1000-1999"}) as r:
                assert r.status == 206
                assert await r.read() == body[1000:2000]
        assert origin.hits["/big"] == 1


async def test_compression_negotiation_and_stored_variants(tmp_path: Path) -> None:
    text = ("<p>" + "geoedge compresses html " * 200 + "</p>").encode()
    async with origins("a") as (origin,):

        async def page(request: web.Request) -> web.Response:
            cc = "max-age=60, no-transform" if request.path == "/nt" else "max-age=60"
            return web.Response(
                body=text, headers={"Cache-Control": cc, "Content-Type": "text/html"}
            )

        origin.routes["/page"] = page
        origin.routes["/nt"] = page
        async with (
            running_edge(_cfg(origin, tmp_path)) as edge,
            aiohttp.ClientSession(auto_decompress=False) as s,
        ):
            for _ in range(2):
                async with s.get(
                    base_url(edge) + "/page", headers={"Accept-Encoding": "gzip;q=0.5, br"}
                ) as r:
                    assert r.headers["Content-Encoding"] == "br"
                    assert "accept-encoding" in r.headers["Vary"].lower()
                    assert brotli.decompress(await r.read()) == text
            assert "hit" in r.headers["Cache-Status"]
            async with s.get(base_url(edge) + "/page", headers={"Accept-Encoding": "gzip"}) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(await r.read()) == text
            async with s.get(
                base_url(edge) + "/page", headers={"Accept-Encoding": "identity"}
            ) as r:
                assert "Content-Encoding" not in r.headers
                assert await r.read() == text
            async with s.get(base_url(edge) + "/nt", headers={"Accept-Encoding": "br"}) as r:
                assert "Content-Encoding" not in r.headers
                assert await r.read() == text
        assert origin.hits["/page"] == 3


async def test_a_304_never_rewrites_the_content_coding_of_a_stored_variant(
    tmp_path: Path,
) -> None:
    # Issue 7: the brotli variant the edge compressed itself was revalidated, the origin's
    # 304 said `Content-Encoding: identity`, and every later hit said identity over brotli
    # bytes. RFC 9111 §3.2: fields the stored body depends on are not updated from a 304.
    text = ("<p>" + "revalidated html " * 200 + "</p>").encode()
    async with origins("a") as (origin,):

        async def page(request: web.Request) -> web.Response:
            headers = {"Cache-Control": "max-age=0", "ETag": '"p1"', "Content-Type": "text/html"}
            if request.headers.get("If-None-Match", "").endswith('"p1"'):
                return web.Response(status=304, headers={**headers, "Content-Encoding": "identity"})
            return web.Response(body=text, headers=headers)

        origin.routes["/p"] = page
        async with (
            running_edge(_cfg(origin, tmp_path)) as edge,
            aiohttp.ClientSession(auto_decompress=False) as s,
        ):
            for _ in range(3):
                async with s.get(base_url(edge) + "/p", headers={"Accept-Encoding": "br"}) as r:
                    assert r.status == 200
                    assert r.headers["Content-Encoding"] == "br"
                    assert brotli.decompress(await r.read()) == text
                    last = r.headers["Cache-Status"]
            assert "fwd-status=304" in last
        assert origin.hits["/p"] == 3


async def test_admin_status_and_metrics_reflect_traffic(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        origin.routes["/m"] = _cacheable(b"m")
        config = _cfg(origin, tmp_path, admin={"capacity_rps": 10})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.get(base_url(edge) + "/m") as r:
                    await r.read()
            async with s.get(base_url(edge, "admin") + "/__edge/status") as r:
                doc = await r.json()
            assert doc["healthy"] is True
            assert doc["origins"]["up"] == [origin.url]
            assert doc["hit_ratio"] == 0.8
            assert 0.0 <= doc["load_factor"] <= 1.0
            assert doc["active_requests"] == 0
            assert doc["cache"]["enabled"] is True
            async with s.get(base_url(edge, "admin") + "/metrics") as r:
                text = await r.text()
            assert 'edge_requests_total{cache="hit",status="200"} 4.0' in text
            assert 'edge_requests_total{cache="miss",status="200"} 1.0' in text
            assert "edge_origin_latency_seconds_bucket" in text
            assert "edge_cache_bytes" in text


async def test_repeated_hits_from_memory_keep_headers_and_connection_semantics(
    tmp_path: Path,
) -> None:
    async with origins("a") as (origin,):
        origin.routes["/hot"] = _cacheable(b"hot object", ETag='"h"', **{"X-Origin": "yes"})
        async with running_edge(_cfg(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            heads = []
            for _ in range(4):  # one miss, then hits on one kept-alive connection
                writer.write(b"GET /hot HTTP/1.1\r\nHost: h.test\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                assert await reader.readexactly(length) == b"hot object"
                heads.append(head)
            writer.write(b"GET /hot HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
            last = await asyncio.wait_for(reader.read(), 10)  # the server closes after it
            writer.close()
        for head in heads[1:]:
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nX-Origin: yes\r\n" in head
            assert b'\r\nETag: "h"\r\n' in head
            assert b"\r\nAge: " in head
            assert b"\r\nCache-Status: GeoEdge; hit" in head
            assert b"\r\nVia: 1.1 geoedge" in head
        assert b"\r\nConnection: close\r\n" in last
        assert last.endswith(b"\r\n\r\nhot object")
        assert origin.hits["/hot"] == 1


class _Conn:
    """One raw kept-alive client connection, to control how requests are segmented."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def response(self) -> tuple[bytes, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return head, body

    async def get(self, path: str, *fields: str) -> tuple[bytes, bytes]:
        extra = "".join(f"{f}\r\n" for f in fields)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: h.test\r\n{extra}\r\n".encode())
        return await self.response()


async def test_fast_hits_off_sends_every_hit_through_the_full_handler(
    tmp_path: Path, handled: list[str]
) -> None:
    async with origins("a") as (origin,):
        origin.routes["/f"] = _cacheable(b"fast body")
        config = _cfg(origin, tmp_path, server={"listen": ["127.0.0.1:0"], "fast_hits": False})
        assert config.server.fast_hits is False
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            for _ in range(3):
                head, body = await conn.get("/f")
                assert body == b"fast body"
            assert b"Cache-Status: GeoEdge; hit" in head
            conn.writer.close()
        assert origin.hits["/f"] == 1
    assert handled == ["GET /f"] * 3


async def test_plain_get_hits_take_the_fast_path_with_the_full_handlers_answer(
    tmp_path: Path, handled: list[str]
) -> None:
    log_path = tmp_path / "access.log"
    async with origins("a") as (origin,):
        origin.routes["/f"] = _cacheable(b"fast body", ETag='"f"', **{"X-Origin": "yes"})
        origin.routes["/g"] = _cacheable(b"other body")
        config = _cfg(origin, tmp_path, log={"access_log": str(log_path)})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            # A plain miss is the fast path's too (CacheLayer.plain_miss).
            miss_head, body = await conn.get("/f", "User-Agent: raw/0")
            assert body == b"fast body" and b"fwd=uri-miss" in miss_head
            assert b"; stored\r\n" in miss_head and b"\r\nX-Origin: yes\r\n" in miss_head
            assert handled == []
            # The miss was answered before its commit (edge.fill.GroupCommit.submit): the
            # request right after it waits for the commit in the full handler, and is a hit.
            head, body = await conn.get("/f")
            assert body == b"fast body" and b"Cache-Status: GeoEdge; hit; ttl=" in head
            assert handled == ["GET /f"]
            # The hits after it come from memory, without the handler.
            hits = [await conn.get("/f", "User-Agent: raw/1") for _ in range(3)]
            assert handled == ["GET /f"]
            for head, body in hits:
                assert body == b"fast body"
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert b"\r\nX-Origin: yes\r\n" in head and b'\r\nETag: "f"\r\n' in head
                assert b"\r\nVia: 1.1 geoedge\r\n" in head
                assert b"\r\nContent-Length: 9\r\n" in head
                assert b"\r\nAge: " in head
                assert b"\r\nCache-Status: GeoEdge; hit; ttl=" in head
            # What the fast path declines, the full handler answers, on the same connection.
            head, body = await conn.get("/f", "If-None-Match: x")
            assert body == b"fast body" and b"hit" in head
            assert handled[-1] == "GET /f"
            before = len(handled)
            # Two requests in one segment (pipelined): answered in order by the full handler.
            conn.writer.write(
                b"GET /f HTTP/1.1\r\nHost: h.test\r\n\r\nGET /g HTTP/1.1\r\nHost: h.test\r\n\r\n"
            )
            assert (await conn.response())[1] == b"fast body"
            assert (await conn.response())[1] == b"other body"
            assert handled[before:] == ["GET /f", "GET /g"]
            # A request split over segments goes to the full handler too...
            conn.writer.write(b"GET /f HTTP/1.1\r\nHo")
            await conn.writer.drain()
            await asyncio.sleep(0.05)
            conn.writer.write(b"st: h.test\r\n\r\n")
            assert (await conn.response())[1] == b"fast body"
            assert handled[-1] == "GET /f" and len(handled) == before + 3
            # ...and then plain requests on that connection are fast again.
            assert (await conn.get("/g"))[1] == b"other body"
            assert (await conn.get("/f"))[1] == b"fast body"
            assert len(handled) == before + 3
            # Connection: close: answered by the fast path too, then the connection closes.
            conn.writer.write(b"GET /f HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
            rest = await asyncio.wait_for(conn.reader.read(), 10)
            assert b"\r\nConnection: close\r\n" in rest and rest.endswith(b"fast body")
            conn.writer.close()
            assert len(handled) == before + 3
            async with aiohttp.ClientSession() as s:
                async with s.get(base_url(edge, "admin") + "/metrics") as r:
                    text = await r.text()
            # Every hit above, by either path; the misses were the first /f and /g.
            assert 'edge_requests_total{cache="hit",status="200"} 10.0' in text
            assert 'edge_requests_total{cache="miss",status="200"} 2.0' in text
        assert origin.hits["/f"] == 1 and origin.hits["/g"] == 1
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    (miss,) = [r for r in records if r.get("user_agent") == "raw/0"]
    assert (miss["path"], miss["status"], miss["cache"], miss["bytes"]) == ("/f", 200, "miss", 9)
    assert miss["origin"] == origin.url
    fast = [r for r in records if r.get("user_agent") == "raw/1"]
    assert len(fast) == 3
    for r in fast:
        assert (r["method"], r["path"], r["status"], r["cache"]) == ("GET", "/f", 200, "hit")
        assert r["bytes"] == 9 and r["remote"] == "127.0.0.1" and r["host"] == "h.test"
    assert len(records) == 1 + 1 + 3 + 1 + 2 + 1 + 2 + 1


async def test_one_range_of_a_fresh_hit_takes_the_fast_path_and_the_rest_the_handler(
    tmp_path: Path, handled: list[str]
) -> None:
    """A plain GET with one Range (no If-Range) of a fresh hit is answered by the fast path:
    a 206 of that range, or the whole body where the full handler ignores the Range too.
    A 416, an If-Range, a Range of a miss and a stale hit are the full handler's."""
    body = bytes(range(256)) * 4
    async with origins("a") as (origin,):
        origin.routes["/r"] = _cacheable(body, ETag='"r"')
        origin.routes["/n"] = _cacheable(body)
        config = _cfg(origin, tmp_path)
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            # A miss with a Range: the full handler's, which fetches the whole and stores it.
            head, part = await conn.get("/r", "Range: bytes=10-19")
            assert head.startswith(b"HTTP/1.1 206 ") and part == body[10:20]
            assert handled == ["GET /r"]
            await conn.get("/r")  # the commit is in (a hit, from the handler or not)
            before = len(handled)
            cases = [
                ("bytes=10-19", 206, body[10:20]),
                ("bytes=1000-", 206, body[1000:]),
                ("bytes=-5", 206, body[-5:]),
                ("bytes=0-0, 3-4", 200, body),  # two ranges: the whole, as the handler does
                ("bytes=x-y", 200, body),  # not a valid Range: ignored
            ]
            for spec, status, want in cases:
                head, got = await conn.get("/r", f"Range: {spec}")
                assert head.startswith(b"HTTP/1.1 %d " % status), (spec, head)
                assert got == want, spec
                assert b"Cache-Status: GeoEdge; hit; ttl=" in head and b"\r\nAge: " in head
                if status == 206:
                    first, last = (10, 19) if spec == "bytes=10-19" else (1000, 1023)
                    if spec == "bytes=-5":
                        first, last = 1019, 1023
                    assert b"\r\nContent-Range: bytes %d-%d/1024\r\n" % (first, last) in head
            assert handled[before:] == []
            # What the fast path leaves: a Range nothing of which fits, an If-Range.
            conn.writer.write(b"GET /r HTTP/1.1\r\nHost: h.test\r\nRange: bytes=5000-\r\n\r\n")
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 416 ")
            await conn.reader.readexactly(_length_of(head))
            head, got = await conn.get("/r", "Range: bytes=0-1", 'If-Range: "r"')
            assert head.startswith(b"HTTP/1.1 206 ") and got == body[:2]
            assert handled[before:] == ["GET /r", "GET /r"]
            conn.writer.close()
        assert origin.hits["/r"] == 1


async def test_the_variants_of_a_text_take_the_fast_path(
    tmp_path: Path, handled: list[str]
) -> None:
    """The compressed variants of a text (Vary: Accept-Encoding, as browsers ask for it)
    are answered by the fast path once stored, each to the requests that select it, as
    the full handler selects it; a request whose variant is not stored is the full
    handler's (a vary-miss)."""
    text = b"<p>" + b"compressible text " * 400 + b"</p>"
    async with origins("a") as (origin,):
        origin.routes["/t"] = _cacheable(text, **{"Content-Type": "text/html"})
        async with running_edge(_cfg(origin, tmp_path)) as edge:
            url = base_url(edge) + "/t"
            async with aiohttp.ClientSession(auto_decompress=False) as s:
                for coding in ("br", "br", "gzip", "gzip"):  # each stored, then a hit
                    asked = {"Accept-Encoding": coding, "Host": "h.test"}
                    async with s.get(url, headers=asked) as r:
                        assert r.headers["Content-Encoding"] == coding
                        await r.read()
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            before = len(handled)
            decode = {b"br": brotli.decompress, b"gzip": gzip.decompress}
            for asked, coding in (("br", b"br"), ("gzip, deflate, br", b"br"), ("gzip", b"gzip")):
                head, body = await conn.get("/t", f"Accept-Encoding: {asked}")
                assert b"\r\nContent-Encoding: %s\r\n" % coding in head, asked
                assert b"\r\nVary: Accept-Encoding\r\n" in head
                assert b"Cache-Status: GeoEdge; hit; ttl=" in head
                assert decode[coding](body) == text
            assert handled[before:] == []
            head, body = await conn.get("/t")  # identity: not stored yet
            assert body == text and b"fwd=vary-miss" in head
            assert handled[before:] == ["GET /t"]
            conn.writer.close()
        assert origin.hits["/t"] == 3


async def test_a_hit_asked_to_close_takes_the_fast_path_and_closes(
    tmp_path: Path, handled: list[str]
) -> None:
    """A plain GET of a fresh hit with `Connection: close` (one-shot clients: scripts,
    health checks, clients without a pool) is answered by the fast path, says `Connection:
    close` as the full handler does, and the connection ends after it. A miss asked so is
    the full handler's, which closes too."""
    async with origins("a") as (origin,):
        origin.routes["/k"] = _cacheable(b"kept", ETag='"k"')
        async with running_edge(_cfg(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port

            async def once(path: str, *fields: str) -> tuple[bytes, bytes]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                extra = "".join(f"{f}\r\n" for f in fields)
                request = f"GET {path} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n"
                writer.write((request + extra + "\r\n").encode())
                data = await asyncio.wait_for(reader.read(), 10)  # to the end: it closes
                writer.close()
                head, _, body = data.partition(b"\r\n\r\n")
                return head, body

            head, body = await once("/k")
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"kept"
            assert b"fwd=uri-miss" in head and head.endswith(b"\r\nConnection: close")
            assert handled == ["GET /k"]
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            await conn.get("/k")  # the commit is in (a hit, from the handler or not)
            conn.writer.close()
            before = len(handled)
            head, body = await once("/k")
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"kept"
            assert b"Cache-Status: GeoEdge; hit; ttl=" in head
            assert head.endswith(b"\r\nConnection: close")
            head, body = await once("/k", 'If-None-Match: "k"')
            assert head.startswith(b"HTTP/1.1 304 ") and body == b""
            assert head.endswith(b"\r\nConnection: close")
            assert handled[before:] == []
        assert origin.hits["/k"] == 1


async def test_revalidations_of_a_fresh_hit_take_the_fast_path(
    tmp_path: Path, handled: list[str]
) -> None:
    """If-None-Match and If-Modified-Since of a fresh hit are answered by the fast path
    (a 304 when they match, the hit when not); If-Match and a miss with validators of its
    own are the full handler's."""
    lm = "Tue, 01 Dec 2026 10:00:00 GMT"
    async with origins("a") as (origin,):
        origin.routes["/v"] = _cacheable(b"validated", ETag='"v"', **{"Last-Modified": lm})
        origin.routes["/w"] = _cacheable(b"w", ETag='"v"')
        async with running_edge(_cfg(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            # A miss with a validator of its own: the full handler's.
            conn.writer.write(b'GET /w HTTP/1.1\r\nHost: h.test\r\nIf-None-Match: "v"\r\n\r\n')
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
            await conn.reader.readexactly(_length_of(head))
            assert handled == ["GET /w"]
            await conn.get("/v")  # a plain miss, answered before its commit
            await conn.get("/v")  # waits for the commit: a hit
            before = len(handled)
            for fields in (['If-None-Match: "x", "v"'], [f"If-Modified-Since: {lm}"]):
                conn.writer.write(
                    ("GET /v HTTP/1.1\r\nHost: h.test\r\n" + fields[0] + "\r\n\r\n").encode()
                )
                head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 304 Not Modified\r\n"), (fields, head)
                assert b'\r\nETag: "v"\r\n' in head and b"Cache-Status: GeoEdge; hit" in head
                assert b"content-length" not in head.lower()
            head, body = await conn.get("/v", 'If-None-Match: "other"')
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"validated"
            assert handled[before:] == []
            head, body = await conn.get("/v", 'If-Match: "v"')
            assert body == b"validated" and handled[before:] == ["GET /v"]
            conn.writer.close()
        assert origin.hits["/v"] == 1


async def _raw_origin(response: bytes) -> asyncio.Server:
    """An origin that answers every request on a connection with `response`, as sent: no
    Server or Content-Type unless it has them (as Go's and Node's servers answer)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def _sorted_fields(head: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")
    kept = [re.sub(rb"; ttl=-?\d+", b"", x) for x in lines[1:] if x]
    return [lines[0], *sorted(x for x in kept if not x.lower().startswith((b"date:", b"age:")))]


@pytest.mark.parametrize(
    ("strip", "fields"),
    [([], b""), (["range", "if-none-match"], b"Server: o\r\nContent-Type: text/plain\r\n")],
)
async def test_ranges_and_revalidations_answer_alike_on_either_path(
    tmp_path: Path, strip: list[str], fields: bytes
) -> None:
    """A stored response without Server and Content-Type (the full handler's aiohttp adds
    them to a 206 or 304), and fields the configuration strips from requests: a Range or
    a revalidation in one segment (the fast path may answer) and in two (the full handler
    does) get the same answer."""
    body = b"0123456789" * 10
    origin = await _raw_origin(
        b'HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nETag: "n"\r\n%s'
        b"Content-Length: %d\r\n\r\n%s" % (fields, len(body), body)
    )
    port_o = origin.sockets[0].getsockname()[1]
    try:
        config = from_mapping(
            {
                "server": {"listen": ["127.0.0.1:0"], "strip_request_headers": strip},
                "log": {"access_log": ""},
                "cache": {"dir": str(tmp_path / "cache")},
                "pool": {"origins": [f"http://127.0.0.1:{port_o}"], "probe": {"enabled": False}},
            },
            "<test>",
        )
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            await conn.get("/n")
            assert (await conn.get("/n"))[1] == body  # stored, a hit
            for field in ("Range: bytes=10-19", 'If-None-Match: "n"', "Range: bytes=0-0, 5-9"):
                request = f"GET /n HTTP/1.1\r\nHost: h.test\r\n{field}\r\n\r\n".encode()
                answers = []
                for cut in (None, 20):
                    if cut is None:
                        conn.writer.write(request)
                    else:
                        conn.writer.write(request[:cut])
                        await conn.writer.drain()
                        await asyncio.sleep(0.03)
                        conn.writer.write(request[cut:])
                    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
                    length = 0 if head.startswith(b"HTTP/1.1 304") else _length_of(head)
                    got = await asyncio.wait_for(conn.reader.readexactly(length), 10)
                    answers.append((_sorted_fields(head), got))
                assert answers[0] == answers[1], (field, answers)
            conn.writer.close()
    finally:
        origin.close()
        await origin.wait_closed()


def _length_of(head: bytes) -> int:
    return int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])


async def test_fast_path_leaves_stale_entries_and_refused_hosts_to_the_full_handler(
    tmp_path: Path,
) -> None:
    async with origins("a") as (origin,):
        # max-age=3: fresh for at least 2 s, whatever the second its Date was truncated to.
        origin.routes["/s"] = _cacheable(b"short", "max-age=3")
        config = _cfg(origin, tmp_path, server={"hosts": ["h.test"]})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            assert b"fwd=uri-miss" in (await conn.get("/s"))[0]
            assert b"; hit" in (await conn.get("/s"))[0]
            conn.writer.write(b"GET /s HTTP/1.1\r\nHost: other.test\r\n\r\n")
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 421 ")
            conn.writer.close()
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            for _ in range(100):  # hits until the entry goes stale (bounded: 10 s)
                head, body = await conn.get("/s")
                assert body == b"short"
                if b"fwd=stale" in head:
                    break
                assert b"; hit" in head
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the entry never went stale")
            conn.writer.close()
        assert origin.hits["/s"] == 2


async def test_reload_says_which_listener_settings_wait_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with origins("a") as (origin,):
        async with running_edge(_cfg(origin, tmp_path)) as edge:
            with caplog.at_level("WARNING", logger="edge"):
                edge.reload(_cfg(origin, tmp_path, server={"via": "edge-2"}))
                assert "listener settings" not in caplog.text
                edge.reload(_cfg(origin, tmp_path, limits={"header_timeout": 3.0}))
                assert "listener settings changed" in caplog.text


async def test_reload_renames_the_cache_in_fast_hits(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        origin.routes["/r"] = _cacheable(b"reloaded")
        async with running_edge(_cfg(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            conn = _Conn(*await asyncio.open_connection("127.0.0.1", port))
            await conn.get("/r")
            head, _ = await conn.get("/r")
            assert b"\r\nCache-Status: GeoEdge; hit" in head and b"\r\nVia: 1.1 geoedge\r\n" in head
            edge.reload(_cfg(origin, tmp_path, server={"cache_name": "Renamed", "via": "edge-2"}))
            head, body = await conn.get("/r")
            # A plain miss with the same fields as the first: the reloaded Via both ways.
            origin.routes["/m"] = _cacheable(b"missed")
            miss_head, _ = await conn.get("/m")
            conn.writer.close()
        assert body == b"reloaded"
        assert b"\r\nCache-Status: Renamed; hit" in head and b"\r\nVia: 1.1 edge-2\r\n" in head
        assert origin.hits["/r"] == 1
        assert b"Cache-Status: Renamed; fwd=uri-miss" in miss_head
        assert b"\r\nVia: 1.1 edge-2\r\n" in miss_head
        assert [r.headers["Via"] for r in origin.requests] == ["1.1 geoedge", "1.1 edge-2"]


async def test_fast_hits_keep_going_while_a_due_variant_list_is_re_read(tmp_path: Path) -> None:
    from edge.cache_layer import CacheLayer
    from edge.cache_policy import CacheRequest, make_entry
    from edge.store import Store

    class Clock:
        t = 1000.0

        def __call__(self) -> float:
            return self.t

    now = 1_800_000_000.0
    req = CacheRequest("GET", "http", "h.test", "/a")
    stored = make_entry(
        req,
        200,
        "OK",
        [("Cache-Control", "max-age=60"), ("Content-Type", "text/plain")],
        request_time=now,
        response_time=now,
        body_length=0,
        sha256="0" * 64,
        now=now,
    )
    clock = Clock()
    config = edge_config([Origin()], cache={"dir": str(tmp_path)})  # never started
    store = Store(tmp_path, clock=clock, meta_refresh=1.0)
    layer = CacheLayer(store, config, clock=lambda: now + 5)
    try:
        assert store.put(stored, b"body") is not None
        hit = layer.hits.hit_wire(req.key)
        assert hit is not None
        status, head, body = hit
        assert (status, body) == (200, b"body")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert head.endswith(b"\r\nAge: 5\r\nCache-Status: GeoEdge; hit; ttl=55\r\n\r\n")
        clock.t += 1.5  # due for a look at the epoch: unmoved, so still current
        assert layer.hits.hit_wire(req.key) is not None
        with Store(tmp_path) as other:  # another worker purges it
            assert other.purge_url(req.key) == 1
        clock.t += 0.5  # the epoch moved, within a period of the last look: still
        # answered, and re-read in the background
        assert layer.hits.hit_wire(req.key) is not None
        assert await until(lambda: not layer.hits._rereads)
        assert layer.hits.hit_wire(req.key) is None  # the re-read saw the purge
        assert store.put(stored, b"again") is not None
        clock.t += 2.5  # due, but nothing was taken away since: still answered
        assert layer.hits.hit_wire(req.key) is not None
        with Store(tmp_path) as other:
            assert other.purge_url(req.key) == 1
        clock.t += 2.5  # the epoch moved, and the last look was a period ago and more: no
        # longer trusted
        assert layer.hits.hit_wire(req.key) is None
    finally:
        await layer.close()


async def test_fast_revalidations_follow_the_entry_they_are_answered_from(
    tmp_path: Path,
) -> None:
    # Hits remembers a revalidation's verdict per stored response and conditions: a
    # replaced entry (another Last-Modified and ETag) is judged afresh, and conditions too
    # long to remember are judged each time, alike.
    from edge.cache_layer import CacheLayer
    from edge.cache_policy import CacheRequest, make_entry
    from edge.hits import VERDICT_CONDITIONS_MAX, VERDICTS_MAX
    from edge.store import Store

    now = 1_800_000_000.0
    req = CacheRequest("GET", "http", "h.test", "/v")

    def entry(modified: str, etag: str, body: bytes, at: float) -> Any:
        fields = [
            ("Cache-Control", "max-age=600"),
            ("Content-Type", "text/plain"),
            ("Server", "origin"),
            ("Last-Modified", modified),
            ("ETag", etag),
        ]
        return make_entry(
            req,
            200,
            "OK",
            fields,
            request_time=at,
            response_time=at,
            body_length=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            now=at,
        )

    old_date, new_date = "Thu, 01 Jan 2026 00:00:00 GMT", "Fri, 02 Jan 2026 00:00:00 GMT"
    ims = (("if-modified-since", old_date),)
    inm = (("if-none-match", '"one"'),)
    long_inm = (("if-none-match", ", ".join(['"x"'] * 100) + ', "one"'),)
    assert len(long_inm[0][1]) > VERDICT_CONDITIONS_MAX
    many = tuple(("if-none-match", f'"{i}"') for i in range(3)) + inm  # short, but four
    config = edge_config([Origin()], cache={"dir": str(tmp_path)})  # never started
    store = Store(tmp_path)
    layer = CacheLayer(store, config, clock=lambda: now + 5)
    hits = layer.hits
    try:
        assert store.put(entry(old_date, '"one"', b"first", now), b"first") is not None
        for _ in range(2):  # judged, then remembered
            for conditions in (ims, inm, long_inm, many):
                hit = hits.hit_wire(req.key, conditions=conditions)
                assert hit is not None and hit[0] == 304 and hit[2] == b""
        # None: one If-Modified-Since, or one If-None-Match of the stored ETag, is judged
        # at once; the long one and the four fields are judged each time.
        assert len(hits._verdicts) == 0
        assert store.put(entry(new_date, '"two"', b"second", now + 1), b"second") is not None
        for conditions in (ims, inm, long_inm, many):
            hit = hits.hit_wire(req.key, conditions=conditions)
            assert hit is not None and (hit[0], hit[2]) == (200, b"second"), conditions
        hit = hits.hit_wire(req.key, conditions=(("if-modified-since", new_date),))
        assert hit is not None and hit[0] == 304
        for i in range(VERDICTS_MAX + 10):  # as many conditions as clients care to send
            assert hits.hit_wire(req.key, conditions=(("if-none-match", f'"{i}"'),))
        assert len(hits._verdicts) == VERDICTS_MAX
    finally:
        await layer.close()


async def test_field_named_in_connection_does_not_select_a_variant(tmp_path: Path) -> None:
    # "Accept-Language: de" named in Connection never reaches the origin, which answers in
    # English; that answer used to be stored as the "de" variant for everyone.
    async with origins("a") as (origin,):
        origin.routes["/l"] = _negotiated
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/l"
            hop = {"Accept-Language": "de", "Connection": "accept-language"}
            async with s.get(url, headers=hop) as r:
                assert await r.text() == "hello in en"
            async with s.get(url, headers={"Accept-Language": "de"}) as r:
                assert await r.text() == "hello in de"


async def _raw_get(edge, path: str, *extra: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """One HTTP/1.1 GET written and read as bytes, so field octets are seen as sent."""
    host, port = base_url(edge).removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: " + host.encode(), *extra]
        writer.write(b"\r\n".join([*lines, b"Connection: close", b"", b""]))
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_obs_text_in_fields_round_trips_byte_exactly(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        seen: list[bytes] = []

        async def obs_text(request: web.Request) -> web.Response:
            seen.extend(v for k, v in request.raw_headers if k.lower() == b"if-none-match")
            # aiohttp writes this str as UTF-8: the octets "abcdef\xc3\xbc".
            headers = {"ETag": '"abcdef\u00fc"', "Cache-Control": "max-age=60"}
            if request.path == "/stale":
                headers["Cache-Control"] = "max-age=0"
            if "If-None-Match" in request.headers:
                return web.Response(status=304, headers=headers)
            return web.Response(body=b"x", headers=headers)

        origin.routes["/fresh"] = obs_text
        origin.routes["/stale"] = obs_text
        async with running_edge(_cfg(origin, tmp_path)) as edge:
            first = await _raw_get(edge, "/fresh")
            assert b'\r\nETag: "abcdef\xc3\xbc"\r\n' in first
            hit = await _raw_get(edge, "/fresh")
            assert b'\r\nETag: "abcdef\xc3\xbc"\r\n' in hit and b"hit" in hit
            cond = await _raw_get(edge, "/fresh", b'If-None-Match: "abcdef\xc3\xbc"')
            assert cond.startswith(b"HTTP/1.1 304")
            assert b'\r\nETag: "abcdef\xc3\xbc"\r\n' in cond
            other = await _raw_get(edge, "/fresh", b'If-None-Match: "abcdef\xfc"')
            assert other.startswith(b"HTTP/1.1 200")
            await _raw_get(edge, "/stale")
            revalidated = await _raw_get(edge, "/stale")
            assert revalidated.startswith(b"HTTP/1.1 200") and b"fwd-status=304" in revalidated
        assert seen == [b'"abcdef\xc3\xbc"']
        assert origin.hits["/fresh"] == 1


async def _stalled_get(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A client that sends a GET, reads the response head and then stops reading: a tiny
    receive buffer, so the edge's writes to it soon block."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"  # aiohttp's Host
    await loop.sock_sendall(sock, request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)
        assert chunk, data
        data += chunk
    return sock, data


async def _read_response(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    """Head and Content-Length body of the response whose first bytes are `data`."""
    loop = asyncio.get_running_loop()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 30)
        if not chunk:
            break
        body += chunk
    return head, body


async def test_a_stalled_leader_does_not_hold_back_a_collapsed_miss(tmp_path: Path) -> None:
    # The first client reads the response head and then nothing; the body (far more than
    # the socket buffers hold) must still reach the cache at the origin's pace, and a
    # concurrent miss be answered from it, well before collapse_timeout.
    big = os.urandom(16 << 20)
    async with origins("a") as (origin,):
        origin.routes["/big"] = _cacheable(big)
        config = _cfg(origin, tmp_path, cache={"collapse_timeout": 10})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            port = edge.addresses["http"][0].port
            sock, data = await _stalled_get(port, "/big")
            try:
                assert data.startswith(b"HTTP/1.1 200"), data
                async with s.get(base_url(edge) + "/big") as r:
                    body = await asyncio.wait_for(r.read(), 60)
                    status = r.headers["Cache-Status"]
                assert body == big
                assert "collapsed" in status and "hit" in status
                assert origin.hits["/big"] == 1
                # The stalled client still gets the whole body, byte for byte.
                _, leader_body = await _read_response(sock, data)
                assert hashlib.sha256(leader_body).digest() == hashlib.sha256(big).digest()
            finally:
                sock.close()
            async with s.get(base_url(edge) + "/big") as r:
                assert await r.read() == big
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
        assert origin.hits["/big"] == 1


async def test_a_leader_that_leaves_does_not_abort_the_fill(tmp_path: Path) -> None:
    release = asyncio.Event()
    part = os.urandom(256 << 10)
    async with origins("a") as (origin,):

        async def halting(request: web.Request) -> web.StreamResponse:
            headers = {"Cache-Control": "max-age=60", "Content-Length": str(4 * len(part))}
            if origin.hits["/halt"] > 1:
                return web.Response(body=part * 4, headers=headers)
            resp = web.StreamResponse(headers=headers)
            await resp.prepare(request)
            await resp.write(part)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 30)
            await resp.write(part * 3)
            return resp

        origin.routes["/halt"] = halting
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            port = edge.addresses["http"][0].port
            sock, data = await _stalled_get(port, "/halt")
            assert data.startswith(b"HTTP/1.1 200")
            sock.close()  # the leader's client leaves with the body a quarter through

            async def follower() -> tuple[bytes, str]:
                async with s.get(base_url(edge) + "/halt") as r:
                    return await r.read(), r.headers["Cache-Status"]

            follow = asyncio.ensure_future(follower())
            assert await until(lambda: edge.proxy.metrics.active >= 2 or follow.done())
            release.set()
            body, status = await asyncio.wait_for(follow, 30)
            assert body == part * 4
            assert "hit" in status
            async with s.get(base_url(edge) + "/halt") as r:
                assert await r.read() == part * 4
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
        assert origin.hits["/halt"] == 1


async def test_a_fill_that_outgrows_the_cache_still_serves_its_client(tmp_path: Path) -> None:
    # Chunked, so the size shows only on the way: the writer gives up half-way, the
    # client gets the rest straight from the origin and nothing is stored.
    piece = os.urandom(64 << 10)
    async with origins("a") as (origin,):

        async def chunked(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(8):
                await resp.write(piece)
            return resp

        origin.routes["/grow"] = chunked
        config = _cfg(origin, tmp_path, cache={"max_object_bytes": 200_000})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.get(base_url(edge) + "/grow") as r:
                    assert await r.read() == piece * 8
                    assert "hit" not in r.headers["Cache-Status"]
        assert origin.hits["/grow"] == 2


async def test_a_small_storable_body_that_breaks_off_gets_a_502_and_is_not_stored(
    tmp_path: Path,
) -> None:
    # A body up to WHOLE_FILL_MAX is read whole before anything is sent: the client gets a
    # clean 502, not a cut response (a bigger one streams, and is cut: test_edge_fill).
    async with origins("a") as (origin,):
        cut_short = raw_reply(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\nabc"
        )

        async def broken(request: web.Request) -> web.StreamResponse:
            if origin.hits["/cut"] > 1:
                return web.Response(body=b"0123456789", headers={"Cache-Control": "max-age=60"})
            return await cut_short(request)

        origin.routes["/cut"] = broken
        config = _cfg(origin, tmp_path, pool={"retry": False, "max_fails": 100})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/cut") as r:
                assert r.status == 502 and b"abc" not in await r.read()
                assert 'detail="origin-body-broke-off"' in r.headers["Cache-Status"]
            async with s.get(base_url(edge) + "/cut") as r:
                assert await r.read() == b"0123456789"
                assert "hit" not in r.headers["Cache-Status"]
        assert origin.hits["/cut"] == 2


@pytest.mark.parametrize("server", [None, b"o", SERVER_SOFTWARE.encode()])
async def test_the_server_field_is_ours_or_the_origins_never_aiohttps(
    tmp_path: Path, server: bytes | None
) -> None:
    """aiohttp names itself and its and Python's versions in a Server field of every
    response it writes. Where it would, the edge says "GeoEdge" instead: on a miss and a
    206 (the plain miss and the full handler) of a response that came without one, on an
    error the edge makes (a 502 from an origin gone) and on its admin port's answers. A
    hit the fast path serves carries the stored fields only (as before: no Server). A
    Server an origin sent is relayed, stored and served as it came, aiohttp's own value
    too (an origin may be an aiohttp server)."""

    def config(origin_port: int) -> EdgeConfig:
        return from_mapping(
            {
                "server": {"listen": ["127.0.0.1:0"]},
                "admin": {"listen": "127.0.0.1:0"},
                "log": {"access_log": ""},
                "cache": {"dir": str(tmp_path / "cache")},
                "pool": {
                    "origins": [f"http://127.0.0.1:{origin_port}"],
                    "probe": {"enabled": False},
                },
            },
            "<test>",
        )

    body = b"0123456789" * 10
    fields = b"" if server is None else b"Server: " + server + b"\r\n"
    origin = await _raw_origin(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n%sContent-Length: %d\r\n\r\n%s"
        % (fields, len(body), body)
    )
    expected = "GeoEdge" if server is None else server.decode()
    try:
        async with (
            running_edge(config(origin.sockets[0].getsockname()[1])) as edge,
            aiohttp.ClientSession() as session,
        ):
            seen = []
            for headers in ({}, {}, {"Range": "bytes=10-19"}):
                async with session.get(f"{base_url(edge)}/s", headers=headers) as resp:
                    assert await resp.read() == (body[10:20] if headers else body)
                    seen.append((resp.status, resp.headers["Cache-Status"].split(";")[1]))
                    hit = len(seen) == 2
                    want = [] if hit and server is None else [expected]
                    assert resp.headers.getall("Server", []) == want, (seen, resp.headers)
            assert seen == [(200, " fwd=uri-miss"), (200, " hit"), (206, " hit")]
            async with session.get(f"{base_url(edge, 'admin')}/__edge/status") as resp:
                assert resp.status == 200 and resp.headers["Server"] == "GeoEdge"
    finally:
        origin.close()
        await origin.wait_closed()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gone = s.getsockname()[1]  # nothing listens there once closed
    async with running_edge(config(gone)) as edge, aiohttp.ClientSession() as session:
        async with session.get(f"{base_url(edge)}/gone") as resp:
            assert resp.status == 502
            assert resp.headers.getall("Server") == ["GeoEdge"]
