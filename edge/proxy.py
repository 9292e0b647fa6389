"""The client-facing request handler: checks, forwarding to the origin pool, caching.

One `Proxy` per edge process. `handle` is the low-level aiohttp handler: it validates the
request (method, host, limits), answers from the cache when it can, and otherwise forwards
to an origin chosen by the pool, streaming bodies both ways. Library exceptions from the
aiohttp client are translated here into statuses (502 broken origin, 504 timeouts, 503 no
healthy origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from http import HTTPStatus
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from edge import cache_policy as cp
from edge import compression, conditional, ranges
from edge.accesslog import AccessLog
from edge.aiohttp_internals import (
    INTERIM,
    RawHeaders,
    SerializedResponse,
    final_status_ok,
    requested_version,
)
from edge.cache_control import field_values
from edge.config import EdgeConfig
from edge.errors import (
    ClientGone,
    ConfigError,
    CorruptBodyError,
    OriginFailure,
    OriginProtocolError,
    RequestBodyTooLarge,
    StoreError,
)
from edge.fasthit import SimpleGet, parse_simple_get
from edge.headers import (
    client_response_headers,
    end_to_end,
    loop_verdict,
    octet_text,
    origin_request_headers,
    valid_host,
    wire_text,
)
from edge.metrics import Metrics
from edge.origins import Origin, OriginPool
from edge.store import BodyWriter, Store

log = logging.getLogger("edge.proxy")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Every other method, including unknown ones (M-SEARCH...), is unsafe (RFC 9111 §4.4).
SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "SEARCH", "REPORT"})
_CHUNK = 64 * 1024
# Body bytes a fill whose writer gave up holds for its client (see _Fill).
_PASS_BUFFER = 4 * _CHUNK
# Bodies up to this size are read from disk on the event loop (a page-cache read costs less
# than the hop to a thread); bigger ones in a thread.
_INLINE_READ_MAX = 64 * 1024
_CLOSE_AFTER = frozenset({400, 408, 413, 414, 421, 431, 505})
# Segments remembered per scheme by Proxy.answer_plain_get (parsed once, then looked up).
_PLAIN_MEMO = 2048
_PRECONDITIONS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


def _interim_sender(request: web.BaseRequest) -> Callable[[int, RawHeaders], Awaitable[None]]:
    async def send(code: int, raw_headers: RawHeaders) -> None:
        if request.version < (1, 1):
            return  # HTTP/1.0 clients do not understand interim responses
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Interim"
        pairs = end_to_end(_pairs(raw_headers))
        head = f"HTTP/1.1 {code} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in pairs)
        await request.writer.write((head + "\r\n").encode("latin-1"))

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


class Proxy:
    def __init__(
        self,
        config: EdgeConfig,
        pool: OriginPool,
        session: aiohttp.ClientSession,
        cache: CacheLayer | None,
        metrics: Metrics,
        access_log: AccessLog,
    ) -> None:
        self.pool = pool
        self.session = session
        self.cache = cache
        self.metrics = metrics
        self.access_log = access_log
        self._tasks: set[asyncio.Task[Any]] = set()
        if cache is not None:
            metrics.cache_resets.inc(cache.store.resets)
        self.reconfigure(config)

    def reconfigure(self, config: EdgeConfig) -> None:
        self.config = config
        self._hosts = frozenset(config.server.hosts)
        limits = config.limits
        self._max_headers = limits.max_headers
        self._max_header_bytes = limits.max_header_bytes
        self._max_url = limits.max_url_length
        self._max_body = limits.max_body_bytes
        pool = config.pool
        self._timeout = aiohttp.ClientTimeout(
            total=pool.total_timeout,
            sock_connect=pool.connect_timeout,
            sock_read=pool.first_byte_timeout,
        )
        # The fast path's verdicts depend on the limits and hosts just set.
        self._plain_gets: dict[str, dict[bytes, tuple[str, SimpleGet] | Literal[False]]] = {
            "http": {},
            "https": {},
        }
        self._cache_tag = config.server.cache_name
        self._refused_status = cp.cache_status(self._cache_tag, fwd="request", detail="refused")
        self._node_id = config.server.node_id
        self._max_hops = config.server.max_hops
        self._strip = frozenset(config.server.strip_request_headers)
        if self.cache is not None:
            self.cache.reconfigure(config)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background job (a fill, a refresh), keeping a reference until it finishes;
        an exception it ends with is logged, with its traceback, when it ends."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # ------------------------------------------------------------------ status / admin hooks

    def cache_status(self) -> dict[str, Any]:
        if self.cache is None:
            return {"enabled": False}
        status: dict[str, Any] = self.cache.status()
        return status

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.active_gauge.set(m.active)
        for o in self.pool.status():
            m.origin_up.labels(o.url).set(1 if o.up else 0)
        if self.cache is not None:
            st = self.cache.status()
            m.cache_bytes.set(st.get("bytes", 0))
            m.cache_entries.set(st.get("entries", 0))
            m.cache_degraded.set(1 if st.get("degraded") else 0)

    async def purge(self, kind: str, value: str) -> int:
        if self.cache is None:
            return 0
        removed: int = await self.cache.purge(kind, value)
        return removed

    # ------------------------------------------------------------------ the handler

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        metrics = self.metrics
        metrics.active += 1
        start = time.monotonic()
        resp: web.StreamResponse | None = None
        origin_url = ""
        try:
            resp, origin_url = await self._dispatch(request)
            if not resp.prepared and "Cache-Status" not in resp.headers:
                resp.headers["Cache-Status"] = self._refused_status
            return resp
        finally:
            metrics.active -= 1
            status = resp.status if resp is not None else 499
            cache_status = ""
            if resp is not None:
                cache_status = _cache_word(resp.headers.get("Cache-Status", ""))
            metrics.response(status, cache_status or "none")
            if self.access_log.enabled:
                self.access_log.write(
                    remote=request.remote,
                    method=request.method,
                    host=request.headers.get("Host", ""),
                    path=request.raw_path,
                    status=status,
                    sent=_sent_bytes(resp),
                    duration_ms=round((time.monotonic() - start) * 1000, 3),
                    cache=cache_status,
                    origin=origin_url,
                    user_agent=request.headers.get("User-Agent", ""),
                )

    def answer_plain_get(self, data: bytes, scheme: str, remote: str | None) -> list[bytes] | None:
        """Wire bytes answering `data`, one received segment, when it is a plain GET
        (edge.fasthit) of a fresh hit in the memory tier; None when `handle` must answer.
        Same checks, metrics and access log as `handle`; whatever `check` would refuse
        is left to it."""
        cache = self.cache
        if cache is None:
            return None
        memo = self._plain_gets[scheme]
        plain = memo.get(data)
        if plain is None:
            plain = self._plain_get(data, scheme)
            if len(data) <= 2048:  # bounded: at most _PLAIN_MEMO entries of 2 KiB
                if len(memo) >= _PLAIN_MEMO:
                    memo.clear()
                memo[data] = plain
        if not plain:
            return None
        key, req = plain
        logging_on = self.access_log.enabled
        start = time.monotonic() if logging_on else 0.0
        hit = cache.hit_wire(key)
        if hit is None:
            return None
        status, head, body = hit
        self.metrics.response(status, "hit")
        if logging_on:
            self.access_log.write(
                remote=remote,
                method="GET",
                host=req.host,
                path=req.target,
                status=status,
                sent=len(body),
                duration_ms=round((time.monotonic() - start) * 1000, 3),
                cache="hit",
                origin="",
                user_agent=req.user_agent,
            )
        return [head, body]

    def _plain_get(self, data: bytes, scheme: str) -> tuple[str, SimpleGet] | Literal[False]:
        """The cache key and request of `data` if the fast path may answer it, else False."""
        req = parse_simple_get(data)
        if (
            req is None
            or req.fields > self._max_headers
            or req.field_bytes > self._max_header_bytes
            or len(req.target) > self._max_url
            or not valid_host(req.host)
            or (self._hosts and bare_host(req.host) not in self._hosts)
            or (req.loop_fields and self._loop_verdict(req.loop_fields) is not None)
        ):
            return False
        return cp.cache_key(scheme, req.host, req.target), req

    async def _dispatch(self, request: web.BaseRequest) -> tuple[web.StreamResponse, str]:
        refusal = self.check(request) or self.check_loop(request)
        if refusal is not None:
            return refusal, ""
        target = origin_form(request.raw_path)
        if (
            request.headers.get("Expect", "").lower() == "100-continue"
            and request.version >= (1, 1)  # HTTP/1.0 knows no 1xx: ignored (RFC 9110 §10.1.1)
        ):
            if request.content_length is not None and request.content_length > self._max_body:
                return status_response(413), ""
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.cache is not None and request.method in ("GET", "HEAD"):
            return await self.cache.serve(self, request, target)
        return await self.forward(request, target)

    def check(self, request: web.BaseRequest) -> web.Response | None:
        """Requests we refuse before touching an origin; None when the request may pass."""
        method = request.method
        if requested_version(request).major != 1:
            # RFC 9110 §15.6.6: an HTTP/2.0 (or 3.0) request line on an HTTP/1 connection.
            return status_response(505)
        if method == "CONNECT":
            return status_response(405, Allow="GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
        raw_headers = request.raw_headers
        if len(raw_headers) > self._max_headers:
            return status_response(431)
        size = sum([len(k) + len(v) for k, v in raw_headers]) + 4 * len(raw_headers)
        if size > self._max_header_bytes:
            return status_response(431)
        target = request.raw_path
        if len(target) > self._max_url:
            return status_response(414)
        hosts = request.headers.getall("Host", [])
        if len(hosts) != 1 and request.version >= (1, 1):
            return status_response(400)
        host_header = hosts[0].lower() if hosts else ""
        if not valid_host(host_header):
            return status_response(400)
        if not target.startswith("/"):
            if target == "*" and method == "OPTIONS":
                return status_response(400)
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return status_response(400)
            authority = parts.netloc.lower().rsplit("@", 1)[-1]
            # Absolute-form naming another host than Host: never an open proxy. (Requiring
            # them to agree also keeps the Host we forward and key the cache by correct.)
            if bare_host(authority) != bare_host(host_header):
                return status_response(421)
        if self._hosts and bare_host(host_header) not in self._hosts:
            return status_response(421)
        if _transfer_coding(request.headers):
            # aiohttp undoes chunked only; forwarding the rest as the body would change it
            # (RFC 9112 §6.1). The body was not read: the connection closes.
            resp = status_response(501)
            resp.force_close()
            return resp
        length = request.content_length
        if length is not None and length > self._max_body:
            return status_response(413)
        return None

    def check_loop(self, request: web.BaseRequest) -> web.Response | None:
        """508 for a request that already went through this node (our node id in its
        CDN-Loop or Via) or through more than server.max_hops CDN-Loop entries: forwarding
        it would make it come back again, until something times out. None otherwise."""
        headers = request.headers
        if "CDN-Loop" not in headers and "Via" not in headers:
            return None
        verdict = self._loop_verdict(headers.items())
        if verdict is None:
            return None
        self.metrics.loops.labels(verdict).inc()
        log.warning(
            "forwarding loop (%s) for %s %s: CDN-Loop %r, Via %r",
            verdict,
            request.method,
            request.raw_path[:200],
            ", ".join(headers.getall("CDN-Loop", []))[:500],
            ", ".join(headers.getall("Via", []))[:500],
        )
        # no-store: a cache in front (another edge of the loop) must not keep the refusal.
        return status_response(
            508,
            self.cache_status_token("request", detail=verdict),
            **{"Cache-Control": "no-store"},
        )

    def _loop_verdict(
        self, pairs: Iterable[tuple[str, str]]
    ) -> Literal["loop", "too-many-hops"] | None:
        """The one loop decision, for the fast path (which leaves a refusal to `handle`)
        and `check_loop` alike."""
        return loop_verdict(pairs, self._node_id, self._max_hops)

    # ------------------------------------------------------------------ forwarding

    def origin_headers(
        self, request: web.BaseRequest, extra: CIMultiDict[str] | None = None
    ) -> CIMultiDict[str]:
        cfg = self.config.server
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client_ip = peer[0] if peer else None
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        headers = origin_request_headers(
            pairs,
            client_ip=client_ip,
            proto="https"
            if request.transport and request.transport.get_extra_info("sslcontext")
            else "http",
            host=request.headers.get("Host", ""),
            version=request.version,
            via=cfg.via,
            trusted=cfg.trusted_proxies,
            mode=cfg.forwarded,
            cdn_loop=cfg.node_id,
            strip=self._strip,
        )
        headers.popall("Expect", None)
        if extra:
            for k in extra:
                headers.popall(k, None)
            headers.extend(extra)
        return headers

    def _body(self, request: web.BaseRequest) -> _LimitedBody:
        return _LimitedBody(request, self._max_body)

    async def open_upstream(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Any,
        key: str,
        replayable: bool,
    ) -> tuple[Origin, aiohttp.ClientResponse]:
        """Send a request to an origin; retry an idempotent, replayable one on another.

        Returns the origin and the response with headers read; the caller must call
        `finish_upstream` once the body is consumed.
        """
        tried: list[Origin] = []
        attempts = 2 if replayable and self.config.pool.retry and method in IDEMPOTENT else 1
        failure: OriginFailure | None = None
        for _ in range(attempts):
            origin = self.pool.pick(key, exclude=tried)
            if origin is None and failure is not None and failure.kind == "broken":
                # Only one origin usable and the pooled connection broke (typically the
                # origin closed it while idle): one fresh attempt on the same origin.
                origin = tried[-1] if tried[-1].up else None
            if origin is None:
                break
            tried.append(origin)
            if not self.config.pool.preserve_host:
                headers = headers.copy()
                headers["Host"] = origin.authority
            self.pool.started(origin)
            start = time.monotonic()
            try:
                resp = await self.session.request(
                    method,
                    URL(origin.config.base + target, encoded=True),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=self._timeout,
                    compress=None,
                    chunked=None,
                    skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                )
                if not final_status_ok(resp.status):
                    resp.close()
                    raise OriginProtocolError("bad_status", f"status {resp.status}")
                coding = _transfer_coding(resp.headers)
                if coding:
                    # aiohttp undoes only chunked; the rest would reach clients (and the
                    # cache) as if it were the body, Transfer-Encoding being hop-by-hop.
                    resp.close()
                    raise aiohttp.ClientPayloadError(f"unsupported transfer coding {coding!r}")
            except (
                aiohttp.ClientError,
                TimeoutError,
                OSError,
                RequestBodyTooLarge,
                OriginProtocolError,
            ) as exc:
                if isinstance(exc, RequestBodyTooLarge) or getattr(body, "exceeded", False):
                    self.pool.finished(origin, ok=True)
                    raise RequestBodyTooLarge() from None
                if getattr(body, "failed", False):
                    self.pool.finished(origin, ok=True)
                    raise ClientGone() from exc
                failure = _translate(exc)
                self._finished(origin, ok=False)
                self.metrics.origin_errors.labels(origin.url, failure.kind).inc()
                level = logging.WARNING if isinstance(exc, OriginProtocolError) else logging.INFO
                log.log(
                    level, "origin %s failed for %s %s: %s", origin.url, method, target, failure
                )
                continue
            self.metrics.origin_latency.labels(origin.url).observe(time.monotonic() - start)
            return origin, resp
        if failure is None:
            raise OriginFailure(503, "no_healthy_origin")
        raise failure

    def finish_upstream(self, origin: Origin, resp: aiohttp.ClientResponse, ok: bool) -> None:
        resp.release() if ok else resp.close()
        self._finished(origin, ok=ok and resp.status not in (502, 503, 504))

    def _finished(self, origin: Origin, ok: bool) -> None:
        if self.pool.finished(origin, ok):
            log.warning(
                "origin %s is now down (passive: %d failed requests in a row)",
                origin.url,
                origin.fails,
            )

    async def forward(
        self, request: web.BaseRequest, target: str
    ) -> tuple[web.StreamResponse, str]:
        """Forward without caching: stream the request body up and the response down."""
        INTERIM.set(_interim_sender(request))
        headers = self.origin_headers(request)
        has_body = request.body_exists
        body = self._body(request) if has_body else None
        try:
            origin, upstream = await self.open_upstream(
                request.method, target, headers, body, request.raw_path, not has_body
            )
        except RequestBodyTooLarge:
            return status_response(413), ""
        except ClientGone:
            return status_response(400), ""  # a broken body; a client that left reads nothing
        except OriginFailure as exc:
            return status_response(
                exc.status, self.cache_status_token("bypass", detail=exc.kind)
            ), ""
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        out.headers.extend(self.response_headers(request, upstream.raw_headers))
        out.headers["Cache-Status"] = self.cache_status_token("bypass")
        if self.cache is not None and request.method not in SAFE and upstream.status < 400:
            # Before the client sees the response, so its next request cannot hit the
            # entry this request invalidates.
            await self.cache.invalidate(request, target, out)
        await self.stream_down(request, out, upstream, origin)
        return out, origin.url

    def response_headers(
        self, request: web.BaseRequest, raw: tuple[tuple[bytes, bytes], ...]
    ) -> CIMultiDict[str]:
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        return client_response_headers(pairs, version=request.version, via=self.config.server.via)

    async def stream_down(
        self,
        request: web.BaseRequest,
        out: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        origin: Origin,
    ) -> bool:
        """Copy the origin body to the client; True when complete."""
        # Without Content-Length aiohttp chunks for HTTP/1.1 and close-delimits for 1.0.
        try:
            await _start(out, request)
            if not _bodyless(request.method, out.status):
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await _send(out, chunk)
        except ClientGone:
            # The client went away: nothing the origin did wrong.
            self.finish_upstream(origin, upstream, ok=True)
            return False
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("origin %s body broke off: %r", origin.url, exc)
            self.finish_upstream(origin, upstream, ok=False)
            _abort(request)
            return False
        self.finish_upstream(origin, upstream, ok=True)
        try:
            await out.write_eof()
        except ConnectionError:
            return False
        return True

    def cache_status_token(self, word: str, detail: str = "") -> str:
        """An RFC 9211 Cache-Status member for a response that did not use the cache."""
        return cp.cache_status(self._cache_tag, fwd=word, detail=detail or None)


class _LimitedBody:
    """The client's request body as an async iterator, refusing more than `limit` bytes.

    `exceeded` and `failed` tell the sender why the upload stopped: the aiohttp client
    reports both as its own error, which must not count against the origin.
    """

    def __init__(self, request: web.BaseRequest, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.exceeded = False
        self.failed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        chunks = self.request.content.iter_chunked(_CHUNK)
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except Exception:  # the client went away or sent a malformed body
                self.failed = True
                raise
            seen += len(chunk)
            if seen > self.limit:
                self.exceeded = True
                raise RequestBodyTooLarge()
            yield chunk


async def _start(out: web.StreamResponse, request: web.BaseRequest) -> None:
    """`out.prepare`, a failure of the client's connection raised as ClientGone."""
    try:
        await out.prepare(request)
    except ConnectionError as exc:
        raise ClientGone() from exc


