"""Wiring: the control application (AppKeys + cleanup_ctx) and the edge listeners.

The control app is a regular aiohttp Application: its cleanup_ctx opens and closes the
origin ClientSession, the cache store, the probe scheduler, the access log and (with several
workers) the publisher of this worker's counters, and it serves the admin routes when an
admin address is configured. The client-facing listeners use the
low-level aiohttp server (no router, no middlewares) so the cache-hit path stays lean, with
a protocol subclass (edge.aiohttp_internals, the one module that touches aiohttp's private
state) that adds a deadline for reading request headers, maps parser limit errors to 414 /
431, and answers the commonest request of all, a plain GET that is a fresh hit in the memory
tier, straight from the segment it arrives in (see edge.fasthit and Proxy.answer_plain_get).
Origin connections go through aiohttp_internals.GuardedConnector, which pools a connection
only while it is provably clean.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from edge import admin, aiohttp_internals, collector, nodestats, tls
from edge import cache_policy as cp
from edge.accesslog import AccessLog
from edge.aiohttp_internals import (
    EdgeServer,
    GuardedConnector,
    InterimForwardingResponse,
    ListenerOptions,
    TLSSite,
)
from edge.cache_layer import CacheLayer, open_cache
from edge.config import Address, EdgeConfig
from edge.exchange import bare_host, origin_form, status_response
from edge.metrics import Metrics
from edge.origin_client import OriginClient
from edge.origins import OriginPool
from edge.probes import ProbeFollower, Prober, verdicts
from edge.proxy import Proxy
from edge.ratelimit import RateTable
from edge.stream import StreamSet
from geoedge.http import on_response_prepare

log = logging.getLogger("edge")

CONFIG = web.AppKey("edge_config", EdgeConfig)
POOL = web.AppKey("edge_pool", OriginPool)
SESSION = web.AppKey("edge_session", aiohttp.ClientSession)
CACHE = web.AppKey("edge_cache", CacheLayer)
PROBER = web.AppKey("edge_prober", Prober)
METRICS = web.AppKey("edge_metrics", Metrics)
PROXY = web.AppKey("edge_proxy", Proxy)
ACCESS_LOG = web.AppKey("edge_access_log", AccessLog)
NODE_STATS = web.AppKey("edge_node_stats", nodestats.StatsDir)
WORKER_SLOT = web.AppKey("edge_worker_slot", int)
STREAMS = web.AppKey("edge_streams", StreamSet)
RATE_TABLE = web.AppKey("edge_rate_table", RateTable)


def listener_settings(config: EdgeConfig) -> tuple[ListenerOptions, dict[str, Any]]:
    """What the client-facing listeners are built with: the edge's protocol options (the
    callables left at their defaults; EdgeRuntime.start sets them) and aiohttp's own."""
    limits = config.limits
    # aiohttp's parser refuses lines above these limits; they must differ so handle_error
    # can tell a long request line (414) from a long header field (431).
    field_limit = limits.max_header_bytes
    url_limit = limits.max_url_length + 16  # "GET " ... " HTTP/1.1" are not counted by the parser
    if url_limit == field_limit:
        field_limit += 1
    token = cp.cache_status(config.server.cache_name, fwd="request", detail="refused")
    options = ListenerOptions(
        header_timeout=limits.header_timeout,
        url_limit=url_limit,
        refused_token=token,
        refusal=lambda status: status_response(status, token),
    )
    return options, {
        "keepalive_timeout": limits.keepalive_timeout,
        "max_line_size": url_limit,
        "max_field_size": field_limit,
        "max_headers": limits.max_headers,
        "access_log": None,
    }


