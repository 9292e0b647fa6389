"""HTTP/1.1 with an origin, sans-IO: the head of a request the edge sends without a body
(GET, HEAD), and a reader that turns the bytes an origin answers with into events.

`ResponseReader.feed(data)` returns what `data` completed, in order: `Interim` heads (1xx
other than 101), one `Head`, body pieces (`bytes`) and `END`. `ResponseReader.finish()` is
the origin closing the connection: it ends a body delimited by the close, and is an error
anywhere else. Framing follows RFC 9112 §6.3, strictly, because a reader that takes one
response's bytes for another's hands one user's response to another (issue 7):

- a response to HEAD, a 1xx, 204 and 304 have no body, whatever their fields say;
- Transfer-Encoding must be exactly ``chunked`` (the edge undoes no other coding), and
  never comes with Content-Length (a smuggling vector);
- Content-Length is digits, and repeated only with the same value;
- otherwise the body runs to the close, and the connection is not reused.

Lines end with CRLF or, as RFC 9112 §2.2 allows a recipient to accept (and aiohttp's
parser, which the edge used before, does), LF alone. A malformed status line, field line,
chunk size or a head over MAX_HEAD bytes raises `WireError`. After END, `leftover` counts
the bytes the origin sent past the response: a connection with any is not reused.
`keep_alive` says whether it may be (HTTP/1.1 without ``Connection: close``, and a body
not delimited by the close).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from edge.errors import OriginError

MAX_HEAD = 64 * 1024  # bytes of one response head: status line and field lines
MAX_FIELDS = 256
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
MAX_INTERIM = 16  # 1xx responses before the final one
# A head is read as text (latin-1: one character per byte, so these patterns mean what
# they would on bytes, and the fields come out as the str the cache layer reads).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(r"HTTP/1\.([01]) (\d{3})(?: ([^\r\n]*))?")
# Control characters other than HTAB (obs-text, 0x80-0xff, is allowed: RFC 9110 §5.5)
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Field lines (LF-separated) each a token, a colon and a value without _BAD_VALUE's bytes:
# one pass over a head's fields; a head it refuses is checked line by line for the error.
_FIELD_LINES = re.compile(
    r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*"
    r"(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*)*"
)
# The lengths of the names whose values frame the response (content-length,
# transfer-encoding, connection): only names of these lengths are lower-cased to compare.
_FRAMING_LENGTHS = frozenset({14, 17, 10})
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class WireError(OriginError):
    """An origin's response broke HTTP/1.1 framing or syntax."""


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = _End()


@dataclass(frozen=True, slots=True)
class Interim:
    """A 1xx response before the final one (101 is final: see edge.aiohttp_internals)."""

    status: int
    raw_headers: tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)  # not frozen: made once a response, and frozen's __init__ costs 1 µs
class Head:
    """The final response's head; `fields` are its field lines as (name, value) str pairs,
    decoded as latin-1 (each byte one character), values without surrounding whitespace."""

    status: int
    reason: str
    fields: tuple[tuple[str, str], ...]


Event = Interim | Head | bytes | _End

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _TO_CLOSE, _DONE = range(8)


