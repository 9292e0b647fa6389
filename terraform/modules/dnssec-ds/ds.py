#!/usr/bin/env python3
"""The DNSKEY and DS records of a zone's DNSSEC key, for the registrar: the program of
terraform/modules/dnssec-ds (Terraform's external data source protocol: one JSON object
{"zone", "key_pem"} on stdin, one JSON object of strings on stdout, errors on stderr).

The key is what `gslb dnssec-keygen` writes and gslb signs with: EC P-256 (algorithm 13), as
PKCS#8 or SEC1 PEM, holding its public point (OpenSSL and `cryptography` write it). Only the
standard library, since it runs where Terraform runs; tests/unit/test_terraform.py checks
the records against `gslb ds`.
"""

import base64
import hashlib
import json
import re
import sys

P256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7, DER


def _tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """One DER element at i: (tag, start of its content, end of its content)."""
    tag, length = data[i], data[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[i : i + n], "big")
        i += n
    return tag, i, i + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        out.append(_tlv(data, start))
        start = out[-1][2]
    return out


def public_key(pem: str) -> bytes:
    """X || Y of the key's public point (64 bytes), as the DNSKEY carries it."""
    m = re.search(r"-----BEGIN (EC )?PRIVATE KEY-----(.*?)-----END", pem, re.S)
    if m is None:
        raise ValueError("not a PEM private key")
    der = base64.b64decode("".join(m.group(2).split()))
    if P256 not in der:
        raise ValueError("not an EC P-256 key (DNSSEC algorithm 13)")
    _, start, end = _tlv(der, 0)
    if m.group(1) is None:  # PKCS#8: version, algorithm, privateKey (the SEC1 key inside)
        _, start, end = _children(der, start, end)[2]
        _, start, end = _tlv(der, start)
    for tag, s, e in _children(der, start, end):  # SEC1: version, key, [0] curve, [1] public
        if tag == 0xA1:
            _, s, e = _tlv(der, s)  # BIT STRING: unused-bits byte, then 04 || X || Y
            point = der[s + 1 : e]
            if len(point) != 65 or point[0] != 4:
                raise ValueError("the public point is not an uncompressed P-256 point")
            return point[1:]
    raise ValueError("the key holds no public point; write it with `gslb dnssec-keygen`")


def records(zone: str, pem: str) -> dict[str, str]:
    origin = zone.rstrip(".").lower() + "."
    key = public_key(pem)
    rdata = (257).to_bytes(2, "big") + bytes((3, 13)) + key  # KSK flags, protocol 3, ECDSA
    acc = sum(b if i & 1 else b << 8 for i, b in enumerate(rdata))  # RFC 4034 appendix B
    tag = (acc + (acc >> 16)) & 0xFFFF
    owner = b"".join(bytes((len(label),)) + label.encode() for label in origin.split(".")[:-1])
    digest = hashlib.sha256(owner + b"\0" + rdata).hexdigest().upper()
    return {
        "key_tag": str(tag),
        "dnskey": f"{origin} IN DNSKEY 257 3 13 {base64.b64encode(key).decode()}",
        "ds": f"{origin} IN DS {tag} 13 2 {digest}",
    }


def main() -> int:
    try:
        query = json.load(sys.stdin)
        json.dump(records(query["zone"], query["key_pem"]), sys.stdout)
    except (ValueError, KeyError, IndexError) as exc:
        print(f"dnssec-ds: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
