"""Cache orchestration: answering a request from the store, or through a fill from the
origin (collapsed misses, revalidation, stale-if-error, background refresh, ranges), and
keeping the store in step with unsafe requests and purges. Decisions come from
edge.cache_policy; origin requests go through the proxy (`Upstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from edge import cache_policy as cp
from edge import compression, conditional, ranges
from edge import freshness as fr
from edge.aiohttp_internals import (
    INTERIM,
    Handover,
    RawHeaders,
    SerializedResponse,
)
from edge.cache_control import Fields, as_fields, field_values
from edge.config import EdgeConfig
from edge.errors import (
    ClientGone,
    ConfigError,
    OriginFailure,
    StoreError,
)
from edge.exchange import (
    CHUNK,
    abort,
    interim_head,
    interim_sender,
    origin_form,
    phrase,
    raw_pairs,
    request_scheme,
    response_pairs,
    send_body,
    start_response,
    status_response,
)
from edge.fasthit import SimpleGet
from edge.fill import Fill, GroupCommit, Lead
from edge.head_shapes import Shape, ShapeMemo
from edge.headers import (
    client_response_fields,
    head_end,
    response_head,
    wire_text,
)
from edge.hits import PRECONDITIONS, Hits, apply_span, unsatisfiable
from edge.origin_client import UpstreamResponse
from edge.origins import Origin
from edge.store import BodyWriter, Store, purge_names
from geoedge.http import SERVER

log = logging.getLogger("edge.cache")

# A storable body of a known length up to this is read whole before it is sent (a TCP
# read or two from the origin) and stored without a Fill (_fill_whole); bigger ones stream.
WHOLE_FILL_MAX = CHUNK
# The sets of request fields remembered for plain GETs (_plain_request_fields, and the
# proxy's origin fields of them): at most this many, then afresh, and only sets of up to
# PLAIN_FIELDS_BYTES (as fasthit counts them): a few MiB at most.
PLAIN_FIELDS_MAX = 1024
PLAIN_FIELDS_BYTES = 2048

K = TypeVar("K")
V = TypeVar("V")


def remembered(memo: dict[K, V], key: K, make: Callable[[], V], req: SimpleGet) -> V:
    """`memo[key]`, made when missing, and kept when `req`'s fields are small (a memo of
    a plain GET's fields: PLAIN_FIELDS_MAX, PLAIN_FIELDS_BYTES)."""
    value = memo.get(key)
    if value is None:
        value = make()
        if req.field_bytes <= PLAIN_FIELDS_BYTES:
            if len(memo) >= PLAIN_FIELDS_MAX:
                memo.clear()
            memo[key] = value
    return value


class _Plan(NamedTuple):
    """What becomes of an origin's response to a GET or HEAD (CacheLayer._plan)."""

    out_pairs: tuple[tuple[str, str], ...]  # its fields as sent and stored
    comp: compression.Compressor | None  # compressing it on the fly, if so
    storable: cp.Storability
    writer: BodyWriter | None  # storing it, if it may be stored
    # The body length a GET's response declares, when it is also the length sent (no
    # compression on the fly).
    length: int | None
    shape: Shape | None  # the head's decisions by position (edge.head_shapes), if so

    def whole(self, method: str, status: int) -> bool:
        """Whether the body is read whole, stored, and sent in one write (_take_whole):
        storable, of a declared length up to WHOLE_FILL_MAX."""
        length = self.length
        return (
            self.writer is not None
            and not cp.bodyless(method, status)
            and length is not None
            and length <= WHOLE_FILL_MAX
        )


class Upstream(Protocol):
    """What the cache layer asks of the proxy: origin requests and background jobs."""

    def origin_headers(
        self, request: web.BaseRequest, extra: CIMultiDict[str] | None = None
    ) -> CIMultiDict[str]: ...

    def plain_origin_headers(
        self, req: SimpleGet, scheme: str, remote: str | None
    ) -> CIMultiDict[str]: ...

    async def open_upstream(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Any,
        key: str,
        replayable: bool,
    ) -> tuple[Origin, UpstreamResponse]: ...

    def finish_upstream(self, origin: Origin, resp: UpstreamResponse, ok: bool) -> None: ...

    async def forward(
        self, request: web.BaseRequest, target: str
    ) -> tuple[web.StreamResponse, str]: ...

    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...


def _has_directives(request: web.BaseRequest) -> bool:
    headers = request.headers
    return "Cache-Control" in headers or "Pragma" in headers


@dataclass(frozen=True, slots=True)
class Answered:
    """A plain miss answered by the fast path: the response's status, wire bytes, body
    length, and the origin that answered (for the metrics and the access log)."""

    status: int
    wire: list[bytes]
    sent: int
    origin: str


def handing(target: str, response: web.StreamResponse) -> Handover:
    """A Handover whose job is answering `response` (nothing held)."""

    async def run(request: web.BaseRequest) -> tuple[web.StreamResponse, str]:
        return response, ""

    return Handover(target, run, lambda: None)


