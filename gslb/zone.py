"""Zone data: master-file parsing, the validated zone tree, and authoritative lookup.

Names are kept as lower-case DNS wire bytes (b"\\x03www\\x07example\\x04test\\x00"): the
parent of a name is a slice, a dict lookup finds a node, and the wire form of a query's name
(lower-cased) is the key as it arrives. Record data is held as dnslib rdata objects, which
answer.py packs.

`Zone.resolve(qname, qtype)` is the whole of RFC 1034 section 4.3.2 for one zone, with the
RFC 4592 wildcard rules (closest encloser, no synthesis below existing names or empty
non-terminals), delegations below the apex (referral with glue, AA=0), CNAME chains inside
the zone (loop-safe), minimal ANY (RFC 8482) and pool names whose A/AAAA are chosen per
query. It returns a client-independent `Resolution`; answer.py fills in pool edges and, for
signed zones (gslb.dnssec), signatures and NSEC records from what the Resolution says about
denial. DS records are allowed at delegation points; a signed zone's DNSKEY RRset is part of
its apex data.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from dnslib import AAAA as RD_AAAA
from dnslib import CAA as RD_CAA
from dnslib import CNAME as RD_CNAME
from dnslib import DS as RD_DS
from dnslib import MX as RD_MX
from dnslib import NS as RD_NS
from dnslib import PTR as RD_PTR
from dnslib import SOA as RD_SOA
from dnslib import SRV as RD_SRV
from dnslib import TXT as RD_TXT
from dnslib import A as RD_A
from dnslib import DNSLabel

from gslb.errors import ZoneError
from gslb.models import Pool

if TYPE_CHECKING:  # gslb.dnssec builds on this module
    from gslb.dnssec import ZoneKey

# Record types by code.
A: Final = 1
NS: Final = 2
CNAME: Final = 5
SOA: Final = 6
PTR: Final = 12
MX: Final = 15
TXT: Final = 16
AAAA: Final = 28
SRV: Final = 33
OPT: Final = 41
DS: Final = 43
RRSIG: Final = 46
NSEC: Final = 47
DNSKEY: Final = 48
CAA: Final = 257
ANY: Final = 255

NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16

TYPE_CODES: Final[dict[str, int]] = {
    "A": A,
    "NS": NS,
    "CNAME": CNAME,
    "SOA": SOA,
    "PTR": PTR,
    "MX": MX,
    "TXT": TXT,
    "AAAA": AAAA,
    "SRV": SRV,
    "CAA": CAA,
    "DS": DS,
}
# DNSKEY records are made from a zone's dnssec key, never written in zone data.
TYPE_NAMES: Final[dict[int, str]] = {v: k for k, v in TYPE_CODES.items()} | {DNSKEY: "DNSKEY"}

MAX_TTL: Final = 2**31 - 1
# DS digest lengths by digest type: SHA-1, SHA-256, SHA-384 (RFC 4034, 4509, 6605).
_DS_DIGEST_SIZES: Final = {1: 20, 2: 32, 4: 48}
MAX_CNAME_CHAIN: Final = 12
MAX_INCLUDE_DEPTH: Final = 8  # files open at once: the zone file and 7 nested $INCLUDEs
ROOT: Final = b"\x00"
_WILD: Final = b"\x01*"
_LABEL_RE: Final = re.compile(r"^(\*|[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)$")
_TTL_RE: Final = re.compile(r"^(\d+[smhdwSMHDW]?)+$")
_TTL_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --------------------------------------------------------------------------- names


def name_from_text(text: str, origin: bytes | None = None) -> bytes:
    """A domain name in master-file form ("www", "@", "a.example.test.") as lower-case wire
    bytes. Relative names are made absolute with `origin`. Raises ValueError."""
    if text == "@":
        if origin is None:
            raise ValueError("'@' used without an origin")
        return origin
    if text == ".":
        return ROOT
    absolute = text.endswith(".")
    body = text[:-1] if absolute else text
    if not body:
        raise ValueError("empty name")
    out = bytearray()
    parts = body.split(".")
    for i, label in enumerate(parts):
        if not label:
            raise ValueError(f"empty label in name {text!r}")
        if len(label.encode()) > 63:
            raise ValueError(f"label {label!r} is longer than 63 octets")
        if not _LABEL_RE.match(label) or (label == "*" and i != 0):
            raise ValueError(
                f"label {label!r} in {text!r} is not a host label (letters, digits, '-', '_'; "
                "'*' only as the whole leftmost label)"
            )
        raw = label.lower().encode()
        out.append(len(raw))
        out += raw
    if absolute:
        out.append(0)
        wire = bytes(out)
    else:
        if origin is None:
            raise ValueError(f"relative name {text!r} without an origin")
        wire = bytes(out) + origin
    if len(wire) > 255:
        raise ValueError(f"name {text!r} is longer than 255 octets")
    return wire


def name_to_text(wire: bytes) -> str:
    """Presentation form of a wire name, with the trailing dot ("." for the root)."""
    if wire == ROOT:
        return "."
    return ".".join(label.decode("ascii", "backslashreplace") for label in labels(wire)) + "."


def labels(wire: bytes) -> list[bytes]:
    out = []
    pos = 0
    while wire[pos]:
        n = wire[pos]
        out.append(wire[pos + 1 : pos + 1 + n])
        pos += n + 1
    return out


def parent(wire: bytes) -> bytes:
    return wire[wire[0] + 1 :]


def is_subdomain(name: bytes, ancestor: bytes) -> bool:
    """True when `name` equals `ancestor` or lies below it (label-aligned)."""
    while len(name) > len(ancestor):
        name = name[name[0] + 1 :]
    return name == ancestor


def dnslabel(wire: bytes) -> Any:
    return DNSLabel(labels(wire))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record from the config or a zone file. `key` locates it for errors."""

    name: bytes
    rtype: int
    ttl: int
    rdata: Any  # a dnslib rdata object
    key: str
    target: bytes | None = None  # NS/CNAME/PTR/MX/SRV target name
    text: str = ""  # rdata in presentation form, for duplicate detection and messages


