"""Response rate limiting (RRL) for UDP replies: what keeps an authoritative server from being
used as a reflection amplifier.

An attacker sends queries with a victim's address as the source; each UDP reply goes to the
victim, larger than the query. RRL (as in BIND, NSD and Knot) counts the replies going to one
client network for one kind of answer and, above a rate, stops sending most of them. A
legitimate resolver behind that network is not cut off: every `slip`-th limited reply is still
sent, truncated (TC=1, no records), which tells a real resolver to retry over TCP, where source
addresses cannot be forged and nothing is limited.

Accounting, per (client network, response class), each a token bucket of `burst` replies
refilled at `rate` per second:

- client network: the source address cut to `ipv4_prefix` / `ipv6_prefix` bits;
- response class: a positive answer counts per query name and type, a NODATA or referral per
  query name, every NXDOMAIN of the network in one bucket (a random-subdomain flood is one
  flood; a signed zone's NXDOMAIN, which RFC 9824 sends as NOERROR with an NSEC record
  whose bitmap has NXNAME, counts as one too), and every error (REFUSED, FORMERR,
  SERVFAIL, NOTIMP) in one bucket.

`RateLimiter.check(client, reply, now)` is pure bookkeeping on bytes and numbers; the UDP
adapter (gslb.server) calls it for each reply and sends, drops or truncates. TCP is never
limited. The table of buckets is bounded: idle buckets (full again) are pruned first, then
the ones limited least.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress

from gslb.config import RrlConfig
from gslb.errors import FormError
from gslb.wire import question_end, skip_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["Action", "RateLimiter", "truncated"]

_CLIENTS_MAX = 65536  # cached client -> bucket prefix decisions
_UNSEEN: tuple[int, int] = (-1, -1)  # a client not in the prefix cache yet
_NXDOMAIN, _ERROR = b"\x00nx", b"\x00err"  # classes no wire name can equal (no 0-length label)


class Action(enum.Enum):
    SEND = "send"
    DROP = "drop"
    SLIP = "slip"  # send `truncated(reply)` instead


def _question_end(reply: bytes) -> int:
    """The offset just past the first question, or 12 (header only) if there is none or it
    does not parse. Our replies echo the question uncompressed."""
    if len(reply) < 12 or reply[4:6] == b"\x00\x00":
        return 12
    try:
        return question_end(reply, len(reply))
    except FormError:
        return 12


def _compact_nxdomain(reply: bytes, pos: int) -> bool:
    """Whether the authority section, from `pos` (past the question), holds an NSEC record
    whose type bitmap has NXNAME (type 128): RFC 9824's compact denial of a name."""
    size = len(reply)
    try:
        for _ in range((reply[8] << 8) | reply[9]):
            pos = skip_name(reply, pos, size)
            if pos + 10 > size:
                return False
            rdlen = (reply[pos + 8] << 8) | reply[pos + 9]
            rdata, pos = pos + 10, pos + 10 + rdlen
            if pos > size:
                return False
            if reply[rdata - 10 : rdata - 8] != b"\x00\x2f":  # not NSEC
                continue
            bitmap = skip_name(reply, rdata, size)  # the next name (never compressed in NSEC)
            # Window 0's bitmap: type 128 is the top bit of its 17th octet.
            if bitmap + 19 <= pos and reply[bitmap] == 0 and reply[bitmap + 1] >= 17:
                return bool(reply[bitmap + 18] & 0x80)
            return False
    except FormError:
        return False
    return False


def truncated(reply: bytes) -> bytes:
    """`reply` cut to its header and question, with TC set and the other counts zero."""
    end = _question_end(reply)
    qdcount = b"\x00\x01" if end > 12 else b"\x00\x00"
    return reply[:2] + bytes([reply[2] | 0x02, reply[3]]) + qdcount + bytes(6) + reply[12:end]


class RateLimiter:
    """Token buckets per (client network, response class); see the module docstring."""

    def __init__(self, config: RrlConfig) -> None:
        self.config = config
        self.rate = config.rate
        self.burst = config.burst or config.rate
        self.slip = config.slip
        self._v4_shift = 32 - config.ipv4_prefix
        self._v6_shift = 128 - config.ipv6_prefix
        self._exempt = config.exempt
        self._clients: dict[IPAddress, tuple[int, int] | None] = {}
        # key -> [tokens, time of the last update, limited replies so far]
        self._buckets: dict[tuple[tuple[int, int], bytes], list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _network(self, client: IPAddress) -> tuple[int, int] | None:
        """The bucket prefix of `client`, or None when it is exempt."""
        if any(client in net for net in self._exempt):
            prefix = None
        elif client.version == 4:
            prefix = (4, int(client) >> self._v4_shift)
        else:
            prefix = (6, int(client) >> self._v6_shift)
        if len(self._clients) >= _CLIENTS_MAX:
            self._clients.clear()  # bounded without per-packet LRU bookkeeping
        self._clients[client] = prefix
        return prefix

    def check(self, client: IPAddress, reply: bytes, now: float) -> Action:
        """Count `reply` to `client` at `now` (seconds, monotonic) and say what to do with it."""
        if len(reply) < 12:
            return Action.SEND
        network = self._clients.get(client, _UNSEEN)
        if network is _UNSEEN:
            network = self._network(client)
        if network is None:
            return Action.SEND
        rcode = reply[3] & 0x0F
        if rcode == 3:
            kind = _NXDOMAIN
        elif rcode != 0:
            kind = _ERROR
        else:
            end = _question_end(reply)
            if reply[6:8] != b"\x00\x00":  # answers: per name and type
                kind = reply[12 : end - 2].lower()
            elif reply[8:10] != b"\x00\x00" and _compact_nxdomain(reply, end):
                kind = _NXDOMAIN  # RFC 9824: a signed NXDOMAIN comes as NOERROR
            else:  # NODATA or a referral: per name
                kind = reply[12 : end - 4].lower()
        key = (network, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.config.table_size:
                self._make_room(now)
            bucket = self._buckets[key] = [self.burst, now, 0.0]
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return Action.SEND
        bucket[0] = tokens
        bucket[2] += 1
        if self.slip and bucket[2] % self.slip == 0:
            return Action.SLIP
        return Action.DROP

    def _make_room(self, now: float) -> None:
        """Drop the buckets that are full again (as if never seen); if that frees too little
        (a flood from very many networks), an eighth of the table, those limited least and
        then those with the most tokens first: networks being limited keep their state."""
        buckets, rate, burst = self._buckets, self.rate, self.burst

        def least_limited(item: tuple[object, list[float]]) -> tuple[float, float]:
            bucket = item[1]
            return bucket[2], -(bucket[0] + (now - bucket[1]) * rate)

        for key in [k for k, b in buckets.items() if b[0] + (now - b[1]) * rate >= burst]:
            del buckets[key]
        limit = self.config.table_size
        if len(buckets) >= limit:
            for key, _ in heapq.nsmallest(max(1, limit // 8), buckets.items(), key=least_limited):
                del buckets[key]