def encode_request(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The head of a bodiless request. Refuses a CR, LF or NUL in any part (header
    injection), as aiohttp's writer does; text is encoded as UTF-8, as aiohttp encodes it
    (see edge.headers.wire_text)."""
    if not method.isalpha() or not target or " " in target or "\t" in target:
        raise ValueError(f"not a request line: {method!r} {target!r}")
    lines = [f"{method} {target} HTTP/1.1", *map(": ".join, headers)]
    text = "\r\n".join(lines)
    breaks = len(lines) - 1  # the CRLFs joining the lines: any other CR or LF is injected
    if text.count("\r") != breaks or text.count("\n") != breaks or "\x00" in text:
        raise ValueError(
            "Newline, carriage return, or null byte detected in headers. "
            "Potential header injection attack."
        )
    return (text + "\r\n\r\n").encode("utf-8")


def _blank_line(buf: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(where the head before the first empty line at or after `start` ends, where what
    follows it starts), or None. Lines end with CRLF, or LF alone, which RFC 9112 §2.2 lets
    a recipient accept (aiohttp's parser, used before, did); a CR anywhere else in a line
    is refused by the field checks."""
    crlf = buf.find(b"\n\r\n", start)
    # an LF-only blank line counts only before the first CRLF one (not searched past it:
    # that would scan the body of every response)
    lf = buf.find(b"\n\n", start, len(buf) if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return None


class ResponseReader:
    """Reads one response (after any interim ones) to a request with `method`."""

    def __init__(self, method: str) -> None:
        self._head_only = method == "HEAD"
        # A partial head or framing line, searched to its end for its terminator already
        # (a bytearray: an origin trickling a head byte by byte costs linear time).
        self._held = bytearray()
        self._state = _HEAD
        self._interim = 0
        self._remaining = 0
        self.keep_alive = False
        self.leftover = 0  # bytes received past END

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._state == _DONE:
            self.leftover += len(data)
            return events
        held = self._held
        if held:
            head = self._state == _HEAD
            searched = max(len(held) - 2, 0)  # a terminator may span the two pieces
            held += data
            if head:
                found = _blank_line(held, searched) is not None
            else:
                found = held.find(b"\n", searched) >= 0
            if not found:
                if head and len(held) > MAX_HEAD:
                    raise WireError(f"response head over {MAX_HEAD} bytes")
                if not head and len(held) > MAX_CHUNK_LINE:
                    raise WireError("chunk framing line too long")
                return events
            buf = bytes(held)
            held.clear()
        else:
            buf = data
        pos = 0
        while True:
            state = self._state
            if state == _LENGTH or state == _CHUNK_DATA:
                take = min(self._remaining, len(buf) - pos)
                if take:
                    events.append(buf[pos : pos + take] if pos or take < len(buf) else buf)
                    pos += take
                    self._remaining -= take
                if self._remaining:
                    break
                if state == _LENGTH:
                    self._end(events)
                else:
                    self._state = _CHUNK_END
                continue
            if state == _TO_CLOSE:
                if pos < len(buf):
                    events.append(buf[pos:] if pos else buf)
                pos = len(buf)
                break
            if state == _DONE:
                self.leftover += len(buf) - pos
                pos = len(buf)
                break
            if state == _HEAD:
                blank = _blank_line(buf, pos)
                if blank is None:
                    if len(buf) - pos > MAX_HEAD:
                        raise WireError(f"response head over {MAX_HEAD} bytes")
                    break
                end, after = blank
                if end - pos > MAX_HEAD:
                    raise WireError(f"response head over {MAX_HEAD} bytes")
                self._head(buf[pos:end], events)
                pos = after
                continue
            # chunked framing lines: a size line, the CRLF after a chunk, the trailers
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_CHUNK_LINE:
                    raise WireError("chunk framing line too long")
                break
            line = buf[pos : end - 1 if end > pos and buf[end - 1] == 13 else end]
            pos = end + 1
            if state == _CHUNK_END:
                if line:
                    raise WireError("chunk data longer than its size")
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if len(line) > MAX_CHUNK_LINE or not _HEX.fullmatch(size):
                    raise WireError(f"bad chunk size line {line[:40]!r}")
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif not line:  # state == _TRAILERS: the empty line ends them (they are dropped)
                self._end(events)
            elif len(line) > MAX_CHUNK_LINE:
                raise WireError("trailer line too long")
        if pos < len(buf):
            self._held += buf[pos:]  # a partial head or line (bodies are never held)
        return events

    def finish(self) -> list[Event]:
        """The origin closed the connection: END of a body delimited by the close."""
        if self._state == _TO_CLOSE:
            self._state = _DONE
            return [END]
        if self._state == _DONE:
            return []
        what = "response head" if self._state == _HEAD else "response body"
        raise WireError(f"origin closed the connection within the {what}")

    def _end(self, events: list[Event]) -> None:
        self._state = _DONE
        events.append(END)

    def _head(self, head: bytes, events: list[Event]) -> None:
        if head.endswith(b"\r"):  # the CR of the last line's CRLF
            head = head[:-1]
        text = head.decode("latin-1").replace("\r\n", "\n")
        lines = text.split("\n")
        match = _STATUS.fullmatch(lines[0])
        if match is None:
            raise WireError(f"bad status line {_raw(lines[0][:60])!r}")
        minor, code, reason = match.groups()
        status = int(code)
        if not 100 <= status <= 599:
            raise WireError(f"status {status} outside 100-599")
        if len(lines) - 1 > MAX_FIELDS:
            raise WireError(f"more than {MAX_FIELDS} fields")
        if reason and _BAD_VALUE.search(reason):
            raise WireError("bad status line: control characters in the reason")
        fields: list[tuple[str, str]] = []
        lengths: set[str] = set()
        codings: list[str] = []
        transfer_encoding = False
        close = minor == "0"
        checked = len(lines) == 1 or _FIELD_LINES.fullmatch(text, len(lines[0]) + 1) is not None
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not checked and (not colon or not _TOKEN.fullmatch(name)):
                raise WireError(f"bad field line {_raw(line[:60])!r}")  # also obs-fold
            value = value.strip(" \t")
            if not checked and _BAD_VALUE.search(value):
                raise WireError(f"bad field value in {_raw(name[:40])!r}")
            fields.append((name, value))
            if len(name) not in _FRAMING_LENGTHS:
                continue
            lower = name.lower()
            if lower == "content-length":
                lengths.update([v.strip(" \t") for v in value.split(",")])
            elif lower == "transfer-encoding":
                transfer_encoding = True
                # strip(" \t"), not strip(): on text that would also take NEL and NBSP.
                codings += [c.strip(" \t").lower() for c in value.split(",") if c.strip(" \t")]
            elif lower == "connection" and not close:
                close = "close" in [t.strip(" \t").lower() for t in value.split(",")]
        pairs = tuple(fields)
        if 100 <= status < 200 and status != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise WireError(f"more than {MAX_INTERIM} interim responses")
            raw = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs)
            events.append(Interim(status, raw))
            return  # the final response follows
        events.append(Head(status, reason or "", pairs))
        self.keep_alive = not close
        if self._head_only or status in (101, 204, 304):
            self._end(events)
            return
        if transfer_encoding:
            if lengths:
                raise WireError("both Transfer-Encoding and Content-Length")
            if codings != ["chunked"]:
                raise WireError(f"unsupported transfer coding {_raw(', '.join(codings))!r}")
            self._state = _CHUNK_SIZE
            return
        if lengths:
            if len(lengths) != 1:
                raise WireError("conflicting Content-Length values")
            (length,) = lengths
            if not length.isdigit() or not length.isascii() or len(length) > 18:
                raise WireError(f"bad Content-Length {_raw(length[:40])!r}")
            self._remaining = int(length)
            if self._remaining:
                self._state = _LENGTH
            else:
                self._end(events)
            return
        self._state = _TO_CLOSE  # delimited by the close
        self.keep_alive = False


def _raw(text: str) -> bytes:
    """A piece of a head as the origin sent it, for an error message."""
    return text.encode("latin-1")
