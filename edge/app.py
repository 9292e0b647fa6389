"""Wiring: the control application (AppKeys + cleanup_ctx) and the edge listeners.

The control app is a regular aiohttp Application: its cleanup_ctx opens and closes the
origin ClientSession, the cache store, the probe scheduler, the access log and (with several
workers) the publisher of this worker's counters, and it serves the admin routes when an
admin address is configured. The client-facing listeners use the
low-level aiohttp server (no router, no middlewares) so the cache-hit path stays lean, with
a protocol subclass that adds a deadline for reading request headers and maps parser limit
errors to 414 / 431. That subclass also answers the commonest request of all, a plain GET
that is a fresh hit in the memory tier, straight from the segment it arrives in (see
edge.fasthit and Proxy.answer_plain_get): no aiohttp request, task or response object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

from edge import admin, nodestats, tls
from edge import cache_policy as cp
from edge.accesslog import AccessLog
from edge.config import Address, EdgeConfig
from edge.origins import OriginPool
from edge.probes import ProbeFollower, Prober, verdicts
from edge.proxy import (
    CacheLayer,
    InterimForwardingResponse,
    Proxy,
    bare_host,
    open_cache,
    origin_form,
    status_response,
)

log = logging.getLogger("edge")

# Answers a received segment holding one plain GET (segment, scheme, client address) with
# the response's wire bytes, or None when the full handler must answer it.
FastHit = Callable[[bytes, str, str | None], list[bytes] | None]

CONFIG = web.AppKey("edge_config", EdgeConfig)
POOL = web.AppKey("edge_pool", OriginPool)
SESSION = web.AppKey("edge_session", aiohttp.ClientSession)
CACHE = web.AppKey("edge_cache", CacheLayer)
PROBER = web.AppKey("edge_prober", Prober)
METRICS = web.AppKey("edge_metrics", admin.Metrics)
PROXY = web.AppKey("edge_proxy", Proxy)
ACCESS_LOG = web.AppKey("edge_access_log", AccessLog)
NODE_STATS = web.AppKey("edge_node_stats", nodestats.StatsDir)
WORKER_SLOT = web.AppKey("edge_worker_slot", int)


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection protocol plus a request-header deadline and limit statuses."""

    def __init__(
        self,
        manager: EdgeServer,
        *,
        header_timeout: float,
        url_limit: int,
        cache_name: str,
        fast: FastHit | None = None,
        refused: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._url_limit = url_limit
        self._count_refused = refused or (lambda status: None)
        self._refused = cp.cache_status(cache_name, fwd="request", detail="refused")
        self._header_timer: asyncio.TimerHandle | None = None
        self._fast = fast
        # True while every byte given to aiohttp's parser belonged to a complete request:
        # only then may a segment be read as a request of its own (see _answer_fast).
        self._at_boundary = fast is not None
        self._scheme = "http"
        self._remote: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()
        if self._fast is not None:
            peer = transport.get_extra_info("peername")
            self._remote = str(peer[0]) if isinstance(peer, list | tuple) else peer
            self._scheme = "https" if transport.get_extra_info("sslcontext") else "http"

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._at_boundary and self._answer_fast(data):
            return
        before = self._request_count
        super().data_received(data)
        if self._fast is not None:
            self._at_boundary = self._parser_drained(data, self._request_count - before)
        if self._request_count != before:
            self._disarm_header_timer()
            if self._head_follows(data):
                # The segment went on into the next request's head: its deadline starts now.
                self._arm_header_timer()
        elif self._header_timer is None and data and self._waiter is not None:
            # First bytes of a further request on a kept-alive connection: the deadline for
            # its headers starts now (the idle time before is the keep-alive timeout's job).
            self._arm_header_timer()

    def _answer_fast(self, data: bytes) -> bool:
        """Answer `data` from the cache's memory tier if it is one plain GET of a fresh hit.

        Only while aiohttp's side of the connection is idle (no queued or running request,
        its parser between messages, nothing paused), so responses keep request order and
        aiohttp's state needs no change but the keep-alive deadline. The full handler
        answers everything else, with the same bytes it would have seen.
        """
        waiter = self._waiter
        if (
            self._messages
            or (self._request_count and (waiter is None or waiter.done()))
            or self._force_close
            or self._close
            or self._upgraded
            or self._paused
            or self._buffer_paused
        ):
            return False
        transport = self.transport
        if transport is None or self._fast is None:
            return False
        wire = self._fast(data, self._scheme, self._remote)
        if wire is None:
            return False
        transport.writelines(wire)
        self._disarm_header_timer()
        manager = self._manager
        if manager is not None:
            manager.requests_count += 1
        if self._keepalive_timeout > 0:
            loop = self._loop
            close_time = loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        return True

    def _parser_drained(self, data: bytes, produced: int) -> bool:
        """Whether aiohttp's parser ended `data` between messages (conservatively)."""
        if not produced or not data.endswith(b"\r\n\r\n") or self._buffer_paused:
            return False
        if not self._messages:
            return False
        message, payload = self._messages[-1]
        # A parse error is queued as aiohttp's private _ErrInfo, which has no method.
        return hasattr(message, "method") and payload.is_eof()

    def _head_follows(self, data: bytes) -> bool:
        """Whether bytes of a further, incomplete request head follow the last request
        aiohttp's parser completed from `data` (only decidable when that request has no
        body: its head then ended the parsed part, and `data` goes on past it)."""
        if not self._messages or self._buffer_paused or data.endswith(b"\r\n\r\n"):
            return False
        message, payload = self._messages[-1]
        return hasattr(message, "method") and payload is EMPTY_PAYLOAD

    def _arm_header_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._messages or self._waiter is None:
            # A request is still being answered; a 408 now would cut into its response.
            # Its answer comes first, then the late head gets one more period.
            self._arm_header_timer()
            return
        log.debug("request headers not complete within %.1fs: closing", self._header_timeout)
        self._count_refused(408)
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n"
            + f"Cache-Status: {self._refused}\r\n\r\n".encode()
        )
        self.force_close()
        transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            status = 414 if limit == self._url_limit else 431
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            status = 431
        if status in (414, 431) or isinstance(exc, BadHttpMessage):
            log.debug("bad request from %s: %s", request.remote, exc)
            self._count_refused(status)
            resp = status_response(status, self._refused)
            resp.force_close()
            return resp
        return super().handle_error(request, status, exc, message)


