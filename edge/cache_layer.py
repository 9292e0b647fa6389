"""Cache orchestration: answering a request from the store, or through a fill from the
origin (collapsed misses, revalidation, stale-if-error, background refresh, ranges), and
keeping the store in step with unsafe requests and purges. Decisions come from
edge.cache_policy; origin requests go through the proxy (`Upstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from edge import cache_policy as cp
from edge import compression, conditional, ranges
from edge.aiohttp_internals import (
    INTERIM,
    SerializedResponse,
)
from edge.cache_control import field_values
from edge.config import EdgeConfig
from edge.errors import (
    ClientGone,
    ConfigError,
    CorruptBodyError,
    OriginFailure,
    StoreError,
)
from edge.exchange import (
    CHUNK,
    abort,
    bodyless,
    interim_sender,
    origin_form,
    phrase,
    raw_pairs,
    request_scheme,
    send_body,
    start_response,
    status_response,
)
from edge.fill import Fill, Lead
from edge.headers import (
    client_response_headers,
    end_to_end,
    octet_text,
    wire_text,
)
from edge.origins import Origin
from edge.store import BodyWriter, Store

log = logging.getLogger("edge.cache")


class Upstream(Protocol):
    """What the cache layer asks of the proxy: origin requests and background jobs."""

    def origin_headers(
        self, request: web.BaseRequest, extra: CIMultiDict[str] | None = None
    ) -> CIMultiDict[str]: ...

    async def open_upstream(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Any,
        key: str,
        replayable: bool,
    ) -> tuple[Origin, aiohttp.ClientResponse]: ...

    def finish_upstream(self, origin: Origin, resp: aiohttp.ClientResponse, ok: bool) -> None: ...

    async def forward(
        self, request: web.BaseRequest, target: str
    ) -> tuple[web.StreamResponse, str]: ...

    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...


# Bodies up to this size are read from disk on the event loop (a page-cache read costs less
# than the hop to a thread); bigger ones in a thread.
_INLINE_READ_MAX = 64 * 1024
_PRECONDITIONS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


def _has_directives(request: web.BaseRequest) -> bool:
    headers = request.headers
    return "Cache-Control" in headers or "Pragma" in headers


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


def _apply_span(headers: CIMultiDict[str], sp: ranges.Span) -> None:
    """Set a ranges.Span's fields on a response's `headers` (a 416 has no Content-Length)."""
    if sp.status == 416:
        headers.popall("Content-Length", None)
    for name, value in sp.fields:
        headers[name] = value


def _unsatisfiable(headers: CIMultiDict[str], sp: ranges.Span) -> web.Response:
    """The 416 of a Range no part of which fits, with the response's other fields."""
    out = CIMultiDict(headers)
    _apply_span(out, sp)
    return web.Response(status=416, headers=out)


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
        self._prepared: dict[tuple[Any, ...], list[tuple[str, str]]] = {}
        # Prepared hit heads live in the store's memory tier (bounded with it, evicted with
        # the entries they belong to); the generation keeps a reload's heads apart.
        self._head_generation = 0
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
        self._head_generation += 1
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
            scheme=request_scheme(request),
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
        self, proxy: Upstream, request: web.BaseRequest, target: str
    ) -> tuple[web.StreamResponse, str]:
        if request.body_exists:
            return await proxy.forward(request, target)
        headers = request.headers
        key = cp.cache_key(request_scheme(request), headers.get("Host", ""), target)
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
        ident = (
            f"h:{self._head_generation}\x1f{entry.key}\x1f{entry.variant}"
            f"\x1f{entry.sha256}\x1f{entry.response_time!r}"
        )
        head: bytes | None = self.store.recall(ident)
        if head is None:
            reason = entry.reason or phrase(entry.status)
            lines = [f"HTTP/1.1 {entry.status} {reason}\r\n"]
            lines.extend(f"{k}: {v}\r\n" for k, v in self._base_headers(entry, (1, 1)))
            lines.append(f"Content-Length: {entry.body_length}\r\n")
            # The values are in aiohttp's form (headers.wire_text): encoded as it would.
            head = "".join(lines).encode("utf-8", "replace")
            self.store.remember(ident, head, len(head) + len(ident) + 64)
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
        sp = ranges.span(decision, entry.status, length)
        if sp.status == 416:
            return _unsatisfiable(headers, sp)
        _apply_span(headers, sp)
        part = body if sp.last is None else body[sp.first : sp.last + 1]
        reason = (entry.reason or None) if sp.status == entry.status else None
        return web.Response(status=sp.status, reason=reason, headers=headers, body=part)

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
        sp = ranges.span(decision, entry.status, entry.body_length)
        if sp.status == 416:
            reader.close()
            return _unsatisfiable(headers, sp)
        start = sp.first
        end = entry.body_length - 1 if sp.last is None else sp.last
        _apply_span(headers, sp)
        reason = (entry.reason or None) if sp.status == entry.status else None
        out = web.StreamResponse(status=sp.status, reason=reason, headers=headers)
        try:
            await out.prepare(request)
            pos = 0
            while True:
                chunk = await asyncio.to_thread(reader.read_chunk, CHUNK)
                if not chunk:
                    break
                lo, hi = max(start - pos, 0), min(end + 1 - pos, len(chunk))
                pos += len(chunk)
                if lo < hi:
                    await out.write(chunk[lo:hi])
            await out.write_eof()
        except CorruptBodyError:
            log.warning("damaged body for %s detected while streaming; connection cut", entry.key)
            abort(request)
        except ConnectionError:
            pass
        finally:
            reader.close()
        return out

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
        sp = ranges.span(rng, entry.status, fill.length)
        if sp.status == 416:
            return _unsatisfiable(headers, sp)
        first, last, status = sp.first, sp.last, sp.status
        _apply_span(headers, sp)
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
        proxy: Upstream,
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
                resp = await self._from_cache(
                    request, creq, stale, stale.age(self.clock()), cstatus
                )
                if resp is not None:
                    return resp, ""
            return status_response(
                exc.status, cp.cache_status(self.name, fwd=fwd, detail=exc.kind)
            ), ""
        status = upstream.status
        pairs = raw_pairs(upstream.raw_headers)
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
            too_big=self._too_big(request.method, pairs),
        )
        if outcome == "choose-variant":
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
        if outcome == "freshen" and stale is not None:
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
        if outcome == "freshen-from-head" and stale is not None:
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
        if outcome == "serve-stale" and stale is not None:
            proxy.finish_upstream(origin, upstream, ok=False)
            cstatus = cp.cache_status(
                self.name, hit=True, fwd_status=status, detail="stale-if-error"
            )
            resp = await self._from_cache(request, creq, stale, stale.age(self.clock()), cstatus)
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
        if not (delimited or bodyless(creq.method, status)):
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
        proxy: Upstream,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        origin: Origin,
        upstream: aiohttp.ClientResponse,
        pairs: tuple[tuple[str, str], ...],
        fwd: str,
        t_req: float,
        t_resp: float,
        lead: Lead | None = None,
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
        no_body = bodyless(request.method, status)
        # Without on-the-fly compression, the Content-Length the origin sent.
        length = _declared_length(creq.method, out_pairs) if comp is None else None
        rng: ranges.RangeDecision = ranges.Full()
        if ranged and length is not None:
            rng = ranges.evaluate("GET", status, creq.headers, out_pairs, length)
        # The origin's own Content-Length stands for a whole response (length None).
        sp = ranges.span(rng, status, None)
        first, last = sp.first, sp.last
        if sp.status == 206:
            out.set_status(206)
            _apply_span(out.headers, sp)
        fill = None
        if writer is not None and not no_body:
            entry = self._entry_for(creq, upstream, out_pairs, t_req, t_resp)
            try:
                fill = Fill(writer, entry, length)
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
            if sp.status == 416:
                fill.leave_unread()
                return _unsatisfiable(out.headers, sp), origin.url
            await fill.send(out, request, first, last)
            return out, origin.url
        if writer is None and lead is not None:
            lead.settle()  # nothing will be stored: followers need not wait for this body
        if sp.status == 416:
            upstream.close()
            proxy.finish_upstream(origin, upstream, ok=True)
            return _unsatisfiable(out.headers, sp), origin.url
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

    async def _run_fill(
        self,
        proxy: Upstream,
        fill: Fill,
        origin: Origin,
        upstream: aiohttp.ClientResponse,
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
        pairs = raw_pairs(upstream.raw_headers)
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
            max_object_bytes=c.max_object_bytes,
        )

    try:
        store = await asyncio.to_thread(build)
    except StoreError as exc:
        raise ConfigError(config.source, "cache.dir", str(exc)) from None
    return CacheLayer(store, config)