def build_app(
    config: EdgeConfig,
    stats_dir: str | None = None,
    slot: int = 0,
    rate_table: RateTable | None = None,
) -> web.Application:
    """The control app: lifecycle of shared resources plus the admin routes.

    `stats_dir` is the run directory of a multi-worker node (see edge.nodestats): this
    worker publishes its counters there, and its admin routes answer for the whole node.
    There the worker in `slot` 0 probes the origins for the node and the others follow
    its verdicts (edge.probes.ProbeFollower); without a run directory every worker probes.
    `rate_table` is the node's screening budgets when the parent made them for its workers
    (edge.ratelimit), where this worker counts its requests in flight in the column of its
    `slot` (forgetting what a dead predecessor left there); without it the proxy keeps a
    private table.
    """
    app = web.Application(handler_args={"access_log": None})
    app.on_response_prepare.append(on_response_prepare)
    app[CONFIG] = config
    if rate_table is not None:
        rate_table.claim(slot)
        app[RATE_TABLE] = rate_table
    app.cleanup_ctx.append(_resources)
    stats = None if stats_dir is None else nodestats.StatsDir(stats_dir)
    if stats is not None:
        app[NODE_STATS] = stats
        app[WORKER_SLOT] = slot
    app[STREAMS] = StreamSet(config.streams)  # started by EdgeRuntime, next to the listeners
    admin.add_routes(
        app, lambda: app[PROXY], None if stats is None else stats.peers, app[STREAMS].status
    )
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool_cfg = config.pool
    metrics = Metrics(capacity_rps=config.admin.capacity_rps)
    pool = OriginPool(pool_cfg)

    def protocol_error(origin: str, kind: str, size: int) -> None:
        # Labelled like edge_origin_errors' other kinds: by the configured origin URL.
        label = next((o.url for o in pool.origins if _same_origin(o.url, origin)), origin)
        metrics.origin_errors.labels(label, kind).inc()
        log.warning(
            "origin %s: %d bytes %s; connection closed",
            label,
            size,
            "sent on an idle connection" if kind == "unsolicited_bytes" else "past a response",
        )

    origin_tls = tls.origin_context(pool_cfg.ca_bundle)
    connector = GuardedConnector(
        on_protocol_error=protocol_error,
        limit=0,
        limit_per_host=pool_cfg.connections_per_origin,
        ssl=origin_tls,
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
    access_log = AccessLog(config.log.access_log)
    origin_client = OriginClient(
        limit=pool_cfg.connections_per_origin,
        keepalive_timeout=pool_cfg.keepalive_timeout,
        ssl_context=origin_tls,
        on_protocol_error=protocol_error,
    )
    proxy = Proxy(
        config, pool, session, cache, metrics, access_log, app.get(RATE_TABLE), origin_client
    )
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
    flusher = asyncio.create_task(_every(0.5, access_log.flush, "access log flush"))
    freezer = asyncio.create_task(collector.run())
    recency = None
    if cache is not None:
        # The store's LRU order: the entries read since the last time, stamped as used.
        store = cache.store
        recency = asyncio.create_task(
            _every(2.0, lambda: asyncio.to_thread(store.flush_recency), "recency flush")
        )
    publisher = None
    if stats is not None:

        def snapshot() -> nodestats.WorkerRecord:
            record = admin.worker_record(proxy, stats.clock(), stats.pid)
            if follower is not None:
                return record
            # The probe leader: the HTTP pool's verdicts and the stream pools'.
            return dataclasses.replace(record, verdicts=verdicts(pool) + app[STREAMS].verdicts())

        publisher = asyncio.create_task(nodestats.publish_periodically(stats, snapshot))
    try:
        yield
    finally:
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        prober.shutdown()
        flusher.cancel()
        freezer.cancel()
        if recency is not None:
            recency.cancel()
            await asyncio.gather(recency, return_exceptions=True)
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


async def _every(seconds: float, job: Callable[[], Any], what: str) -> None:
    """Run `job` every `seconds` until cancelled (awaiting it when it returns an awaitable).
    A run that fails is logged, once until a run succeeds again, and the next run comes as
    due: a full disk must not stop the access log's flushes for good."""
    failing = False
    while True:
        await asyncio.sleep(seconds)
        try:
            done = job()
            if inspect.isawaitable(done):
                await done
        except Exception:
            if not failing:
                log.exception(
                    "%s failed (retried every %gs, logged again once it works)", what, seconds
                )
            failing = True
        else:
            if failing:
                log.warning("%s works again", what)
            failing = False


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
        refusal = proxy.admission.check(request)
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


def _bind(addr: Address, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
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
        rate_table: RateTable | None = None,
    ) -> None:
        self.config = config
        self.app = build_app(config, stats_dir, slot, rate_table)
        self.reuse_port = reuse_port
        self._app_runner: web.AppRunner | None = None
        self._edge_runners: list[web.ServerRunner] = []
        self.addresses: dict[str, list[Address]] = {
            "http": [],
            "https": [],
            "tcp": [],
            "udp": [],
            "admin": [],
        }

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY]

    async def start(self) -> None:
        await aiohttp_internals.check_version()
        config = self.config
        self._app_runner = web.AppRunner(self.app, access_log=None)
        await self._app_runner.setup()
        if config.admin.listen is not None:
            cert = config.admin.certificate
            admin_tls = None if cert is None else tls.certificate_context(cert)
            self.addresses["admin"] = await self._site(
                self._app_runner, config.admin.listen, admin_tls
            )
        options, kwargs = listener_settings(config)
        metrics = self.app[METRICS]
        options = dataclasses.replace(
            options, refused=lambda status: metrics.response(status, "refused")
        )
        fast = self.proxy.answer_plain_get if config.server.fast_hits else None
        proxy_server = EdgeServer(
            self.proxy.handle, dataclasses.replace(options, fast=fast), **kwargs
        )
        proxy_runner = web.ServerRunner(proxy_server, handle_signals=False)
        await proxy_runner.setup()
        self._edge_runners.append(proxy_runner)
        plain_runner = proxy_runner
        if config.tls.redirect_http:
            redirect_server = EdgeServer(_redirect_handler(config, self.proxy), options, **kwargs)
            plain_runner = web.ServerRunner(redirect_server, handle_signals=False)
            await plain_runner.setup()
            self._edge_runners.append(plain_runner)
        for addr in config.server.listen:
            self.addresses["http"].extend(await self._site(plain_runner, addr, None))
        if config.tls.listen:
            ssl_ctx = tls.server_context(config.tls)
            for addr in config.tls.listen:
                self.addresses["https"].extend(await self._site(proxy_runner, addr, ssl_ctx))
        streams = self.app[STREAMS]
        stats = self.app.get(NODE_STATS)
        follow = stats if stats is not None and self.app[WORKER_SLOT] > 0 else None
        await streams.start(metrics.registry, self.reuse_port, follow)
        for kind in ("tcp", "udp"):
            self.addresses[kind].extend(streams.addresses[kind])

    async def _site(self, runner: web.BaseRunner, addr: Address, ssl_ctx: Any) -> list[Address]:
        """Start a listener on `addr`; the addresses it bound (port 0 resolved). A TLS
        handshake gets limits.header_timeout, like a request head."""
        before = set(map(repr, runner.addresses))
        site: web.BaseSite
        if ssl_ctx is not None:
            sock = _bind(addr, self.reuse_port)
            site = TLSSite(runner, sock, ssl_ctx, self.config.limits.header_timeout)
        elif self.reuse_port:
            site = web.SockSite(runner, _bind(addr, reuse_port=True))
        else:
            site = web.TCPSite(runner, addr.host, addr.port)
        await site.start()
        return _addresses(a for a in runner.addresses if repr(a) not in before)

    def reload(self, config: EdgeConfig) -> None:
        """Apply a new config atomically; listener, TLS and cache changes need a restart."""
        old = self.config
        for part in ("server.listen", "tls", "cache", "admin.listen", "admin.certificate"):
            section, _, key = part.partition(".")
            a, b = getattr(old, section), getattr(config, section)
            if (getattr(a, key) if key else a) != (getattr(b, key) if key else b):
                log.warning("reload: %s changed; it takes effect after a restart", part)
        # The listeners were built with these (header deadline, keep-alive, parser limits,
        # the fast hit path); Proxy.check applies its own copy of the limits at once.
        if (listener_settings(old), old.server.fast_hits) != (
            listener_settings(config),
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
        self.app[STREAMS].reload(config.streams)
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
        await self.app[STREAMS].stop()
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


def _addresses(names: Any) -> list[Address]:
    """Address values of socket names (runner.addresses)."""
    return [Address(name[0], name[1]) for name in names]


def _same_origin(url: str, origin: str) -> bool:
    """Whether configured origin `url` is `origin` (scheme://host:port, IPv6 bracketed)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}" == origin