class EdgeServer(web.Server):
    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        header_timeout: float,
        url_limit: int,
        cache_name: str,
        fast: FastHit | None = None,
        refused: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._header_timeout = header_timeout
        self._url_limit = url_limit
        self._cache_name = cache_name
        self._fast = fast
        self._refused = refused

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(
            self,
            loop=self._loop,
            header_timeout=self._header_timeout,
            url_limit=self._url_limit,
            cache_name=self._cache_name,
            fast=self._fast,
            refused=self._refused,
            **self._kwargs,
        )


def server_kwargs(config: EdgeConfig) -> dict[str, Any]:
    limits = config.limits
    # aiohttp's parser refuses lines above these limits; they must differ so handle_error
    # can tell a long request line (414) from a long header field (431).
    field_limit = limits.max_header_bytes
    url_limit = limits.max_url_length + 16  # "GET " ... " HTTP/1.1" are not counted by the parser
    if url_limit == field_limit:
        field_limit += 1
    return {
        "header_timeout": limits.header_timeout,
        "url_limit": url_limit,
        "cache_name": config.server.cache_name,
        "keepalive_timeout": limits.keepalive_timeout,
        "max_line_size": url_limit,
        "max_field_size": field_limit,
        "max_headers": limits.max_headers,
        "access_log": None,
    }


