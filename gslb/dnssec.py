"""DNSSEC online signing: keys, RRSIGs, and compact denial of existence.

Pool answers are chosen per query, so zones cannot be signed ahead of time: like PowerDNS
(LUA records), NS1, Route 53 and Cloudflare, gslb signs each RRset when it first answers it
(RFC 4033-4035, RFC 6840) and proves nonexistence with one NSEC at the query name (RFC 9824
compact denial). One combined signing key (CSK) per zone: DNSKEY flags 257, algorithm 13
(ECDSAP256SHA256, RFC 6605; what RFC 8624 recommends), DS digest type 2 (SHA-256).

Signatures are made per *epoch* of REFRESH seconds of the injected clock: every signature
made in epoch E carries inception E*REFRESH - INCEPTION_SKEW and expiration
(E+1)*REFRESH + VALIDITY, so at any time a served signature began at least an hour ago and
holds for at least VALIDITY more. A `Signer` caches one signature per RRset (owner, type,
TTL, set of RDATA) and epoch; a new epoch re-signs on first use, VALIDITY before expiry.
ECDSA signing is deterministic (RFC 6979): the same key, RRset and epoch always give the
same bytes, so replies built by different caches or processes compare equal.

Everything here is pure apart from `load_key` and `write_new_key` (key files).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from dnslib import RD as RD_RAW
from dnslib import RR, DNSBuffer

from gslb.models import Clock
from gslb.respcache import FifoCache
from gslb.zone import NSEC, RRSIG, dnslabel

log = logging.getLogger("gslb.dnssec")

__all__ = [
    "Signer",
    "ZoneKey",
    "ds_rdata",
    "epoch",
    "key_tag",
    "load_key",
    "nsec_rdata",
    "write_new_key",
]

ALGORITHM: Final = 13  # ECDSAP256SHA256
PROTOCOL: Final = 3
CSK_FLAGS: Final = 257  # zone key + secure entry point
DIGEST_SHA256: Final = 2

NXNAME: Final = 128  # RFC 9824: the name does not exist (a meta type, only in NSEC bitmaps)

REFRESH: Final = 86400  # one signing epoch: signatures are re-made once a day
VALIDITY: Final = 7 * 86400  # a served signature holds at least this much longer
INCEPTION_SKEW: Final = 3600  # inception lies at least this far in the past (clock skew)
SIGNATURES: Final = 50_000  # cached signatures per zone (FIFO)

_ECDSA: Final = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def epoch(now: float) -> int:
    """The signing epoch `now` (seconds since 1970) falls in."""
    return int(now // REFRESH)


def window(epoch_: int) -> tuple[int, int]:
    """(inception, expiration) of the signatures made in `epoch_`."""
    start = epoch_ * REFRESH
    return start - INCEPTION_SKEW, start + REFRESH + VALIDITY


# --------------------------------------------------------------------------- keys


def dnskey_rdata(key: ec.EllipticCurvePublicKey) -> bytes:
    """DNSKEY RDATA (flags 257, protocol 3, algorithm 13) of a P-256 public key: the point's
    X and Y, 32 octets each (RFC 6605 section 4)."""
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return struct.pack("!HBB", CSK_FLAGS, PROTOCOL, ALGORITHM) + point[1:]


def key_tag(rdata: bytes) -> int:
    """RFC 4034 appendix B."""
    total = 0
    for i, octet in enumerate(rdata):
        total += octet if i & 1 else octet << 8
    total += (total >> 16) & 0xFFFF
    return total & 0xFFFF


def ds_rdata(owner: bytes, dnskey: bytes) -> bytes:
    """The DS RDATA (digest type 2, SHA-256) for the DNSKEY RDATA `dnskey` at `owner`."""
    digest = hashlib.sha256(owner.lower() + dnskey).digest()
    return struct.pack("!HBB", key_tag(dnskey), dnskey[3], DIGEST_SHA256) + digest


def dnskey_text(rdata: bytes) -> str:
    flags, protocol, algorithm = struct.unpack_from("!HBB", rdata)
    return f"{flags} {protocol} {algorithm} {base64.b64encode(rdata[4:]).decode()}"


def ds_text(rdata: bytes) -> str:
    tag, algorithm, digest_type = struct.unpack_from("!HBB", rdata)
    return f"{tag} {algorithm} {digest_type} {rdata[4:].hex().upper()}"


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """A zone's signing key (its DNSKEY RDATA `dnskey`) and the DNSKEY RDATA of keys that are
    only published beside it (`published`, for a rollover)."""

    private: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    dnskey: bytes
    published: tuple[bytes, ...] = ()

    @property
    def tag(self) -> int:
        return key_tag(self.dnskey)

    @property
    def dnskeys(self) -> tuple[bytes, ...]:
        """The zone's DNSKEY RRset: the signing key first."""
        return (self.dnskey, *self.published)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 private key in the PEM file `path` (PKCS#8, as `write_new_key` writes,
    or SEC1 "EC PRIVATE KEY"). Raises ValueError naming the problem. A file other users may
    read is accepted with a warning."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{str(path)!r} is encrypted (write it without a passphrase)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{str(path)!r} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        raise ValueError(
            f"{str(path)!r} holds a {kind} key, not an EC P-256 key (algorithm 13, "
            "ECDSAP256SHA256; make one with `gslb dnssec-keygen`)"
        )
    if mode & stat.S_IROTH:
        log.warning("%s: the DNSSEC private key is readable by every user (chmod 600 it)", path)
    return key


def write_new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Generate a P-256 key and write it to `path` as PKCS#8 PEM, mode 0600. Refuses to
    overwrite (FileExistsError); other OSErrors pass through."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