def _interim_writer(write: Callable[[bytes], None]) -> Callable[[int, RawHeaders], Awaitable[None]]:
    """The 1xx sender (INTERIM) of a plain miss, whose client speaks HTTP/1.1."""

    async def send(code: int, raw_headers: RawHeaders) -> None:
        write(interim_head(code, raw_headers))

    return send


def _miss_head(upstream: UpstreamResponse, fields: list[tuple[str, str]], length: int) -> bytes:
    """The head of a whole fill's response (no Cache-Status, no final empty line): its
    `fields`, with what aiohttp adds to a response it serializes (StreamResponse's
    _prepare_headers): Content-Type for a body, Date and Server (ours, geoedge.http) when
    missing."""
    names = {k.lower() for k, _ in fields}
    if "cache-status" in names:
        # Ours replaces the origin's, as on the full handler's other responses.
        fields = [(k, v) for k, v in fields if k.lower() != "cache-status"]
    added = []
    if length and "content-type" not in names:
        added.append(("Content-Type", "application/octet-stream"))
    if "date" not in names:
        added.append(("Date", fr.format_http_date(time.time())))
    if "server" not in names:
        added.append(("Server", SERVER))
    status, reason = upstream.status, upstream.reason
    return response_head(status, phrase(status) if reason is None else reason, fields + added)


def _purge_target(kind: str, value: str) -> str:
    """What a purge of `kind` names in the store's terms: a URL's cache key, the cache-key
    prefix of a URL prefix (a bare path prefix as given), or the surrogate key itself."""
    if kind == "url":
        parts = urlsplit(value)
        return cp.cache_key(parts.scheme or "http", parts.netloc, origin_form(value))
    if kind == "prefix":
        parts = urlsplit(value)
        if not (parts.scheme and parts.netloc):
            return value
        prefix = cp.cache_key(parts.scheme, parts.netloc, parts.path or "/")
        return prefix if parts.path else prefix[:-1]
    return value