def build_app(config: EdgeConfig, stats_dir: str | None = None, slot: int = 0) -> web.Application:
    """The control app: lifecycle of shared resources plus the admin routes.

    `stats_dir` is the run directory of a multi-worker node (see edge.nodestats): this
    worker publishes its counters there, and its admin routes answer for the whole node.
    There the worker in `slot` 0 probes the origins for the node and the others follow
    its verdicts (edge.probes.ProbeFollower); without a run directory every worker probes.
    """
    app = web.Application(handler_args={"access_log": None})
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    stats = None if stats_dir is None else nodestats.StatsDir(stats_dir)
    if stats is not None:
        app[NODE_STATS] = stats
        app[WORKER_SLOT] = slot
    admin.add_routes(app, lambda: app[PROXY], None if stats is None else stats.peers)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool_cfg = config.pool
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=pool_cfg.connections_per_origin,
        ssl=tls.origin_context(pool_cfg.ca_bundle),
        keepalive_timeout=pool_cfg.keepalive_timeout,
        enable_cleanup_closed=False,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        response_class=InterimForwardingResponse,
        trust_env=False,
    )
    tmp: tempfile.TemporaryDirectory[str] | None = None
    cache_dir = config.cache.dir
    if config.cache.enabled and not cache_dir:
        tmp = tempfile.TemporaryDirectory(prefix="geoedge-cache-")
        cache_dir = tmp.name
    cache = await open_cache(config, cache_dir) if config.cache.enabled else None
    metrics = admin.Metrics(capacity_rps=config.admin.capacity_rps)
    access_log = AccessLog(config.log.access_log)
    pool = OriginPool(pool_cfg)
    proxy = Proxy(config, pool, session, cache, metrics, access_log)
    prober = Prober(pool, session, metrics.observe_probe)
    app[SESSION] = session
    app[POOL] = pool
    app[METRICS] = metrics
    app[ACCESS_LOG] = access_log
    app[PROXY] = proxy
    app[PROBER] = prober
    if cache is not None:
        app[CACHE] = cache
    stats = app.get(NODE_STATS)
    follower = None
    if stats is not None and app[WORKER_SLOT] > 0:
        follower = asyncio.create_task(ProbeFollower(pool, prober, stats).run())
    else:
        prober.start()
    flusher = asyncio.create_task(_flush_periodically(access_log))
    publisher = None
    if stats is not None:

        def snapshot() -> nodestats.WorkerRecord:
            record = admin.worker_record(proxy, stats.clock(), stats.pid)
            if follower is not None:
                return record
            return dataclasses.replace(record, verdicts=verdicts(pool))  # the probe leader

        publisher = asyncio.create_task(nodestats.publish_periodically(stats, snapshot))
    try:
        yield
    finally:
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        prober.shutdown()
        flusher.cancel()
        if publisher is not None and stats is not None:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            stats.remove()
        await proxy.close()
        await session.close()
        if cache is not None:
            await cache.close()
        access_log.close()
        if tmp is not None:
            tmp.cleanup()


async def _flush_periodically(access_log: AccessLog) -> None:
    while True:
        await asyncio.sleep(0.5)
        access_log.flush()


def _redirect_handler(
    config: EdgeConfig, proxy: Proxy
) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    """308 to https for the plain listener, for the requests the proxy would serve.

    The Location is built from the Host field and the origin-form target: aiohttp's
    `request.host` and `raw_path` come from an absolute-form target (an open redirect).
    """
    https_port = config.tls.listen[0].port
    name = config.server.cache_name
    refused = cp.cache_status(name, fwd="request", detail="refused")

    async def redirect(request: web.BaseRequest) -> web.Response:
        refusal = proxy.check(request)
        host = bare_host(request.headers.get("Host", ""))
        if refusal is None and not host:
            refusal = status_response(400)
        if refusal is not None:
            refusal.headers.setdefault("Cache-Status", refused)
            return refusal
        authority = host if https_port == 443 else f"{host}:{https_port}"
        return web.Response(
            status=308,
            headers={
                "Location": f"https://{authority}{origin_form(request.raw_path)}",
                "Cache-Status": cp.cache_status(name, fwd="request", detail="redirect"),
            },
        )

    return redirect


