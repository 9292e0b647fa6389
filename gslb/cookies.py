"""DNS COOKIE (RFC 7873) with interoperable server cookies (RFC 9018): pure decisions.

A client cookie is 8 octets the client picks per server; the server cookie we return is
RFC 9018's 16 octets: version 1, three reserved octets, a 32-bit timestamp (seconds, serial
arithmetic) and an 8-octet SipHash-2-4, keyed with the server secret, of the client cookie,
the version, reserved and timestamp octets and the client's address. Every node configured
with the same secret makes and accepts the same cookies, so anycast and multi-node setups
validate each other's.

`CookieJar.check(option, client)` reads the option data of a query's COOKIE option (already
length-checked by gslb.wire: 8, or 16 to 40 octets) and says whether it carries a valid
server cookie, plus the option data to put in the reply:

- client cookie only: CLIENT_ONLY, with a fresh server cookie;
- a server cookie made by us (any configured secret: the first makes cookies, the others
  are still accepted, for rotation) no more than an hour old and at most five minutes in
  the future (RFC 9018 section 4.3): VALID. It is echoed as it came while it is younger
  than half an hour and was made with the first secret, else replaced by a fresh one;
- anything else: INVALID, with a fresh server cookie (RFC 7873 section 5.2.4: answered like
  a query with a client cookie only).

Hashing is slow in Python (about 30 microseconds), and a resolver sends one cookie for many
queries: results are memoized per (option, client) for at most MEMO_SECONDS, so a cookie we
hand out is never more than that older than its timestamp says.

Without a configured secret each start of `gslb serve` makes a random one (`new_secret`):
gslb.service.DnsRuntime once per process, for every Responder it builds (reloads keep it);
with worker processes the parent makes it and hands it to each worker it spawns as an
argument of the process (multiprocessing's spawn pipe: never the environment, the command
line or a log), so a cookie handed out by one worker is valid at every other.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
import struct
from dataclasses import dataclass
from typing import Final

from gslb.models import Clock
from gslb.respcache import FifoCache
from gslb.siphash import siphash24

__all__ = ["CookieCheck", "CookieJar", "Verdict", "new_secret"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

OPTION_CODE: Final = 10
CLIENT_LEN: Final = 8
SECRET_LEN: Final = 16
LIFETIME: Final = 3600  # seconds a server cookie is accepted after its timestamp
SKEW: Final = 300  # seconds a timestamp may be ahead of our clock (another node's)
RENEW: Final = 1800  # an older cookie is replaced by a fresh one
MEMO_SECONDS: Final = 60
MEMO_ENTRIES: Final = 50_000
_STAMP: Final = struct.Struct("!I")


class Verdict(enum.Enum):
    CLIENT_ONLY = "client-only"
    VALID = "valid"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class CookieCheck:
    verdict: Verdict
    option: bytes  # COOKIE option data for the reply: client cookie + our server cookie


def age(stamp: int, now: int) -> int:
    """Seconds from `stamp` to `now` in 32-bit serial arithmetic (negative: in the future)."""
    delta = (now - stamp) & 0xFFFFFFFF
    return delta - 0x100000000 if delta >= 0x80000000 else delta


def usable(stamp: int, now: int) -> bool:
    return -SKEW <= age(stamp, now) <= LIFETIME


def server_cookie(secret: bytes, client_cookie: bytes, client: IPAddress, now: int) -> bytes:
    """RFC 9018's server cookie made at `now` (seconds since the epoch)."""
    head = b"\x01\x00\x00\x00" + _STAMP.pack(now & 0xFFFFFFFF)
    return head + siphash24(secret, client_cookie + head + client.packed)


def hash_matches(secret: bytes, option: bytes, client: IPAddress) -> bool:
    """Whether `option` (client cookie + a 16-octet server cookie) carries the hash `secret`
    makes for `client`. The reserved octets count as received (RFC 9018 section 4.4)."""
    return siphash24(secret, option[:16] + client.packed) == option[16:24]


class CookieJar:
    """Checks and makes cookies with `secrets` (the first makes them); see the module doc."""

    def __init__(self, secrets_: tuple[bytes, ...], clock: Clock) -> None:
        if not secrets_ or any(len(s) != SECRET_LEN for s in secrets_):
            raise ValueError("cookie secrets are one or more 16-octet keys")
        self._secrets = secrets_
        self._clock = clock
        self._memo: FifoCache[tuple[bytes, IPAddress], tuple[CookieCheck, int]] = FifoCache(
            MEMO_ENTRIES
        )

    def check(self, option: bytes, client: IPAddress) -> CookieCheck:
        now = int(self._clock())
        key = (option, client)
        memo = self._memo.get(key)
        if memo is not None and 0 <= now - memo[1] < MEMO_SECONDS:
            return memo[0]
        result, until = self._check(option, client, now)
        self._memo.put(key, (result, now - MEMO_SECONDS + until))
        return result

    def _check(self, option: bytes, client: IPAddress, now: int) -> tuple[CookieCheck, int]:
        """The result and for how many seconds it may be reused."""
        client_cookie = option[:CLIENT_LEN]
        if len(option) == CLIENT_LEN:
            verdict = Verdict.CLIENT_ONLY
        elif len(option) != 24 or option[8] != 1:
            verdict = Verdict.INVALID  # not a cookie we make (another version or length)
        else:
            stamp = _STAMP.unpack_from(option, 12)[0]
            if not usable(stamp, now):
                verdict = Verdict.INVALID
            else:
                found = next(
                    (i for i, s in enumerate(self._secrets) if hash_matches(s, option, client)),
                    None,
                )
                if found is None:
                    verdict = Verdict.INVALID
                else:
                    verdict = Verdict.VALID
                    left = RENEW - age(stamp, now)
                    if found == 0 and left > 0:
                        return CookieCheck(verdict, option), min(MEMO_SECONDS, left)
        fresh = server_cookie(self._secrets[0], client_cookie, client, now)
        return CookieCheck(verdict, client_cookie + fresh), MEMO_SECONDS


def new_secret() -> bytes:
    """A random server secret: the one of a start of `gslb serve` without a secret file."""
    return secrets.token_bytes(SECRET_LEN)
