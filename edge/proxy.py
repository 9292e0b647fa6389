"""The client-facing request handler: admission, dispatch, and forwarding to origins.

One `Proxy` per edge process. `handle` is the low-level aiohttp handler: it admits the
request (method, host, limits, loops), hands GET and HEAD to the cache layer
(edge.cache_layer, which fills through edge.fill), and otherwise forwards to an origin chosen
by the pool, streaming bodies both ways; `answer_plain_get` is the raw fast hit path.
Origin requests of the cache layer go through `open_upstream` too, so retries, passive
health and the translation of aiohttp client errors into statuses (502 broken origin or
protocol error, 504 timeout, 503 no healthy origin) live here once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from functools import partial
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from edge import cache_policy as cp
from edge.accesslog import AccessLog
from edge.admission import Admission
from edge.aiohttp_internals import (
    INTERIM,
    ClientWriter,
    Handover,
    PlainAnswer,
    SerializedResponse,
    final_status_ok,
    handover_of,
)
from edge.cache_layer import Answered, CacheLayer, handing, remembered
from edge.config import EdgeConfig
from edge.errors import (
    ClientGone,
    OriginFailure,
    OriginProtocolError,
    RequestBodyTooLarge,
)
from edge.exchange import (
    CHUNK,
    abort,
    interim_sender,
    origin_form,
    raw_pairs,
    request_scheme,
    response_pairs,
    send_body,
    start_response,
    status_response,
    transfer_coding,
)
from edge.fasthit import SimpleGet, parse_simple_get
from edge.filebody import FileBody, LastAnswer, Part
from edge.freshness import format_http_date
from edge.headers import (
    client_response_headers,
    closing,
    head_end,
    origin_request_headers,
)
from edge.metrics import Metrics
from edge.origin_client import OriginClient, OriginConnectError, Timeouts, UpstreamResponse
from edge.origins import Origin, OriginPool
from edge.ratelimit import RateTable
from edge.screening import Screening, Verdict, refusal_head
from geo.errors import GeoError
from geo.locator import GeoIPLocator

log = logging.getLogger("edge.proxy")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Requests the edge's own origin client sends (without a body): see edge.origin_client.
_LEAN_METHODS = frozenset({"GET", "HEAD"})
# Every other method, including unknown ones (M-SEARCH...), is unsafe (RFC 9111 §4.4).
SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "SEARCH", "REPORT"})
# What Proxy.answer_plain_get remembers per scheme of the segments it parsed (each looked up
# next time instead of parsed again): segments of at most 2 KiB, counted at twice their
# length (the segment, and its fields the parsed request keeps for the screening rules) plus
# 512 bytes (the rest of the parsed request and its key), within 16 MiB (about 27,000
# requests of wrk's size); then it starts afresh.
_PLAIN_MEMO_BYTES = 16 << 20
# A remembered segment: cache key, request, the screening rules its request conditions meet
# (bit i: rule i, see edge.screening.RuleSet.candidates).
_Plain = tuple[str, SimpleGet, int]


class Proxy:
    def __init__(
        self,
        config: EdgeConfig,
        pool: OriginPool,
        session: aiohttp.ClientSession,
        cache: CacheLayer | None,
        metrics: Metrics,
        access_log: AccessLog,
        rate_table: RateTable | None = None,
        origin_client: OriginClient | None = None,
    ) -> None:
        self.pool = pool
        self.session = session
        # Bodiless GET and HEAD go through this client when given (edge.origin_client);
        # requests with a body, and all of them without it, through `session`.
        self.origin_client = origin_client
        self.cache = cache
        self.metrics = metrics
        self.access_log = access_log
        self._tasks: set[asyncio.Task[Any]] = set()
        if cache is not None:
            metrics.cache_resets.inc(cache.store.resets)
        # Screening state that outlives a reload: the node's budgets (shared with the other
        # workers when the parent made the table) and requests in flight, the GeoIP database.
        slots = config.screening.table_slots
        self.rate_table = rate_table if rate_table is not None else RateTable.private(slots)
        # A scan of the table: only while a rule can ban at all.
        metrics.banned_keys = lambda: (
            self.rate_table.bans(time.monotonic()) if self.screening.bans else 0
        )
        self._locator: GeoIPLocator | None = None
        self.reconfigure(config)

    def reconfigure(self, config: EdgeConfig) -> None:
        self.config = config
        self.admission = Admission(config, self.metrics)
        if config.screening.table_slots != self.rate_table.slots:
            log.warning("screening.table_slots changed; it takes effect after a restart")
        self.screening = Screening(
            config.screening,
            config.server.trusted_proxies,
            self.rate_table,
            self._geoip(config.geo.database),
            self.metrics.screen_counts,
            time.monotonic,
        )
        self._max_body = config.limits.max_body_bytes
        pool = config.pool
        self._timeout = aiohttp.ClientTimeout(
            total=pool.total_timeout,
            sock_connect=pool.connect_timeout,
            sock_read=pool.first_byte_timeout,
        )
        self._timeouts = Timeouts(pool.connect_timeout, pool.first_byte_timeout, pool.total_timeout)
        # The fast path's verdicts depend on the limits and hosts just set.
        self._plain_gets: dict[str, dict[bytes, _Plain | Literal[False]]] = {
            "http": {},
            "https": {},
        }
        self._plain_memo_bytes = {"http": 0, "https": 0}
        self._cache_tag = config.server.cache_name
        self._refused_status = cp.cache_status(self._cache_tag, fwd="request", detail="refused")
        self._strip = frozenset(config.server.strip_request_headers)
        # A plain GET's origin fields by (its fields, scheme, client): made for this config.
        self._plain_origin: dict[
            tuple[tuple[tuple[str, str], ...], str, str | None], CIMultiDict[str]
        ] = {}
        if self.cache is not None:
            self.cache.reconfigure(config)

    def _geoip(self, path: str) -> GeoIPLocator | None:
        """The GeoIP database at `path`, kept open across reloads (re-read when its file
        changed); None without one."""
        old = self._locator
        if old is not None and str(old.path) == path:
            try:
                old.maybe_reload()
            except GeoError as exc:
                log.error("GeoIP database %s: %s; keeping the one loaded", path, exc)
            return old
        new = None
        if path:
            try:
                new = GeoIPLocator(path)
            except GeoError as exc:  # checked at load; the file changed since
                log.error("GeoIP database %s: %s; country rules match nobody", path, exc)
        if old is not None:
            old.close()
        self._locator = new
        return new

    async def close(self) -> None:
        if self._locator is not None:
            self._locator.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.origin_client is not None:
            await self.origin_client.close()

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

    async def purge(self, kind: str, value: str, wait: float | None = None) -> int | None:
        """CacheLayer.purge (0 without a cache)."""
        if self.cache is None:
            return 0
        return await self.cache.purge(kind, value, wait)

    # ------------------------------------------------------------------ the handler

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        metrics = self.metrics
        metrics.active += 1
        handover = handover_of(request)
        start = (
            time.monotonic() if handover is None or handover.started is None else handover.started
        )
        resp: web.StreamResponse | None = None
        origin_url = ""
        screening = self.screening
        held: list[int] = []  # concurrency budgets this request takes (edge.screening)
        try:
            resp, origin_url = await self._dispatch(request, held)
            if not resp.prepared and "Cache-Status" not in resp.headers:
                resp.headers["Cache-Status"] = self._refused_status
            return resp
        finally:
            if held:
                screening.leave(held)
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
                    duration_ms=(time.monotonic() - start) * 1000,
                    cache=cache_status,
                    origin=origin_url,
                    user_agent=request.headers.get("User-Agent", ""),
                )

    def answer_plain_get(
        self, data: bytes, scheme: str, remote: str | None, write: ClientWriter
    ) -> list[Part] | Coroutine[Any, Any, PlainAnswer] | None:
        """Wire parts answering `data`, one received segment, when it is a plain GET
        (edge.fasthit) of a fresh hit (a LastAnswer when it asked to close the
        connection), or the coroutine answering it
        when it is a plain miss that no screening rule can meet (CacheLayer.plain_miss;
        `write` sends the client 1xx interim responses, and the answer); None when
        `handle` must answer it. Same checks, metrics and access log as `handle`;
        whatever `check` would refuse is left to it."""
        cache = self.cache
        if cache is None:
            return None
        plain = self._plain_gets[scheme].get(data)
        parsed = plain is None
        if plain is None:
            plain = self._plain_get(data, scheme)
            if not plain:
                self._remember_plain(scheme, data, plain)
        if not plain:
            return None
        key, req, candidates = plain
        if req.close and candidates:
            return None  # screened, and the connection closed, by `handle`
        logging_on = self.access_log.enabled
        start = time.monotonic() if logging_on else 0.0
        # A body in a file of its own goes by sendfile on plain TCP (edge.filebody), unless
        # a screening rule may refuse the request (then nothing is opened), or the
        # connection closes after the answer (the full handler's then).
        files = scheme == "http" and not candidates and not req.close
        asked = partial(cache.plain_request_fields, req)  # selects a variant (Vary)
        hit = cache.hits.hit_wire(key, files, req.range, req.conditions, asked)
        if hit is None:
            if candidates or req.range is not None or req.conditions or req.close:
                # Screened by `handle`, once; a miss with a Range or validators of its own,
                # or asked to close the connection, is the full handler's.
                return None
            miss = cache.plain_miss(self, key, req, scheme, remote, write)
            if miss is None:
                return None
            return self._answer_plain_miss(miss, req, remote, start or time.monotonic(), write)
        if candidates:
            # Per request, after the hit is known (a miss goes to `handle`, which screens
            # it once): the rules that could match this segment, for this client now.
            screening = self.screening
            client = screening.client(remote or "")
            if client.trusted:
                return None  # the client is in X-Forwarded-For: `handle` reads it
            verdict = screening.decide(candidates, client, req.target, req.header)
            if verdict is not None:
                return self._refuse_plain(verdict, req, remote, start)
        if parsed and req.range is None:
            # Remembered once it is a hit: a miss's segment names a URL not stored yet,
            # and the next request for it has its own segment (fresh headers, another
            # connection...) as often as not. Not a Range's: each asks for its own part.
            self._remember_plain(scheme, data, plain)
        status, head, body = hit
        self.metrics.response(status, "hit")
        if logging_on:
            if isinstance(body, FileBody):
                # Logged once the file's send ended, with what went (a client may leave
                # or be dropped half-way), as the full handler logs what it wrote.
                log_hit = self._log_plain
                body.on_close = lambda sent: log_hit(req, remote, status, sent, start, "hit")
            else:
                self._log_plain(req, remote, status, len(body), start, "hit")
        if req.close:
            return LastAnswer([closing(head), body])
        return [head, body]

    def _remember_plain(self, scheme: str, data: bytes, plain: _Plain | Literal[False]) -> None:
        """Remember `data`'s verdict (within _PLAIN_MEMO_BYTES, segments up to 2 KiB)."""
        if len(data) > 2048:
            return
        cost = 2 * len(data) + 512
        memo = self._plain_gets[scheme]
        if self._plain_memo_bytes[scheme] + cost > _PLAIN_MEMO_BYTES:
            memo.clear()
            self._plain_memo_bytes[scheme] = 0
        memo[data] = plain
        self._plain_memo_bytes[scheme] += cost

    async def _answer_plain_miss(
        self,
        miss: Coroutine[Any, Any, Answered | Handover],
        req: SimpleGet,
        remote: str | None,
        start: float,
        write: ClientWriter,
    ) -> PlainAnswer:
        """A plain miss's answer, counted and logged as `handle` counts and logs it (a
        response handed over to the full handler is counted there). Written here, in
        the step of the miss's task that learns it: its done callbacks run a turn of the
        loop later, after everything that turn's poll found ready (under load, every
        other connection's hits)."""
        metrics = self.metrics
        metrics.active += 1
        try:
            answer = await miss
        except Exception:
            # As `handle` answers a handler's failure: a 500, counted and logged there.
            log.exception("plain miss of %s failed", req.target)
            failed = cp.cache_status(self._cache_tag, fwd="uri-miss", detail="error")
            answer = handing(req.target, status_response(500, failed))
        finally:
            metrics.active -= 1
        if isinstance(answer, Handover):
            answer.started = start  # the full handler's access log counts from here
            return answer
        write(*answer.wire)
        metrics.response(answer.status, "miss")
        if self.access_log.enabled:
            self._log_plain(req, remote, answer.status, answer.sent, start, "miss", answer.origin)
        return None

    def _log_plain(
        self,
        req: SimpleGet,
        remote: str | None,
        status: int,
        sent: int,
        start: float,
        cache: str,
        origin: str = "",
    ) -> None:
        # By position: the fast path's every request pays for this call.
        self.access_log.write(
            remote,
            "GET",
            req.host,
            req.target,
            status,
            sent,
            (time.monotonic() - start) * 1000,
            cache,
            origin,
            req.user_agent,
        )

    def _refuse_plain(
        self, verdict: Verdict, req: SimpleGet, remote: str | None, start: float
    ) -> list[Part]:
        """The fast path's answer to a refused plain GET: the full handler's bytes."""
        status = verdict.status
        self.metrics.response(status, "refused")
        wire = [] if verdict.action == "close" else self._refusal_wire(verdict)
        if self.access_log.enabled:
            self._log_plain(req, remote, status, len(wire[1]) if wire else 0, start, "refused")
        return wire

    def _refusal_wire(self, verdict: Verdict) -> list[Part]:
        head, body = refusal_head(verdict, format_http_date(time.time()))
        return [head + head_end(self._refused_status), body]

    def _plain_get(self, data: bytes, scheme: str) -> _Plain | Literal[False]:
        """The cache key and request of `data` if the fast path may answer it, and the
        screening rules whose request conditions it meets; else False."""
        req = parse_simple_get(data)
        if req is None or not self.admission.admits_plain(req):
            return False
        if (req.range is not None or req.conditions) and not _ANSWERED_FIELDS.isdisjoint(
            self._strip
        ):
            return False  # stripped, the full handler ignores them: so must the answer
        candidates = self.screening.ruleset.candidates("GET", req.target, req.host, req.header)
        return cp.cache_key(scheme, req.host, req.target), req, candidates

    def _screen(self, request: web.BaseRequest, held: list[int]) -> web.StreamResponse | None:
        """The screening rules' answer to `request`, or None when it may pass (then its
        concurrency budgets, `held`, are taken until `handle` ends)."""
        screening = self.screening
        headers = request.headers

        def header(name: str) -> str | None:
            values = headers.getall(name, ())
            return ", ".join(values) if values else None

        target = origin_form(request.raw_path)
        host = headers.get("Host", "")
        candidates = screening.ruleset.candidates(request.method, target, host, header)
        if not candidates:
            return None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client = screening.peer_client(str(peer[0]) if peer else "", header)
        verdict = screening.decide(candidates, client, target, header, held)
        if verdict is None:
            return None
        if verdict.action == "close":
            if request.transport is not None:
                request.transport.close()
            resp = web.Response(status=verdict.status)
            resp.headers["Cache-Status"] = self._refused_status
            return resp
        # The fast path's bytes (`_refusal_wire`), but for Connection: close when due.
        head, body = refusal_head(verdict, format_http_date(time.time()))
        body = b"" if request.method == "HEAD" else body
        return SerializedResponse(verdict.status, head, body, None, self._refused_status)

    async def _dispatch(
        self, request: web.BaseRequest, held: list[int]
    ) -> tuple[web.StreamResponse, str]:
        handover = handover_of(request)
        if handover is not None:
            # Admitted, unscreened and sent to the origin by the fast path already.
            job = handover.take()
            if job is not None:
                return await job(request)
        refusal = self.admission.check(request) or self.admission.check_loop(request)
        if refusal is not None:
            return refusal, ""
        if self.screening.active:
            screened = self._screen(request, held)
            if screened is not None:
                return screened, ""
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

    # ------------------------------------------------------------------ forwarding

    def origin_headers(
        self, request: web.BaseRequest, extra: CIMultiDict[str] | None = None
    ) -> CIMultiDict[str]:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        headers = self._origin_headers(
            raw_pairs(request.raw_headers),
            peer[0] if peer else None,
            request_scheme(request),
            request.headers.get("Host", ""),
            request.version,
        )
        headers.popall("Expect", None)
        if extra:
            for k in extra:
                headers.popall(k, None)
            headers.extend(extra)
        return headers

    def plain_origin_headers(
        self, req: SimpleGet, scheme: str, remote: str | None
    ) -> CIMultiDict[str]:
        """`origin_headers` of a plain GET (edge.fasthit: no Expect) from `remote`: a copy
        of those made for the same fields, scheme and client before, if any."""
        headers = remembered(
            self._plain_origin,
            (req.raw, scheme, remote),
            lambda: self._origin_headers(req.raw, remote, scheme, req.host, (1, 1)),
            req,
        )
        return headers.copy()

    def _origin_headers(
        self,
        pairs: tuple[tuple[str, str], ...],
        client_ip: str | None,
        proto: str,
        host: str,
        version: tuple[int, int],
    ) -> CIMultiDict[str]:
        cfg = self.config.server
        return origin_request_headers(
            pairs,
            client_ip=client_ip,
            proto=proto,
            host=host,
            version=version,
            via=cfg.via,
            trusted=cfg.trusted_proxies,
            mode=cfg.forwarded,
            cdn_loop=cfg.node_id,
            strip=self._strip,
        )

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
    ) -> tuple[Origin, UpstreamResponse]:
        """Send a request to an origin; retry an idempotent, replayable one on another.

        Returns the origin and the response with headers read; the caller must call
        `finish_upstream` once the body is consumed.
        """
        tried: list[Origin] = []
        lean = self.origin_client if body is None and method in _LEAN_METHODS else None
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
            resp: UpstreamResponse
            try:
                if lean is not None:
                    resp = await lean.request(
                        origin.config.base,
                        method,
                        target,
                        list(headers.items()),
                        self._timeouts,
                        INTERIM.get(),
                    )
                else:
                    resp = await self._aiohttp_request(method, origin, target, headers, body)
                if not final_status_ok(resp.status):
                    resp.close()
                    raise OriginProtocolError("bad_status", f"status {resp.status}")
            except (
                aiohttp.ClientError,
                TimeoutError,
                OSError,
                RequestBodyTooLarge,
                OriginProtocolError,
                OriginConnectError,
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
            self.metrics.origin_latency.observe(origin.url, time.monotonic() - start)
            return origin, resp
        if failure is None:
            raise OriginFailure(503, "no_healthy_origin")
        raise failure

    async def _aiohttp_request(
        self, method: str, origin: Origin, target: str, headers: CIMultiDict[str], body: Any
    ) -> aiohttp.ClientResponse:
        resp = await self.session.request(
            method,
            URL(origin.config.base + target, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=self._timeout,
            compress=None,
            chunked=None,
            # skip_auto_headers: the session's (edge.app), not built per request.
        )
        coding = transfer_coding(resp.headers)
        if coding:
            # aiohttp undoes only chunked; the rest would reach clients (and the cache)
            # as if it were the body, Transfer-Encoding being hop-by-hop.
            resp.close()
            raise aiohttp.ClientPayloadError(f"unsupported transfer coding {coding!r}")
        return resp

    def finish_upstream(self, origin: Origin, resp: UpstreamResponse, ok: bool) -> None:
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
        INTERIM.set(interim_sender(request))
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
        out.headers.extend(self.response_headers(request, response_pairs(upstream)))
        out.headers["Cache-Status"] = self.cache_status_token("bypass")
        if self.cache is not None and request.method not in SAFE and upstream.status < 400:
            # Before the client sees the response, so its next request cannot hit the
            # entry this request invalidates.
            await self.cache.invalidate(request, target, out)
        await self.stream_down(request, out, upstream, origin)
        return out, origin.url

    def response_headers(
        self, request: web.BaseRequest, pairs: Sequence[tuple[str, str]]
    ) -> CIMultiDict[str]:
        return client_response_headers(pairs, version=request.version, via=self.config.server.via)

    async def stream_down(
        self,
        request: web.BaseRequest,
        out: web.StreamResponse,
        upstream: UpstreamResponse,
        origin: Origin,
    ) -> bool:
        """Copy the origin body to the client; True when complete."""
        # Without Content-Length aiohttp chunks for HTTP/1.1 and close-delimits for 1.0.
        try:
            await start_response(out, request)
            if not cp.bodyless(request.method, out.status):
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await send_body(out, chunk)
        except ClientGone:
            # The client went away: nothing the origin did wrong.
            self.finish_upstream(origin, upstream, ok=True)
            return False
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("origin %s body broke off: %r", origin.url, exc)
            self.finish_upstream(origin, upstream, ok=False)
            abort(request)
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
        chunks = self.request.content.iter_chunked(CHUNK)
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


def _translate(exc: BaseException) -> OriginFailure:
    if isinstance(exc, OriginProtocolError):
        return OriginFailure(502, exc.kind, str(exc))
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return OriginFailure(504, "timeout", str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError | OriginConnectError):
        return OriginFailure(502, "connect", str(exc))
    return OriginFailure(502, "broken", repr(exc))


# The request fields besides the plain GET's that the fast path answers from a hit.
_ANSWERED_FIELDS = frozenset({"range", "if-none-match", "if-modified-since"})


def _sent_bytes(resp: web.StreamResponse | None) -> int:
    if resp is None:
        return 0
    if isinstance(resp, SerializedResponse):
        return len(resp.payload)
    if resp.prepared:
        return resp.body_length
    return resp.content_length or 0


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background job %s failed", task.get_coro(), exc_info=exc)


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


# Cache-Status details of requests refused before the cache (edge.admission).
_REFUSALS = ('detail="refused"', 'detail="loop"', 'detail="too-many-hops"')