def _bind_reuse(addr: Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((addr.host, addr.port))
    return sock


class EdgeRuntime:
    """A running edge: control app (+ admin site) and the client-facing listeners."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        reuse_port: bool = False,
        stats_dir: str | None = None,
        slot: int = 0,
    ) -> None:
        self.config = config
        self.app = build_app(config, stats_dir, slot)
        self.reuse_port = reuse_port
        self._app_runner: web.AppRunner | None = None
        self._edge_runners: list[web.ServerRunner] = []
        self.addresses: dict[str, list[Address]] = {"http": [], "https": [], "admin": []}

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY]

    async def start(self) -> None:
        config = self.config
        self._app_runner = web.AppRunner(self.app, access_log=None)
        await self._app_runner.setup()
        if config.admin.listen is not None:
            admin_site = web.TCPSite(
                self._app_runner,
                config.admin.listen.host,
                config.admin.listen.port,
                reuse_port=self.reuse_port or None,
            )
            await admin_site.start()
            self.addresses["admin"] = _site_addresses(admin_site)
        kwargs = server_kwargs(config)
        metrics = self.app[METRICS]
        kwargs["refused"] = lambda status: metrics.response(status, "refused")
        fast = self.proxy.answer_plain_get if config.server.fast_hits else None
        proxy_server = EdgeServer(self.proxy.handle, fast=fast, **kwargs)
        proxy_runner = web.ServerRunner(proxy_server, handle_signals=False)
        await proxy_runner.setup()
        self._edge_runners.append(proxy_runner)
        plain_runner = proxy_runner
        if config.tls.redirect_http:
            redirect_server = EdgeServer(_redirect_handler(config, self.proxy), **kwargs)
            plain_runner = web.ServerRunner(redirect_server, handle_signals=False)
            await plain_runner.setup()
            self._edge_runners.append(plain_runner)
        for addr in config.server.listen:
            site = await self._site(plain_runner, addr, None)
            self.addresses["http"].extend(_site_addresses(site))
        if config.tls.listen:
            ssl_ctx = tls.server_context(config.tls)
            for addr in config.tls.listen:
                site = await self._site(proxy_runner, addr, ssl_ctx)
                self.addresses["https"].extend(_site_addresses(site))

    async def _site(self, runner: web.BaseRunner, addr: Address, ssl_ctx: Any) -> web.BaseSite:
        site: web.BaseSite
        if self.reuse_port:
            site = web.SockSite(runner, _bind_reuse(addr), ssl_context=ssl_ctx)
        else:
            site = web.TCPSite(runner, addr.host, addr.port, ssl_context=ssl_ctx)
        await site.start()
        return site

    def reload(self, config: EdgeConfig) -> None:
        """Apply a new config atomically; listener, TLS and cache changes need a restart."""
        old = self.config
        for part in ("server.listen", "tls", "cache", "admin.listen"):
            section, _, key = part.partition(".")
            a, b = getattr(old, section), getattr(config, section)
            if (getattr(a, key) if key else a) != (getattr(b, key) if key else b):
                log.warning("reload: %s changed; it takes effect after a restart", part)
        # The listeners were built with these (header deadline, keep-alive, parser limits,
        # the fast hit path); Proxy.check applies its own copy of the limits at once.
        if (server_kwargs(old), old.server.fast_hits) != (
            server_kwargs(config),
            config.server.fast_hits,
        ):
            log.warning(
                "reload: listener settings changed (limits, server.fast_hits, server.cache_name"
                " in refusals); the listeners apply them after a restart"
            )
        # app[CONFIG] is the startup configuration (only _resources reads it); a started
        # application's state must not change (aiohttp warns, and will refuse).
        self.config = config
        self.app[POOL].update(config.pool)
        self.app[PROBER].reschedule()
        self.app[METRICS].capacity_rps = config.admin.capacity_rps
        self.app[ACCESS_LOG].reopen(config.log.access_log)
        apply_log_level(config.log.level)
        self.proxy.reconfigure(config)
        log.info("configuration reloaded from %s", config.source)

    def reopen_logs(self) -> None:
        """SIGUSR1: open the access log file again (after logrotate moved it)."""
        self.app[ACCESS_LOG].reopen()
        log.info("access log reopened")

    async def stop(self) -> None:
        for runner in reversed(self._edge_runners):
            await runner.cleanup()
        self._edge_runners.clear()
        if self._app_runner is not None:
            await self._app_runner.cleanup()
            self._app_runner = None


def apply_log_level(level: str) -> None:
    """Set the root logger to `log.level` (at start and on reload)."""
    logging.getLogger().setLevel(level.upper())
    # APScheduler logs every probe run at INFO; only its problems are worth a line.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))


def _site_addresses(site: web.BaseSite) -> list[Address]:
    server = getattr(site, "_server", None)
    out = []
    for sock in getattr(server, "sockets", None) or []:
        name = sock.getsockname()
        out.append(Address(name[0], name[1]))
    return out