async def _send(out: web.StreamResponse, data: bytes) -> None:
    """`out.write`, a failure of the client's connection raised as ClientGone.

    aiohttp's ClientConnectionResetError is both a ConnectionError and an
    aiohttp.ClientError: without this, a client going away looks like an origin failure.
    """
    try:
        await out.write(data)
    except ConnectionError as exc:
        raise ClientGone() from exc


def _transfer_coding(headers: Any) -> str:
    """A transfer coding named in `headers` other than chunked, or ""."""
    values: list[str] = headers.getall("Transfer-Encoding", [])
    for value in values:
        for coding in value.split(","):
            coding = coding.strip().lower()
            if coding and coding != "chunked":
                return coding
    return ""


def _translate(exc: BaseException) -> OriginFailure:
    if isinstance(exc, OriginProtocolError):
        return OriginFailure(502, exc.kind, str(exc))
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return OriginFailure(504, "timeout", str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return OriginFailure(502, "connect", str(exc))
    return OriginFailure(502, "broken", repr(exc))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _scheme(request: web.BaseRequest) -> str:
    transport = request.transport
    return "https" if transport is not None and transport.get_extra_info("sslcontext") else "http"


def _has_directives(request: web.BaseRequest) -> bool:
    headers = request.headers
    return "Cache-Control" in headers or "Pragma" in headers


def _sent_bytes(resp: web.StreamResponse | None) -> int:
    if resp is None:
        return 0
    if isinstance(resp, SerializedResponse):
        return len(resp.payload)
    if resp.prepared:
        return resp.body_length
    return resp.content_length or 0


def _bodyless(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


def _declared_length(method: str, pairs: tuple[tuple[str, str], ...]) -> int | None:
    """The body length a GET response's Content-Length declares, or None."""
    declared = [v.strip() for k, v in pairs if k.lower() == "content-length"]
    if declared and method == "GET" and declared[0].isdigit():
        return int(declared[0])
    return None


def _bytes_range(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether request `headers` carry exactly one Range field, in bytes."""
    values = field_values(headers, "range")
    return len(values) == 1 and values[0].lstrip().lower().startswith("bytes=")


def _unsatisfiable(out: web.StreamResponse, rng: ranges.Unsatisfiable) -> web.Response:
    """The 416 answering a Range request instead of `out`, with `out`'s fields."""
    headers = CIMultiDict(out.headers)
    headers.popall("Content-Length", None)
    headers["Content-Range"] = rng.content_range
    return web.Response(status=416, headers=headers)


def _abort(request: web.BaseRequest) -> None:
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


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background job %s failed", task.get_coro(), exc_info=exc)


def bare_host(authority: str) -> str:
    """The host of a Host value or authority, lower-cased, without port or final dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0].rstrip(".")


def _cache_word(cache_status: str) -> str:
    """The metrics label for a Cache-Status value this edge produced."""
    if not cache_status:
        return ""
    if "; hit" in cache_status:
        return "stale" if 'detail="stale' in cache_status else "hit"
    if "fwd=stale" in cache_status and "fwd-status=304" in cache_status:
        return "revalidated"
    if "fwd=bypass" in cache_status:
        return "bypass"
    if "fwd=request" in cache_status and any(d in cache_status for d in _REFUSALS):
        return "refused"  # answered before any cache lookup: not a miss in the hit ratio
    if "fwd=" in cache_status:
        return "miss"
    return "other"


# Cache-Status details of requests refused before the cache (Proxy.check, Proxy.check_loop).
_REFUSALS = ('detail="refused"', 'detail="loop"', 'detail="too-many-hops"')


# ---------------------------------------------------------------------------- caching


def _pairs(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


class _Lead:
    """A collapsed miss in flight. Concurrent misses of its key wait (up to
    cache.collapse_timeout) for `ready`: the response head is known and its body is being
    filled (`fill`), or nothing will be filled. They then read the body from the fill as it
    arrives when its response may answer them, or wait on for `done`, which is set once the
    response is stored or known not to be, whether or not its own client is still reading."""

    __slots__ = ("_inflight", "done", "fill", "handed_over", "key", "ready")

    def __init__(self, inflight: dict[str, _Lead], key: str) -> None:
        self._inflight = inflight
        self.key = key
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.fill: _Fill | None = None
        self.handed_over = False  # a _Fill task settles it, not the request

    def filling(self, fill: _Fill) -> None:
        self.fill = fill
        self.handed_over = True
        if not self.ready.done():
            self.ready.set_result(None)

    def settle(self) -> None:
        if self._inflight.get(self.key) is self:
            del self._inflight[self.key]
        for future in (self.ready, self.done):
            if not future.done():
                future.set_result(None)


class _Fill:
    """A storable origin body on its way into the cache, read at the origin's pace.

    A task (CacheLayer._run_fill) appends the body to the store's BodyWriter, a temporary
    file, and commits it. The client whose miss it is, and the collapsed misses that may
    use its response (`entry`), read it back from that file, each at its own pace and
    position (`send`). So a slow client neither slows the fill nor the other readers, a
    client that leaves does not stop it, and the body is never held whole in memory. The
    file stays open while the fill runs or a reader reads, and not a moment longer.
    Should the writer give up half-way (the object outgrew max_object_bytes, or the disk
    filled up), nothing is stored, and the readers it has get the rest through a buffer
    of at most _PASS_BUFFER bytes past the slowest of them (the origin is read at that
    reader's pace from then on); a collapsed miss that has not joined yet is sent to the
    origin. With every reader gone, the fill stops.
    """

    def __init__(self, writer: BodyWriter, entry: cp.CacheEntry, length: int | None) -> None:
        self.writer = writer
        # The entry as it will be stored (body_length and digest still unknown), for
        # deciding whether the response may answer a collapsed miss.
        self.entry = entry
        self.length = length  # the body's length when known in advance, else None
        self._file: IO[bytes] = writer.open_reader()
        self._readers = 1  # the first client's
        self.stored = 0  # body bytes in the file
        self.storing = True
        self.state: Literal["filling", "done", "failed"] = "filling"
        # Once the writer gave up: body bytes from offset _passed on, kept until every
        # reader is past them, and each reader's position.
        self._passing: deque[bytes] = deque()
        self._passing_bytes = 0
        self._passed = 0
        self._positions: dict[object, int] = {}
        self._changed = asyncio.Event()
        self._drained = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def put(self, data: bytes) -> bool:
        """Hand on the next piece of the body; False once nobody wants the rest."""
        if self.storing:
            if self.writer.write(data):
                self.stored = self.writer.length
                self._notify()
                return True
            self.storing = False
            self._passed = self.stored
        if not self._readers:
            return False
        self._passing.append(data)
        self._passing_bytes += len(data)
        self._notify()
        while self._readers and self._ahead() > _PASS_BUFFER:
            await self._drained.wait()
        return self._readers > 0

    def _ahead(self) -> int:
        """Buffered bytes past the slowest reader."""
        slowest = min(self._positions.values(), default=self._passed)
        return self._passed + self._passing_bytes - max(slowest, self._passed)

    def _trim(self) -> None:
        """Drop buffered pieces every reader is past."""
        slowest = min(self._positions.values(), default=None)
        trimmed = False
        while self._passing and (
            slowest is None or self._passed + len(self._passing[0]) <= slowest
        ):
            data = self._passing.popleft()
            self._passing_bytes -= len(data)
            self._passed += len(data)
            trimmed = True
        if trimmed or slowest is None:
            self._drained.set()
            self._drained = asyncio.Event()

    def finish(self) -> None:
        self.state = "done"
        self._over()

    def fail(self) -> None:
        self.state = "failed"
        self._over()

    def _over(self) -> None:
        self._notify()
        if not self._readers:
            self._file.close()

    def join(self) -> bool:
        """Add a reader (a collapsed miss); False when the fill can no longer take one."""
        if self.state != "filling" or not self.storing:
            return False
        self._readers += 1
        return True

    def _leave(self, reader: object) -> None:
        self._positions.pop(reader, None)
        self._readers -= 1
        self._trim()
        if not self._readers and self.state != "filling":
            self._file.close()

    @property
    def readers(self) -> int:
        """Clients reading the body (the first one included while it does)."""
        return self._readers

    def leave_unread(self) -> None:
        """The first client needs none of the body (a 416)."""
        self._leave(object())

    def _buffered(self, pos: int) -> bytes:
        """Buffered bytes from body offset `pos` on, up to one piece; b"" if none yet."""
        base = self._passed
        for data in self._passing:
            if pos < base + len(data):
                return data[pos - base :] if pos >= base else b""
            base += len(data)
        return b""

    async def send(
        self,
        out: web.StreamResponse,
        request: web.BaseRequest,
        first: int = 0,
        last: int | None = None,
        *,
        leader: bool = True,
    ) -> bool:
        """Stream body bytes `first`..`last` (inclusive; to the end when None) to the client
        as the fill makes them available, and leave. The first client's response (`leader`)
        starts at once; a collapsed miss's only with its first body byte, so that when the
        fill fails before that, False is returned with `out` untouched and the request can
        go elsewhere. Once a byte left, a fill that fails (or, for a collapsed miss, a
        writer that gives up) before the wanted bytes are in cuts the connection. The last
        piece of a response that runs to the end of the body is held back until the fill is
        over, so a client that has the whole response never misses the entry with its next
        request (with an unknown length, every piece is held until the next one)."""
        stop = None if last is None else last + 1
        # A range that ends before the body does is complete once its bytes are in.
        early = stop is not None and stop != self.length
        final = self.length if stop is None else stop  # where the response ends, if known
        held = b""
        pos = first
        me = object()
        self._positions[me] = pos
        try:
            if leader:
                await _start(out, request)
            while True:
                changed = self._changed
                if early and stop is not None and pos >= stop:
                    break
                if pos < self.stored:
                    want = self.stored - pos if stop is None else min(self.stored, stop) - pos
                    chunk = os.pread(self._file.fileno(), min(_CHUNK, want), pos)
                    if not chunk:
                        raise OSError("temporary file shorter than what was written")
                elif not self.storing and (chunk := self._buffered(pos)):
                    if stop is not None:
                        chunk = chunk[: max(stop - pos, 0)]
                        if not chunk:
                            break
                elif self.state == "filling":
                    await changed.wait()
                    continue
                else:
                    break
                pos += len(chunk)
                self._positions[me] = pos
                if not self.storing:
                    self._trim()
                if not out.prepared:
                    await _start(out, request)
                if held:
                    await _send(out, held)
                    held = b""
                if final is not None and pos < final:
                    await _send(out, chunk)
                else:
                    held = chunk  # maybe the last piece
            complete = (early and stop is not None and pos >= stop) or (
                not early and self.state == "done"
            )
            if not complete:
                if not out.prepared:
                    return False
                _abort(request)
                return True
            if not out.prepared:
                await _start(out, request)
            if held:
                await _send(out, held)
            await out.write_eof()
        except ClientGone:
            pass  # the fill goes on without this client
        except ConnectionError:
            pass
        except OSError as exc:
            log.warning("reading back the cache's temporary file failed: %r", exc)
            if not out.prepared:
                return False
            _abort(request)
        finally:
            self._leave(me)
        return True


class CacheLayer:
    """The cache in the request path: lookups, hits, revalidation, misses with collapsing.

    Policy decisions come from edge.cache_policy (pure); storage is edge.store.Store, whose
    blocking calls run in a thread unless the object is in its memory tier.
    """

    def __init__(self, store: Store, config: EdgeConfig, clock: Any = time.time) -> None:
        self.store = store
        self.clock = clock
        self._inflight: dict[str, _Lead] = {}
        self._refreshing: set[str] = set()
        self._prepared: dict[tuple[Any, ...], list[tuple[str, str]]] = {}
        self._serialized: dict[tuple[Any, ...], bytes] = {}
        # primary key -> (entry, Age, ttl, head): the entry object itself is compared, so a
        # re-read or replaced entry is never answered with another one's head.
        self._hit_heads: dict[str, tuple[cp.CacheEntry, int, int, bytes]] = {}
        self._rereads: dict[str, asyncio.Future[Any]] = {}
        self.reconfigure(config)

    def reconfigure(self, config: EdgeConfig) -> None:
        c = config.cache
        self.config = config
        self._strip = frozenset(config.server.strip_request_headers)
        self.name = config.server.cache_name
        self.via = config.server.via
        self.policy = cp.PolicyConfig(
            name=self.name,
            heuristic_max=c.heuristic_max,
            default_ttl=c.default_ttl or None,
            store_set_cookie=c.cache_set_cookie,
        )
        self.compression = config.compression
        self._collapse_wait = c.collapse_timeout
        # Prepared heads carry the cache name and Via of the configuration they were made in.
        self._prepared.clear()
        self._serialized.clear()
        self._hit_heads.clear()

    async def close(self) -> None:
        if self._rereads:
            await asyncio.gather(*self._rereads.values(), return_exceptions=True)
        await asyncio.to_thread(self.store.close)

    def status(self) -> dict[str, Any]:
        st = self.store.stats()
        return {
            "enabled": True,
            "bytes": st.size_bytes,
            "entries": st.records,
            "memory_bytes": st.memory_bytes,
            "degraded": st.degraded,
            "degraded_reason": st.degraded_reason,
            "corrupt": st.corrupt,
        }

    async def purge(self, kind: str, value: str) -> int:
        if kind == "url":
            parts = urlsplit(value)
            key = cp.cache_key(parts.scheme or "http", parts.netloc, origin_form(value))
            return await asyncio.to_thread(self.store.purge_url, key)
        if kind == "prefix":
            parts = urlsplit(value)
            prefix = value
            if parts.scheme and parts.netloc:
                prefix = cp.cache_key(parts.scheme, parts.netloc, parts.path or "/")
                if not parts.path:
                    prefix = prefix[:-1]
            return await asyncio.to_thread(self.store.purge_prefix, prefix)
        return await asyncio.to_thread(self.store.purge_tag, value)

    async def invalidate(
        self, request: web.BaseRequest, target: str, resp: web.StreamResponse
    ) -> None:
        creq = self._cache_request(request, target)
        keys = cp.invalidation_keys(creq, resp.status, tuple(resp.headers.items()))
        for key in keys:
            try:
                await asyncio.to_thread(self.store.remove, key)
            except StoreError as exc:
                log.error("cache invalidation of %s failed: %s", key, exc)

    # ------------------------------------------------------------------ store access

    def _peek_body(self, entry: cp.CacheEntry) -> bytes | None:
        return self.store.peek_body(entry)

    async def _small_body(self, entry: cp.CacheEntry) -> bytes | None:
        """The verified body of an entry small enough for the memory tier: from memory,
        else read from disk (on the loop when it is small enough not to stall it, as
        nginx's workers read their cache files; in a thread above that). None when it is
        too big for the memory tier, or gone or damaged (then the entry was evicted)."""
        body = self.store.peek_body(entry)
        if body is not None or entry.body_length > self.store_memory_object_max:
            return body
        if entry.body_length <= _INLINE_READ_MAX:
            return self.store.get_body(entry)
        return await asyncio.to_thread(self.store.get_body, entry)

    async def _variants(self, key: str) -> tuple[cp.CacheEntry, ...]:
        entries = self.store.peek_variants(key)
        if entries is None:
            entries = self.store.variants(key)  # one small row: read on the loop
        return entries

    # ------------------------------------------------------------------ entry point

    def _cache_request(self, request: web.BaseRequest, target: str) -> cp.CacheRequest:
        return cp.CacheRequest(
            method=request.method,
            scheme=_scheme(request),
            authority=request.headers.get("Host", ""),
            target=target,
            # What the origin is sent: a field the client named in Connection never reaches
            # it, so it must not select (Vary) or qualify (Authorization) a stored response.
            # As octets, like the origin's fields: a client's If-None-Match with the
            # bytes of a stored ETag must match it whatever those bytes are. Nor do the
            # fields server.strip_request_headers keeps from the origin.
            headers=tuple(
                (k, v)
                for k, v in end_to_end((k, octet_text(v)) for k, v in request.headers.items())
                if k.lower() not in self._strip
            ),
        )

    async def serve(
        self, proxy: Proxy, request: web.BaseRequest, target: str
    ) -> tuple[web.StreamResponse, str]:
        if request.body_exists:
            return await proxy.forward(request, target)
        headers = request.headers
        key = cp.cache_key(_scheme(request), headers.get("Host", ""), target)
        entries = await self._variants(key)
        now = self.clock()
        # The common hit (no request directives): cp.plain_fresh, the one decision every
        # hit path makes; anything else goes to cp.lookup.
        decision: cp.Decision | None = None
        if not _has_directives(request):
            decision = cp.plain_fresh(entries, now)
        creq = self._cache_request(request, target)
        if decision is None:
            decision = cp.lookup(creq, entries, now, self.policy)
        if isinstance(decision, cp.Fresh):
            status = cp.cache_status(self.name, hit=True, ttl=decision.ttl)
            resp = await self._from_cache(request, creq, decision.entry, decision.age, status)
            if resp is not None:
                return resp, ""
            decision = cp.Miss("uri-miss")
        if isinstance(decision, cp.Stale):
            entry = decision.entry
            if decision.background:
                self._refresh_later(proxy, request, creq, target, entry)
                status = cp.decision_status(decision, self.name)
                resp = await self._from_cache(request, creq, entry, decision.age, status)
                if resp is not None:
                    return resp, ""
            return await self._fetch(proxy, request, creq, target, decision.fwd, entry)
        if decision.only_if_cached:
            return status_response(
                504, cp.cache_status(self.name, fwd=decision.fwd, detail="only-if-cached")
            ), ""
        variants: tuple[cp.CacheEntry, ...] = ()
        if (
            decision.fwd == "vary-miss"
            and "Range" not in headers
            and not any(name in headers for name in _PRECONDITIONS)
        ):
            # None of the stored variants matches, but the origin may well answer with one
            # of them: offer all their validators (RFC 9111 §4.3.1) so it can say 304.
            variants = entries
        return await self._collapsed_fetch(proxy, request, creq, target, decision.fwd, variants)

    # ------------------------------------------------------------------ answering from cache

    def _base_headers(
        self, entry: cp.CacheEntry, version: tuple[int, int]
    ) -> list[tuple[str, str]]:
        ident = (entry.key, entry.variant, entry.sha256, entry.response_time, version)
        pre = self._prepared.get(ident)
        if pre is None:
            stored = [
                (k, v) for k, v in entry.headers if k.lower() not in ("age", "content-length")
            ]
            pre = list(client_response_headers(stored, version=version, via=self.via).items())
            if len(self._prepared) > 4096:
                self._prepared.clear()
            self._prepared[ident] = pre
        return pre

    def hit_wire(self, key: str) -> tuple[int, bytes, bytes] | None:
        """Status, head and body of an HTTP/1.1 response to a plain GET (no request
        directives, conditionals or ranges) for primary key `key` when it is a fresh hit
        whose body is small (read on the loop from disk when it is not in the memory tier,
        see `_small_body`); None otherwise. Decided as the hit path of `serve` decides it."""
        peeked = self.store.peek_single(key)
        if peeked is None:
            entries = self.store.variants(key)
            if len(entries) != 1 or entries[0].body_length > _INLINE_READ_MAX:
                return None
            entry, read_ago = entries[0], 0.0
            if cp.plain_fresh(entries, self.clock()) is None:
                return None
            disk_body = self.store.get_body(entry)
            if disk_body is None:
                return None
            body = disk_body
        else:
            entry, body, read_ago = peeked
        refresh = self.store.meta_refresh
        if read_ago >= refresh:
            # Due for its re-read (another process may have purged it): one thread re-reads
            # it while hits keep being answered from memory, for one more period at most,
            # instead of every request hopping to a thread until the re-read lands.
            if read_ago >= 2 * refresh:
                return None
            self._reread(key)
        fresh = cp.plain_fresh((entry,), self.clock())
        if fresh is None:
            return None
        return entry.status, self._hit_head(entry, fresh.age, fresh.ttl), body

    def _reread(self, key: str) -> None:
        if key in self._rereads:
            return
        task = asyncio.ensure_future(asyncio.to_thread(self.store.variants, key))
        self._rereads[key] = task
        task.add_done_callback(lambda t: self._reread_done(key, t))

    def _reread_done(self, key: str, task: asyncio.Future[Any]) -> None:
        if self._rereads.get(key) is task:
            del self._rereads[key]
        if not task.cancelled() and task.exception() is not None:
            log.warning("re-reading cache metadata of %s failed: %r", key, task.exception())

    def _hit_head(self, entry: cp.CacheEntry, age: float, ttl: float) -> bytes:
        """`_serialized_head` plus Age and Cache-Status, remade only when they change."""
        age_s = cp.age_value(age)
        ttl_s = math.floor(ttl)
        memo = self._hit_heads.get(entry.key)
        if memo is not None and memo[0] is entry and memo[1] == age_s and memo[2] == ttl_s:
            return memo[3]
        status = cp.cache_status(self.name, hit=True, ttl=ttl)
        tail = f"Age: {age_s}\r\nCache-Status: {status}\r\n\r\n"
        head = self._serialized_head(entry) + tail.encode("latin-1", "replace")
        if memo is None and len(self._hit_heads) > 4096:
            self._hit_heads.clear()
        self._hit_heads[entry.key] = (entry, age_s, ttl_s, head)
        return head

    def _serialized_head(self, entry: cp.CacheEntry) -> bytes:
        """Status line and stored fields of an HTTP/1.1 hit, without Age and Cache-Status."""
        ident = (entry.key, entry.variant, entry.sha256, entry.response_time)
        head = self._serialized.get(ident)
        if head is None:
            reason = entry.reason or _phrase(entry.status)
            lines = [f"HTTP/1.1 {entry.status} {reason}\r\n"]
            lines.extend(f"{k}: {v}\r\n" for k, v in self._base_headers(entry, (1, 1)))
            lines.append(f"Content-Length: {entry.body_length}\r\n")
            # The values are in aiohttp's form (headers.wire_text): encoded as it would.
            head = "".join(lines).encode("utf-8", "replace")
            if len(self._serialized) > 4096:
                self._serialized.clear()
            self._serialized[ident] = head
        return head

    async def _from_cache(
        self,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        entry: cp.CacheEntry,
        age: float,
        cache_status: str,
    ) -> web.StreamResponse | None:
        """A response from a stored entry, or None when its body is gone or damaged."""
        request_headers = request.headers
        if (
            request.method == "GET"
            and request.version == (1, 1)
            and "Range" not in request_headers
            and not any(name in request_headers for name in _PRECONDITIONS)
        ):
            body = await self._small_body(entry)
            if body is not None:
                head = self._serialized_head(entry)
                return SerializedResponse(entry.status, head, body, cp.age_value(age), cache_status)
            if entry.body_length <= self.store_memory_object_max:
                return None  # gone or damaged: evicted
        headers = CIMultiDict(self._base_headers(entry, request.version))
        headers["Age"] = str(cp.age_value(age))
        headers["Cache-Status"] = cache_status
        method = request.method
        precondition = None
        if any(name in request_headers for name in _PRECONDITIONS):
            precondition = conditional.evaluate(
                method, creq.headers, entry.headers, entry.response_time
            )
        if precondition == 304:
            out = CIMultiDict(conditional.not_modified_headers(tuple(headers.items())))
            return web.Response(status=304, headers=out)
        if precondition == 412:
            return status_response(412, cache_status)
        length = entry.body_length
        if method == "HEAD":
            headers["Content-Length"] = str(length)
            return web.Response(status=entry.status, reason=entry.reason or None, headers=headers)
        if length > self.store_memory_object_max and self._peek_body(entry) is None:
            return await self._stream_from_disk(request, creq, entry, headers)
        body = await self._small_body(entry)
        if body is None:
            return None
        if "Range" not in request_headers:
            return web.Response(
                status=entry.status, reason=entry.reason or None, headers=headers, body=body
            )
        decision = ranges.evaluate(method, entry.status, creq.headers, entry.headers, length)
        if isinstance(decision, ranges.Partial):
            headers["Content-Range"] = decision.content_range
            return web.Response(
                status=206, headers=headers, body=body[decision.start : decision.end + 1]
            )
        if isinstance(decision, ranges.Unsatisfiable):
            headers["Content-Range"] = decision.content_range
            return web.Response(status=416, headers=headers)
        return web.Response(
            status=entry.status, reason=entry.reason or None, headers=headers, body=body
        )

    @property
    def store_memory_object_max(self) -> int:
        return self.config.cache.memory_object_max

    async def _stream_from_disk(
        self,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        entry: cp.CacheEntry,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse | None:
        reader = await asyncio.to_thread(self.store.open_body, entry)
        if reader is None:
            return None
        decision = ranges.evaluate(
            request.method, entry.status, creq.headers, entry.headers, entry.body_length
        )
        start, end = 0, entry.body_length - 1
        status = entry.status
        if isinstance(decision, ranges.Partial):
            start, end, status = decision.start, decision.end, 206
            headers["Content-Range"] = decision.content_range
        elif isinstance(decision, ranges.Unsatisfiable):
            reader.close()
            headers["Content-Range"] = decision.content_range
            return web.Response(status=416, headers=headers)
        headers["Content-Length"] = str(end - start + 1)
        out = web.StreamResponse(status=status, reason=entry.reason or None, headers=headers)
        try:
            await out.prepare(request)
            pos = 0
            while True:
                chunk = await asyncio.to_thread(reader.read_chunk, _CHUNK)
                if not chunk:
                    break
                lo, hi = max(start - pos, 0), min(end + 1 - pos, len(chunk))
                pos += len(chunk)
                if lo < hi:
                    await out.write(chunk[lo:hi])
            await out.write_eof()
        except CorruptBodyError:
            log.warning("damaged body for %s detected while streaming; connection cut", entry.key)
            _abort(request)
        except ConnectionError:
            pass
        finally:
            reader.close()
        return out

    # ------------------------------------------------------------------ misses

    async def _collapsed_fetch(
        self,
        proxy: Proxy,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        target: str,
        fwd: str,
        variants: Sequence[cp.CacheEntry] = (),
    ) -> tuple[web.StreamResponse, str]:
        key = creq.key
        names = {k.lower() for k, _ in creq.headers}
        collapsible = request.method == "GET" and not names & {
            "if-none-match",
            "if-modified-since",
            "authorization",
        }
        # A miss with one bytes Range asks the origin for the whole object, so that it can
        # be stored, and answers the range from it (_stream_and_store, _from_fill).
        whole = collapsible and "range" in names and _bytes_range(creq.headers)
        if not collapsible or ("range" in names and not whole):
            return await self._fetch(proxy, request, creq, target, fwd, None, variants)
        leader = self._inflight.get(key)
        if leader is not None:
            return await self._follow(proxy, request, creq, target, fwd, leader)
        lead = _Lead(self._inflight, key)
        self._inflight[key] = lead
        try:
            return await self._fetch(
                proxy, request, creq, target, fwd, None, variants, lead, whole=whole
            )
        finally:
            if not lead.handed_over:
                lead.settle()

    async def _follow(
        self,
        proxy: Proxy,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        target: str,
        fwd: str,
        leader: _Lead,
    ) -> tuple[web.StreamResponse, str]:
        """A miss collapsed onto `leader`'s: wait (up to collapse_timeout) for its response
        head, then read its body from the fill as it arrives when that response may answer
        this request; otherwise wait on (within the same collapse_timeout) for it to be
        stored and answer from the cache, or else ask the origin."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._collapse_wait
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(leader.ready), self._collapse_wait)
        if leader.fill is not None:
            resp = await self._from_fill(request, creq, leader.fill)
            if resp == "failed":
                return await self._fetch(proxy, request, creq, target, fwd, None)
            if resp is not None:
                return resp, ""
        remaining = deadline - loop.time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(leader.done), remaining)
        entries = await self._variants(creq.key)
        decision = cp.lookup(creq, entries, self.clock(), self.policy)
        if isinstance(decision, cp.Fresh):
            status = cp.cache_status(self.name, hit=True, ttl=decision.ttl, collapsed=True)
            resp = await self._from_cache(request, creq, decision.entry, decision.age, status)
            if resp is not None:
                return resp, ""
        return await self._fetch(proxy, request, creq, target, fwd, None)

    async def _from_fill(
        self, request: web.BaseRequest, creq: cp.CacheRequest, fill: _Fill
    ) -> web.StreamResponse | Literal["failed"] | None:
        """The answer to a collapsed miss read from `fill` as it arrives; None when the
        fill's response may not answer it (another variant, no-cache, a precondition, a
        range the fill cannot serve, or the fill is over), "failed" when the fill failed
        before the answer's first byte."""
        entry = fill.entry
        decision = cp.lookup(creq, (entry,), self.clock(), self.policy)
        if not isinstance(decision, cp.Fresh) or fill.state != "filling" or not fill.storing:
            return None
        request_headers = request.headers
        if any(name in request_headers for name in _PRECONDITIONS):
            return None
        rng: ranges.RangeDecision = ranges.Full()
        if "Range" in request_headers:
            if fill.length is None:
                return None  # answered from the cache once stored, with its length
            rng = ranges.evaluate("GET", entry.status, creq.headers, entry.headers, fill.length)
        headers = CIMultiDict(self._base_headers(entry, request.version))
        headers["Age"] = str(cp.age_value(decision.age))
        headers["Cache-Status"] = cp.cache_status(
            self.name, hit=True, ttl=decision.ttl, collapsed=True, detail="filling"
        )
        if isinstance(rng, ranges.Unsatisfiable):
            headers["Content-Range"] = rng.content_range
            return web.Response(status=416, headers=headers)
        first, last, status = 0, None, entry.status
        if isinstance(rng, ranges.Partial):
            first, last, status = rng.start, rng.end, 206
            headers["Content-Range"] = rng.content_range
            headers["Content-Length"] = str(rng.size)
        elif fill.length is not None:
            headers["Content-Length"] = str(fill.length)
        reason = (entry.reason or None) if status == entry.status else None
        out = web.StreamResponse(status=status, reason=reason, headers=headers)
        if not fill.join():
            return None
        if not await fill.send(out, request, first, last, leader=False):
            return "failed"
        return out

    def _refresh_later(
        self,
        proxy: Proxy,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        target: str,
        entry: cp.CacheEntry,
    ) -> None:
        ident = creq.key + "\x1f" + entry.variant
        if ident in self._refreshing:
            return
        self._refreshing.add(ident)
        headers = proxy.origin_headers(request)

        async def refresh() -> None:
            INTERIM.set(None)  # this copy of the context must not write to the client
            try:
                await self._background_fetch(proxy, creq, target, entry, headers)
            except Exception:  # a background job has nobody else to report to
                log.exception("background revalidation of %s failed", creq.key)
            finally:
                self._refreshing.discard(ident)

        proxy.spawn(refresh())

    def _with_validators(
        self, headers: CIMultiDict[str], entries: Sequence[cp.CacheEntry]
    ) -> CIMultiDict[str]:
        out = headers.copy()
        for name in (
            "If-None-Match",
            "If-Modified-Since",
            "If-Match",
            "If-Unmodified-Since",
            "If-Range",
            "Range",
        ):
            out.popall(name, None)
        for k, v in conditional.validators([e.headers for e in entries]):
            out[k] = wire_text(v)
        return out

    def _compression_plan(
        self, creq: cp.CacheRequest, status: int, pairs: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[tuple[str, str], ...], compression.Compressor | None]:
        """Response fields to send/store and a compressor when we compress on the fly."""
        opts = self.compression
        if not opts.enabled:
            return pairs, None
        cl = next((v for k, v in pairs if k.lower() == "content-length"), None)
        length = int(cl) if cl is not None and cl.isdigit() else None
        if not compression.should_compress(status, creq.method, pairs, length, opts):
            return pairs, None
        ae = [v for k, v in creq.headers if k.lower() == "accept-encoding"]
        coding = compression.negotiate(", ".join(ae) if ae else None)
        if coding in ("br", "gzip"):
            comp = compression.compressor(coding, opts)
            return compression.compressed_headers(pairs, coding), comp
        return compression.add_vary(pairs), None

    async def _open(
        self,
        proxy: Proxy,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        key: str,
    ) -> tuple[Origin, aiohttp.ClientResponse, float, float]:
        request_time = self.clock()
        origin, upstream = await proxy.open_upstream(method, target, headers, None, key, True)
        return origin, upstream, request_time, self.clock()

    async def _fetch(
        self,
        proxy: Proxy,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        target: str,
        fwd: str,
        stale: cp.CacheEntry | None,
        variants: Sequence[cp.CacheEntry] = (),
        lead: _Lead | None = None,
        *,
        whole: bool = False,
    ) -> tuple[web.StreamResponse, str]:
        """Forward a GET/HEAD (revalidating `stale` if given, or else offering the
        validators of the non-matching stored `variants`), stream it, maybe store it.
        `lead` is the collapsed miss this fetch answers, if it is one; `whole`: ask for the
        whole object, without the client's Range and If-Range."""
        INTERIM.set(_interim_sender(request))
        headers = proxy.origin_headers(request)
        if stale is not None:
            headers = self._with_validators(headers, [stale])
        elif variants:
            headers = self._with_validators(headers, variants)
        elif whole:
            headers.popall("Range", None)
            headers.popall("If-Range", None)
        # The client's Range was not sent on: a 200 answers it here.
        ranged = request.method == "GET" and "Range" in request.headers and "Range" not in headers
        try:
            origin, upstream, t_req, t_resp = await self._open(
                proxy, request.method, target, headers, creq.key
            )
        except OriginFailure as exc:
            if stale is not None and cp.stale_on_error_ok(
                stale, creq.headers, self.clock(), disconnected=True, config=self.policy
            ):
                cstatus = cp.cache_status(self.name, hit=True, detail=f"stale-if-error; {exc.kind}")
                resp = await self._from_cache(
                    request, creq, stale, stale.age(self.clock()), cstatus
                )
                if resp is not None:
                    return resp, ""
            return status_response(
                exc.status, cp.cache_status(self.name, fwd=fwd, detail=exc.kind)
            ), ""
        status = upstream.status
        pairs = _pairs(upstream.raw_headers)
        if stale is None and variants and status == 304:
            proxy.finish_upstream(origin, upstream, ok=True)
            chosen = await self._freshen_variant(creq, variants, pairs, t_req, t_resp)
            if chosen is not None:
                cstatus = cp.cache_status(
                    self.name, fwd=fwd, fwd_status=304, ttl=chosen.ttl(self.clock())
                )
                resp = await self._from_cache(
                    request, creq, chosen, chosen.age(self.clock()), cstatus
                )
                if resp is not None:
                    return resp, origin.url
            return await self._fetch(proxy, request, creq, target, fwd, None, (), lead, whole=whole)
        if stale is not None and status == 304:
            proxy.finish_upstream(origin, upstream, ok=True)
            updated = cp.freshen(
                stale, pairs, request_time=t_req, response_time=t_resp, config=self.policy
            )
            await asyncio.to_thread(self.store.update, updated)
            cstatus = cp.cache_status(
                self.name, fwd="stale", fwd_status=304, ttl=updated.ttl(self.clock())
            )
            resp = await self._from_cache(
                request, creq, updated, updated.age(self.clock()), cstatus
            )
            if resp is not None:
                return resp, origin.url
            return await self._fetch(proxy, request, creq, target, "uri-miss", None)
        if stale is not None and request.method == "HEAD" and status == 200:
            from_head = self._freshen_from_head(stale, pairs, t_req, t_resp)
            if from_head is not None:
                proxy.finish_upstream(origin, upstream, ok=True)
                await asyncio.to_thread(self.store.update, from_head)
                cstatus = cp.cache_status(self.name, fwd="stale", fwd_status=200)
                resp = await self._from_cache(
                    request, creq, from_head, from_head.age(self.clock()), cstatus
                )
                if resp is not None:
                    return resp, origin.url
        if (
            stale is not None
            and status >= 500
            and cp.stale_on_error_ok(
                stale, creq.headers, self.clock(), disconnected=False, config=self.policy
            )
        ):
            proxy.finish_upstream(origin, upstream, ok=False)
            cstatus = cp.cache_status(
                self.name, hit=True, fwd_status=status, detail="stale-if-error"
            )
            resp = await self._from_cache(request, creq, stale, stale.age(self.clock()), cstatus)
            if resp is not None:
                return resp, origin.url
        if ranged and status == 200 and self._too_big(request.method, pairs):
            # Never stored: cutting the range from the whole object would make the origin
            # send everything before it, for every such request. Ask for the range instead.
            upstream.close()
            proxy.finish_upstream(origin, upstream, ok=True)
            if lead is not None:
                lead.settle()
            return await self._fetch(proxy, request, creq, target, fwd, None)
        return await self._stream_and_store(
            proxy, request, creq, origin, upstream, pairs, fwd, t_req, t_resp, lead, ranged
        )

    async def _freshen_variant(
        self,
        creq: cp.CacheRequest,
        variants: Sequence[cp.CacheEntry],
        pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
    ) -> cp.CacheEntry | None:
        """After a 304 to a vary-miss revalidation: freshen every stored variant the 304
        selects (RFC 9111 §4.3.4) and return the newest of them, stored once more under
        this request's selecting fields so the next such request is a hit; None when the
        304 selects none."""
        chosen = conditional.select_for_update(
            [(i, e.headers) for i, e in enumerate(variants)], pairs
        )
        if not chosen:
            return None
        updated = [
            cp.freshen(
                variants[i], pairs, request_time=t_req, response_time=t_resp, config=self.policy
            )
            for i in chosen
        ]
        for entry in updated:
            await asyncio.to_thread(self.store.update, entry)
        best = max(updated, key=lambda e: e.response_time)
        if "*" in best.vary or creq.method != "GET":
            return best
        copy = cp.make_entry(
            creq,
            best.status,
            best.reason,
            best.headers,
            request_time=t_req,
            response_time=t_resp,
            body_length=best.body_length,
            sha256=best.sha256,
            now=self.clock(),
            config=self.policy,
        )
        if copy.variant == best.variant:
            return best

        def store_copy() -> cp.CacheEntry | None:
            body = self.store.get_body(best)
            return None if body is None else self.store.put(copy, body)

        stored = await asyncio.to_thread(store_copy)
        return best if stored is None else stored

    def _freshen_from_head(
        self,
        stale: cp.CacheEntry,
        pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
    ) -> cp.CacheEntry | None:
        """The stored GET response updated from a HEAD response (RFC 9111 §4.3.5), or None
        when the HEAD response describes a different representation."""
        if not conditional.select_for_update([(0, stale.headers)], pairs):
            return None
        length = [v.strip() for k, v in pairs if k.lower() == "content-length"]
        if length and length[0] != str(stale.body_length):
            return None
        return cp.freshen(
            stale, pairs, request_time=t_req, response_time=t_resp, config=self.policy
        )

    def _store_writer(
        self,
        creq: cp.CacheRequest,
        status: int,
        pairs: tuple[tuple[str, str], ...],
        out_pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
    ) -> tuple[cp.Storability, BodyWriter | None]:
        """Whether the response may be stored, and a writer for its body when it may."""
        storable = cp.storability(
            creq, status, out_pairs, self.policy, request_time=t_req, response_time=t_resp
        )
        if not storable.storable:
            return storable, None
        te = ",".join(v for k, v in pairs if k.lower() == "transfer-encoding").lower()
        delimited = "chunked" in te or any(k.lower() == "content-length" for k, _ in pairs)
        # A close-delimited body cut short looks complete: never stored.
        if not (delimited or _bodyless(creq.method, status)):
            return storable, None
        # Known to outgrow max_object_bytes: the writer would only give up half-way, cutting
        # off the collapsed misses reading from the fill by then.
        if self._too_big(creq.method, out_pairs):
            return storable, None
        return storable, self.store.writer()

    def _too_big(self, method: str, pairs: tuple[tuple[str, str], ...]) -> bool:
        """Whether `pairs` declare a body longer than the store takes (max_object_bytes)."""
        limit = self.store.max_object_bytes
        length = _declared_length(method, pairs)
        return limit is not None and length is not None and length > limit

    def _entry_for(
        self,
        creq: cp.CacheRequest,
        upstream: aiohttp.ClientResponse,
        out_pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
    ) -> cp.CacheEntry:
        """The entry `out_pairs` will be stored under, its body length and digest unknown."""
        return cp.make_entry(
            creq,
            upstream.status,
            upstream.reason or "",
            out_pairs,
            request_time=t_req,
            response_time=t_resp,
            body_length=0,
            sha256="0" * 64,
            now=self.clock(),
            config=self.policy,
        )

    async def _commit(
        self,
        writer: BodyWriter,
        creq: cp.CacheRequest,
        upstream: aiohttp.ClientResponse,
        out_pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
    ) -> None:
        """Store the body `writer` holds under the entry for `out_pairs`."""
        entry = self._entry_for(creq, upstream, out_pairs, t_req, t_resp)
        await self._commit_entry(writer, entry, _declared_length(creq.method, out_pairs))

    async def _commit_entry(
        self, writer: BodyWriter, entry: cp.CacheEntry, length: int | None
    ) -> None:
        """Store the body `writer` holds under `entry`.

        When the stored fields carry a Content-Length (`length`; no on-the-fly compression),
        the body must have exactly that length: a second guard after aiohttp's own against
        an origin that closed early."""
        await asyncio.to_thread(writer.commit, entry, writer.length if length is None else length)

    async def _stream_and_store(
        self,
        proxy: Proxy,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        origin: Origin,
        upstream: aiohttp.ClientResponse,
        pairs: tuple[tuple[str, str], ...],
        fwd: str,
        t_req: float,
        t_resp: float,
        lead: _Lead | None = None,
        ranged: bool = False,
    ) -> tuple[web.StreamResponse, str]:
        """Answer with the origin's response, filling it into the cache when storable.
        `ranged`: the client's Range was not sent to the origin, so a 200 of known length
        answers it here (206 or 416), and anything else goes out as it is."""
        status = upstream.status
        out_pairs, comp = self._compression_plan(creq, status, pairs)
        storable, writer = self._store_writer(creq, status, pairs, out_pairs, t_req, t_resp)
        cstatus = cp.cache_status(
            self.name,
            fwd=fwd,
            fwd_status=status,
            detail=None if storable.storable else storable.reason,
        )
        out = web.StreamResponse(status=status, reason=upstream.reason)
        out.headers.extend(
            client_response_headers(out_pairs, version=request.version, via=self.via)
        )
        out.headers["Cache-Status"] = cstatus
        bodyless = _bodyless(request.method, status)
        # Without on-the-fly compression, the Content-Length the origin sent.
        length = _declared_length(creq.method, out_pairs) if comp is None else None
        rng: ranges.RangeDecision = ranges.Full()
        if ranged and length is not None:
            rng = ranges.evaluate("GET", status, creq.headers, out_pairs, length)
        first, last = 0, None
        if isinstance(rng, ranges.Partial):
            first, last = rng.start, rng.end
            out.set_status(206)
            out.headers["Content-Range"] = rng.content_range
            out.headers["Content-Length"] = str(rng.size)
        fill = None
        if writer is not None and not bodyless:
            entry = self._entry_for(creq, upstream, out_pairs, t_req, t_resp)
            try:
                fill = _Fill(writer, entry, length)
            except OSError as exc:
                log.warning("cannot read back the cache's temporary file: %s", exc)
                writer.abort()
                writer = None
        if fill is not None:
            # RFC 9211 `stored`: this response is being written to the cache.
            out.headers["Cache-Status"] = cp.cache_status(
                self.name, fwd=fwd, fwd_status=status, stored=True
            )
            if lead is not None:
                lead.filling(fill)
            proxy.spawn(self._run_fill(proxy, fill, origin, upstream, comp, lead))
            if isinstance(rng, ranges.Unsatisfiable):
                fill.leave_unread()
                return _unsatisfiable(out, rng), origin.url
            await fill.send(out, request, first, last)
            return out, origin.url
        if writer is None and lead is not None:
            lead.settle()  # nothing will be stored: followers need not wait for this body
        if isinstance(rng, ranges.Unsatisfiable):
            upstream.close()
            proxy.finish_upstream(origin, upstream, ok=True)
            return _unsatisfiable(out, rng), origin.url
        stop = None if last is None else last + 1
        pos = 0
        try:
            if not bodyless:
                await _start(out, request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    data = comp.compress(chunk) if comp is not None else chunk
                    if stop is not None:  # a range of an uncompressed body
                        data = data[max(first - pos, 0) : max(stop - pos, 0)]
                        pos += len(chunk)
                    if data:
                        await _send(out, data)
                    if stop is not None and pos >= stop:
                        upstream.close()  # the rest is not wanted
                        break
                tail = comp.finish() if comp is not None else b""
                if tail:
                    await _send(out, tail)
        except ClientGone:
            # The client went away; the origin did nothing wrong.
            proxy.finish_upstream(origin, upstream, ok=True)
            return out, origin.url
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("origin %s body broke off: %r", origin.url, exc)
            proxy.finish_upstream(origin, upstream, ok=False)
            _abort(request)
            return out, origin.url
        proxy.finish_upstream(origin, upstream, ok=True)
        if writer is not None:  # a storable response without a body
            await self._commit(writer, creq, upstream, out_pairs, t_req, t_resp)
        try:
            await out.prepare(request)
            await out.write_eof()
        except ConnectionError:
            pass
        return out, origin.url

    async def _run_fill(
        self,
        proxy: Proxy,
        fill: _Fill,
        origin: Origin,
        upstream: aiohttp.ClientResponse,
        comp: compression.Compressor | None,
        lead: _Lead | None,
    ) -> None:
        """The task of a _Fill: the origin body into the cache, at the origin's pace."""
        writer = fill.writer
        released = False
        try:
            wanted = True
            try:
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    data = comp.compress(chunk) if comp is not None else chunk
                    if data:
                        wanted = await fill.put(data)
                        if not fill.storing and lead is not None:
                            lead.settle()  # the writer gave up: nothing will be stored
                        if not wanted:
                            break
                else:
                    tail = comp.finish() if comp is not None else b""
                    if tail:
                        wanted = await fill.put(tail)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.info("origin %s body broke off: %r", origin.url, exc)
                released = True
                proxy.finish_upstream(origin, upstream, ok=False)
                writer.abort()
                fill.fail()
                return
            released = True
            # Not stored and nobody left to read it: the client's doing, not the origin's.
            proxy.finish_upstream(origin, upstream, ok=True)
            if not wanted:
                fill.fail()
                return
            if fill.storing:
                # The entry made from the response head, stamped as stored now.
                entry = replace(fill.entry, stored_at=self.clock())
                await self._commit_entry(writer, entry, fill.length)
            fill.finish()
        except BaseException:
            if not released:
                proxy.finish_upstream(origin, upstream, ok=False)
            writer.abort()
            fill.fail()
            raise
        finally:
            if lead is not None:
                lead.settle()

    async def _background_fetch(
        self,
        proxy: Proxy,
        creq: cp.CacheRequest,
        target: str,
        stale: cp.CacheEntry,
        headers: CIMultiDict[str],
    ) -> None:
        """stale-while-revalidate: revalidate or refetch `stale` with nobody waiting."""
        headers = self._with_validators(headers, [stale])
        creq = cp.CacheRequest("GET", creq.scheme, creq.authority, creq.target, creq.headers)
        try:
            origin, upstream, t_req, t_resp = await self._open(
                proxy, "GET", target, headers, creq.key
            )
        except OriginFailure:
            return
        pairs = _pairs(upstream.raw_headers)
        status = upstream.status
        if status == 304:
            proxy.finish_upstream(origin, upstream, ok=True)
            updated = cp.freshen(
                stale, pairs, request_time=t_req, response_time=t_resp, config=self.policy
            )
            await asyncio.to_thread(self.store.update, updated)
            return
        out_pairs, comp = self._compression_plan(creq, status, pairs)
        _, writer = self._store_writer(creq, status, pairs, out_pairs, t_req, t_resp)
        if writer is None:
            proxy.finish_upstream(origin, upstream, ok=status < 500)
            return
        try:
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                data = comp.compress(chunk) if comp is not None else chunk
                if data and not writer.write(data):
                    # Too big for the cache, or the disk is full: not the origin's fault.
                    proxy.finish_upstream(origin, upstream, ok=True)
                    return
            if comp is not None:
                writer.write(comp.finish())
        except (aiohttp.ClientError, TimeoutError, OSError):
            writer.abort()
            proxy.finish_upstream(origin, upstream, ok=False)
            return
        proxy.finish_upstream(origin, upstream, ok=True)
        await self._commit(writer, creq, upstream, out_pairs, t_req, t_resp)


async def open_cache(config: EdgeConfig, directory: str) -> CacheLayer:
    c = config.cache

    def build() -> Store:
        return Store(
            directory,
            size_limit=c.size_limit,
            memory_bytes=c.memory_bytes,
            memory_object_max=c.memory_object_max,
            max_object_bytes=c.max_object_bytes,
        )

    try:
        store = await asyncio.to_thread(build)
    except StoreError as exc:
        raise ConfigError(config.source, "cache.dir", str(exc)) from None
    return CacheLayer(store, config)
