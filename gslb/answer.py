"""The answer engine: one DNS query in wire bytes -> one reply in wire bytes (or None).

Sans-IO: `Responder.respond(wire, client, tcp=...)` is all the server calls. It never raises:
a message without a usable header (or a response, QR=1) gives None (drop), a malformed query
FORMERR, and any failure inside answering SERVFAIL.

Speed comes from caching encoded replies, in three tiers:

1. exact: the query bytes after the ID (plus tcp) -> the reply after the ID. Hit when a
   client repeats a query byte for byte; only replies that depend on nothing but the query
   are stored here: static data, errors, and pool answers decided by an ECS subnet (those
   carry their pool's slot and the generation they were made under, and count only while
   it is current). Queries longer than MAX_CACHED_QUERY are not stored (their bytes are
   the key). Cost: a slice, a dict lookup, one list index and compare, a concatenation,
   and (without a query log) one increment in the observer's counts, at the slot the entry
   holds. Entries are plain tuples (one is built per query variant).
2. static: (lower-case qname, qtype, qclass, EDNS shape, size limit) -> the reply with ID 0
   and a lower-case question; on a hit the ID, RD/CD flags, the question's exact case (0x20)
   and the ECS address are patched in. Names whose answer involves a pool map to a plan
   instead of bytes.
3. pool: (static key, what the decision depends on) -> reply. For `nearest` pools that is
   the client's coordinates and the prefix length of its network (the ECS scope): GeoIP puts
   many networks on one city's coordinates, so a new client subnet usually hits. For other
   policies it is the network itself. The client (or its ECS subnet) is located first, so a
   pool answer costs parse + locate + dict lookup. The key holds the pool's generation, so
   entries made before a change to one of the pool's members are never hit again (they
   leave by FIFO eviction). Misses run the selection and look the rendered bytes up by
   (static key, edges, scope), so even a new place rarely reaches dnslib; those rendered
   bytes depend on the config alone and are kept across health changes.
   The cold path (`_placed`): a query that differs from one answered before by a `nearest`
   pool only in its ID and its /24 ECS address (a resolver asking for a new client network)
   skips parsing and locating: the locator's `place_key4` reads the entry of the /24 in its
   /24 table, a number naming the GeoIP network's place and prefix length (what the pool
   tier's key is made of), and the reply bytes are kept per query shape (under its pool's
   generation) and that number, so a new network at a place seen before costs a table
   lookup and a dict lookup. Without a number (no table yet, an override, a /24 split into
   smaller networks whose first address has no place) `place4` gives the place itself, from
   the search tree, and the bytes are kept by the place. A place new to the shape runs the
   selection from its coordinates, and the shape keeps the bytes by what it chose too (edge
   names, ECS scope): the many places that choose alike share one entry, made once. When
   the pool's generation moves, the shape keeps both while the selection says every place
   is answered as before (`placement_epoch`: a probed load step that leaves the pool's
   candidates alone), so probe rounds do not start the cold path over. The cold path leaves
   the pool tier to _answer.

Health changes invalidate per pool (see gslb.health): `health.generations` is one list,
changed in place, with a generation per pool that moves only when a member of that pool
changes. A plan knows its pool's slot; tier-1 entries hold (slot, generation), static ones
(0, 0) (slot 0 never moves), and pool-tier keys hold the generation. So a drain or a probed
load change in one pool costs the other pools nothing, and static answers never depend on
health. In a worker, the replica store moves the generations when it applies the parent's
snapshot, before it acknowledges it: after the acknowledgement no answer made under the old
state of an affected pool is served.

DNSSEC (gslb.dnssec): for a query with DO=1 to a zone with a key, every reply is rendered
signed, and NXDOMAIN becomes RFC 9824 compact denial. DO lives in the EDNS shape of the
tier-2 key, which tiers 3 and the rendered/template memos extend, and in the query bytes
that key tier 1; with DO=1 (and signing configured) the shape also holds the signing epoch,
so a new epoch misses every tier and re-signs. Signed replies go to a tier 1 of their own
whose entries also hold their epoch: its hits read the clock, the unsigned tier 1 never
does. Signed pool answers skip the templates (the signature covers the addresses): each
edge set is rendered and signed once, then cached like any pool reply.

Everything is built once per config: a reload builds a new Responder, so zone changes never
meet old cache entries, and a new key never meets signatures made with the old one.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from dnslib import AAAA as RD_AAAA
from dnslib import QTYPE, RR, TXT, DNSHeader, DNSLabel, DNSQuestion, DNSRecord, EDNSOption
from dnslib import A as RD_A

from geo.location import Location, Locator, PlaceLocator
from gslb.config import GslbConfig
from gslb.cookies import CookieJar, Verdict, new_secret
from gslb.dnssec import NXNAME, Signer, canonical_rdata, epoch, nsec_rdata
from gslb.ecs import FAMILY_IPV4, ClientSubnet, answer_scope, decision_address, scope_of
from gslb.errors import FormError, ShortHeader
from gslb.models import Clock, Counted, Edge, HealthView, Policy, Selection, Tally
from gslb.respcache import FifoCache
from gslb.rrl import truncated
from gslb.selection import placement_epoch, select, select_at
from gslb.wire import COOKIE_CODE, NSID_CODE, Query, add_option, parse_query
from gslb.zone import (
    AAAA,
    BADVERS,
    FORMERR,
    NOERROR,
    NOTIMP,
    NSEC,
    NXDOMAIN,
    OPT,
    REFUSED,
    SERVFAIL,
    PoolAnswer,
    Resolution,
    RRset,
    Zones,
    dnslabel,
    name_to_text,
)

log = logging.getLogger("gslb.answer")

__all__ = ["Observer", "Responder"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

EXACT_ENTRIES: Final = 50_000
STATIC_ENTRIES: Final = 50_000
POOL_ENTRIES: Final = 200_000
RENDER_ENTRIES: Final = 50_000
CLIENT_TEXTS: Final = 4096
SHAPE_ENTRIES: Final = 4096
# The cold path's once-seen filter: 2**21 one-byte slots (2 MiB), renewed after 2**19 first
# sightings (a quarter full at most: at most a quarter of first sightings pass for second).
_SEEN_SLOTS: Final = 1 << 21
_SEEN_MASK: Final = _SEEN_SLOTS - 1
_SEEN_RESET: Final = 1 << 19
# The longest query whose bytes key a cache (tiers 1 and the parsed-shape memo). Entries are
# bounded in number, so a key's size bounds their memory: a query can carry up to 64 KiB of
# options or records (all valid, all ignored), and 50,000 such keys would hold gigabytes.
# Real queries, ECS, cookie and padding included, stay far below this.
MAX_CACHED_QUERY: Final = 512
MAX_TCP: Final = 65535

_HEADER: Final = struct.Struct("!HHHHHH")
_OPT_FIXED: Final = struct.Struct(
    "!BHHBBHH"
)  # root name, type, size, ext-rcode, version, flags, rdlen
_REFUSED: Final = Resolution(REFUSED, False)
_FORMERR: Final = Resolution(FORMERR, False)
_NOTIMP: Final = Resolution(NOTIMP, False)
BADCOOKIE: Final = 23  # RFC 7873: extended rcode 1, header rcode 7
CHAOS: Final = 3
TXT_TYPE: Final = 16
ANY_TYPE: Final = 255
_CH_IDENTITY: Final = (b"\x02id\x06server\x00", b"\x08hostname\x04bind\x00")
_CH_VERSION: Final = (b"\x07version\x04bind\x00", b"\x07version\x06server\x00")


class Observer(Protocol):
    """Told about every reply sent and every pool answer no cache held (metrics, query log).
    Must not raise.

    While `detailed` is false (no query log), most replies are not told through `answered`
    but counted: one increment of `counts[i]` each, `i` being the slot the observer gave
    their key (rcode, qtype, pool or "", edges) when the engine made the answer, or of
    `tally[key]` where it gave none. The observer folds both into its counters itself
    (gslb.metrics.QueryMetrics.fold). A slot, unlike the key, costs no hashing per reply:
    with a thousand edges the keys' strings are seldom in the CPU's caches."""

    detailed: bool
    tally: dict[Tally, int]
    counts: list[int]

    def slot(self, key: Tally) -> int:
        """Where in `counts` replies counted by `key` go, the same for equal keys for the
        observer's lifetime; -1 when it has no room for another (then they go in
        `tally`)."""
        ...

    def answered(
        self,
        *,
        qname: str,
        qtype: int,
        rcode: int,
        pool: str | None,
        edges: tuple[str, ...],
        client: str,
        ecs: str | None,
    ) -> None: ...

    def pool_miss(self, pool: str) -> None:
        """A pool answer was in no answer cache (its selection ran); told before answered."""
        ...


@dataclass(frozen=True, slots=True)
class _Reply:
    """An encoded reply (ID 0, lower-case question) plus what the observer is told about it."""

    wire: bytes
    rcode: int
    qname: str
    pool: str | None = None
    edges: tuple[str, ...] = ()
    signed: bool = False  # carries DNSSEC signatures (valid for one signing epoch)


# A tier-1 entry, a plain tuple because one is built per query variant: (the reply after the
# ID, the _Reply it was patched from, the query's ECS subnet as text (or, from the cold path,
# its three address octets: a /24, made text only for a query log), qtype, the slot of the
# pool in health.generations, the generation the answer holds for, what the observer counts
# it by). Static: slot 0, gen 0.
_Ecs = str | bytes | None
_Exact = tuple[bytes, _Reply, _Ecs, int, int, int, Counted]
# The same for a signed reply, plus the signing epoch its signatures belong to.
_SignedExact = tuple[bytes, _Reply, _Ecs, int, int, int, Counted, int]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A static-cache entry for a name whose answer involves a pool."""

    resolution: Resolution
    pool: PoolAnswer
    qname: str
    # nearest: the answer is a function of the client's coordinates (and the network's prefix
    # length, the ECS scope), so networks at one place share a pool-cache entry
    by_place: bool
    slot: int  # of the pool's generation in health.generations


