"""One client exchange, as the proxy, the cache layer and the fills write it: refusal
responses, starting and writing a response with a client that went away raised as
ClientGone, cutting a response short, the request's scheme and target forms, and 1xx
interim responses passed on to the client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from edge.aiohttp_internals import (
    RawHeaders,
)
from edge.errors import (
    ClientGone,
)
from edge.headers import (
    end_to_end,
)

CHUNK = 64 * 1024
_CLOSE_AFTER = frozenset({400, 408, 413, 414, 421, 431, 505})


def interim_head(code: int, raw_headers: RawHeaders) -> bytes:
    """The wire bytes of a 1xx interim response passed on to an HTTP/1.1 client."""
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Interim"
    pairs = end_to_end(raw_pairs(raw_headers))
    head = f"HTTP/1.1 {code} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in pairs)
    return (head + "\r\n").encode("latin-1")


def interim_sender(request: web.BaseRequest) -> Callable[[int, RawHeaders], Awaitable[None]]:
    async def send(code: int, raw_headers: RawHeaders) -> None:
        if request.version < (1, 1):
            return  # HTTP/1.0 clients do not understand interim responses
        await request.writer.write(interim_head(code, raw_headers))

    return send


def status_response(status: int, cache_status: str | None = None, **extra: str) -> web.Response:
    reason = HTTPStatus(status).phrase
    headers = {"Content-Type": "text/plain; charset=utf-8", **extra}
    if cache_status:
        headers["Cache-Status"] = cache_status
    resp = web.Response(status=status, text=f"{status} {reason}\n", headers=headers)
    if status in _CLOSE_AFTER:
        # The request (or its body) was not read: the connection cannot be reused.
        resp.force_close()
    return resp


async def start_response(out: web.StreamResponse, request: web.BaseRequest) -> None:
    """`out.prepare`, a failure of the client's connection raised as ClientGone."""
    try:
        await out.prepare(request)
    except ConnectionError as exc:
        raise ClientGone() from exc


async def send_body(out: web.StreamResponse, data: bytes) -> None:
    """`out.write`, a failure of the client's connection raised as ClientGone.

    aiohttp's ClientConnectionResetError is both a ConnectionError and an
    aiohttp.ClientError: without this, a client going away looks like an origin failure.
    """
    try:
        await out.write(data)
    except ConnectionError as exc:
        raise ClientGone() from exc


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def request_scheme(request: web.BaseRequest) -> str:
    transport = request.transport
    return "https" if transport is not None and transport.get_extra_info("sslcontext") else "http"


def abort(request: web.BaseRequest) -> None:
    # The client already has our headers; closing the connection is the only honest way
    # to say the body is incomplete (a chunked response then lacks its last chunk).
    transport = request.transport
    if transport is not None:
        transport.abort()


def origin_form(target: str) -> str:
    """Path and query of a request target in origin-form or absolute-form."""
    if target.startswith("/"):
        return target
    parts = urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def bare_host(authority: str) -> str:
    """The host of a Host value or authority, lower-cased, without port or final dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0].rstrip(".")


def raw_pairs(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


def response_pairs(upstream: Any) -> tuple[tuple[str, str], ...]:
    """An origin response's fields as str pairs: edge.origin_client parses them so
    (`pairs`); aiohttp's `raw_headers` are decoded as latin-1."""
    pairs: tuple[tuple[str, str], ...] | None = getattr(upstream, "pairs", None)
    return pairs if pairs is not None else raw_pairs(upstream.raw_headers)


def transfer_coding(headers: Any) -> str:
    """A transfer coding named in `headers` other than chunked, or ""."""
    values: list[str] = headers.getall("Transfer-Encoding", [])
    for value in values:
        for coding in value.split(","):
            coding = coding.strip().lower()
            if coding and coding != "chunked":
                return coding
    return ""
