"""TLS termination (SNI certificate choice, protocol floor, HTTP redirect) and HTTPS origins.

Certificates are made at test time with the openssl CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import subprocess
import warnings
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.integration.edge_helpers import Origin, base_url, edge_config, origins, running_edge

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def _cert(directory: Path, name: str, san: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName={san}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {
        "a": _cert(tmp_path, "a.test", "DNS:a.test"),
        "b": _cert(tmp_path, "b.test", "DNS:b.test,DNS:*.b.test"),
        "origin": _cert(tmp_path, "origin", "IP:127.0.0.1"),
    }


def _client_ctx(*cas: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for ca in cas:
        ctx.load_verify_locations(str(ca))
    return ctx


async def _get_over_tls(
    port: int, ctx: ssl.SSLContext, name: str, path: str = "/t"
) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    try:
        peer = writer.get_extra_info("peercert")
        common = dict(x[0] for x in peer["subject"])["commonName"]
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        return common, data
    finally:
        writer.close()


async def test_sni_selects_certificate_and_proxies(certs: dict[str, tuple[Path, Path]]) -> None:
    async with origins("o") as (origin,):
        tls_cfg = {
            "listen": ["127.0.0.1:0"],
            "certificates": [
                {"cert": str(certs["a"][0]), "key": str(certs["a"][1]), "server_names": ["a.test"]},
                {
                    "cert": str(certs["b"][0]),
                    "key": str(certs["b"][1]),
                    "server_names": ["b.test", "*.b.test"],
                },
            ],
        }
        config = edge_config([origin], tls=tls_cfg)
        async with running_edge(config) as edge:
            port = edge.addresses["https"][0].port
            ctx = _client_ctx(certs["a"][0], certs["b"][0])
            for name, expected in (
                ("a.test", "a.test"),
                ("b.test", "b.test"),
                ("www.b.test", "b.test"),
            ):
                common, data = await _get_over_tls(port, ctx, name)
                assert common == expected
                assert data.startswith(b"HTTP/1.1 200")
                body = data.partition(b"\r\n\r\n")[2]
                sent = {k.lower(): v for k, v in json.loads(body)["headers"]}
                assert sent["x-forwarded-proto"] == "https"
            old = _client_ctx(certs["a"][0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _get_over_tls(port, old, "a.test")
            if shutil.which("curl"):
                proc = await asyncio.create_subprocess_exec(
                    "curl",
                    "-sS",
                    "--cacert",
                    str(certs["b"][0]),
                    "--resolve",
                    f"b.test:{port}:127.0.0.1",
                    f"https://b.test:{port}/curl",
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 20)
                assert proc.returncode == 0
                assert json.loads(out)["path_qs"] == "/curl"


async def test_http_redirects_to_https(certs: dict[str, tuple[Path, Path]]) -> None:
    async with origins("o") as (origin,):
        tls_cfg = {
            "listen": ["127.0.0.1:0"],
            "redirect_http": True,
            "certificates": [{"cert": str(certs["a"][0]), "key": str(certs["a"][1])}],
        }
        # The redirect names the configured https port, so give it a concrete one.
        config = edge_config([origin], tls=tls_cfg)
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/p?q=1", allow_redirects=False) as r:
                assert r.status == 308
                assert r.headers["Location"].startswith("https://127.0.0.1")
                assert r.headers["Location"].endswith("/p?q=1")
        assert origin.hits["/p"] == 0


async def test_https_origin_verified_with_ca_bundle(certs: dict[str, tuple[Path, Path]]) -> None:
    cert, key = certs["origin"]
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"origin": "tls", "secure": request.secure})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        pool = {"origins": [{"url": url}], "probe": {"enabled": False}, "retry": False}
        good = edge_config([Origin()], pool={**pool, "ca_bundle": str(cert)})
        async with running_edge(good) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/x") as r:
                assert r.status == 200
                assert (await r.json())["secure"] is True
        untrusted = edge_config([Origin()], pool=pool)
        async with running_edge(untrusted) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/x") as r:
                assert r.status == 502
    finally:
        await runner.cleanup()


async def test_hits_over_tls_are_keyed_by_scheme(
    certs: dict[str, tuple[Path, Path]], handled: list[str]
) -> None:
    async def cacheable(request: web.Request) -> web.Response:
        return web.Response(body=b"tls body", headers={"Cache-Control": "max-age=60"})

    async with origins("o") as (origin,):
        origin.routes["/c"] = cacheable
        tls_cfg = {
            "listen": ["127.0.0.1:0"],
            "certificates": [{"cert": str(certs["a"][0]), "key": str(certs["a"][1])}],
        }
        async with running_edge(edge_config([origin], tls=tls_cfg)) as edge:
            ctx = _client_ctx(certs["a"][0])
            heads = []
            for kind, tls in (("https", ctx), ("https", ctx), ("http", None), ("http", None)):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1",
                    edge.addresses[kind][0].port,
                    ssl=tls,
                    server_hostname="a.test" if tls else None,
                )
                for _ in range(2):  # plain GETs on one kept-alive connection
                    writer.write(b"GET /c HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    assert await asyncio.wait_for(reader.readexactly(8), 10) == b"tls body"
                    heads.append(head)
                writer.close()
            # A one-shot client's hit (`Connection: close`): the fast path's over TLS too,
            # and the connection ends after it.
            before = len(handled)
            _, data = await _get_over_tls(edge.addresses["https"][0].port, ctx, "a.test", "/c")
            head, _, body = data.partition(b"\r\n\r\n")
            assert body == b"tls body" and head.endswith(b"\r\nConnection: close")
            assert b"Cache-Status: GeoEdge; hit" in head and handled[before:] == []
        statuses = [h.split(b"\r\nCache-Status: ")[1].split(b";")[1].strip() for h in heads]
        # One miss per scheme: an https entry never answers an http request, or the reverse.
        assert statuses == [b"fwd=uri-miss", b"hit", b"hit", b"hit"] * 2
        assert origin.hits["/c"] == 2


async def test_http_redirect_is_no_open_redirect(certs: dict[str, tuple[Path, Path]]) -> None:
    # The redirect used aiohttp's request.host and raw_path, which an absolute-form target
    # sets: "GET http://evil.test/x" with Host a.test went to https://evil.test...
    async with origins("o") as (origin,):
        tls_cfg = {
            "listen": ["127.0.0.1:0"],
            "redirect_http": True,
            "certificates": [{"cert": str(certs["a"][0]), "key": str(certs["a"][1])}],
        }
        config = edge_config([origin], server={"hosts": ["a.test"]}, tls=tls_cfg)
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            answers = []
            for request in (
                b"GET http://evil.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: evil.test\r\n\r\n",
                b"GET http://a.test/x?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                writer.close()
                lines = head.split(b"\r\n")
                location = [v for v in lines if v.lower().startswith(b"location:")]
                answers.append((lines[0].split(b" ")[1], location))
        assert answers[0] == (b"421", [])
        assert answers[1] == (b"421", [])
        assert answers[2][0] == b"308"
        assert answers[2][1][0].startswith(b"Location: https://a.test:")
        assert answers[2][1][0].endswith(b"/x?q=1")


async def test_a_silent_tls_connection_gets_header_timeout_not_60_seconds(
    certs: dict[str, tuple[Path, Path]],
) -> None:
    # Issue 7: a client that connected to the TLS listener and sent nothing was closed by
    # asyncio's 60 s handshake default; the documented deadline is limits.header_timeout.
    async with origins("o") as (origin,):
        tls_cfg = {
            "listen": ["127.0.0.1:0"],
            "certificates": [{"cert": str(certs["a"][0]), "key": str(certs["a"][1])}],
        }
        config = edge_config([origin], tls=tls_cfg, limits={"header_timeout": 1.0})
        async with running_edge(config) as edge:
            port = edge.addresses["https"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                # Closed by the edge well before asyncio's 60 s (EOF, or a reset).
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(reader.read(), 15) == b""
            finally:
                writer.close()
            # A client that does speak TLS still gets its answer.
            common, data = await _get_over_tls(port, _client_ctx(certs["a"][0]), "a.test")
            assert common == "a.test" and data.startswith(b"HTTP/1.1 ")


async def test_admin_over_https_with_a_private_status(
    certs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    # Issue 12: probes between gslb and edges can use HTTPS with the admin token.
    token = "s3cret-admin-token-0123"
    (tmp_path / "admin.token").write_text(token + "\n")
    async with origins("o") as (origin,):
        admin = {
            "listen": "127.0.0.1:0",
            "tls_cert": str(certs["a"][0]),
            "tls_key": str(certs["a"][1]),
            "token_file": str(tmp_path / "admin.token"),
            "private": True,
        }
        async with running_edge(edge_config([origin], admin=admin)) as edge:
            port = edge.addresses["admin"][0].port
            ctx = _client_ctx(certs["a"][0])
            connector = aiohttp.TCPConnector(ssl=ctx)
            async with aiohttp.ClientSession(connector=connector) as s:
                resolve = {"server_hostname": "a.test"}
                async with s.get(f"https://127.0.0.1:{port}/__edge/status", **resolve) as r:
                    assert r.status == 401
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                auth = {"Authorization": f"Bearer {token}"}
                async with s.get(
                    f"https://127.0.0.1:{port}/__edge/status", headers=auth, **resolve
                ) as r:
                    assert r.status == 200
                    assert (await r.json())["healthy"] is True
                async with s.get(f"https://127.0.0.1:{port}/metrics", **resolve) as r:
                    assert r.status == 401
            # Plain HTTP to the admin port gets no status.
            with contextlib.suppress(aiohttp.ClientError):
                async with (
                    aiohttp.ClientSession() as plain,
                    plain.get(f"http://127.0.0.1:{port}/__edge/status") as r,
                ):
                    assert r.status != 200


def test_admin_tls_and_private_are_validated(
    certs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    from edge.config import from_mapping
    from edge.errors import ConfigError

    base = {"pool": {"origins": ["http://127.0.0.1:9"]}}
    with pytest.raises(ConfigError, match=r"admin\.tls_key: tls_cert and tls_key go together"):
        from_mapping({**base, "admin": {"tls_cert": str(certs["a"][0])}}, "<t>")
    with pytest.raises(ConfigError, match=r"admin\.private: needs admin\.token_file"):
        from_mapping({**base, "admin": {"private": True}}, "<t>")
    with pytest.raises(ConfigError, match=r"admin\.tls_cert: no such file"):
        missing = str(tmp_path / "nope.pem")
        from_mapping({**base, "admin": {"tls_cert": missing, "tls_key": missing}}, "<t>")