_StaticKey = tuple[bytes, int, int, Any, int]
# The cold path's memo: reply bytes between the ID and the ECS address, the reply, what the
# observer counts it by
_PlacedHit = tuple[bytes, _Reply, Counted]
# ... kept by the locator's place_key4 number, or by the place itself where it has none
_PlaceKey = int | tuple[float, float, int]


class _Shape:
    """A query shape of the cold path (see _placed): what answering it needs besides the
    place (its static key, plan and parse), and its answers under one placement epoch of
    its pool (gslb.selection.placement_epoch) and one round of the responder's cold-path
    memo: by place, and by what the selection chose (the names of the edges and the ECS
    scope), which many places share."""

    __slots__ = (
        "choices",
        "epoch",
        "generation",
        "key",
        "memo",
        "plan",
        "qtype",
        "query",
        "round",
        "slot",
    )

    def __init__(self, key: _StaticKey, plan: _Plan, query: Query) -> None:
        self.key = key
        self.plan = plan
        self.query = query
        self.slot = plan.slot  # these two are read per query
        self.qtype = query.qtype
        self.memo: dict[_PlaceKey, _PlacedHit] = {}
        self.choices: dict[tuple[tuple[str, ...], int], _PlacedHit] = {}
        self.generation = -1  # none yet: the first query starts the memo
        self.epoch = -1  # the selection's placement_epoch the memo was made under
        self.round = -1