# --------------------------------------------------------------------------- records


class _Canonical(DNSBuffer):  # type: ignore[misc]
    """A dnslib buffer that never compresses names (RFC 4034 section 6.2 canonical form;
    our names are lower case already)."""

    def encode_name(self, name: Any) -> None:
        self.encode_name_nocompress(name)


def canonical_rdata(rdata: Any) -> bytes:
    """The canonical wire form of a dnslib rdata object."""
    buf = _Canonical()
    rdata.pack(buf)
    return bytes(buf.data)


def label_count(owner: bytes) -> int:
    """The RRSIG Labels field for `owner`: its labels, not counting the root or a leading
    '*' (RFC 4034 section 3.1.3)."""
    count = 0
    pos = 0
    while owner[pos]:
        count += 1
        pos += owner[pos] + 1
    if owner[:2] == b"\x01*":
        count -= 1
    return count


def type_bitmap(types: Iterable[int]) -> bytes:
    """The NSEC Type Bit Maps field (RFC 4034 section 4.1.2)."""
    windows: dict[int, bytearray] = {}
    for t in sorted(set(types)):
        bits = windows.setdefault(t >> 8, bytearray(32))
        bits[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    out = bytearray()
    for number, bits in sorted(windows.items()):
        used = len(bits.rstrip(b"\x00"))
        out += bytes((number, used)) + bits[:used]
    return bytes(out)


def next_name(owner: bytes) -> bytes:
    """The Next Domain Name of a compact-denial NSEC at `owner` (RFC 9824): its immediate
    successor in canonical order, `\\000.owner`. A name too long for another label gets the
    next name of equal length instead: the first label with its last octet counted up (an
    octet 0xff carried; upper-case letters skipped, canonical order compares lower case)."""
    if len(owner) + 2 <= 255:
        return b"\x01\x00" + owner
    first = bytearray(owner[1 : 1 + owner[0]])
    rest = owner[1 + owner[0] :]
    while first and first[-1] == 0xFF:
        first.pop()
    if not first:  # a label of 0xff octets only: no successor of this length below the parent
        return owner
    first[-1] += 1
    if 0x41 <= first[-1] <= 0x5A:
        first[-1] = 0x5B
    return bytes((len(first),)) + bytes(first) + rest


def nsec_rdata(owner: bytes, types: Iterable[int]) -> bytes:
    """RDATA of the compact-denial NSEC at `owner` listing `types` (RRSIG and NSEC added)."""
    return next_name(owner) + type_bitmap((*types, RRSIG, NSEC))


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> Any:
    return RR(dnslabel(owner), rtype, ttl=ttl, rdata=RD_RAW(rdata))


def raw_rrs(owner: bytes, rtype: int, ttl: int, rdatas: Iterable[bytes]) -> list[Any]:
    """dnslib records carrying RDATA as given (RRSIG, NSEC, DS, DNSKEY)."""
    return [_rr(owner, rtype, ttl, rd) for rd in rdatas]


# --------------------------------------------------------------------------- signing


class Signer:
    """Signs RRsets of one zone with its key, one signature per RRset and epoch (cached,
    FIFO-bounded). Not thread-safe; one per Responder."""

    def __init__(
        self,
        origin: bytes,
        key: ZoneKey,
        clock: Clock,
        *,
        nsec_ttl: int,
        entries: int = SIGNATURES,
    ) -> None:
        self.origin = origin
        self.nsec_ttl = nsec_ttl  # RFC 9077: min(SOA TTL, SOA MINIMUM)
        self._key = key.private
        self._tag = key.tag
        self._clock = clock
        self._cache: FifoCache[tuple[bytes, int, int, tuple[bytes, ...]], tuple[int, bytes]] = (
            FifoCache(entries)
        )
        self.made = 0  # signatures computed (cache misses), for tests and tuning

    def rrsig(self, owner: bytes, rtype: int, ttl: int, rdatas: Sequence[bytes]) -> bytes:
        """RRSIG RDATA over the RRset (`owner`, `rtype`, `ttl`, canonical `rdatas`),
        signed as existing at `owner` (also when a wildcard synthesised it)."""
        rset = tuple(sorted(set(rdatas)))
        key = (owner, rtype, ttl, rset)
        now = epoch(self._clock())
        hit = self._cache.get(key)
        if hit is not None and hit[0] == now:
            return hit[1]
        inception, expiration = window(now)
        head = (
            struct.pack(
                "!HBBIIIH",
                rtype,
                ALGORITHM,
                label_count(owner),
                ttl,
                expiration & 0xFFFFFFFF,
                inception & 0xFFFFFFFF,
                self._tag,
            )
            + self.origin
        )
        fixed = owner + struct.pack("!HHI", rtype, 1, ttl)
        data = head + b"".join(fixed + struct.pack("!H", len(rd)) + rd for rd in rset)
        r, s = decode_dss_signature(self._key.sign(data, _ECDSA))
        rdata = head + r.to_bytes(32, "big") + s.to_bytes(32, "big")
        self.made += 1
        self._cache.put(key, (now, rdata))
        return rdata

    def rrsig_rr(self, owner: bytes, rtype: int, ttl: int, rdatas: Sequence[bytes]) -> Any:
        """The RRSIG record (a dnslib RR) over that RRset."""
        return _rr(owner, RRSIG, ttl, self.rrsig(owner, rtype, ttl, rdatas))

    def signed(self, owner: bytes, rtype: int, ttl: int, rdatas: Sequence[bytes]) -> list[Any]:
        """The RRset as dnslib records, its RRSIG last."""
        return [*raw_rrs(owner, rtype, ttl, rdatas), self.rrsig_rr(owner, rtype, ttl, rdatas)]