@dataclass(frozen=True, slots=True)
class RRset:
    name: bytes
    rtype: int
    ttl: int
    rdatas: tuple[Any, ...]
    targets: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    quoted: bool = False


class _Syntax(ValueError):
    def __init__(self, problem: str, lineno: int = 0) -> None:
        super().__init__(problem)
        self.lineno = lineno  # set by the tokenizer, which runs ahead of the entry loop


def parse_ttl(text: str) -> int:
    if not _TTL_RE.match(text):
        raise _Syntax(f"invalid TTL {text!r}")
    total = 0
    for num, unit in re.findall(r"(\d+)([smhdwSMHDW]?)", text):
        total += int(num) * _TTL_UNITS[unit.lower() or "s"]
    if total > MAX_TTL:
        raise _Syntax(f"TTL {text} is larger than {MAX_TTL}")
    return total


def _tokenize(text: str) -> Iterator[tuple[int, bool, list[Token]]]:
    """Logical entries of a master file: (first line number, starts with blank, tokens)."""
    tokens: list[Token] = []
    depth = 0
    start = 0
    blank = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if depth == 0:
            start, blank, tokens = lineno, line[:1] in (" ", "\t"), []
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c in " \t\r":
                i += 1
            elif c == ";":
                break
            elif c == "(":
                depth += 1
                i += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    raise _Syntax("unbalanced ')'", lineno)
                i += 1
            elif c == '"':
                i += 1
                buf: list[str] = []
                closed = False
                while i < n:
                    c = line[i]
                    if c == "\\" and i + 1 < n:
                        if line[i + 1 : i + 4].isdigit() and len(line[i + 1 : i + 4]) == 3:
                            buf.append(chr(int(line[i + 1 : i + 4])))
                            i += 4
                        else:
                            buf.append(line[i + 1])
                            i += 2
                    elif c == '"':
                        closed = True
                        i += 1
                        break
                    else:
                        buf.append(c)
                        i += 1
                if not closed:
                    raise _Syntax("unterminated quoted string", lineno)
                tokens.append(Token("".join(buf), True))
            else:
                j = i
                while j < n and line[j] not in ' \t\r;()"':
                    j += 1
                tokens.append(Token(line[i:j]))
                i = j
        if depth == 0 and tokens:
            yield start, blank, tokens
            tokens = []
    if depth > 0:
        raise _Syntax("unbalanced '('", start)


