"""Answering from the cache: the hit path, wherever a stored entry is served from.

`hit_wire` gives the raw fast path (edge.fasthit) the wire bytes of a plain GET's fresh hit,
from memory or, for a small body, read from disk on the event loop; `answer` builds the
response of the full handler (conditionals, HEAD, ranges, bodies streamed from disk when
big). Both decide with edge.cache_policy (plain_fresh, age_value, cache_status) and answer
a Range with edge.ranges.span. Prepared heads (the status line and stored fields in their
client form) are kept in a bounded LRU beside the memory tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from edge import cache_policy as cp
from edge import conditional, ranges
from edge.aiohttp_internals import SerializedResponse, count_written
from edge.cache_control import Headers
from edge.errors import CorruptBodyError
from edge.exchange import CHUNK, abort, phrase, status_response
from edge.filebody import FileBody, send_file
from edge.headers import client_response_fields, head_end, response_head
from edge.store import Store

log = logging.getLogger("edge.cache")

# Bodies up to this size are read from disk on the event loop (a page-cache read costs less
# than the hop to a thread: about 15 µs for 100 KiB, against a hop's 50 µs and more); bigger
# ones in a thread.
INLINE_READ_MAX = 256 * 1024
PRECONDITIONS = frozenset({"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"})


def apply_span(headers: CIMultiDict[str], sp: ranges.Span) -> None:
    """Set a ranges.Span's fields on a response's `headers` (a 416 has no Content-Length)."""
    if sp.status == 416:
        headers.popall("Content-Length", None)
    for name, value in sp.fields:
        headers[name] = value


def unsatisfiable(headers: CIMultiDict[str], sp: ranges.Span) -> web.Response:
    """The 416 of a Range no part of which fits, with the response's other fields."""
    out = CIMultiDict(headers)
    apply_span(out, sp)
    return web.Response(status=416, headers=out)


# The conditions whose verdict Hits remembers: up to two fields (a browser sends one
# If-Modified-Since of 29 characters, or one If-None-Match of an ETag or two) of up to
# VERDICT_CONDITIONS_MAX characters in all, names included; others are evaluated each time.
# With VERDICTS_MAX verdicts the memo holds about 3 MiB at the very most.
VERDICT_CONDITIONS_MAX = 256
VERDICTS_MAX = 4096
# One entity-tag, quoted (strong or weak): an If-None-Match of exactly the stored ETag,
# so formed, matches it whatever else is stored (_verdict).
_ONE_TAG = re.compile(r'(?:W/)?"[^"]*"')


def _ident(entry: cp.CacheEntry) -> tuple[Any, ...]:
    """What names a stored response among the ones prepared for (a re-read or replaced
    entry is another one)."""
    return (entry.key, entry.variant, entry.sha256, entry.response_time)


