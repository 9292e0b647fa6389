"""A miss's cache decisions on its origin's response head, remembered by the head's shape.

An origin answers its misses in a few shapes of head: the same field names in the same
order, the same values of the fields that steer the decisions (``steering``: Cache-Control,
Vary, Connection, Content-Type, ...), and in the other fields values that change from
response to response (Date, ETag, Last-Modified, Content-Length, a request id). The
decisions on a head (edge.cache_policy's storability and stored entry, edge.compression's,
the client's fields) look its fields up by name all along. A ``Shape`` keeps what they made
of one head as positions in it: the lines freshness reads, the lines stored, the lines sent
on, and the verdicts that the shape alone settles. The next head of that shape is decided
from its own lines by position; what the changing values decide (freshness, the declared
length, the stored Date, the surrogate keys) is computed from them each time.

A shape is learnt the second time it is seen (an origin whose steering values never repeat
costs a dict lookup a miss), and only after the decisions by position reproduced the full
decisions on that head: the stored entry, the verdict, the length and the client's fields.
Shapes whose decisions depend on the request beyond its Vary fields (compression, which
negotiates Accept-Encoding; a request with no-store or credentials) are decided in full.

Sans-IO: heads in, decisions out. edge.cache_layer keeps one ShapeMemo per configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from edge import cache_policy as cp
from edge import compression
from edge import freshness as fr
from edge.cache_control import Fields, cache_control
from edge.conditional import strip_hop_by_hop
from edge.config import CompressionConfig
from edge.headers import client_response_fields, sent_fields

Pairs = Sequence[tuple[str, str]]

# The fields whose values, besides the names and order of all the lines, steer the
# decisions a Shape keeps; a configuration's targeted fields (CDN-Cache-Control) join them.
# Every other field's value is only copied (stored, sent) or read again per response:
# freshness's (edge.cache_policy.FRESHNESS_INPUTS), Content-Length, Surrogate-Key. A
# decision that comes to read another field's value needs that field here (the
# differential test, tests/unit/test_head_shapes.py, draws every other value again).
STEERING = frozenset(
    {
        "cache-control",
        "connection",
        "content-encoding",
        "content-type",
        "transfer-encoding",
        "vary",
    }
)

# Heads of this many names and orders at most, each with this many sets of steering values
# at most, are remembered; past either, that memo starts afresh. A head of more than
# LINES_MAX lines, or whose names or steering values take more than BYTES_MAX, is never
# remembered. A shape then takes under 3 KiB (its parsed Cache-Control is not kept:
# edge.cache_control remembers those): under 3 MiB at the very most (docs/benchmarks.md),
# a few KiB for an origin's usual heads.
NAMES_MAX = 64
VALUES_MAX = 16
LINES_MAX = 64
BYTES_MAX = 1024


@dataclass(frozen=True, slots=True)
class Shape:
    """The decisions on heads of one shape, as positions in such a head (`pairs`)."""

    status: int
    refused: cp.Storability | None  # the verdict when the shape settles it (not storable)
    validator: bool  # ETag or Last-Modified
    writable: bool  # a body with an end of its own (or none)
    fresh_at: tuple[int, ...]  # the lines freshness reads
    stored_at: tuple[int, ...]  # the lines stored
    dated: bool  # a Date is added to those stored
    same_freshness: bool  # the stored lines give the freshness the head gives
    vary: tuple[str, ...]
    surrogate_at: tuple[int, ...]  # the Surrogate-Key lines stored
    length_at: int | None  # the first Content-Length line
    sent_at: tuple[int, ...]  # the lines sent on to the client but Via
    via_at: tuple[int, ...]  # the Via lines
    policy: cp.PolicyConfig
    via: str

    def storability(self, pairs: Pairs, t_req: float, t_resp: float) -> cp.Storability:
        """cp.storability of `pairs`, a head of this shape, for a plain GET."""
        if self.refused is not None:
            return self.refused
        fields = Fields([pairs[i] for i in self.fresh_at])
        f = fr.compute(self.status, fields, t_req, t_resp, self.policy)
        return cp.stored_for_freshness(f, self.validator)

    def length(self, pairs: Pairs) -> int | None:
        """cp.declared_length of `pairs` for a GET."""
        if self.length_at is None:
            return None
        return cp.declared_length("GET", (pairs[self.length_at],))

    def entry(
        self,
        request: cp.CacheRequest,
        reason: str,
        pairs: Pairs,
        *,
        request_time: float,
        response_time: float,
        body_length: int,
        sha256: str,
        now: float,
        known: fr.Freshness | None,
    ) -> cp.CacheEntry:
        """cp.make_entry of `pairs`, `known` the freshness `storability` gave."""
        stored = [pairs[i] for i in self.stored_at]
        if self.dated:
            stored.append(("Date", fr.format_http_date(response_time)))
        if known is None or not self.same_freshness:
            known = fr.compute(
                self.status, Fields(stored), request_time, response_time, self.policy
            )
        surrogate = cp.surrogate_keys([pairs[i] for i in self.surrogate_at])
        return cp.assemble_entry(
            request,
            self.status,
            reason,
            stored,
            self.vary,
            surrogate,
            request_time=request_time,
            response_time=response_time,
            body_length=body_length,
            sha256=sha256,
            now=now,
            freshness=known,
        )

    def sent(self, pairs: Pairs, version: tuple[int, int]) -> list[tuple[str, str]]:
        """edge.headers.client_response_fields of `pairs`."""
        return sent_fields(
            [pairs[i] for i in self.sent_at],
            [pairs[i][1] for i in self.via_at],
            version=version,
            via=self.via,
        )


class _Names:
    """The heads of one status and one list of names: where their steering values are,
    and what each set of those values made (a Shape, _SEEN once, _NEVER)."""

    __slots__ = ("_at", "shapes", "steering")

    def __init__(self, steering_at: tuple[int, ...]) -> None:
        # The key of a head's steering lines (the lines themselves, their names known).
        self.steering: Callable[[Pairs], object] = (
            itemgetter(*steering_at) if steering_at else _none
        )
        self.shapes: dict[object, Shape | str] = {}
        self._at = steering_at

    def steering_bytes(self, pairs: Pairs) -> int:
        """How long the steering values of `pairs` are."""
        return sum(len(pairs[i][1]) for i in self._at)


def _none(pairs: Pairs) -> None:
    return None


_SEEN = "seen"  # once: learnt the next time
_NEVER = "never"  # decided in full each time


class ShapeMemo:
    """Shapes by status, names and steering values, for one configuration."""

    def __init__(self, policy: cp.PolicyConfig, options: CompressionConfig, via: str) -> None:
        self.policy = policy
        self.options = options
        self.via = via
        targeted = {name.lower() for name in policy.targeted_fields}
        self.steering = STEERING | targeted
        self._freshness = frozenset(cp.FRESHNESS_INPUTS) | targeted
        self._names: dict[tuple[int, tuple[str, ...]], _Names] = {}

    def shape(
        self, request: cp.CacheRequest, status: int, pairs: Pairs, t_req: float, t_resp: float
    ) -> Shape | None:
        """The Shape deciding `pairs`, the head of the origin's response to `request`
        received between `t_req` and `t_resp`; None when they are to be decided in full
        (the first time a shape is seen, and always for the shapes no Shape can decide)."""
        if request.method != "GET" or len(pairs) > LINES_MAX or not _plain(request):
            return None
        names = tuple(map(_name, pairs))
        key = (status, names)
        known = self._names.get(key)
        if known is None:
            if sum(map(len, names)) > BYTES_MAX:
                return None
            if len(self._names) >= NAMES_MAX:
                self._names.clear()
            steering = self.steering
            at = tuple(i for i, k in enumerate(names) if k.lower() in steering)
            known = self._names[key] = _Names(at)
        values = known.steering(pairs)
        shapes = known.shapes
        found = shapes.get(values)
        if type(found) is Shape:
            return found
        if found is None:
            if known.steering_bytes(pairs) > BYTES_MAX:
                return None
            if len(shapes) >= VALUES_MAX:
                shapes.clear()
            shapes[values] = _SEEN
            return None
        if found == _SEEN:
            learnt = self._learn(request, status, pairs, t_req, t_resp)
            shapes[values] = _NEVER if learnt is None else learnt
            return learnt
        return None

    def _learn(
        self, request: cp.CacheRequest, status: int, pairs: Pairs, t_req: float, t_resp: float
    ) -> Shape | None:
        """The Shape of `pairs`, checked against the full decisions on them; None when no
        Shape decides them as those do."""
        head = Fields(pairs)
        policy = self.policy
        if self.options.enabled and compression.should_compress(
            status, "GET", head, None, self.options
        ):
            return None  # compressed, or sent with Vary: Accept-Encoding: the request's say
        verdict = cp.storability(
            request, status, head, policy, request_time=t_req, response_time=t_resp
        )
        stored = cp.make_entry(
            request,
            status,
            "",
            head,
            request_time=t_req,
            response_time=t_resp,
            body_length=0,
            sha256="0" * 64,
            now=t_resp,
            config=policy,
            known=verdict.freshness,
        )
        # Positions by name: the lines stored and sent are the head's without those of
        # some names (hop-by-hop ones, those Connection lists, those qualified private and
        # no-cache list), and a Date when none is left (cache_policy._stored_headers).
        lower = [k.lower() for k, _ in head]
        end_to_end = strip_hop_by_hop(head)
        sent_names = {k.lower() for k, _ in end_to_end}
        kept = sent_names - cp.unstored(end_to_end)
        stored_at = tuple(i for i, k in enumerate(lower) if k in kept)
        fresh_at = tuple(i for i, k in enumerate(lower) if k in self._freshness)
        shape = Shape(
            status=status,
            refused=None if verdict.storable or verdict.reason == "no-freshness" else verdict,
            validator=cp.has_validator(head),
            writable=cp.delimited(head) or cp.bodyless("GET", status),
            fresh_at=fresh_at,
            stored_at=stored_at,
            dated="date" not in kept,
            # By the lines, not their values: with a Date of the edge's own added (the
            # origin's left out), the stored freshness is computed again, whether or not
            # this head's Date happens to be the one added.
            same_freshness="date" in kept and set(fresh_at) <= set(stored_at),
            vary=stored.vary,
            surrogate_at=tuple(i for i in stored_at if lower[i] == "surrogate-key"),
            length_at=next((i for i, k in enumerate(lower) if k == "content-length"), None),
            sent_at=tuple(i for i, k in enumerate(lower) if k in sent_names and k != "via"),
            via_at=tuple(i for i, k in enumerate(lower) if k == "via" and k in sent_names),
            policy=policy,
            via=self.via,
        )
        by_shape = shape.entry(
            request,
            "",
            pairs,
            request_time=t_req,
            response_time=t_resp,
            body_length=0,
            sha256="0" * 64,
            now=t_resp,
            known=verdict.freshness,
        )
        if (
            shape.storability(pairs, t_req, t_resp) != verdict
            or by_shape != stored
            or shape.length(pairs) != cp.declared_length("GET", head)
            or any(
                shape.sent(pairs, version)
                != client_response_fields(head, version=version, via=self.via)
                for version in ((1, 1), (1, 0))
            )
        ):
            return None
        return shape


_name = itemgetter(0)


def _plain(request: cp.CacheRequest) -> bool:
    """Whether storability's request-side checks all pass for `request` (a GET): no
    no-store, no credentials."""
    headers = request.headers
    index = headers.by_name if type(headers) is Fields else Fields(headers).by_name
    if "authorization" in index:
        return False
    return "cache-control" not in index or "no-store" not in cache_control(headers)