def _int(tok: Token, what: str, hi: int) -> int:
    if tok.quoted or not tok.text.isdigit():
        raise _Syntax(f"{what} must be an integer, not {tok.text!r}")
    value = int(tok.text)
    if value > hi:
        raise _Syntax(f"{what} {value} is larger than {hi}")
    return value


def _name(tok: Token, origin: bytes) -> bytes:
    if tok.quoted:
        raise _Syntax(f"a name cannot be quoted: {tok.text!r}")
    try:
        return name_from_text(tok.text, origin)
    except ValueError as exc:
        raise _Syntax(str(exc)) from None


def build_rdata(rtype: int, toks: Sequence[Token], origin: bytes) -> tuple[Any, bytes | None]:
    """dnslib rdata for one record, from its rdata tokens; (rdata, target name or None)."""
    tname = TYPE_NAMES[rtype]

    def want(n: int) -> None:
        if len(toks) != n:
            got = " ".join(t.text for t in toks)
            raise _Syntax(f"{tname} needs {n} rdata field(s), got {len(toks)}: {got!r}")

    if rtype == A:
        want(1)
        try:
            return RD_A(str(ipaddress.IPv4Address(toks[0].text))), None
        except ValueError:
            raise _Syntax(f"invalid IPv4 address {toks[0].text!r}") from None
    if rtype == AAAA:
        want(1)
        try:
            return RD_AAAA(ipaddress.IPv6Address(toks[0].text).compressed), None
        except ValueError:
            raise _Syntax(f"invalid IPv6 address {toks[0].text!r}") from None
    if rtype in (NS, CNAME, PTR):
        want(1)
        target = _name(toks[0], origin)
        cls = {NS: RD_NS, CNAME: RD_CNAME, PTR: RD_PTR}[rtype]
        return cls(dnslabel(target)), target
    if rtype == MX:
        want(2)
        pref = _int(toks[0], "MX preference", 65535)
        target = _name(toks[1], origin)
        return RD_MX(dnslabel(target), pref), target
    if rtype == SRV:
        want(4)
        prio = _int(toks[0], "SRV priority", 65535)
        weight = _int(toks[1], "SRV weight", 65535)
        port = _int(toks[2], "SRV port", 65535)
        target = _name(toks[3], origin)
        return RD_SRV(prio, weight, port, dnslabel(target)), target
    if rtype == TXT:
        if not toks:
            raise _Syntax("TXT needs at least one string")
        strings = []
        for t in toks:
            raw = t.text.encode()
            if len(raw) > 255:
                raise _Syntax(f"TXT string longer than 255 octets: {t.text[:40]!r}...")
            strings.append(raw)
        return RD_TXT(strings), None
    if rtype == CAA:
        want(3)
        flags = _int(toks[0], "CAA flags", 255)
        tag = toks[1].text
        if not re.fullmatch(r"[A-Za-z0-9]{1,15}", tag):
            raise _Syntax(f"invalid CAA tag {tag!r}")
        return RD_CAA(flags, tag, toks[2].text), None
    if rtype == DS:
        if len(toks) < 4:
            raise _Syntax(f"DS needs key tag, algorithm, digest type and digest, got {len(toks)}")
        key_tag = _int(toks[0], "DS key tag", 65535)
        algorithm = _int(toks[1], "DS algorithm", 255)
        digest_type = _int(toks[2], "DS digest type", 255)
        hexdigest = "".join(t.text for t in toks[3:])
        try:
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            raise _Syntax(f"DS digest {hexdigest!r} is not hexadecimal") from None
        if not digest:
            raise _Syntax("DS digest is empty")
        size = _DS_DIGEST_SIZES.get(digest_type)
        if size is not None and len(digest) != size:
            raise _Syntax(
                f"DS digest type {digest_type} takes {size} octets ({2 * size} hex digits), "
                f"got {len(digest)}"
            )
        return RD_DS(key_tag, algorithm, digest_type, digest), None
    if rtype == SOA:
        want(7)
        mname = _name(toks[0], origin)
        rname = _name(toks[1], origin)
        times = tuple(
            (_int(t, "SOA serial", 2**32 - 1) if i == 0 else parse_ttl(t.text))
            for i, t in enumerate(toks[2:])
        )
        return RD_SOA(dnslabel(mname), dnslabel(rname), times), None
    raise _Syntax(f"unsupported record type {tname}")  # pragma: no cover - TYPE_CODES guards


