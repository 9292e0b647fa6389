"""Header rewriting between client and origin: hop-by-hop removal, Via, CDN-Loop,
X-Forwarded-*/Forwarded, unkeyed routing fields; and forwarding-loop detection.

Pure functions over (name, value) pairs so they can be unit-tested without sockets.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from multidict import CIMultiDict

# One list of hop-by-hop fields for the cache and the proxy (re-exported here).
from edge.conditional import HOP_BY_HOP as HOP_BY_HOP
from edge.conditional import strip_hop_by_hop

FORWARDING = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# Every other X-Forwarded-* field (-Port, -Prefix, -Scheme, -Server, -Ssl...) is also a
# claim about the connection that frameworks act on (redirects, absolute URLs) and that is
# not in the cache key: kept from trusted proxies only.
_FORWARDING_PREFIX = "x-forwarded-"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Host field value (RFC 9110 §7.2): uri-host [":" port], uri-host an IP-literal or a
# reg-name / IPv4 address. Anything else ('/', '?', '#', '@', spaces...) would let one
# request's Host and target compose another URL's cache key.
_AUTHORITY = re.compile(r"(?:\[[0-9A-Za-z:.%~_-]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def wire_text(value: str) -> str:
    """A field value held as octets (one character per byte, as latin-1 decodes them) in
    the form aiohttp's writers turn back into those octets.

    Field values are octets (RFC 9110 §5.5): obs-text such as a UTF-8 ``ü`` in an ETag must
    leave as it came in, and aiohttp encodes a ``str`` value as UTF-8. Octets that are not
    UTF-8 cannot be written by aiohttp at all; such a value is left as it is.
    """
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def octet_text(value: str) -> str:
    """A field value as aiohttp's parser gives it (UTF-8, surrogateescape) in the octet
    form the cache compares and stores (one character per byte)."""
    if value.isascii():
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    except UnicodeEncodeError:
        return value


def list_members(value: str) -> list[str]:
    """The members of a comma-separated list field value (RFC 9110 §5.6.1), stripped, empty
    ones dropped; commas inside quoted strings and (comments) do not split."""
    members: list[str] = []
    start = 0
    quoted = False
    depth = 0
    escaped = False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == "," and not depth:
            members.append(value[start:i])
            start = i + 1
    members.append(value[start:])
    return [m.strip(" \t") for m in members if m.strip(" \t")]


def cdn_loop_ids(values: Iterable[str]) -> list[str]:
    """The cdn-ids of CDN-Loop field values (RFC 8586 §2), lower-cased, parameters dropped."""
    return [
        m.split(";", 1)[0].strip(" \t").lower() for value in values for m in list_members(value)
    ]


def via_received_by(values: Iterable[str]) -> list[str]:
    """The received-by of every entry of Via field values (RFC 9110 §7.6.3), lower-cased."""
    out = []
    for value in values:
        for m in list_members(value):
            words = m.split()
            if len(words) >= 2:
                out.append(words[1].lower())
    return out


def loop_verdict(
    pairs: Iterable[tuple[str, str]], node_id: str, max_hops: int
) -> Literal["loop", "too-many-hops"] | None:
    """Whether a request with fields `pairs` came back to the node `node_id` ("loop": its
    id is in CDN-Loop, or is the received-by of a Via entry) or went through more than
    `max_hops` CDN-Loop entries ("too-many-hops"); None when it may be forwarded."""
    loop_values = []
    via_values = []
    for k, v in pairs:
        lk = k.lower()
        if lk == "cdn-loop":
            loop_values.append(v)
        elif lk == "via":
            via_values.append(v)
    me = node_id.lower()
    ids = cdn_loop_ids(loop_values)
    if me in ids or me in via_received_by(via_values):
        return "loop"
    if len(ids) > max_hops:
        return "too-many-hops"
    return None


def valid_host(value: str) -> bool:
    """Whether `value` is a well-formed Host field value (it may be empty)."""
    return _AUTHORITY.fullmatch(value) is not None


def end_to_end(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop fields, including every field named in Connection."""
    return list(strip_hop_by_hop(pairs if isinstance(pairs, tuple) else tuple(pairs)))


def via_value(version: tuple[int, int], pseudonym: str) -> str:
    major, minor = version
    return f"{major}.{minor} {pseudonym}" if major == 1 else f"{major} {pseudonym}"


def is_trusted(ip: str | None, trusted: Sequence[Network]) -> bool:
    if not ip or not trusted:
        return False
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def _forwarded_value(value: str) -> str:
    safe = all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in value)
    return value if safe and value else '"' + value.replace('"', "") + '"'


