"""Recognising the plain cache-hit request, sans-IO: bytes in, a small value or None out.

The client-facing protocol (edge.app.EdgeRequestHandler) offers each segment it receives
to this check first while aiohttp's own parser is idle (through Proxy.answer_plain_get,
which remembers the verdict per distinct segment). A segment that holds exactly one complete
`GET <origin-form> HTTP/1.1` request, with nothing that could change how it is answered
(no body, no request cache directives, no If-Match, If-Unmodified-Since or If-Range, no
upgrade, one Host; at most one Range line) becomes a `SimpleGet`; the caller may then
answer it from the cache without building an aiohttp request (a Range, If-None-Match or
If-Modified-Since only from a fresh hit). Everything else -- including anything this
strict grammar does not accept but aiohttp would -- returns None and goes through
aiohttp's parser and the full handler unchanged, so a refusal here never changes
behaviour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Request line and header fields in their plainest form (RFC 9112): origin-form target of
# RFC 3986 characters (no fragment, no space, no controls), token field names, field values
# of visible ASCII, space and tab. No obs-fold, no obs-text, no bare LF.
_REQUEST = re.compile(
    rb"GET (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*)\r\n"
)

# Request fields after which the answer is no longer "the stored response as it is".
_DECLINE = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"http2-settings",
        b"cache-control",
        b"pragma",
        b"if-range",
        b"if-match",
        b"if-unmodified-since",
    }
)


@dataclass(frozen=True, slots=True)
class SimpleGet:
    target: str  # path and query as received
    host: str  # the one Host field, as received
    user_agent: str
    fields: int  # number of header fields
    field_bytes: int  # their size as the proxy's limit counts it (name + value + 4 each)
    # The CDN-Loop and Via fields, for the same loop check as the full handler's.
    loop_fields: tuple[tuple[str, str], ...] = ()
    # Every field (lower-case name, value), for the screening rules (edge.screening).
    headers: tuple[tuple[str, str], ...] = ()
    # Every field with its name as received, for a miss's origin request (Proxy.plain_miss).
    raw: tuple[tuple[str, str], ...] = ()
    # The one Range field's value, when there is one: answered from a fresh hit only.
    range: str | None = None
    # The If-None-Match and If-Modified-Since fields (lower-case name, value), in order:
    # answered from a fresh hit only.
    conditions: tuple[tuple[str, str], ...] = ()
    # `Connection: close`: the connection closes after the answer (a hit's only).
    close: bool = False

    def header(self, name: str) -> str | None:
        """The values of field `name` (lower case) joined by ", ", as the full handler
        sees them; None when absent."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None


def parse_simple_get(data: bytes, max_bytes: int = 8192) -> SimpleGet | None:
    """The request in `data` if it is one complete plain GET and nothing more, else None."""
    if len(data) > max_bytes or not data.endswith(b"\r\n\r\n"):
        return None
    m = _REQUEST.fullmatch(data)
    if m is None:
        return None
    host: bytes | None = None
    user_agent = b""
    range_value: str | None = None
    conditions: list[tuple[str, str]] = []
    loop_fields: list[tuple[str, str]] = []
    fields: list[tuple[str, str]] = []
    raw_fields: list[tuple[str, str]] = []
    count = 0
    size = 0
    connection: list[bytes] = []
    block = m.group(2)
    for line in block.split(b"\r\n")[:-1] if block else ():
        name, _, raw = line.partition(b":")
        value = raw.strip(b" \t")
        lname = name.lower()
        text = value.decode("ascii")
        fields.append((lname.decode("ascii"), text))
        raw_fields.append((name.decode("ascii"), text))
        count += 1
        size += len(name) + len(raw) + 4  # unstripped: never below the proxy's own count
        if lname == b"host":
            if host is not None:
                return None
            host = value
        elif lname in (b"connection", b"proxy-connection"):  # aiohttp's parser reads both
            # keep-alive is what HTTP/1.1 means anyway; one "close" alone ends the
            # connection after the answer; connection options (which name hop-by-hop
            # fields) or "close" beside anything are for the full handler.
            connection.append(value.lower())
        elif lname == b"user-agent":
            user_agent = value
        elif lname == b"range":
            if range_value is not None:
                return None
            range_value = text
        elif lname in (b"if-none-match", b"if-modified-since"):
            conditions.append((lname.decode("ascii"), text))
        elif lname in (b"cdn-loop", b"via"):
            loop_fields.append((lname.decode("ascii"), value.decode("ascii")))
        elif lname in _DECLINE:
            return None
    if host is None:
        return None
    close = connection == [b"close"]
    if not close and any(v != b"keep-alive" for v in connection):
        return None
    return SimpleGet(
        target=m.group(1).decode("ascii"),
        host=host.decode("ascii"),
        user_agent=user_agent.decode("ascii"),
        fields=count,
        field_bytes=size,
        loop_fields=tuple(loop_fields),
        headers=tuple(fields),
        raw=tuple(raw_fields),
        range=range_value,
        conditions=tuple(conditions),
        close=close,
    )
