"""SipHash-2-4 (Aumasson and Bernstein), the keyed hash RFC 9018 server cookies are made with.

Pure Python: a server cookie hashes about 20 to 36 octets, so this runs at most a few times
per cookie-carrying query and gslb.cookies memoizes its results. Checked against the
reference implementation's test vectors (tests/unit/test_cookies.py).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["siphash24"]

_MASK: Final = 0xFFFFFFFFFFFFFFFF
_KEY: Final = struct.Struct("<QQ")
_WORD: Final = struct.Struct("<Q")


def siphash24(key: bytes, data: bytes) -> bytes:
    """The 8-octet SipHash-2-4 of `data` under the 16-octet `key` (little-endian, as the
    reference implementation writes it)."""
    if len(key) != 16:
        raise ValueError("a SipHash key is 16 octets")
    k0, k1 = _KEY.unpack(key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    size = len(data)
    full = size - size % 8
    tail = data[full:] + bytes(7 - size % 8) + bytes(((size & 0xFF),))
    words = [_WORD.unpack_from(data, i)[0] for i in range(0, full, 8)]
    words.append(_WORD.unpack(tail)[0])
    for rounds, m in [(2, m) for m in words] + [(4, -1)]:
        if m >= 0:
            v3 ^= m
        else:
            v2 ^= 0xFF
        for _ in range(rounds):
            v0 = (v0 + v1) & _MASK
            v1 = ((v1 << 13) | (v1 >> 51)) & _MASK
            v1 ^= v0
            v0 = ((v0 << 32) | (v0 >> 32)) & _MASK
            v2 = (v2 + v3) & _MASK
            v3 = ((v3 << 16) | (v3 >> 48)) & _MASK
            v3 ^= v2
            v0 = (v0 + v3) & _MASK
            v3 = ((v3 << 21) | (v3 >> 43)) & _MASK
            v3 ^= v0
            v2 = (v2 + v1) & _MASK
            v1 = ((v1 << 17) | (v1 >> 47)) & _MASK
            v1 ^= v2
            v2 = ((v2 << 32) | (v2 >> 32)) & _MASK
        if m >= 0:
            v0 ^= m
    return _WORD.pack(v0 ^ v1 ^ v2 ^ v3)
