"""Fast parsing of a DNS query: header, the one question, and the OPT record.

This runs for every packet, so it reads the bytes with struct and slicing and builds one small
object; dnslib is kept for building answers on the slow path. The checks follow RFC 1035 and
RFC 6891: a message that is not a query (short, or QR=1) raises ShortHeader (drop it), and a
malformed query raises FormError (answer FORMERR). Opcodes other than QUERY are answered
NOTIMP, which needs only the header: their messages never raise FormError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from gslb.ecs import OPTION_CODE, ClientSubnet
from gslb.errors import FormError, ShortHeader

_HEADER: Final = struct.Struct("!HHHHHH")
_QTAIL: Final = struct.Struct("!HH")
_RRTAIL: Final = struct.Struct("!HHIH")
_OPTHEAD: Final = struct.Struct("!HH")
OPT_TYPE: Final = 41
COOKIE_CODE: Final = 10
NSID_CODE: Final = 3


# Not frozen: a frozen dataclass pays object.__setattr__ per field, and this one is built for
# every packet. Treat it as read-only all the same.
@dataclass(slots=True)
class Query:
    id: int
    flags: int  # the 16 flag bits of the header as received
    opcode: int
    qname: bytes  # lower-cased wire form
    question_end: int  # offset just past QCLASS: wire[12:question_end] is the question
    qtype: int
    qclass: int
    edns: bool = False
    payload: int = 512  # requestor's UDP payload size (raw value; 512 without EDNS)
    version: int = 0
    do: bool = False
    ecs: ClientSubnet | None = None
    ecs_end: int = 0  # offset just past the ECS option's address (0: no ECS)
    options: Options | None = None  # COOKIE / NSID, which the reply depends on


@dataclass(frozen=True, slots=True)
class Options:
    """Where a query's COOKIE (RFC 7873) and NSID (RFC 5001) options are: (offset of the
    option's code, offset just past its data), and the offset of the OPT record's RDLENGTH.
    Only built for queries that carry one of them."""

    rdlen_at: int
    cookie: tuple[int, int] | None = None
    nsid: tuple[int, int] | None = None

    def strip(self, wire: bytes) -> bytes:
        """`wire` without these options (and the OPT record's RDLENGTH adjusted)."""
        spans = sorted(span for span in (self.cookie, self.nsid) if span is not None)
        at = self.rdlen_at
        rdlen = (wire[at] << 8) | wire[at + 1]
        rdlen -= sum(end - start for start, end in spans)
        parts = [wire[:at], rdlen.to_bytes(2, "big")]
        pos = at + 2
        for start, end in spans:
            parts.append(wire[pos:start])
            pos = end
        parts.append(wire[pos:])
        return b"".join(parts)


def skip_name(wire: bytes, pos: int, end: int) -> int:
    """Offset after the (possibly compressed) name at `pos`; FormError when malformed."""
    for _ in range(128):
        if pos >= end:
            raise FormError("truncated name")
        n = wire[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            if pos + 2 > end:
                raise FormError("truncated compression pointer")
            return pos + 2
        if n > 63:
            raise FormError("label length over 63")
        pos += n + 1
    raise FormError("too many labels")


def question_end(wire: bytes, end: int) -> int:
    """Offset just past QCLASS of the question at offset 12: its name uncompressed, with
    labels of at most 63 octets and at most 255 octets in all. Raises FormError."""
    pos = 12
    while True:
        if pos >= end:
            raise FormError("truncated question")
        n = wire[pos]
        if n == 0:
            pos += 1
            break
        if n > 63:
            raise FormError("label length over 63 (or a compression pointer) in the question")
        pos += n + 1
    if pos - 12 > 255:
        raise FormError("question name longer than 255 octets")
    if pos + 4 > end:
        raise FormError("truncated question")
    return pos + 4


_Records = tuple[bool, int, int, bool, ClientSubnet | None, int, Options | None]


def _records(wire: bytes, pos: int, end: int, skip: int, arcount: int) -> _Records:
    """Walk the records from `pos`: `skip` answer and authority records, then the additional
    section, reading its OPT record. Returns (edns, payload, version, do, ecs, ecs_end,
    options).

    A COOKIE option whose length is not 8 or 16 to 40 octets, or a second one, is a
    FormError (RFC 7873 section 5.2.2).

    Raises FormError; once an OPT record's fixed part and RDATA were read (whatever is wrong
    with its options or with what follows it), the error carries `edns` and `do`, because the
    FORMERR reply must then carry an OPT record too (RFC 6891 section 7).
    """
    edns = False
    payload, version, do, ecs, ecs_end = 512, 0, False, None, 0
    cookie: tuple[int, int] | None = None
    nsid: tuple[int, int] | None = None
    options = None
    try:
        for _ in range(skip):
            pos = skip_name(wire, pos, end) + 10
            if pos > end:
                raise FormError("truncated record")
            pos += (wire[pos - 2] << 8) | wire[pos - 1]
            if pos > end:
                raise FormError("truncated rdata")
        for _ in range(arcount):
            start = pos
            pos = pos + 1 if pos < end and wire[pos] == 0 else skip_name(wire, pos, end)
            if pos + 10 > end:
                raise FormError("truncated record")
            rtype, rclass, ttl, rdlen = _RRTAIL.unpack_from(wire, pos)
            pos += 10
            rdend = pos + rdlen
            if rdend > end:
                raise FormError("truncated rdata")
            if rtype == OPT_TYPE:
                if edns:
                    raise FormError("more than one OPT record")
                if pos - start != 11:
                    raise FormError("OPT owner name is not the root")
                edns = True
                payload = rclass
                version = (ttl >> 16) & 0xFF
                do = bool(ttl & 0x8000)
                opos = pos
                while opos < rdend:
                    if opos + 4 > rdend:
                        raise FormError("truncated EDNS option")
                    code, olen = _OPTHEAD.unpack_from(wire, opos)
                    opos += 4
                    if opos + olen > rdend:
                        raise FormError("truncated EDNS option")
                    if code == OPTION_CODE and version == 0:
                        if ecs is not None:
                            raise FormError("more than one ECS option")
                        ecs = ClientSubnet.decode(wire[opos : opos + olen])
                        ecs_end = opos + olen
                    elif code == COOKIE_CODE and version == 0:
                        if cookie is not None:
                            raise FormError("more than one COOKIE option")
                        if olen != 8 and not 16 <= olen <= 40:
                            raise FormError(f"a COOKIE option of {olen} octets")
                        cookie = (opos - 4, opos + olen)
                    elif code == NSID_CODE and version == 0:
                        if nsid is not None:
                            raise FormError("more than one NSID option")
                        nsid = (opos - 4, opos + olen)
                    opos += olen
                if cookie is not None or nsid is not None:
                    options = Options(pos - 2, cookie, nsid)
            pos = rdend
        if pos != end:
            raise FormError("trailing bytes after the last record")
    except FormError as exc:
        exc.edns, exc.do = edns, do
        raise
    return edns, payload, version, do, ecs, ecs_end, options


def parse_query(wire: bytes) -> Query:
    """Parse a query. Raises ShortHeader (drop) or FormError (reply FORMERR).

    A message with an opcode other than QUERY never raises FormError: it is answered NOTIMP
    from the header alone (see `_other_opcode`)."""
    end = len(wire)
    if end < 12:
        raise ShortHeader("shorter than a header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if flags & 0x8000:
        raise ShortHeader("a response, not a query")
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        return _other_opcode(wire, qid, flags, opcode, qdcount, ancount + nscount, arcount)
    if qdcount != 1:
        raise FormError(f"QDCOUNT is {qdcount}, not 1")
    qend = question_end(wire, end)
    qtype, qclass = _QTAIL.unpack_from(wire, qend - 4)
    try:
        edns, payload, version, do, ecs, ecs_end, options = _records(
            wire, qend, end, ancount + nscount, arcount
        )
    except FormError as exc:
        exc.question_end = qend
        raise
    return Query(
        qid,
        flags,
        0,
        wire[12 : qend - 4].lower(),
        qend,
        qtype,
        qclass,
        edns,
        payload,
        version,
        do,
        ecs,
        ecs_end,
        options,
    )


def _other_opcode(
    wire: bytes, qid: int, flags: int, opcode: int, qdcount: int, skip: int, arcount: int
) -> Query:
    """What the NOTIMP reply to an opcode other than QUERY needs, as NSD and Knot see it:
    only the header is required. The question is echoed when there is exactly one and it
    parses (question_end 0 otherwise), and the reply carries an OPT record when the message
    parses far enough to show one. Nothing here raises FormError; no ECS is kept."""
    end = len(wire)
    qend = qtype = qclass = 0
    pos = 12
    try:
        if qdcount == 1:
            pos = qend = question_end(wire, end)
            qtype, qclass = _QTAIL.unpack_from(wire, qend - 4)
        else:
            for _ in range(qdcount):  # bounded by the message: each takes 5 octets or more
                pos = skip_name(wire, pos, end) + 4
                if pos > end:
                    raise FormError("truncated question")
        edns, payload, version, do = _records(wire, pos, end, skip, arcount)[:4]
    except FormError as exc:
        edns, payload, version, do = exc.edns, 512, 0, exc.do
    qname = wire[12 : qend - 4].lower() if qend else b""
    return Query(qid, flags, opcode, qname, qend, qtype, qclass, edns, payload, version, do)


def add_option(reply: bytes, code: int, data: bytes) -> tuple[bytes, int] | None:
    """`reply` with an EDNS option appended to its OPT record, and the offset where that
    OPT record starts; None when the reply has no OPT record as its last record (our
    replies put it there) or does not parse."""
    end = len(reply)
    if end < 12:
        return None
    qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", reply, 4)
    if arcount == 0:
        return None
    try:
        pos = 12
        for _ in range(qdcount):
            pos = skip_name(reply, pos, end) + 4
        for _ in range(ancount + nscount + arcount - 1):
            pos = skip_name(reply, pos, end) + 10
            if pos > end:
                return None
            pos += (reply[pos - 2] << 8) | reply[pos - 1]
    except FormError:
        return None
    opt = pos
    if opt + 11 > end or reply[opt] != 0 or reply[opt + 1 : opt + 3] != b"\x00\x29":
        return None
    rdlen = (reply[opt + 9] << 8) | reply[opt + 10]
    if opt + 11 + rdlen != end:
        return None
    rdlen += 4 + len(data)
    if rdlen > 0xFFFF:
        return None
    option = _OPTHEAD.pack(code, len(data)) + data
    return reply[: opt + 9] + rdlen.to_bytes(2, "big") + reply[opt + 11 :] + option, opt