class Hits:
    """Stored entries as responses. One per cache layer; `reconfigure` on a reload."""

    def __init__(self, store: Store, clock: Any) -> None:
        self.store = store
        self.clock = clock
        self.name = "GeoEdge"
        self.via = ""
        self._prepared: dict[tuple[Any, ...], list[tuple[str, str]]] = {}
        # Prepared hit heads (a few hundred bytes each), the oldest made out first (a head
        # is remade in microseconds: a hit does not pay for reordering them): one per 3 KiB
        # of the store's index (about one per entry it holds), at least 4096, so the
        # entries the index holds keep their heads (about a sixth of index_bytes at most,
        # beside it).
        self._heads: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._heads_max = max(4096, store.index_bytes // 3072)
        # (primary key, variant) -> (entry, Age, ttl, head): the entry object itself is
        # compared, so a re-read or replaced entry is never answered with another one's head.
        self._hit_heads: dict[tuple[str, str], tuple[cp.CacheEntry, int, int, bytes]] = {}
        self._tails: dict[tuple[int, int], bytes] = {}
        self._valid: OrderedDict[tuple[Any, ...], tuple[list[str], float] | None] = OrderedDict()
        # (entry ident, the request's conditions) -> conditional.evaluate_validators' verdict
        # (browsers revalidate an object with the same If-Modified-Since or If-None-Match).
        self._verdicts: OrderedDict[tuple[Any, ...], int | None] = OrderedDict()
        self._rereads: dict[str, asyncio.Future[Any]] = {}

    def reconfigure(self, name: str, via: str) -> None:
        """Prepared heads carry the cache name and Via of the configuration they were made
        in: a reload starts them afresh."""
        self.name = name
        self.via = via
        self._prepared.clear()
        self._heads.clear()
        self._hit_heads.clear()
        self._tails.clear()

    async def close(self) -> None:
        if self._rereads:
            await asyncio.gather(*self._rereads.values(), return_exceptions=True)

    def peek_body(self, entry: cp.CacheEntry) -> bytes | None:
        return self.store.peek_body(entry)

    async def small_body(self, entry: cp.CacheEntry) -> bytes | None:
        """The verified body of an entry small enough for the memory tier: from memory,
        else read from disk (on the loop when it is small enough not to stall it, as
        nginx's workers read their cache files; in a thread above that). None when it is
        too big for the memory tier, or gone or damaged (then the entry was evicted)."""
        body = self.store.peek_body(entry)
        if body is not None or entry.body_length > self.memory_object_max:
            return body
        if entry.body_length <= INLINE_READ_MAX:
            return self.store.get_body(entry)
        return await asyncio.to_thread(self.store.get_body, entry)

    def base_headers(self, entry: cp.CacheEntry, version: tuple[int, int]) -> list[tuple[str, str]]:
        ident = (*_ident(entry), version)
        pre = self._prepared.get(ident)
        if pre is None:
            stored = [
                (k, v) for k, v in entry.headers if k.lower() not in ("age", "content-length")
            ]
            pre = client_response_fields(stored, version=version, via=self.via)
            if len(self._prepared) > 4096:
                self._prepared.clear()
            self._prepared[ident] = pre
        return pre

    def hit_wire(
        self,
        key: str,
        files: bool = False,
        range_value: str | None = None,
        conditions: tuple[tuple[str, str], ...] = (),
        asked: Callable[[], Headers] | None = None,
    ) -> tuple[int, bytes, bytes | FileBody] | None:
        """Status, head and body of an HTTP/1.1 response to a plain GET (no request
        directives) for primary key `key` when it is a fresh hit whose body
        is small (read on the loop from disk when it is not in the memory tier, see
        `small_body`); None otherwise. Decided as the hit path of `serve` decides it.
        With `files`, a body verified before that lies in a file of its own comes, whatever
        its size, as a FileBody to send with sendfile (edge.filebody), which the caller
        must close. `range_value`: the request's one Range field (no If-Range), answered
        as `answer` answers it (a 206 of one range, the whole body for what ranges.evaluate
        ignores); None for a Range no part of which fits, whose 416 `answer` gives.
        `conditions`: the request's If-None-Match and If-Modified-Since fields, evaluated
        first, as `answer` does: a 304 when they say so. `asked`: the request's fields as
        the cache reads them (made when first needed), by which a response that varies
        (Vary: the compressed variants of a text, for one) is selected as `serve` selects
        it; without them only a response that does not vary is answered."""
        now = self.clock()
        peeked = self.store.peek_single(key)
        if peeked is None:
            entries = self.store.variants(key)
            fresh = self._fresh(entries, now, asked)
            body = None
        else:
            entry, body, stale_for = peeked
            if stale_for is not None:
                # Due for its re-read (another process may have purged it): one thread
                # re-reads it while hits keep being answered from the index, for one
                # period at most, instead of every request hopping to a thread until the
                # re-read lands.
                if stale_for >= self.store.meta_refresh:
                    return None
                self._reread(key)
            fresh = self._fresh((entry,), now, asked)
        if fresh is None:
            return None
        entry = fresh.entry
        if conditions or range_value is not None:
            validators = self._validators(entry)
            if validators is None:
                return None
            if conditions:
                verdict = self._verdict(entry, conditions, validators)
                if verdict == 304:
                    return 304, self._not_modified_head(entry, fresh.age, fresh.ttl), b""
                if verdict is not None:
                    return None
        part: ranges.Partial | None = None
        if range_value is not None:
            decision = ranges.evaluate(
                "GET", entry.status, (("range", range_value),), entry.headers, entry.body_length
            )
            if isinstance(decision, ranges.Unsatisfiable):
                return None
            if isinstance(decision, ranges.Partial):
                part = decision
        if body is None:  # decided fresh before the body is read, not after
            if files and peeked and (fd := self.store.open_known_file(entry)) is not None:
                if part is None:
                    head = self._hit_head(entry, fresh.age, fresh.ttl)
                    return entry.status, head, FileBody(fd, entry.body_length)
                head = self._part_head(entry, part, fresh.age, fresh.ttl)
                return 206, head, FileBody(fd, part.size, part.start)
            if entry.body_length > INLINE_READ_MAX:
                return None
            body = self.store.read_body(entry) if peeked else self.store.get_body(entry)
            if body is None:
                return None
        if part is not None:
            head = self._part_head(entry, part, fresh.age, fresh.ttl)
            return 206, head, body[part.start : part.end + 1]
        return entry.status, self._hit_head(entry, fresh.age, fresh.ttl), body

    @staticmethod
    def _fresh(
        entries: tuple[cp.CacheEntry, ...], now: float, asked: Callable[[], Headers] | None
    ) -> cp.Fresh | None:
        fresh = cp.plain_fresh(entries, now)
        if fresh is None and asked is not None and any(e.vary for e in entries):
            fresh = cp.fresh_variant(entries, asked(), now)
        return fresh

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
        """`serialized_head` plus Age and Cache-Status, remade only when they change."""
        age_s = cp.age_value(age)
        ttl_s = math.floor(ttl)
        memo = self._hit_heads.get((entry.key, entry.variant))
        if memo is not None and memo[0] is entry and memo[1] == age_s and memo[2] == ttl_s:
            return memo[3]
        head = self.serialized_head(entry) + self._tail(age_s, ttl_s, ttl)
        if memo is None and len(self._hit_heads) > 4096:
            self._hit_heads.clear()
        self._hit_heads[(entry.key, entry.variant)] = (entry, age_s, ttl_s, head)
        return head

    def _tail(self, age_s: int, ttl_s: int, ttl: float) -> bytes:
        """A hit head's Age and Cache-Status lines and its end. They depend on the two
        numbers only (and the cache's name, which a reload clears them with): random hits
        over many keys share a few hundred of them."""
        tail = self._tails.get((age_s, ttl_s))
        if tail is None:
            tail = head_end(cp.cache_status(self.name, hit=True, ttl=ttl), age_s)
            if len(self._tails) >= 4096:
                self._tails.clear()
            self._tails[(age_s, ttl_s)] = tail
        return tail

    def _not_modified_head(self, entry: cp.CacheEntry, age: float, ttl: float) -> bytes:
        """The head of the 304 `answer` sends for a hit whose validators match: the stored
        fields a 304 keeps (prepared once, beside the hit heads), then Age and
        Cache-Status."""
        ident = (*_ident(entry), 304)
        head = self._heads.get(ident)
        if head is None:
            fields = conditional.not_modified_headers(self.base_headers(entry, (1, 1)))
            head = response_head(304, phrase(304), fields)
            self._keep(self._heads, ident, head)
        return head + self._tail(cp.age_value(age), math.floor(ttl), ttl)

    def _validators(self, entry: cp.CacheEntry) -> tuple[list[str], float] | None:
        """conditional.stored_validators of `entry`, for the fast path's Range or
        revalidation; None when the entry lacks the Server or Content-Type field that
        aiohttp adds to a response without them: the full handler answers those requests
        through aiohttp's responses, so the fast path's answer is the same bytes only
        when both are stored. Kept beside the prepared heads (a revalidated URL is
        revalidated again and again)."""
        ident = _ident(entry)
        try:
            return self._valid[ident]
        except KeyError:
            pass
        names = {k.lower() for k, _ in entry.headers}
        known = None
        if "server" in names and "content-type" in names:
            known = conditional.stored_validators(entry.headers, entry.response_time)
        self._keep(self._valid, ident, known)
        return known

    def _verdict(
        self,
        entry: cp.CacheEntry,
        conditions: tuple[tuple[str, str], ...],
        validators: tuple[list[str], float],
    ) -> int | None:
        """conditional.evaluate_validators of a GET with `conditions` against `entry`'s
        `validators`, remembered for the usual conditions (see VERDICT_CONDITIONS_MAX): a
        pure function of the two, about 6 µs of a revalidation's 50 here. The usual
        revalidations, one If-Modified-Since, or one If-None-Match of the stored ETag itself,
        are judged at once: the memo holds few of a large working set's objects."""
        if len(conditions) == 1:
            name, value = conditions[0]
            etags, last_modified = validators
            if name == "if-modified-since":
                return conditional.modified_since(value, last_modified)
            if name == "if-none-match" and etags and value == etags[0]:
                if _ONE_TAG.fullmatch(value):
                    return 304
        if (
            len(conditions) > 2
            or sum([len(k) + len(v) for k, v in conditions]) > VERDICT_CONDITIONS_MAX
        ):
            return conditional.evaluate_validators("GET", conditions, *validators)
        ident = (*_ident(entry), conditions)
        verdicts = self._verdicts
        try:
            return verdicts[ident]
        except KeyError:
            pass
        verdict = conditional.evaluate_validators("GET", conditions, *validators)
        self._keep(verdicts, ident, verdict, VERDICTS_MAX)
        return verdict

    def _part_head(
        self, entry: cp.CacheEntry, part: ranges.Partial, age: float, ttl: float
    ) -> bytes:
        """The head of a 206 answering one range of a hit, as `answer` sends it: the
        stored fields with Content-Range and Content-Length, then Age and Cache-Status.
        Made per request (ranges rarely repeat), from the prepared fields."""
        fields = [
            *self.base_headers(entry, (1, 1)),
            ("Content-Range", part.content_range),
            ("Content-Length", str(part.size)),
        ]
        head = response_head(206, phrase(206), fields)
        return head + self._tail(cp.age_value(age), math.floor(ttl), ttl)

    def serialized_head(self, entry: cp.CacheEntry) -> bytes:
        """Status line and stored fields of an HTTP/1.1 hit, without Age and Cache-Status."""
        ident = _ident(entry)
        head = self._heads.get(ident)
        if head is None:
            fields = [*self.base_headers(entry, (1, 1)), ("Content-Length", str(entry.body_length))]
            head = response_head(entry.status, entry.reason or phrase(entry.status), fields)
            self._keep(self._heads, ident, head)
        return head

    def _keep(
        self,
        table: OrderedDict[tuple[Any, ...], Any],
        ident: tuple[Any, ...],
        value: Any,
        most: int | None = None,
    ) -> None:
        """Keep what was prepared for an entry, the oldest made out first past `most`
        (by default, as many as the prepared heads). An OrderedDict's: a dict's first key,
        after many deleted before it, is found by a walk over their slots (15 µs at the
        43,690 heads of the default index, 39 µs at 200,000)."""
        if len(table) >= (self._heads_max if most is None else most):
            table.popitem(last=False)
        table[ident] = value

    async def answer(
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
            and not any(name in request_headers for name in PRECONDITIONS)
        ):
            body = await self.small_body(entry)
            if body is not None:
                head = self.serialized_head(entry)
                return SerializedResponse(entry.status, head, body, cp.age_value(age), cache_status)
            if entry.body_length <= self.memory_object_max:
                return None  # gone or damaged: evicted
        headers = CIMultiDict(self.base_headers(entry, request.version))
        headers["Age"] = str(cp.age_value(age))
        headers["Cache-Status"] = cache_status
        method = request.method
        precondition = None
        if any(name in request_headers for name in PRECONDITIONS):
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
        if self.peek_body(entry) is None:
            fd = self._known_file(request, entry)
            if fd is not None:
                return await self._send_file(request, creq, entry, headers, fd)
            if length > self.memory_object_max:
                return await self._stream_from_disk(request, creq, entry, headers)
        body = await self.small_body(entry)
        if body is None:
            return None
        if "Range" not in request_headers:
            return web.Response(
                status=entry.status, reason=entry.reason or None, headers=headers, body=body
            )
        sp, reason = self._span(request, creq, entry, headers)
        if sp.status == 416:
            return unsatisfiable(headers, sp)
        part = body if sp.last is None else body[sp.first : sp.last + 1]
        return web.Response(status=sp.status, reason=reason, headers=headers, body=part)

    def _span(
        self,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        entry: cp.CacheEntry,
        headers: CIMultiDict[str],
    ) -> tuple[ranges.Span, str | None]:
        """The part of `entry`'s body `request` asks for (ranges.span), `headers` set for
        it unless it is a 416, and the reason phrase its status line takes."""
        decision = ranges.evaluate(
            request.method, entry.status, creq.headers, entry.headers, entry.body_length
        )
        sp = ranges.span(decision, entry.status, entry.body_length)
        if sp.status != 416:
            apply_span(headers, sp)
        return sp, (entry.reason or None) if sp.status == entry.status else None

    @property
    def memory_object_max(self) -> int:
        return self.store.memory_object_max

    def _known_file(self, request: web.BaseRequest, entry: cp.CacheEntry) -> int | None:
        """A descriptor on the body's file when it was checked before in this process and
        lies in a file of its own, and `request` came over plain TCP (a TLS connection's
        socket takes records, not the file's bytes): for sendfile (edge.filebody)."""
        transport = request.transport
        if transport is None or transport.get_extra_info("sslcontext"):
            return None
        return self.store.open_known_file(entry)

    async def _send_file(
        self,
        request: web.BaseRequest,
        creq: cp.CacheRequest,
        entry: cp.CacheEntry,
        headers: CIMultiDict[str],
        fd: int,
    ) -> web.StreamResponse:
        """The body, or the range of it asked for, sent from its file (`fd`, closed)."""
        with contextlib.closing(FileBody(fd, entry.body_length)) as body:
            sp, reason = self._span(request, creq, entry, headers)
            if sp.status == 416:
                return unsatisfiable(headers, sp)
            body.offset = sp.first
            body.length = (entry.body_length if sp.last is None else sp.last + 1) - sp.first
            out = web.StreamResponse(status=sp.status, reason=reason, headers=headers)
            transport = request.transport
            try:
                await out.prepare(request)
                if transport is not None:
                    whole = await send_file(transport, body)
                    count_written(out, body.sent)  # for the access log: what went
                    if whole:
                        await out.write_eof()
            except ConnectionError:
                pass
            return out

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
        sp, reason = self._span(request, creq, entry, headers)
        if sp.status == 416:
            reader.close()
            return unsatisfiable(headers, sp)
        start = sp.first
        end = entry.body_length - 1 if sp.last is None else sp.last
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