# Reads the master file a name refers to (a path as the config or an $INCLUDE spells it,
# joined to the including file's directory); raises OSError or UnicodeDecodeError.
Reader = Callable[[str], str]
# $INCLUDE handler given to parse_master: (file name, origin, $TTL default) -> its records.
_Include = Callable[[str, bytes, int], list[Record]]


def parse_zone_file(
    text: str, name: str, origin: bytes, default_ttl: int, key: str, read: Reader
) -> list[Record]:
    """Records of the master file `name` (its contents `text`) and of the files it includes.

    Error keys read "KEY (FILE line N)", naming the file (the included one for errors inside
    it) and its line. RFC 1035 section 5.1 `$INCLUDE <file-name> [<domain-name>]`: a relative
    file name is relative to the including file's directory; the included file starts at
    the domain name as its origin (else the current origin), with the current $TTL default
    and no previous owner; what it sets ($ORIGIN, $TTL, the last owner) ends with it, so the
    including file carries on exactly as before the directive. Loops and nesting deeper
    than MAX_INCLUDE_DEPTH files are errors on the $INCLUDE line. Raises ZoneError.
    """
    return _parse_file(text, name, origin, default_ttl, key, read, ())


def _parse_file(
    text: str,
    name: str,
    origin: bytes,
    default_ttl: int,
    key: str,
    read: Reader,
    including: tuple[str, ...],
) -> list[Record]:
    chain = (*including, name)

    def include(target: str, inc_origin: bytes, ttl: int) -> list[Record]:
        path = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if path in [posixpath.normpath(c) for c in chain]:
            raise _Syntax(f"$INCLUDE loop: {' -> '.join((*chain, path))}")
        if len(chain) >= MAX_INCLUDE_DEPTH:
            raise _Syntax(f"$INCLUDE of {path!r} nests more than {MAX_INCLUDE_DEPTH} files")
        try:
            content = read(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise _Syntax(f"$INCLUDE cannot read {path!r}: {exc}") from None
        return _parse_file(content, path, inc_origin, ttl, key, read, chain)

    return parse_master(
        text, origin, default_ttl, lambda n: f"{key} ({name} line {n})", include=include
    )


def parse_master(
    text: str,
    origin: bytes,
    default_ttl: int,
    key_for_line: Any,
    *,
    directives: bool = True,
    include: _Include | None = None,
) -> list[Record]:
    """Records of an RFC 1035 master file (or one config `records` line).

    `key_for_line(lineno)` names the config key for errors. Supports $ORIGIN and $TTL,
    owner inheritance (a line starting with blanks), '@', relative names, TTL units, class IN,
    parentheses and quoted strings; $INCLUDE when `include` is given (parse_zone_file).
    Raises ZoneError.
    """
    out: list[Record] = []
    owner: bytes | None = None
    ttl_default = default_ttl
    lineno = 0
    try:
        for lineno, blank, toks in _tokenize(text):
            first = toks[0].text
            if first.startswith("$") and not toks[0].quoted:
                if not directives:
                    raise _Syntax(f"directive {first} is only allowed in zone files")
                if first.upper() == "$ORIGIN" and len(toks) == 2:
                    origin = _name(toks[1], origin)
                elif first.upper() == "$TTL" and len(toks) == 2:
                    ttl_default = parse_ttl(toks[1].text)
                elif first.upper() in ("$ORIGIN", "$TTL"):
                    raise _Syntax(f"{first} takes exactly one argument")
                elif first.upper() == "$INCLUDE" and include is not None:
                    if len(toks) not in (2, 3):
                        raise _Syntax("$INCLUDE takes a file name and an optional domain name")
                    inc_origin = _name(toks[2], origin) if len(toks) == 3 else origin
                    out.extend(include(toks[1].text, inc_origin, ttl_default))
                else:
                    raise _Syntax(f"unsupported directive {first}")
                continue
            rest = list(toks)
            if blank:
                if owner is None:
                    raise _Syntax("record without an owner name (line starts with a blank)")
            else:
                owner = _name(rest.pop(0), origin)
            ttl: int | None = None
            seen_class = False
            while rest and not rest[0].quoted:
                word = rest[0].text
                if ttl is None and word[:1].isdigit() and _TTL_RE.match(word):
                    ttl = parse_ttl(word)
                elif not seen_class and word.upper() in ("IN", "CH", "HS", "CS"):
                    if word.upper() != "IN":
                        raise _Syntax(f"class {word} is not supported (only IN)")
                    seen_class = True
                else:
                    break
                rest.pop(0)
            if not rest:
                raise _Syntax("record without a type")
            tword = rest.pop(0)
            rtype = TYPE_CODES.get(tword.text.upper())
            if rtype is None or tword.quoted:
                supported = " ".join(TYPE_CODES)
                raise _Syntax(f"unsupported record type {tword.text!r} (supported: {supported})")
            rdata, target = build_rdata(rtype, rest, origin)
            out.append(
                Record(
                    name=owner,
                    rtype=rtype,
                    ttl=ttl_default if ttl is None else ttl,
                    rdata=rdata,
                    key=key_for_line(lineno),
                    target=target,
                    text=" ".join(t.text for t in rest),
                )
            )
    except _Syntax as exc:
        raise ZoneError(key_for_line(exc.lineno or lineno), str(exc)) from None
    return out


def soa_record(
    origin: bytes,
    ttl: int,
    mname: bytes,
    rname: bytes,
    times: tuple[int, int, int, int, int],
    key: str,
) -> Record:
    rd = RD_SOA(dnslabel(mname), dnslabel(rname), times)
    return Record(origin, SOA, ttl, rd, key, None, "SOA")


# --------------------------------------------------------------------------- lookup results


@dataclass(frozen=True, slots=True)
class PoolAnswer:
    """A/AAAA for `owner` chosen per query from `pool` (already narrowed to edges that have
    an address of `rtype`)."""

    owner: bytes
    pool: Pool
    rtype: int
    ttl: int


Section = tuple[RRset, ...]


@dataclass(frozen=True, slots=True)
class Resolution:
    """What one (qname, qtype) resolves to, before any per-client choice."""

    rcode: int
    aa: bool
    answer: tuple[RRset | PoolAnswer, ...] = ()
    authority: Section = ()
    additional: Section = ()  # required (referral glue): TC if it does not fit
    optional: Section = ()  # helpful addresses: dropped first if the reply is too big
    pool: PoolAnswer | None = field(default=None)
    # For DNSSEC (answer.py signs when asked): a negative answer's last name looked up and
    # the types that exist there (none: the name does not exist), or a referral's delegation
    # point, its types (NS, DS), and its DS RRset when there is one.
    denial: bytes | None = None
    types: tuple[int, ...] = ()
    ds: RRset | None = None


def family_pool(pool: Pool, rtype: int) -> Pool | None:
    """`pool` narrowed to the members (and fallback) that have an address of `rtype`."""
    attr = "ipv4" if rtype == A else "ipv6"
    edges = tuple(e for e in pool.edges if getattr(e, attr) is not None)
    if not edges:
        return None
    fallback = None
    if pool.fallback is not None:
        fallback = tuple(e for e in pool.fallback if getattr(e, attr) is not None) or None
    if len(edges) == len(pool.edges) and fallback == pool.fallback:
        return pool
    return replace(pool, edges=edges, fallback=fallback)


# --------------------------------------------------------------------------- the zone


@dataclass(slots=True)
class _Step:
    kind: str  # answer | cname | nodata | nxdomain | referral
    answer: tuple[RRset | PoolAnswer, ...] = ()
    optional: Section = ()
    target: bytes = b""  # cname: the target; nodata, nxdomain: the name looked up
    cut: bytes = b""
    types: tuple[int, ...] = ()  # nodata: the types that exist at the name


class Zone:
    """One validated zone. Build it with `Zone(origin, records, pools)`; raises ZoneError."""

    def __init__(
        self,
        origin: bytes,
        records: Iterable[Record],
        pools: Iterable[tuple[Pool, bytes, str]] = (),
        *,
        key: str = "zone",
        dnssec: ZoneKey | None = None,
    ) -> None:
        self.origin = origin
        self.key = key
        self.dnssec = dnssec  # the signing key; its DNSKEY records are among `records`
        self.records: tuple[Record, ...] = tuple(records)
        nodes: dict[bytes, dict[int, RRset]] = {}
        first: dict[tuple[bytes, int], Record] = {}
        grouped: dict[tuple[bytes, int], list[Record]] = {}
        for rec in self.records:
            if not is_subdomain(rec.name, origin):
                raise ZoneError(
                    rec.key,
                    f"{name_to_text(rec.name)} is outside zone {name_to_text(origin)}",
                )
            group = grouped.setdefault((rec.name, rec.rtype), [])
            if any(r.text == rec.text for r in group) and rec.rtype != SOA:
                continue  # an exact duplicate: RFC 2181 treats an RRset as a set
            group.append(rec)
            first.setdefault((rec.name, rec.rtype), rec)
        for (name, rtype), group in grouped.items():
            if rtype == SOA and (name != origin or len(group) > 1):
                bad = group[1] if name == origin else group[0]
                problem = "a second SOA record" if name == origin else "SOA only at the apex"
                raise ZoneError(bad.key, problem)
            if rtype == CNAME and len(group) > 1:
                raise ZoneError(group[1].key, f"a second CNAME at {name_to_text(name)}")
            nodes.setdefault(name, {})[rtype] = RRset(
                name,
                rtype,
                min(r.ttl for r in group),  # RFC 2181 5.2: one TTL per RRset
                tuple(r.rdata for r in group),
                tuple(r.target for r in group if r.target is not None),
            )
        apex = nodes.get(origin, {})
        if SOA not in apex:
            raise ZoneError(key, "no SOA record (set soa = {...} or put one in the zone file)")
        if NS not in apex:
            raise ZoneError(key, f"no NS record at the apex {name_to_text(origin)}")
        for name, rrsets in nodes.items():
            if CNAME in rrsets and len(rrsets) > 1:
                other = TYPE_NAMES[min(t for t in rrsets if t != CNAME)]
                raise ZoneError(
                    first[(name, CNAME)].key,
                    f"CNAME at {name_to_text(name)} beside other data ({other})",
                )
        self._cuts = {n for n, rr in nodes.items() if NS in rr and n != origin}
        for name, rrsets in nodes.items():
            cut = self._cut_above(name, include_self=False)
            if cut is not None:
                for rtype in rrsets:
                    if rtype not in (A, AAAA):
                        raise ZoneError(
                            first[(name, rtype)].key,
                            f"{TYPE_NAMES[rtype]} at {name_to_text(name)} is below the "
                            f"delegation {name_to_text(cut)} (only glue A/AAAA allowed there)",
                        )
            if DS in rrsets and name not in self._cuts:
                raise ZoneError(
                    first[(name, DS)].key,
                    f"DS at {name_to_text(name)}, which is not a delegation point (DS belongs "
                    "beside the NS records of a delegation below the apex)",
                )
            if name in self._cuts:
                for rtype in rrsets:
                    if rtype not in (NS, DS, A, AAAA):
                        raise ZoneError(
                            first[(name, rtype)].key,
                            f"{TYPE_NAMES[rtype]} beside the delegation NS at {name_to_text(name)}",
                        )
        for (_name, rtype), group in grouped.items():
            if rtype != NS:
                continue
            for rec in group:
                target = rec.target or b""
                if is_subdomain(target, origin) and not (
                    A in nodes.get(target, {}) or AAAA in nodes.get(target, {})
                ):
                    raise ZoneError(
                        rec.key,
                        f"NS target {name_to_text(target)} is inside the zone but has no "
                        "A/AAAA (glue) record",
                    )
        self._nodes = nodes
        self._pools: dict[bytes, Pool] = {}
        self._family: dict[tuple[bytes, int], Pool | None] = {}
        for pool, pname, pkey in pools:
            if not is_subdomain(pname, origin):
                raise ZoneError(
                    pkey, f"{name_to_text(pname)} is outside zone {name_to_text(origin)}"
                )
            cut = self._cut_above(pname, include_self=True)
            if cut is not None:
                raise ZoneError(
                    pkey,
                    f"{name_to_text(pname)} is at or below the delegation {name_to_text(cut)}",
                )
            for rtype in (CNAME, A, AAAA):
                if rtype in nodes.get(pname, {}):
                    raise ZoneError(
                        pkey,
                        f"pool {name_to_text(pname)} clashes with the static "
                        f"{TYPE_NAMES[rtype]} record at {first[(pname, rtype)].key}",
                    )
            if pname in self._pools:
                raise ZoneError(pkey, f"a second pool named {name_to_text(pname)}")
            self._pools[pname] = pool
            self._family[(pname, A)] = family_pool(pool, A)
            self._family[(pname, AAAA)] = family_pool(pool, AAAA)
        names: set[bytes] = set()
        for name in list(nodes) + list(self._pools):
            while name not in names and len(name) >= len(origin):
                names.add(name)
                if name == origin:
                    break
                name = parent(name)
        self._names = names
        soa = apex[SOA]
        minimum = soa.rdatas[0].times[4]
        self.soa = soa
        self.negative = RRset(origin, SOA, min(soa.ttl, minimum), soa.rdatas)

    @property
    def pools(self) -> dict[bytes, Pool]:
        return dict(self._pools)

    def rrset(self, name: bytes, rtype: int) -> RRset | None:
        """The zone data's RRset of `rtype` at `name` (no pools, wildcards or delegations)."""
        return self._nodes.get(name, {}).get(rtype)

    def _cut_above(self, name: bytes, *, include_self: bool) -> bytes | None:
        """The highest delegation point on the path from the apex to `name`."""
        found = None
        if not include_self:
            if len(name) <= len(self.origin):
                return None
            name = parent(name)
        while len(name) > len(self.origin):
            if name in self._cuts:
                found = name
            name = parent(name)
        return found

    # ---------------------------------------------------------------- lookup

    def resolve(self, qname: bytes, qtype: int) -> Resolution:
        """Authoritative answer for `qname` (inside this zone) and `qtype`."""
        step = self._lookup(qname, qtype)
        if step.kind == "referral":
            return self._referral(step.cut)
        answer: list[RRset | PoolAnswer] = []
        seen = {qname}
        while step.kind == "cname":
            answer.extend(step.answer)
            target = step.target
            if (
                target in seen
                or not is_subdomain(target, self.origin)
                or len(seen) > MAX_CNAME_CHAIN
            ):
                return Resolution(NOERROR, True, tuple(answer))
            seen.add(target)
            step = self._lookup(target, qtype)
            if step.kind == "referral":
                return Resolution(NOERROR, True, tuple(answer))
        answer.extend(step.answer)
        if step.kind == "answer":
            pool = next((a for a in answer if isinstance(a, PoolAnswer)), None)
            return Resolution(NOERROR, True, tuple(answer), optional=step.optional, pool=pool)
        rcode = NXDOMAIN if step.kind == "nxdomain" else NOERROR
        return Resolution(
            rcode,
            True,
            tuple(answer),
            authority=(self.negative,),
            denial=step.target,
            types=step.types,
        )

    def _lookup(self, qname: bytes, qtype: int) -> _Step:
        cut = self._cut_above(qname, include_self=True)
        if cut is not None and not (cut == qname and qtype == DS):
            return _Step("referral", cut=cut)
        if qname in self._names:
            return self._at(qname, qname, qtype)
        # RFC 4592: the closest encloser is the nearest existing ancestor; only its wildcard
        # child may synthesize an answer.
        encloser = parent(qname)
        while encloser not in self._names:
            encloser = parent(encloser)
        wild = _WILD + encloser
        if wild in self._names:
            return self._at(wild, qname, qtype)
        return _Step("nxdomain", target=qname)

    def _at(self, source: bytes, owner: bytes, qtype: int) -> _Step:
        rrsets = self._nodes.get(source, {})
        pool = self._pools.get(source)
        if qtype == ANY:
            # RFC 8482: one RRset - the one of the lowest type code (a pool's A/AAAA counts).
            choices: dict[int, RRset | PoolAnswer] = {}
            for rtype in (A, AAAA):
                fam = self._family.get((source, rtype)) if pool else None
                if fam is not None and pool is not None:
                    choices[rtype] = PoolAnswer(owner, fam, rtype, pool.ttl)
            for rtype, static in rrsets.items():
                choices.setdefault(rtype, static)
            if not choices:
                return self._nodata(source, owner)
            chosen = choices[min(choices)]
            if isinstance(chosen, RRset):
                chosen = self._owned(chosen, owner)
            return _Step("answer", (chosen,))
        cname = rrsets.get(CNAME)
        # In a signed zone a CNAME's owner has an NSEC record too (RFC 4035 section 2.3): an
        # NSEC query stops there rather than ask for the target's, which lists NSEC.
        if cname is not None and qtype != CNAME and not (qtype == NSEC and self.dnssec):
            return _Step("cname", (self._owned(cname, owner),), target=cname.targets[0])
        if pool is not None and qtype in (A, AAAA):
            fam = self._family[(source, qtype)]
            if fam is None:
                return self._nodata(source, owner)
            return _Step("answer", (PoolAnswer(owner, fam, qtype, pool.ttl),))
        rrset = rrsets.get(qtype)
        if rrset is None:
            return self._nodata(source, owner)
        optional: Section = ()
        if qtype in (NS, MX, SRV):
            optional = self._addresses(rrset.targets, glue=False)
        return _Step("answer", (self._owned(rrset, owner),), optional=optional)

    def _nodata(self, source: bytes, owner: bytes) -> _Step:
        return _Step("nodata", target=owner, types=self.types_at(source))

    def types_at(self, name: bytes) -> tuple[int, ...]:
        """The types of the RRsets at `name` (a pool's A/AAAA included), as an NSEC record
        lists them: at a delegation point only NS and DS (the rest is glue)."""
        types = set(self._nodes.get(name, {}))
        if name in self._cuts:
            types &= {NS, DS}
        for rtype in (A, AAAA):
            if self._family.get((name, rtype)) is not None:
                types.add(rtype)
        return tuple(sorted(types))

    @staticmethod
    def _owned(rrset: RRset, owner: bytes) -> RRset:
        return rrset if rrset.name == owner else replace(rrset, name=owner)

    def _addresses(self, targets: Iterable[bytes], *, glue: bool) -> Section:
        """Static A/AAAA RRsets of in-zone `targets` (occluded names only when `glue`)."""
        out: list[RRset] = []
        for target in dict.fromkeys(targets):
            if not is_subdomain(target, self.origin):
                continue
            if not glue and self._cut_above(target, include_self=False) is not None:
                continue
            node = self._nodes.get(target, {})
            out.extend(node[t] for t in (A, AAAA) if t in node)
        return tuple(out)

    def _referral(self, cut: bytes) -> Resolution:
        ns = self._nodes[cut][NS]
        below = [t for t in ns.targets if is_subdomain(t, cut)]
        other = [t for t in ns.targets if not is_subdomain(t, cut)]
        return Resolution(
            NOERROR,
            False,
            authority=(ns,),
            additional=self._addresses(below, glue=True),
            optional=self._addresses(other, glue=False),
            denial=cut,
            types=self.types_at(cut),
            ds=self._nodes[cut].get(DS),
        )


class Zones:
    """Every zone we serve; finds the most specific zone for a name."""

    def __init__(self, zones: Iterable[Zone]) -> None:
        self._by_origin = {z.origin: z for z in zones}
        self._min_len = min((len(o) for o in self._by_origin), default=1)

    def find(self, qname: bytes, qtype: int = 0) -> Zone | None:
        """The most specific zone holding `qname`. A DS query at the apex of a zone whose
        parent zone we serve too is the parent's (RFC 4035 section 3.1.4.1): the DS RRset,
        or the proof that there is none, lives above the cut and is signed with its key."""
        zone = self._find(qname)
        if qtype == DS and zone is not None and zone.origin == qname and qname != ROOT:
            return self._find(parent(qname)) or zone
        return zone

    def _find(self, qname: bytes) -> Zone | None:
        name = qname
        by_origin = self._by_origin
        while True:
            zone = by_origin.get(name)
            if zone is not None:
                return zone
            if len(name) <= self._min_len:
                return None
            name = name[name[0] + 1 :]