def origin_request_headers(
    pairs: Iterable[tuple[str, str]],
    *,
    client_ip: str | None,
    proto: str,
    host: str,
    version: tuple[int, int],
    via: str,
    trusted: Sequence[Network] = (),
    mode: str = "x-forwarded",
    cdn_loop: str = "",
    strip: frozenset[str] = frozenset(),
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end fields of the client request plus our own.

    Client-supplied forwarding fields are kept (and extended) only when the peer is a
    trusted proxy; otherwise they are replaced by what we saw on the connection (other
    X-Forwarded-* fields are dropped). Fields named in `strip` (lower-case) are dropped
    from every peer. `cdn_loop`, when given, is appended to the client's CDN-Loop, which
    is always passed on (RFC 8586 §2: intermediaries never remove it).
    """
    trusted_peer = is_trusted(client_ip, trusted)
    kept: list[tuple[str, str]] = []
    previous: dict[str, list[str]] = {}
    via_prior: list[str] = []
    loop_prior: list[str] = []
    for k, v in strip_hop_by_hop(pairs if isinstance(pairs, tuple) else tuple(pairs)):
        lk = k.lower()
        if lk in strip:
            continue
        if lk in FORWARDING:
            if trusted_peer:
                previous.setdefault(lk, []).append(v)
            continue
        if lk.startswith(_FORWARDING_PREFIX) and not trusted_peer:
            continue
        v = wire_text(v)
        if lk == "via":
            via_prior.append(v)  # extended, and sent last
        elif lk == "cdn-loop" and cdn_loop:
            loop_prior.append(v)
        else:
            kept.append((k, v))
    out: CIMultiDict[str] = CIMultiDict(kept)
    ip = client_ip or "unknown"
    if mode in ("x-forwarded", "both"):
        xff = previous.get("x-forwarded-for")
        out["X-Forwarded-For"] = ", ".join([*xff, ip]) if xff else ip
        out["X-Forwarded-Proto"] = previous.get("x-forwarded-proto", [proto])[0]
        out["X-Forwarded-Host"] = previous.get("x-forwarded-host", [host])[0]
    if mode in ("forwarded", "both"):
        element = f"for={_forwarded_node(ip)};proto={proto}"
        if host:
            element += f";host={_forwarded_value(host)}"
        prior = previous.get("forwarded")
        out["Forwarded"] = ", ".join([*prior, element]) if prior else element
    out["Via"] = ", ".join([*via_prior, via_value(version, via)])
    if cdn_loop:
        out["CDN-Loop"] = ", ".join([*loop_prior, cdn_loop])
    return out


def client_response_fields(
    pairs: Iterable[tuple[str, str]], *, version: tuple[int, int], via: str
) -> list[tuple[str, str]]:
    """Fields to send downstream from an origin (or stored) response, whose values are
    held as octets (see `wire_text`): its end-to-end fields, Via extended and sent last."""
    kept: list[tuple[str, str]] = []
    via_prior: list[str] = []
    for k, v in strip_hop_by_hop(pairs if isinstance(pairs, tuple) else tuple(pairs)):
        if k.lower() == "via":
            via_prior.append(v)
        else:
            kept.append((k, v))
    return sent_fields(kept, via_prior, version=version, via=via)


def sent_fields(
    kept: Iterable[tuple[str, str]], via_prior: Iterable[str], *, version: tuple[int, int], via: str
) -> list[tuple[str, str]]:
    """`client_response_fields` of a response's end-to-end fields other than Via (`kept`)
    and the values of its Via lines (`via_prior`)."""
    out = [(k, wire_text(v)) for k, v in kept]
    out.append(("Via", ", ".join([*map(wire_text, via_prior), via_value(version, via)])))
    return out


def client_response_headers(
    pairs: Iterable[tuple[str, str]], *, version: tuple[int, int], via: str
) -> CIMultiDict[str]:
    """`client_response_fields` as aiohttp's headers."""
    return CIMultiDict(client_response_fields(pairs, version=version, via=via))


def head_end(cache_status: str, age: int | None = None, close: bool = False) -> bytes:
    """The lines that end a serialized response head: Age (a response from a cache),
    Cache-Status, Connection: close when due, and the empty line."""
    lines = "" if age is None else f"Age: {age}\r\n"
    lines += f"Cache-Status: {cache_status}\r\n"
    if close:
        lines += "Connection: close\r\n"
    return (lines + "\r\n").encode("latin-1", "replace")


def closing(head: bytes) -> bytes:
    """A serialized response head (its empty line included) that says `Connection: close`
    too, where head_end says it."""
    return head[:-2] + b"Connection: close\r\n\r\n"


def response_head(status: int, reason: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 status line and `fields` (values in `wire_text` form, encoded as
    aiohttp's writer encodes them) as wire bytes, without the empty line ending the head."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in fields)
    return "".join(lines).encode("utf-8", "replace")