class Responder:
    """Answers queries for one configuration. Not thread-safe; one per event loop."""

    def __init__(
        self,
        config: GslbConfig,
        locator: Locator,
        health: HealthView,
        *,
        observer: Observer | None = None,
        clock: Clock = time.time,
        cookie_secret: bytes | None = None,
    ) -> None:
        """`cookie_secret`: the server cookie secret when the config names none (the one of
        this start of `gslb serve`, see gslb.cookies); None: a random one of its own."""
        self._zones = Zones(config.zones)
        self._clock = clock
        # Signed zones, by origin. The signers (and their signature caches) live and die
        # with this Responder: a reload builds a new one, so no signature made with an old
        # key or old data is ever served.
        self._signers = {
            z.origin: Signer(z.origin, z.dnssec, clock, nsec_ttl=z.negative.ttl)
            for z in config.zones
            if z.dnssec
        }
        self._locator = locator
        self._health = health
        self._observer = observer
        self._max_udp = config.server.max_udp_payload
        self._exact: FifoCache[tuple[bytes, bool], _Exact] = FifoCache(EXACT_ENTRIES)
        self._exact_signed: FifoCache[tuple[bytes, bool], _SignedExact] = FifoCache(EXACT_ENTRIES)
        self._static: FifoCache[_StaticKey, _Reply | _Plan] = FifoCache(STATIC_ENTRIES)
        self._pooled: FifoCache[tuple[Any, ...], _Reply] = FifoCache(POOL_ENTRIES)
        self._rendered: FifoCache[tuple[Any, ...], _Reply] = FifoCache(RENDER_ENTRIES)
        self._templates: FifoCache[tuple[Any, ...], tuple[bytes, list[int] | None]] = FifoCache(
            STATIC_ENTRIES
        )
        self._resolved: FifoCache[tuple[bytes, int, int], Resolution] = FifoCache(STATIC_ENTRIES)
        # id(client) -> (client, its text): resolvers repeat, and str() of an address is slow
        self._client_text: dict[int, tuple[IPAddress, str]] = {}
        # Parsed queries by the bytes between the ID and a trailing /24 ECS address: resolvers
        # send one message shape for many client subnets, and this skips parsing it again.
        self._shapes: FifoCache[bytes, Query] = FifoCache(SHAPE_ENTRIES)
        self._shapes_get = self._shapes.getter
        # The cold path of `nearest` pools (see _placed): by (the bytes between the ID and a
        # trailing /24 ECS address, tcp), the query shape (_Shape), whose memo holds the
        # reply between the ID and the ECS address by place. Only with a PlaceLocator.
        placer = locator if isinstance(locator, PlaceLocator) else None
        self._placer = placer
        self._place_key4 = placer.place_key4 if placer is not None else None
        self._placeable: FifoCache[tuple[bytes, bool], _Shape] = FifoCache(SHAPE_ENTRIES)
        self._placeable_get = self._placeable.getter
        # Entries made in the shapes' memos this round; at POOL_ENTRIES a new round starts
        # and every memo with it (bounded without per-entry eviction bookkeeping).
        self._placed_count = 0
        self._placed_round = 0
        # Which cold-path queries were seen once (a byte per hash of the query past its ID,
        # forgotten every _SEEN_RESET admissions): one goes into the exact tier only when
        # seen again, so a stream of new /24s does not churn it (an insert and an eviction
        # per query), while a /24 that asks twice is answered from it from then on.
        self._seen = bytearray(_SEEN_SLOTS)
        self._seen_count = 0
        self._exact_get = self._exact.getter
        self._exact_signed_get = self._exact_signed.getter
        self._static_get = self._static.getter
        self._pooled_get = self._pooled.getter
        self._generations = health.generations  # changed in place, never replaced
        cookies = config.cookies
        self._cookies = (
            CookieJar(cookies.secrets or (cookie_secret or new_secret(),), clock)
            if cookies.enabled
            else None
        )
        self._require_cookie = cookies.require
        identity = config.identity
        self._nsid = identity.name.encode("ascii") if identity.nsid else None
        self._chaos: dict[bytes, str] = {}
        if identity.chaos:
            self._chaos.update(dict.fromkeys(_CH_IDENTITY, identity.name))
        if identity.version is not None:
            self._chaos.update(dict.fromkeys(_CH_VERSION, identity.version))
        # The last reply to a query with a valid server cookie (RFC 7873): the UDP server
        # does not rate limit it, because its source address cannot have been forged.
        self.verified: bytes | None = None

    # ------------------------------------------------------------------ entry point

    def respond(self, wire: bytes, client: IPAddress, *, tcp: bool) -> bytes | None:
        """The reply to `wire` from `client`, or None to send nothing. Never raises."""
        try:
            # Keys of this tier and of the shape memo hold the header flags, so the opcode:
            # only QUERY replies are stored, and no other opcode can hit them.
            tail = wire[2:]
            hit = self._exact_get((tail, tcp))
            if hit is not None and self._generations[hit[4]] == hit[5]:
                observer = self._observer
                if observer is not None:
                    # _tell, inline: this is the cheapest answer there is (about 1 µs), and
                    # a call is a measurable share of it.
                    if observer.detailed:
                        self._notify(hit[1], hit[3], client, hit[2])
                    elif hit[6][1] >= 0:
                        observer.counts[hit[6][1]] += 1
                    else:
                        self._tally(hit[6][0])
                return wire[:2] + hit[0]
            if self._signers:
                # Signed replies have a tier 1 of their own, whose hits also check the
                # signing epoch; the clock is read only here, never for unsigned replies.
                signed = self._exact_signed_get((wire[2:], tcp))
                if (
                    signed is not None
                    and self._generations[signed[4]] == signed[5]
                    and signed[7] == epoch(self._clock())
                ):
                    if self._observer is not None:
                        self._tell(signed[1], signed[3], client, signed[2], signed[6])
                    return wire[:2] + signed[0]
            if self._place_key4 is not None and len(wire) > 15:
                shape = self._placeable_get((wire[2:-3], tcp))
                if shape is not None:
                    out = self._placed(shape, wire, tail, client, tcp)
                    if out is not None:
                        return out
            query = None
            if len(wire) > 15:
                proto = self._shapes_get(wire[2:-3])
                if proto is not None:
                    query = self._reshape(proto, wire)
            if query is None:
                query = parse_query(wire)
                ecs = query.ecs
                if (
                    ecs is not None
                    and ecs.source == 24
                    and query.ecs_end == len(wire) <= MAX_CACHED_QUERY
                    and query.options is None
                ):
                    self._shapes.put(wire[2:-3], query)
        except ShortHeader:
            return None
        except FormError as exc:
            return self._error(wire, client, FORMERR, exc.question_end, exc.edns, exc.do)
        except Exception:
            log.exception("parsing (or, on the cold path, answering) a query failed")
            return self._error(wire, client, SERVFAIL, 0, False, False)
        if query.options is not None:
            return self._with_options(query, wire, client, tcp)
        try:
            return self._answer(query, wire, client, tcp)
        except Exception:
            log.exception("answering a query failed")
            return self._error(wire, client, SERVFAIL, query.question_end, query.edns, query.do)

    def _with_options(self, q: Query, wire: bytes, client: IPAddress, tcp: bool) -> bytes | None:
        """A query with a COOKIE or NSID option: answered as the same query without them
        (so through every cache), then those options are added to the reply. A valid server
        cookie is echoed or renewed, any other gets a fresh one; with `require`, a UDP query
        with a client cookie but no valid server cookie gets BADCOOKIE (RFC 7873 section
        5.2.3); over TCP it is answered (the source address is proven)."""
        options = q.options
        assert options is not None
        try:
            stripped = options.strip(wire)
            extra: list[tuple[int, bytes]] = []
            reply = None
            verified = False
            if options.cookie is not None and self._cookies is not None:
                start, end = options.cookie
                check = self._cookies.check(wire[start + 4 : end], client)
                verified = check.verdict is Verdict.VALID
                if not verified and self._require_cookie and not tcp:
                    reply = self._error(stripped, client, BADCOOKIE, q.question_end, True, q.do)
                extra.append((COOKIE_CODE, check.option))
            if options.nsid is not None and self._nsid is not None:
                extra.append((NSID_CODE, self._nsid))
        except Exception:
            log.exception("reading a query's cookie failed")
            return self._error(wire, client, SERVFAIL, q.question_end, q.edns, q.do)
        if reply is None:
            reply = self.respond(stripped, client, tcp=tcp)
        if reply is None or not extra:
            return reply
        out, opt_at = reply, -1
        for code, data in extra:
            added = add_option(out, code, data)
            if added is None:  # not expected: every reply to an EDNS query has an OPT
                return out
            out, opt_at = added
        limit = MAX_TCP if tcp else min(max(q.payload, 512), self._max_udp)
        if len(out) > limit:
            # The options made it too big: header and question with TC, and the OPT record.
            cut = truncated(out)
            out = cut[:10] + b"\x00\x01" + cut[12:] + out[opt_at:]
        if verified:
            self.verified = out
        return out

    @staticmethod
    def _reshape(proto: Query, wire: bytes) -> Query:
        """The parse of `wire`, which is `proto`'s message with another ID and another ECS
        address: a /24 ECS option ends both, so those 3 octets are the whole difference, and
        every 3-octet address is valid for a /24 source."""
        ecs = proto.ecs
        assert ecs is not None
        return Query(
            (wire[0] << 8) | wire[1],
            proto.flags,
            proto.opcode,
            proto.qname,
            proto.question_end,
            proto.qtype,
            proto.qclass,
            proto.edns,
            proto.payload,
            proto.version,
            proto.do,
            ClientSubnet(ecs.family, ecs.source, 0, wire[-3:]),
            proto.ecs_end,
        )

    # ------------------------------------------------------------------ answering

    def _answer(self, q: Query, wire: bytes, client: IPAddress, tcp: bool) -> bytes | None:
        # Before any cache: only QUERY is answered from them. Every other opcode gets NOTIMP,
        # NOTIFY included: we are never a secondary, so the NOTIFY function is one we do not
        # implement, and RFC 1996 has a primary stop retrying on any reply that matches its
        # ID and question (which NOTIMP echoes). UPDATE gets NOTIMP as from NSD.
        if q.opcode != 0:
            return self._error(wire, client, NOTIMP, q.question_end, q.edns, q.do)
        if q.edns and q.version != 0:
            return self._error(wire, client, BADVERS, q.question_end, True, q.do)
        ecs = q.ecs
        if tcp:
            limit = MAX_TCP
        elif q.edns:
            limit = min(max(q.payload, 512), self._max_udp)
        else:
            limit = 512
        now = 0
        if q.do and self._signers:
            # Replies to DO=1 may carry signatures, which are re-made each signing epoch: the
            # epoch is part of the key, so no cache tier serves a reply from an earlier one.
            now = epoch(self._clock())
            shape: Any = (True, now, ecs.family, ecs.source) if ecs else (True, now)
        else:
            shape = (q.do, ecs.family, ecs.source) if ecs else (q.do,) if q.edns else None
        key: _StaticKey = (q.qname, q.qtype, q.qclass, shape, limit)
        entry = self._static_get(key)
        if entry is None:
            entry = self._plan(q, key, limit)
            self._static.put(key, entry)
        if isinstance(entry, _Plan):
            slot = entry.slot
            generation = self._generations[slot]
            where = self._locate(ecs, client)
            pkey: tuple[Any, ...]
            if where is None:
                pkey = (key, generation, None)
            elif entry.by_place:  # the selection depends on the coordinates alone
                pkey = (key, generation, where.latitude, where.longitude, where.network.prefixlen)
                if (
                    self._place_key4 is not None
                    and not now  # signed: the key holds the signing epoch
                    and ecs is not None
                    and ecs.family == FAMILY_IPV4
                    and ecs.source == 24
                    and q.ecs_end == len(wire) <= MAX_CACHED_QUERY
                    and q.options is None
                ):
                    # Another client subnet in this query shape takes _placed from now on.
                    shaped = (wire[2:-3], tcp)
                    if self._placeable_get(shaped) is None:
                        self._placeable.put(shaped, _Shape(key, entry, q))
            else:
                pkey = (key, generation, where.network)
            reply = self._pooled_get(pkey)
            if reply is None:
                reply = self._pool_reply(q, key, entry, where, limit)
                self._pooled.put(pkey, reply)
                if self._observer is not None:
                    self._missed(entry.pool.pool.name)
            # Tier 1 takes pool replies decided by an ECS subnet (valid while the pool's
            # generation stays); one decided by the client's address depends on more than the
            # query bytes. Signed replies never go there: its hits check no signing epoch.
            cacheable = ecs is not None and ecs.source > 0
        else:
            reply = entry
            slot = generation = 0  # static: slot 0 never moves
            cacheable = True
        out = self._patch(reply.wire, wire, q.question_end, ecs.address if ecs is not None else b"")
        ecs_text = ecs.text() if ecs is not None else None
        counted = self._counted(reply, q.qtype)
        if cacheable and len(wire) <= MAX_CACHED_QUERY:
            exact = (out[2:], reply, ecs_text, q.qtype, slot, generation, counted)
            if reply.signed:
                self._exact_signed.put((wire[2:], tcp), (*exact, now))
            else:
                self._exact.put((wire[2:], tcp), exact)
        if self._observer is not None:
            self._tell(reply, q.qtype, client, ecs_text, counted)
        return out

    def _placed(
        self, shape: _Shape, wire: bytes, tail: bytes, client: IPAddress, tcp: bool
    ) -> bytes | None:
        """The reply to a query of a shape answered before by a `nearest` pool (`tail`: the
        query past its ID), or None when _answer must run (the place is not at hand).

        The cold path of a new client subnet: its /24 ECS address ends the query, so the
        shape gives everything else (static key, plan, parse) and the address only has to
        be placed. The reply's bytes between the ID and the ECS address depend on nothing
        else but the place (coordinates and prefix length of the GeoIP network) and the
        pool's generation, so the shape keeps them by place: by the locator's place_key4
        number (one index into its /24 table), or, for a /24 without one, by what place4
        says. A new /24 at a place seen before in this shape is then that lookup, a dict
        lookup and the ID, those bytes and the address: no parse, no address, network or
        Location object. Same bytes, same tier-1 entry and observer call as _answer makes."""
        address = wire[-3:]
        block = int.from_bytes(address, "big")
        assert self._place_key4 is not None and self._placer is not None
        key: _PlaceKey | None = self._place_key4(block)
        if key is None:
            key = self._placer.place4(block << 8)
            if key is None:
                return None
        slot = shape.slot
        generation = self._generations[slot]
        if shape.generation != generation or shape.round != self._placed_round:
            # Answers made under another generation of the pool count again only when the
            # selection answers every place as before (a probed load step that left the
            # candidates alone: gslb.selection.placement_epoch).
            epoch = placement_epoch(shape.plan.pool.pool, self._health)
            if epoch != shape.epoch or shape.round != self._placed_round:
                shape.memo = {}
                shape.choices = {}
                shape.epoch = epoch
            shape.generation = generation
            shape.round = self._placed_round
        hit = shape.memo.get(key)
        if hit is None:
            hit = self._new_place(shape, key, generation, wire, address)
            if hit is None:
                return None
        middle, reply, counted = hit
        rest = middle + address
        seen = hash(tail) & _SEEN_MASK  # cached: tail was hashed for the exact tier
        if self._seen[seen]:
            self._exact.put(
                (tail, tcp), (rest, reply, address, shape.qtype, slot, generation, counted)
            )
        else:
            self._seen[seen] = 1
            self._seen_count += 1
            if self._seen_count >= _SEEN_RESET:
                self._seen = bytearray(_SEEN_SLOTS)
                self._seen_count = 0
        observer = self._observer
        if observer is not None:  # _tell, inline (see respond)
            if observer.detailed:
                self._notify(reply, shape.qtype, client, address)
            elif counted[1] >= 0:
                observer.counts[counted[1]] += 1
            else:
                self._tally(counted[0])
        return wire[:2] + rest

    def _new_place(
        self, shape: _Shape, key: _PlaceKey, generation: int, wire: bytes, address: bytes
    ) -> _PlacedHit | None:
        """The memo entry of a place new to `shape` (in this generation of its pool); None
        when the place is no longer at hand. The selection runs from its coordinates, as
        _pool_reply runs it (by_place: the selection reads the coordinates alone, the ECS
        scope the prefix length), and its choice (edges and scope) decides the bytes: a
        choice the shape met before at another place gives the same entry."""
        assert self._placer is not None
        place = key if isinstance(key, tuple) else self._placer.place_of(key)
        if place is None:
            return None
        latitude, longitude, prefix = place
        plan, q = shape.plan, shape.query
        selection = select_at(plan.pool.pool, latitude, longitude, self._health)
        scope = scope_of(q.ecs, prefix, selection.tailored)
        if self._observer is not None:
            self._missed(plan.pool.pool.name)
        edges = selection.edges
        names = (edges[0].name,) if len(edges) == 1 else tuple([e.name for e in edges])
        choice = (names, scope)
        hit = shape.choices.get(choice)
        if hit is None:
            skey = shape.key
            reply = self._selected(q, skey, plan, selection, scope, skey[4])
            out = self._patch(reply.wire, wire, q.question_end, address)
            hit = (out[2:-3], reply, self._counted(reply, q.qtype))
            shape.choices[choice] = hit
        shape.memo[key] = hit
        self._placed_count += 1
        if self._placed_count >= POOL_ENTRIES:
            self._placed_round += 1  # every shape's memo starts over at its next query
            self._placed_count = 0
        return hit

    def _locate(self, ecs: ClientSubnet | None, client: IPAddress) -> Location | None:
        return self._locator.locate(decision_address(ecs, client))

    @staticmethod
    def _patch(cached: bytes, wire: bytes, qend: int, address: bytes) -> bytes:
        """`cached` with the query's ID, RD and CD bits, question (with its case, ending at
        `qend`) and ECS address (b"": none)."""
        flags = bytes(
            ((cached[2] & 0xFE) | (wire[2] & 0x01), (cached[3] & 0xEF) | (wire[3] & 0x10))
        )
        if address:
            n = len(address)
            return b"".join(
                (wire[:2], flags, cached[4:12], wire[12:qend], cached[qend:-n], address)
            )
        return b"".join((wire[:2], flags, cached[4:12], wire[12:qend], cached[qend:]))

    def _resolve(self, q: Query) -> Resolution:
        qtype = q.qtype
        if q.qclass != 1:
            return _REFUSED
        if qtype in (0, OPT, NXNAME, 249, 250):  # NXNAME: RFC 9824 section 3.5
            return _FORMERR
        if qtype in (251, 252):  # IXFR, AXFR: we do not serve zone transfers
            return _REFUSED
        if qtype in (253, 254):  # MAILB, MAILA
            return _NOTIMP
        rkey = (q.qname, qtype, q.qclass)
        res = self._resolved.get(rkey)
        if res is None:
            zone = self._zones.find(q.qname, qtype)
            res = _REFUSED if zone is None else zone.resolve(q.qname, qtype)
            self._resolved.put(rkey, res)
        return res

    def _plan(self, q: Query, key: _StaticKey, limit: int) -> _Reply | _Plan:
        if q.qclass == CHAOS and q.qname in self._chaos:
            return self._chaos_reply(q, self._chaos[q.qname])
        res = self._resolve(q)
        qname = name_to_text(q.qname)
        if res.pool is not None:
            # A zone answer holds at most one pool (the end of a CNAME chain): its slot alone
            # says when the answer goes stale.
            pool = res.pool.pool
            return _Plan(
                res, res.pool, qname, pool.policy is Policy.NEAREST, self._health.slot(pool.name)
            )
        return self._render(q, res, qname, None, (), 0, limit)

    def _pool_reply(
        self, q: Query, key: _StaticKey, plan: _Plan, where: Location | None, limit: int
    ) -> _Reply:
        selection: Selection = select(plan.pool.pool, where, self._health)
        scope = answer_scope(q.ecs, where, selection.tailored)
        return self._selected(q, key, plan, selection, scope, limit)

    def _selected(
        self, q: Query, key: _StaticKey, plan: _Plan, selection: Selection, scope: int, limit: int
    ) -> _Reply:
        """The reply naming `selection`'s edges with ECS scope `scope`."""
        pa = plan.pool
        edges = selection.edges or pa.pool.edges
        names = tuple([e.name for e in edges])
        rkey = (key, names, scope)
        reply = self._rendered.get(rkey)
        if reply is None:
            reply = self._fill(q, key, plan, edges, scope, limit)
            self._rendered.put(rkey, reply)
        return reply

    def _fill(
        self,
        q: Query,
        key: _StaticKey,
        plan: _Plan,
        edges: tuple[Edge, ...],
        scope: int,
        limit: int,
    ) -> _Reply:
        """A pool answer from a template of its shape (static key, number of addresses, ECS
        scope): the template is rendered once with placeholder addresses, and each answer
        copies it and writes the chosen edges' addresses over the placeholders. A pool of
        many edges has many edge sets but few shapes, so dnslib runs once per shape.
        Signed answers are rendered whole: each edge set is an RRset with its own RRSIG."""
        pa = plan.pool
        if q.do and self._signer(q) is not None:
            return self._render(q, plan.resolution, plan.qname, pa, edges, scope, limit)
        v6 = pa.rtype == AAAA
        chosen = [e for e in edges if (e.ipv6 if v6 else e.ipv4) is not None]
        tkey = (key, len(chosen), scope)
        template = self._templates.get(tkey)
        if template is None:
            template = self._template(q, plan, len(chosen), scope, limit)
            self._templates.put(tkey, template)
        wire, offsets = template
        if offsets is None:  # no usable template for this shape
            return self._render(q, plan.resolution, plan.qname, pa, edges, scope, limit)
        if not offsets:  # no addresses (or truncated): the template is the answer
            return _Reply(wire, plan.resolution.rcode, plan.qname, pa.pool.name, ())
        out = bytearray(wire)
        for offset, edge in zip(offsets, chosen, strict=True):
            address = edge.ipv6 if v6 else edge.ipv4
            assert address is not None
            packed = address.packed
            out[offset : offset + len(packed)] = packed
        names = tuple([e.name for e in chosen])
        return _Reply(bytes(out), plan.resolution.rcode, plan.qname, pa.pool.name, names)

    def _template(
        self, q: Query, plan: _Plan, count: int, scope: int, limit: int
    ) -> tuple[bytes, list[int] | None]:
        """(wire with placeholder addresses, their offsets); offsets None when the answer
        has another pool answer besides this one or a placeholder is not found exactly once
        (then every answer of this shape is rendered whole)."""
        pa = plan.pool
        if sum(1 for item in plan.resolution.answer if isinstance(item, PoolAnswer)) != 1:
            return b"", None
        v6 = pa.rtype == AAAA
        marks = [
            (b"\xfe\x80\xa5\x5a" + bytes(10) + i.to_bytes(2, "big"))
            if v6
            else (b"\xf0\xa5" + i.to_bytes(2, "big"))
            for i in range(count)
        ]
        dummies = [
            Edge(
                f"placeholder-{i}",
                0.0,
                0.0,
                ipv4=None if v6 else ipaddress.IPv4Address(mark),
                ipv6=ipaddress.IPv6Address(mark) if v6 else None,
            )
            for i, mark in enumerate(marks)
        ]
        reply = self._render(q, plan.resolution, plan.qname, pa, dummies, scope, limit)
        wire = reply.wire
        if not reply.edges:
            return wire, []
        offsets = []
        for mark in marks:
            tagged = len(mark).to_bytes(2, "big") + mark  # RDLENGTH then RDATA
            at = wire.find(tagged)
            if at < 0 or wire.find(tagged, at + 1) >= 0:
                return b"", None
            offsets.append(at + 2)
        return wire, offsets

    # ------------------------------------------------------------------ encoding

    def _chaos_reply(self, q: Query, text: str) -> _Reply:
        """CH TXT id.server / hostname.bind (the node's identity) and version.bind /
        version.server, as NSD and Knot answer them: TTL 0, authoritative; another type at
        those names gets an empty answer."""
        question = DNSQuestion(dnslabel(q.qname), q.qtype, q.qclass)
        answer = []
        if q.qtype in (TXT_TYPE, ANY_TYPE):
            owner = dnslabel(q.qname)
            answer.append(RR(owner, TXT_TYPE, rclass=CHAOS, ttl=0, rdata=TXT(text)))
        opt = self._opt(q, 0, NOERROR)
        header = DNSHeader(id=0, qr=1, aa=1, rd=0, rcode=NOERROR)
        record = DNSRecord(header, questions=[question], rr=answer, ar=[opt] if opt else [])
        return _Reply(bytes(record.pack()), NOERROR, name_to_text(q.qname))

    def _signer(self, q: Query) -> Signer | None:
        if not self._signers:
            return None
        zone = self._zones.find(q.qname, q.qtype)
        return None if zone is None else self._signers.get(zone.origin)

    def _render(
        self,
        q: Query,
        res: Resolution,
        qname: str,
        pool: PoolAnswer | None,
        edges: Iterable[Any],
        scope: int,
        limit: int,
    ) -> _Reply:
        """Encode `res` (ID 0, lower-case question), fitting it into `limit` octets; signed
        when the query has DO=1 and the zone a key."""
        signer = self._signer(q) if q.do else None
        answer = []
        edge_names: tuple[str, ...] = ()
        for item in res.answer:
            if isinstance(item, RRset):
                answer.extend(_rrs(item))
                if signer is not None:
                    answer.append(_sign(signer, item))
            else:
                addrs = []
                for edge in edges:
                    addr = edge.ipv6 if item.rtype == AAAA else edge.ipv4
                    if addr is not None:
                        addrs.append(addr)
                        edge_names += (edge.name,)
                owner = dnslabel(item.owner)
                cls = RD_AAAA if item.rtype == AAAA else RD_A
                answer.extend(RR(owner, item.rtype, ttl=item.ttl, rdata=cls(str(a))) for a in addrs)
                if signer is not None and addrs:
                    packed = [a.packed for a in addrs]
                    answer.append(signer.rrsig_rr(item.owner, item.rtype, item.ttl, packed))
        authority = [rr for rrset in res.authority for rr in _rrs(rrset)]
        additional = [rr for rrset in res.additional for rr in _rrs(rrset)]  # glue: unsigned
        optional = [rr for rrset in res.optional for rr in _rrs(rrset)]
        rcode = res.rcode
        if signer is not None:
            rcode = self._secure(q, res, signer, answer, authority)
            optional = [rr for rrset in res.optional for rr in (*_rrs(rrset), _sign(signer, rrset))]
        opt = self._opt(q, scope, rcode)
        tail = [opt] if opt is not None else []
        question = DNSQuestion(dnslabel(q.qname), q.qtype, q.qclass)

        def pack(tc: bool, an: list[Any], ns: list[Any], ar: list[Any]) -> bytes:
            header = DNSHeader(id=0, qr=1, aa=int(res.aa), tc=int(tc), rd=0, rcode=rcode & 0xF)
            record = DNSRecord(header, questions=[question], rr=an, auth=ns, ar=ar + tail)
            return bytes(record.pack())

        wire = pack(False, answer, authority, additional + optional)
        if len(wire) > limit and optional:
            wire = pack(False, answer, authority, additional)
        if len(wire) > limit:
            wire = pack(True, [], [], [])
            edge_names = ()
        pool_name = pool.pool.name if pool is not None else None
        return _Reply(wire, rcode, qname, pool_name, edge_names, signer is not None)

    @staticmethod
    def _secure(
        q: Query, res: Resolution, signer: Signer, answer: list[Any], authority: list[Any]
    ) -> int:
        """Add the DNSSEC records of a signed reply to `answer` and `authority` (the unsigned
        records already there); returns the reply's rcode.

        A referral proves its DS RRset, or with an NSEC at the delegation point that there
        is none. A negative answer (RFC 9824 compact denial) is NOERROR with the signed SOA
        and a signed NSEC at the name looked up last, whose bitmap lists the types there (a
        name that does not exist: NXNAME); an NSEC query for that name gets the NSEC as its
        answer."""
        name = res.denial
        if name is None:
            return res.rcode
        if not res.aa:  # a referral
            if res.ds is not None:
                authority.extend((*_rrs(res.ds), _sign(signer, res.ds)))
            else:
                nsec = nsec_rdata(name, res.types)
                authority.extend(signer.signed(name, NSEC, signer.nsec_ttl, [nsec]))
            return res.rcode
        soa = res.authority[0]
        nsec = nsec_rdata(name, res.types if res.rcode != NXDOMAIN else (NXNAME,))
        records = signer.signed(name, NSEC, signer.nsec_ttl, [nsec])
        if q.qtype == NSEC and name == q.qname and not answer:
            authority.clear()
            answer.extend(records)
        else:
            authority.append(_sign(signer, soa))
            authority.extend(records)
        return NOERROR

    def _opt(self, q: Query, scope: int, rcode: int) -> Any:
        if not q.edns:
            return None
        ttl = ((rcode >> 4) << 24) | (0x8000 if q.do else 0)
        options = []
        if q.ecs is not None:
            ecs = q.ecs
            data = bytes((ecs.family >> 8, ecs.family & 0xFF, ecs.source, scope)) + ecs.address
            options.append(EDNSOption(8, data))
        return RR(DNSLabel([]), QTYPE.OPT, rclass=self._max_udp, ttl=ttl, rdata=options)

    def _error(
        self, wire: bytes, client: IPAddress, rcode: int, qend: int, edns: bool, do: bool
    ) -> bytes | None:
        """A reply carrying only an rcode (and the question when it parsed). With `edns` (the
        query's OPT record parsed) it carries an OPT record too, as every reply to such a
        query does (RFC 6891 section 7): our payload size, the upper rcode bits, the query's
        DO bit (RFC 3225), no options (an ECS option is not echoed on an error)."""
        try:
            flags_in = (wire[2] << 8) | wire[3]
            flags = 0x8000 | (flags_in & 0x7800) | (flags_in & 0x0110) | (rcode & 0xF)
            qd = 1 if qend else 0
            out = _HEADER.pack((wire[0] << 8) | wire[1], flags, qd, 0, 0, 1 if edns else 0) + (
                wire[12:qend] if qend else b""
            )
            if edns:
                ext = 0x8000 if do else 0
                out += _OPT_FIXED.pack(0, OPT, self._max_udp, rcode >> 4, 0, ext, 0)
        except Exception:
            log.exception("building an error reply failed")
            return None
        if self._observer is not None:
            # Apart from the reply, as in _notify: a failing observer must not cost the reply.
            try:
                qname = ""
                if qend:
                    qname = name_to_text(wire[12 : qend - 4].lower())
                qtype = (wire[qend - 4] << 8) | wire[qend - 3] if qend else 0
                self._observer.answered(
                    qname=qname,
                    qtype=qtype,
                    rcode=rcode,
                    pool=None,
                    edges=(),
                    client=str(client),
                    ecs=None,
                )
            except Exception:
                log.exception("the query observer failed")
        return out

    def _missed(self, pool: str) -> None:
        assert self._observer is not None
        try:
            self._observer.pool_miss(pool)
        except Exception:
            log.exception("the query observer failed")

    def _counted(self, reply: _Reply, qtype: int) -> Counted:
        """What the observer counts `reply` by, with its slot (-1 without an observer)."""
        key = (reply.rcode, qtype, reply.pool or "", reply.edges)
        return key, -1 if self._observer is None else self._observer.slot(key)

    def _tally(self, key: Tally) -> None:
        """Count one reply whose key the observer gave no slot."""
        assert self._observer is not None
        tally = self._observer.tally
        tally[key] = tally.get(key, 0) + 1

    def _tell(
        self, reply: _Reply, qtype: int, client: IPAddress, ecs: _Ecs, counted: Counted
    ) -> None:
        """Tell the observer of a reply: counted at its slot, or through `answered`."""
        observer = self._observer
        assert observer is not None
        if observer.detailed:
            self._notify(reply, qtype, client, ecs)
        elif counted[1] >= 0:
            observer.counts[counted[1]] += 1
        else:
            self._tally(counted[0])

    def _notify(self, reply: _Reply, qtype: int, client: IPAddress, ecs: _Ecs) -> None:
        assert self._observer is not None
        try:
            # bytes: the three octets of a /24 (from _placed)
            subnet = f"{ecs[0]}.{ecs[1]}.{ecs[2]}.0/24" if isinstance(ecs, bytes) else ecs
            known = self._client_text.get(id(client))
            if known is not None and known[0] is client:
                text = known[1]
            else:
                text = str(client)
                if len(self._client_text) >= CLIENT_TEXTS:
                    self._client_text.clear()
                self._client_text[id(client)] = (client, text)
            self._observer.answered(
                qname=reply.qname,
                qtype=qtype,
                rcode=reply.rcode,
                pool=reply.pool,
                edges=reply.edges,
                client=text,
                ecs=subnet,
            )
        except Exception:
            log.exception("the query observer failed")


def _rrs(rrset: RRset) -> list[Any]:
    owner = dnslabel(rrset.name)
    return [RR(owner, rrset.rtype, ttl=rrset.ttl, rdata=rd) for rd in rrset.rdatas]


def _sign(signer: Signer, rrset: RRset) -> Any:
    rdatas = [canonical_rdata(rd) for rd in rrset.rdatas]
    return signer.rrsig_rr(rrset.name, rrset.rtype, rrset.ttl, rdatas)