def _bytes_range(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether request `headers` carry exactly one Range field, in bytes."""
    values = field_values(headers, "range")
    return len(values) == 1 and values[0].lstrip().lower().startswith("bytes=")


# ---------------------------------------------------------------------------- caching


class CacheLayer:
    """The cache in the request path: lookups, hits, revalidation, misses with collapsing.

    Policy decisions come from edge.cache_policy (pure); storage is edge.store.Store, whose
    blocking calls run in a thread unless the object is in its memory tier.
    """

    def __init__(self, store: Store, config: EdgeConfig, clock: Any = time.time) -> None:
        self.store = store
        self.clock = clock
        self._inflight: dict[str, Lead] = {}
        self._refreshing: set[str] = set()
        self.hits = Hits(store, clock)
        self._commits = GroupCommit(store)
        self._purges: set[asyncio.Future[int]] = set()  # removals going on past their answer
        self.reconfigure(config)

    def reconfigure(self, config: EdgeConfig) -> None:
        c = config.cache
        self.config = config
        self._strip = frozenset(config.server.strip_request_headers)
        # A plain GET's fields as the cache reads them (_request_fields; Fields do not
        # change), by the fields received: clients send the same few sets over and over
        # (for the strip list just set).
        self._plain_fields: dict[tuple[tuple[str, str], ...], Fields] = {}
        self.name = config.server.cache_name
        self.via = config.server.via
        self.policy = cp.PolicyConfig(
            name=self.name,
            heuristic_max=c.heuristic_max,
            default_ttl=c.default_ttl or None,
            store_set_cookie=c.cache_set_cookie,
        )
        self.compression = config.compression
        self._shapes = ShapeMemo(self.policy, self.compression, self.via)
        self._collapse_wait = c.collapse_timeout
        self.hits.reconfigure(self.name, self.via)

    async def close(self) -> None:
        await self.hits.close()
        await self._commits.drained()
        if self._purges:
            log.info("waiting for %d purge(s) to end before closing the cache", len(self._purges))
            await asyncio.wait(set(self._purges))
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

    async def purge(self, kind: str, value: str, wait: float | None = None) -> int | None:
        """Remove every variant `kind` ("url", "prefix" or "surrogate_key") and `value`
        name, after this worker's pending commits; how many went. A fill of what it names
        that was asked of an origin before it is not stored when it ends, in this worker
        or another one (Store.purge), and later misses of it here ask the origin again
        rather than wait on such a fill.

        With `wait` (seconds), a removal still going on after that long goes on without
        the caller, who gets None: a purge of 100,000 objects takes about 10 s, longer
        than a fleet purge waits for an edge's answer. What a purge by prefix or tag names
        is no longer served from its start (Store.hide), its end is logged, and `close`
        waits for it."""
        started = time.monotonic()
        asked_before = self.clock()
        target = _purge_target(kind, value)
        if kind != "url":
            # Served no more from here on, whatever the wait for the commits and the write
            # lock (the store hides it in the other workers once it is recorded); nor
            # from a fill on its way (_forget_fills again once they are committed).
            await asyncio.to_thread(self.store.hide, kind, target, asked_before)
            self._forget_fills(kind, target)
        # The wait covers the commits before it too: with the write lock held elsewhere
        # they take as long as the removal does. The removal goes on should the caller go
        # away (a hidden purge is removed, not left hidden), and close waits for it.
        removal = asyncio.ensure_future(self._remove_purged(kind, target, asked_before))
        self._purges.add(removal)
        removal.add_done_callback(self._purges.discard)
        given = 0.0 if wait is None else wait
        removal.add_done_callback(
            lambda ended: self._purge_ended(ended, kind, value, started, given)
        )
        if wait is None:
            return await asyncio.shield(removal)
        done, _ = await asyncio.wait({removal}, timeout=max(0.0, started + wait - time.monotonic()))
        return removal.result() if done else None

    async def _remove_purged(self, kind: str, target: str, asked_before: float) -> int:
        await self._commits.drained()  # committed, so taken out (and counted) below
        self._forget_fills(kind, target)
        return await asyncio.to_thread(self.store.purge, kind, target, asked_before)

    def _purge_ended(
        self, removal: asyncio.Future[int], kind: str, value: str, t0: float, wait: float
    ) -> None:
        """A purge ended: the log says how it went if it went on past its answer (`wait`,
        0 without one: every purge; a failure before the answer was the answer)."""
        took = time.monotonic() - t0
        if removal.cancelled():
            log.error("purge of %s %s cancelled after %.1f s", kind, value, took)
        elif (exc := removal.exception()) is not None:
            if took >= wait:
                log.error("purge of %s %s failed after %.1f s: %s", kind, value, took, exc)
        elif took >= wait:
            removed = removal.result()
            log.info(
                "purge of %s %s done in %.1f s: %d variant(s) removed", kind, value, took, removed
            )

    def _forget_fills(self, kind: str, target: str) -> None:
        """The misses in flight a purge (or an invalidation) of `kind` and `target` names
        no longer lead later ones (each still answers its own client; the store refuses
        its fill)."""
        for key, lead in list(self._inflight.items()):
            tags = () if lead.fill is None else lead.fill.entry.surrogate_keys
            if purge_names(kind, target, key, tags):
                del self._inflight[key]

    async def invalidate(
        self, request: web.BaseRequest, target: str, resp: web.StreamResponse
    ) -> None:
        creq = self._cache_request(request, target)
        keys = cp.invalidation_keys(creq, resp.status, tuple(resp.headers.items()))
        asked_before = self.clock()
        if keys:
            await self._commits.drained()
        for key in keys:
            self._forget_fills("url", key)
        for key in keys:
            try:
                await asyncio.to_thread(self.store.purge, "url", key, asked_before)
            except StoreError as exc:
                log.error("cache invalidation of %s failed: %s", key, exc)

    # ------------------------------------------------------------------ store access

    async def _variants(self, key: str) -> tuple[cp.CacheEntry, ...]:
        entries = self.store.peek_variants(key)
        if entries is None:
            entries = self.store.variants(key)  # one small row: read on the loop
        return entries

    # ------------------------------------------------------------------ entry point

    def _cache_request(self, request: web.BaseRequest, target: str) -> cp.CacheRequest:
        # What the origin is sent: a field the client named in Connection never reaches
        # it, so it must not select (Vary) or qualify (Authorization) a stored response.
        # As octets (latin-1, as Proxy.origin_headers reads them), like the origin's
        # fields: a client's If-None-Match with the bytes of a stored ETag must match it
        # whatever those bytes are. Nor do the fields server.strip_request_headers keeps
        # from the origin. As Fields: the policy reads them by name several times.
        return cp.CacheRequest(
            method=request.method,
            scheme=request_scheme(request),
            authority=request.headers.get("Host", ""),
            target=target,
            headers=self._request_fields(raw_pairs(request.raw_headers)),
        )

    def plain_request_fields(self, req: SimpleGet) -> Fields:
        """A plain GET's fields as `_cache_request` reads a request's (edge.fasthit)."""
        return remembered(self._plain_fields, req.raw, lambda: self._request_fields(req.raw), req)

    def _request_fields(self, pairs: tuple[tuple[str, str], ...]) -> Fields:
        headers = conditional.strip_hop_by_hop(as_fields(pairs))
        return headers.without(self._strip) if self._strip else headers

    async def serve(
        self, proxy: Upstream, request: web.BaseRequest, target: str
    ) -> tuple[web.StreamResponse, str]:
        if request.body_exists:
            return await proxy.forward(request, target)
        headers = request.headers
        creq = self._cache_request(request, target)
        entries = await self._variants(creq.key)
        now = self.clock()
        # The common hit (no request directives): cp.plain_fresh, the one decision every
        # hit path makes; anything else goes to cp.lookup.
        decision: cp.Decision | None = None
        if not _has_directives(request):
            decision = cp.plain_fresh(entries, now)
        if decision is None:
            decision = cp.lookup(creq, entries, now, self.policy)
        if isinstance(decision, cp.Fresh):
            status = cp.cache_status(self.name, hit=True, ttl=decision.ttl)
            resp = await self.hits.answer(request, creq, decision.entry, decision.age, status)
            if resp is not None:
                return resp, ""
            decision = cp.Miss("uri-miss")
        if isinstance(decision, cp.Stale):
            entry = decision.entry
            if decision.background:
                self._refresh_later(proxy, request, creq, target, entry)
                status = cp.decision_status(decision, self.name)
                resp = await self.hits.answer(request, creq, entry, decision.age, status)
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
            and not any(name in headers for name in PRECONDITIONS)
        ):
            # None of the stored variants matches, but the origin may well answer with one
            # of them: offer all their validators (RFC 9111 §4.3.1) so it can say 304.
            variants = entries
        return await self._collapsed_fetch(proxy, request, creq, target, decision.fwd, variants)

    def plain_miss(
        self,
        proxy: Upstream,
        key: str,
        req: SimpleGet,
        scheme: str,
        remote: str | None,
        write: Callable[[bytes], None],
    ) -> Coroutine[Any, Any, Answered | Handover] | None:
        """The raw fast path's miss (edge.fasthit): a plain GET of primary key `key` with
        nothing stored under it, no miss of it in flight, and no credentials; None when
        `serve` must answer it. The coroutine (to be run at once) leads the key's
        collapsed misses as `_collapsed_fetch` does, and answers as `_fetch` would: itself
        for a storable body of a declared length up to WHOLE_FILL_MAX (the common miss),
        else by handing the response over to the full handler. `write` sends the client
        the origin's 1xx interim responses."""
        if key in self._inflight or any(name == "authorization" for name, _ in req.headers):
            return None
        entries = self.store.peek_variants(key)
        if entries is None:
            entries = self.store.variants(key)
        if entries:
            return None
        lead = Lead(self._inflight, key)
        self._inflight[key] = lead
        return self._plain_fetch(proxy, lead, req, scheme, remote, write)

    async def _plain_fetch(
        self,
        proxy: Upstream,
        lead: Lead,
        req: SimpleGet,
        scheme: str,
        remote: str | None,
        write: Callable[[bytes], None],
    ) -> Answered | Handover:
        fwd = "uri-miss"
        owned = True  # the lead is this coroutine's to settle (until handed on)
        try:
            INTERIM.set(_interim_writer(write))
            asked = self.plain_request_fields(req)
            creq = cp.CacheRequest("GET", scheme, req.host, req.target, asked)
            headers = proxy.plain_origin_headers(req, scheme, remote)
            try:
                origin, upstream, t_req, t_resp = await self._open(
                    proxy, "GET", req.target, headers, lead.key
                )
            except OriginFailure as exc:
                failed = status_response(
                    exc.status, cp.cache_status(self.name, fwd=fwd, detail=exc.kind)
                )
                return handing(req.target, failed)
            status = upstream.status
            pairs = response_pairs(upstream)
            try:
                plan = self._plan(creq, status, pairs, t_req, t_resp)
            except BaseException:
                # Not the origin's doing: its connection goes, its health stays.
                upstream.close()
                proxy.finish_upstream(origin, upstream, ok=True)
                raise
            if not plan.whole("GET", status):
                owned = False
                return self._hand_over(
                    proxy,
                    req.target,
                    creq,
                    origin,
                    upstream,
                    pairs,
                    fwd,
                    (t_req, t_resp),
                    lead,
                    plan,
                )
            owned = False  # _take_whole settles it
            took = await self._take_whole(proxy, plan, creq, origin, upstream, lead, t_req, t_resp)
            if took is None:
                return handing(req.target, self._broke_off(fwd))
            body, stored = took
            fields = self._client_fields(plan, (1, 1))
            cstatus = cp.cache_status(self.name, fwd=fwd, fwd_status=status, stored=stored)
            head = _miss_head(upstream, fields, len(body)) + head_end(cstatus)
            return Answered(status, [head, body], len(body), origin.url)
        finally:
            if owned:
                lead.settle()

    def _hand_over(
        self,
        proxy: Upstream,
        target: str,
        creq: cp.CacheRequest,
        origin: Origin,
        upstream: UpstreamResponse,
        pairs: tuple[tuple[str, str], ...],
        fwd: str,
        times: tuple[float, float],
        lead: Lead,
        plan: _Plan,
    ) -> Handover:
        """A plain miss's response the full handler answers (_stream_and_store, as
        `_collapsed_fetch` would have): it holds the origin's response and `lead` until
        then, and lets them go should it never come to it."""

        async def run(request: web.BaseRequest) -> tuple[web.StreamResponse, str]:
            try:
                return await self._stream_and_store(
                    proxy, request, creq, origin, upstream, pairs, fwd, *times, lead, False, plan
                )
            finally:
                if not lead.handed_over:
                    lead.settle()

        def abandon() -> None:
            upstream.close()
            proxy.finish_upstream(origin, upstream, ok=True)
            if plan.writer is not None:
                plan.writer.abort()
            lead.settle()

        return Handover(target, run, abandon)

    # ------------------------------------------------------------------ misses

    async def _collapsed_fetch(
        self,
        proxy: Upstream,
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
        if leader is not None and leader.answered:
            # Its response is being committed: answered as once it is (the entry may well
            # be stale on arrival, so revalidated), or else from the origin.
            self._commits.hurry()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(leader.done), self._collapse_wait)
            if leader.done.done():
                return await self.serve(proxy, request, target)
            return await self._fetch(proxy, request, creq, target, fwd, None, variants)
        if leader is not None:
            return await self._follow(proxy, request, creq, target, fwd, leader)
        lead = Lead(self._inflight, key)
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
        proxy: Upstream,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        target: str,
        fwd: str,
        leader: Lead,
    ) -> tuple[web.StreamResponse, str]:
        """A miss collapsed onto `leader`'s: wait (up to collapse_timeout) for its response
        head, then read its body from the fill as it arrives when that response may answer
        this request; otherwise wait on (within the same collapse_timeout) for it to be
        stored and answer from the cache, or else ask the origin."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._collapse_wait
        leader.awaited = True  # its commit, once asked for, goes at once (_take_whole)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(leader.ready), self._collapse_wait)
        if leader.fill is not None and self.store.purged(leader.fill.entry):
            # Purged through another worker since its origin request: what it carries is
            # not for requests made since, nor for the ones after this (it will not be
            # stored either, Store.purge).
            if self._inflight.get(creq.key) is leader:
                del self._inflight[creq.key]
            return await self._fetch(proxy, request, creq, target, fwd, None)
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
            resp = await self.hits.answer(request, creq, decision.entry, decision.age, status)
            if resp is not None:
                return resp, ""
        return await self._fetch(proxy, request, creq, target, fwd, None)

    async def _from_fill(
        self, request: web.BaseRequest, creq: cp.CacheRequest, fill: Fill
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
        if any(name in request_headers for name in PRECONDITIONS):
            return None
        rng: ranges.RangeDecision = ranges.Full()
        if "Range" in request_headers:
            if fill.length is None:
                return None  # answered from the cache once stored, with its length
            rng = ranges.evaluate("GET", entry.status, creq.headers, entry.headers, fill.length)
        headers = CIMultiDict(self.hits.base_headers(entry, request.version))
        headers["Age"] = str(cp.age_value(decision.age))
        headers["Cache-Status"] = cp.cache_status(
            self.name, hit=True, ttl=decision.ttl, collapsed=True, detail="filling"
        )
        sp = ranges.span(rng, entry.status, fill.length)
        if sp.status == 416:
            return unsatisfiable(headers, sp)
        first, last, status = sp.first, sp.last, sp.status
        apply_span(headers, sp)
        reason = (entry.reason or None) if status == entry.status else None
        out = web.StreamResponse(status=status, reason=reason, headers=headers)
        if not fill.join():
            return None
        if not await fill.send(out, request, first, last, leader=False):
            return "failed"
        return out

    def _refresh_later(
        self,
        proxy: Upstream,
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
        # As Fields: the decisions that follow (storability, the entry, the client's
        # copy) read them by name many times.
        head = as_fields(pairs)
        opts = self.compression
        if not opts.enabled:
            return head, None
        cl = field_values(head, "content-length")
        length = int(cl[0]) if cl and cl[0].isdigit() else None
        if not compression.should_compress(status, creq.method, head, length, opts):
            return head, None
        ae = field_values(creq.headers, "accept-encoding")
        coding = compression.negotiate(", ".join(ae) if ae else None)
        if coding in ("br", "gzip"):
            comp = compression.compressor(coding, opts)
            return as_fields(compression.compressed_headers(head, coding)), comp
        return as_fields(compression.add_vary(head)), None

    async def _open(
        self,
        proxy: Upstream,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        key: str,
    ) -> tuple[Origin, UpstreamResponse, float, float]:
        request_time = self.clock()
        origin, upstream = await proxy.open_upstream(method, target, headers, None, key, True)
        return origin, upstream, request_time, self.clock()

    async def _fetch(
        self,
        proxy: Upstream,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        target: str,
        fwd: str,
        stale: cp.CacheEntry | None,
        variants: Sequence[cp.CacheEntry] = (),
        lead: Lead | None = None,
        *,
        whole: bool = False,
    ) -> tuple[web.StreamResponse, str]:
        """Forward a GET/HEAD (revalidating `stale` if given, or else offering the
        validators of the non-matching stored `variants`), stream it, maybe store it.
        `lead` is the collapsed miss this fetch answers, if it is one; `whole`: ask for the
        whole object, without the client's Range and If-Range."""
        INTERIM.set(interim_sender(request))
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
                resp = await self.hits.answer(
                    request, creq, stale, stale.age(self.clock()), cstatus
                )
                if resp is not None:
                    return resp, ""
            return status_response(
                exc.status, cp.cache_status(self.name, fwd=fwd, detail=exc.kind)
            ), ""
        status = upstream.status
        pairs = response_pairs(upstream)
        outcome = cp.after_fetch(
            method=request.method,
            status=status,
            revalidating=stale is not None,
            offered_variants=bool(variants),
            stale_if_error=stale is not None
            and status >= 500
            and cp.stale_on_error_ok(
                stale, creq.headers, self.clock(), disconnected=False, config=self.policy
            ),
            ranged=ranged,
            too_big=self._too_big(cp.declared_length(request.method, pairs)),
        )
        if outcome == "choose-variant":
            proxy.finish_upstream(origin, upstream, ok=True)
            chosen = await self._freshen_variant(creq, variants, pairs, t_req, t_resp)
            if chosen is not None:
                cstatus = cp.cache_status(
                    self.name, fwd=fwd, fwd_status=304, ttl=chosen.ttl(self.clock())
                )
                resp = await self.hits.answer(
                    request, creq, chosen, chosen.age(self.clock()), cstatus
                )
                if resp is not None:
                    return resp, origin.url
            return await self._fetch(proxy, request, creq, target, fwd, None, (), lead, whole=whole)
        if outcome == "freshen" and stale is not None:
            proxy.finish_upstream(origin, upstream, ok=True)
            updated = cp.freshen(
                stale, pairs, request_time=t_req, response_time=t_resp, config=self.policy
            )
            await asyncio.to_thread(self.store.update, updated)
            cstatus = cp.cache_status(
                self.name, fwd="stale", fwd_status=304, ttl=updated.ttl(self.clock())
            )
            resp = await self.hits.answer(
                request, creq, updated, updated.age(self.clock()), cstatus
            )
            if resp is not None:
                return resp, origin.url
            return await self._fetch(proxy, request, creq, target, "uri-miss", None)
        if outcome == "freshen-from-head" and stale is not None:
            from_head = self._freshen_from_head(stale, pairs, t_req, t_resp)
            if from_head is not None:
                proxy.finish_upstream(origin, upstream, ok=True)
                await asyncio.to_thread(self.store.update, from_head)
                cstatus = cp.cache_status(self.name, fwd="stale", fwd_status=200)
                resp = await self.hits.answer(
                    request, creq, from_head, from_head.age(self.clock()), cstatus
                )
                if resp is not None:
                    return resp, origin.url
        if outcome == "serve-stale" and stale is not None:
            proxy.finish_upstream(origin, upstream, ok=False)
            cstatus = cp.cache_status(
                self.name, hit=True, fwd_status=status, detail="stale-if-error"
            )
            resp = await self.hits.answer(request, creq, stale, stale.age(self.clock()), cstatus)
            if resp is not None:
                return resp, origin.url
        if outcome == "refetch-range":
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

    def _plan(
        self,
        creq: cp.CacheRequest,
        status: int,
        pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
    ) -> _Plan:
        """What becomes of an origin's response: the fields sent and stored, the
        compressor, whether it may be stored and the writer storing it."""
        shape = self._shapes.shape(creq, status, pairs, t_req, t_resp)
        if shape is not None:
            storable = shape.storability(pairs, t_req, t_resp)
            length = shape.length(pairs)
            writer = None
            if storable.storable and shape.writable and not self._too_big(length):
                writer = self.store.writer()
            return _Plan(Fields(pairs), None, storable, writer, length, shape)
        pairs = as_fields(pairs)  # read by name all along: indexed once
        out_pairs, comp = self._compression_plan(creq, status, pairs)
        storable, writer = self._store_writer(creq, status, pairs, out_pairs, t_req, t_resp)
        length = cp.declared_length(creq.method, out_pairs) if comp is None else None
        return _Plan(out_pairs, comp, storable, writer, length, None)

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
        # A close-delimited body cut short looks complete: never stored.
        if not (cp.delimited(pairs) or cp.bodyless(creq.method, status)):
            return storable, None
        # Known to outgrow max_object_bytes: the writer would only give up half-way, cutting
        # off the collapsed misses reading from the fill by then.
        if self._too_big(cp.declared_length(creq.method, out_pairs)):
            return storable, None
        return storable, self.store.writer()

    def _client_fields(self, plan: _Plan, version: tuple[int, int]) -> list[tuple[str, str]]:
        """The fields of `plan`'s response sent on to a client of HTTP `version`."""
        if plan.shape is not None:
            return plan.shape.sent(plan.out_pairs, version)
        return client_response_fields(plan.out_pairs, version=version, via=self.via)

    def _too_big(self, length: int | None) -> bool:
        """Whether a declared body `length` is longer than the store takes
        (max_object_bytes)."""
        limit = self.store.max_object_bytes
        return limit is not None and length is not None and length > limit

    def _entry_for(
        self,
        creq: cp.CacheRequest,
        upstream: UpstreamResponse,
        out_pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
        known: fr.Freshness | None = None,
        body: BodyWriter | None = None,
        shape: Shape | None = None,
    ) -> cp.CacheEntry:
        """The entry `out_pairs` will be stored under: its body's length and digest those
        of the whole body `body` holds, else unknown (filled in at commit). `known`: the
        freshness storability computed (cp.make_entry). `shape`: its plan's."""
        body_length = 0 if body is None else body.length
        sha256 = "0" * 64 if body is None else body.digest()
        reason = upstream.reason or ""
        if shape is not None:
            return shape.entry(
                creq,
                reason,
                out_pairs,
                request_time=t_req,
                response_time=t_resp,
                body_length=body_length,
                sha256=sha256,
                now=self.clock(),
                known=known,
            )
        return cp.make_entry(
            creq,
            upstream.status,
            reason,
            out_pairs,
            request_time=t_req,
            response_time=t_resp,
            body_length=body_length,
            sha256=sha256,
            now=self.clock(),
            config=self.policy,
            known=known,
        )

    async def _commit(
        self,
        writer: BodyWriter,
        creq: cp.CacheRequest,
        upstream: UpstreamResponse,
        out_pairs: tuple[tuple[str, str], ...],
        t_req: float,
        t_resp: float,
    ) -> cp.CacheEntry | None:
        """Store the body `writer` holds under the entry for `out_pairs` (made now, so
        stored now); the stored entry, or None."""
        entry = self._entry_for(creq, upstream, out_pairs, t_req, t_resp)
        return await self._commit_entry(writer, entry, cp.declared_length(creq.method, out_pairs))

    async def _commit_entry(
        self, writer: BodyWriter, entry: cp.CacheEntry, length: int | None
    ) -> cp.CacheEntry | None:
        """Store the body `writer` holds under `entry`; the stored entry, or None.

        When the stored fields carry a Content-Length (`length`; no on-the-fly compression),
        the body must have exactly that length: a second guard after aiohttp's own against
        an origin that closed early."""
        return await self._commits.commit(
            writer, entry, writer.length if length is None else length
        )

    async def _stream_and_store(
        self,
        proxy: Upstream,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        origin: Origin,
        upstream: UpstreamResponse,
        pairs: tuple[tuple[str, str], ...],
        fwd: str,
        t_req: float,
        t_resp: float,
        lead: Lead | None = None,
        ranged: bool = False,
        plan: _Plan | None = None,
    ) -> tuple[web.StreamResponse, str]:
        """Answer with the origin's response, filling it into the cache when storable.
        `ranged`: the client's Range was not sent to the origin, so a 200 of known length
        answers it here (206 or 416), and anything else goes out as it is. `plan`: the
        response's _plan, when made already."""
        status = upstream.status
        if plan is None:
            plan = self._plan(creq, status, pairs, t_req, t_resp)
        out_pairs, comp, storable, writer, length, shape = plan
        fields = self._client_fields(plan, request.version)
        no_body = cp.bodyless(request.method, status)
        rng: ranges.RangeDecision = ranges.Full()
        if ranged and length is not None:
            rng = ranges.evaluate("GET", status, creq.headers, out_pairs, length)
        # The origin's own Content-Length stands for a whole response (length None).
        sp = ranges.span(rng, status, None)
        if writer is not None and plan.whole(request.method, status) and sp.status == status:
            return await self._fill_whole(
                proxy, request, fields, plan, creq, origin, upstream, fwd, lead, t_req, t_resp
            )
        out = web.StreamResponse(status=status, reason=upstream.reason)
        out.headers.extend(fields)
        out.headers["Cache-Status"] = cp.cache_status(
            self.name,
            fwd=fwd,
            fwd_status=status,
            detail=None if storable.storable else storable.reason,
        )
        first, last = sp.first, sp.last
        if sp.status == 206:
            out.set_status(206)
            apply_span(out.headers, sp)
        fill = None
        if writer is not None and not no_body:
            entry = self._entry_for(creq, upstream, out_pairs, t_req, t_resp, shape=shape)
            fill = Fill(writer, entry, length)
        if fill is not None:
            # RFC 9211 `stored`: this response is being written to the cache.
            out.headers["Cache-Status"] = cp.cache_status(
                self.name, fwd=fwd, fwd_status=status, stored=True
            )
            if lead is not None:
                lead.filling(fill)
            proxy.spawn(self._run_fill(proxy, fill, origin, upstream, comp, lead))
            if sp.status == 416:
                fill.leave_unread()
                return unsatisfiable(out.headers, sp), origin.url
            await fill.send(out, request, first, last)
            return out, origin.url
        if writer is None and lead is not None:
            lead.settle()  # nothing will be stored: followers need not wait for this body
        if sp.status == 416:
            upstream.close()
            proxy.finish_upstream(origin, upstream, ok=True)
            return unsatisfiable(out.headers, sp), origin.url
        stop = None if last is None else last + 1
        pos = 0
        try:
            if not no_body:
                await start_response(out, request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    data = comp.compress(chunk) if comp is not None else chunk
                    if stop is not None:  # a range of an uncompressed body
                        data = data[max(first - pos, 0) : max(stop - pos, 0)]
                        pos += len(chunk)
                    if data:
                        await send_body(out, data)
                    if stop is not None and pos >= stop:
                        upstream.close()  # the rest is not wanted
                        break
                tail = comp.finish() if comp is not None else b""
                if tail:
                    await send_body(out, tail)
        except ClientGone:
            # The client went away; the origin did nothing wrong.
            proxy.finish_upstream(origin, upstream, ok=True)
            return out, origin.url
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("origin %s body broke off: %r", origin.url, exc)
            proxy.finish_upstream(origin, upstream, ok=False)
            abort(request)
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

    async def _fill_whole(
        self,
        proxy: Upstream,
        request: web.BaseRequest,
        fields: list[tuple[str, str]],
        plan: _Plan,
        creq: cp.CacheRequest,
        origin: Origin,
        upstream: UpstreamResponse,
        fwd: str,
        lead: Lead | None,
        t_req: float,
        t_resp: float,
    ) -> tuple[web.StreamResponse, str]:
        """A storable body of a known length up to WHOLE_FILL_MAX (_take_whole), sent with
        the head in one write (to an HTTP/1.1 client, the head serialized here from
        `fields`, as aiohttp would: _miss_head)."""
        took = await self._take_whole(proxy, plan, creq, origin, upstream, lead, t_req, t_resp)
        if took is None:
            return self._broke_off(fwd), origin.url
        body, stored = took
        status = upstream.status
        cstatus = cp.cache_status(self.name, fwd=fwd, fwd_status=status, stored=stored)
        if request.version != (1, 1):
            headers = CIMultiDict(fields)
            out = web.Response(status=status, reason=upstream.reason, headers=headers, body=body)
            out.headers["Cache-Status"] = cstatus
            return out, origin.url
        head = _miss_head(upstream, fields, len(body))
        return SerializedResponse(status, head, body, None, cstatus), origin.url

    def _broke_off(self, fwd: str) -> web.Response:
        """The 502 of a whole fill whose origin broke off before its body's end."""
        return status_response(
            502, cp.cache_status(self.name, fwd=fwd, detail="origin-body-broke-off")
        )

    async def _take_whole(
        self,
        proxy: Upstream,
        plan: _Plan,
        creq: cp.CacheRequest,
        origin: Origin,
        upstream: UpstreamResponse,
        lead: Lead | None,
        t_req: float,
        t_resp: float,
    ) -> tuple[bytes, bool] | None:
        """The storable body of a known length up to WHOLE_FILL_MAX that `plan` says to
        take whole (_Plan.whole), read whole from the origin and stored: the body and
        whether it went into the cache, or None when the origin broke off. No Fill: the
        body is in before anyone could read it back, so the first byte waits for the last
        (as with nginx's proxy_buffering), and an origin that breaks off gets the client a
        502, not a cut response. Collapsed misses wait for the commit and answer from the
        cache.

        The client is answered before the commit ends (GroupCommit.submit) unless commits
        are behind: requests for the key meanwhile follow `lead`, which settles when it
        ends, so none of them misses the entry; another worker process may, for as long as
        the commit takes."""
        writer, length = plan.writer, plan.length
        assert writer is not None and length is not None  # plan.whole says so
        committing: asyncio.Future[cp.CacheEntry | None] | None = None
        try:
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.info("origin %s body broke off: %r", origin.url, exc)
                proxy.finish_upstream(origin, upstream, ok=False)
                writer.abort()
                return None
            proxy.finish_upstream(origin, upstream, ok=True)
            stored = False
            if len(body) == length and writer.write(body):
                entry = self._entry_for(
                    creq,
                    upstream,
                    plan.out_pairs,
                    t_req,
                    t_resp,
                    plan.storable.freshness,
                    writer,
                    plan.shape,
                )
                if self._commits.behind:
                    stored = await self._commit_entry(writer, entry, length) is not None
                else:
                    committing = self._commits.submit(writer, entry, length)
                    stored = True
            else:
                writer.abort()
        finally:
            if lead is not None:
                if committing is None:
                    lead.settle()
                else:
                    lead.handed_over = lead.answered = True  # settled by the commit's end
                    if lead.awaited:
                        self._commits.hurry()  # a collapsed miss waits for this commit
                    committing.add_done_callback(lambda _: lead.settle())
        return body, stored

    async def _run_fill(
        self,
        proxy: Upstream,
        fill: Fill,
        origin: Origin,
        upstream: UpstreamResponse,
        comp: compression.Compressor | None,
        lead: Lead | None,
    ) -> None:
        """The task of a Fill: the origin body into the cache, at the origin's pace."""
        writer = fill.writer
        released = False
        try:
            wanted = True
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK):
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
        proxy: Upstream,
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
        pairs = response_pairs(upstream)
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
            async for chunk in upstream.content.iter_chunked(CHUNK):
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
            index_bytes=c.index_bytes,
            max_object_bytes=c.max_object_bytes,
        )

    try:
        store = await asyncio.to_thread(build)
    except StoreError as exc:
        raise ConfigError(config.source, "cache.dir", str(exc)) from None
    return CacheLayer(store, config)
