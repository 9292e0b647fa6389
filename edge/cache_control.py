"""HTTP field access, list and q-value parsing, Cache-Control directives (RFC 9111 §5.2).

Pure code. Headers arrive either as a sequence of (name, value) pairs or as any object with
an ``items()`` yielding such pairs (aiohttp's CIMultiDict qualifies); names compare
case-insensitively and repeated field lines are kept in order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
DELTA_SECONDS_MAX = 2147483648


class HeaderItems(Protocol):
    """Anything with multidict-style ``items()``: CIMultiDict, CIMultiDictProxy, ..."""

    def items(self) -> Iterable[tuple[str, str]]: ...


Headers = Sequence[tuple[str, str]] | HeaderItems
HeaderTuple = tuple[tuple[str, str], ...]


class Fields(tuple[tuple[str, str], ...]):
    """A field section: a tuple of (name, value) pairs, names as received, that indexes its
    lines by lower-cased name the first time a field is looked up.

    A cache decision reads one response head many times (storability, the stored entry,
    freshness, compression, the client's copy): as a ``Fields`` every lookup after the
    first is a dict access instead of a scan lower-casing every name. It is an ordinary
    tuple everywhere else (equality, hashing, JSON).
    """

    _by_name: dict[str, list[str]]
    # end_to_end's answer once asked, with the hop-by-hop set it was for (None: these
    # fields themselves, so that no Fields refers to itself).
    _end_to_end: tuple[frozenset[str], Fields | None]

    @property
    def by_name(self) -> dict[str, list[str]]:
        """Lower-cased name -> the values of its lines, in order (not to be modified)."""
        try:
            return self._by_name
        except AttributeError:
            pass
        index: dict[str, list[str]] = {}
        for k, v in self:
            lk = k.lower()
            values = index.get(lk)
            if values is None:
                index[lk] = [v]
            else:
                values.append(v)
        self._by_name = index
        return index

    def without(self, names: frozenset[str] | set[str]) -> Fields:
        """These fields without every line whose lower-cased name is in ``names``."""
        index = self.by_name
        if names.isdisjoint(index):
            return self
        out = Fields(p for p in self if p[0].lower() not in names)
        out._by_name = {k: v for k, v in index.items() if k not in names}
        return out

    def end_to_end(self, hop_by_hop: frozenset[str]) -> Fields:
        """These fields without those named in ``hop_by_hop`` or in Connection (RFC 9110
        §7.6.1); remembered, as a response head is stripped for the client and the store."""
        try:
            for_set, known = self._end_to_end
            if for_set is hop_by_hop:
                return self if known is None else known
        except AttributeError:
            pass
        kept = self
        if not hop_by_hop.isdisjoint(self.by_name):
            drop = set(hop_by_hop)
            drop.update(e.lower() for e in list_elements(self, "connection"))
            kept = self.without(drop)
        self._end_to_end = (hop_by_hop, None if kept is self else kept)
        return kept

    def plus(self, name: str, value: str) -> Fields:
        """These fields with one more line."""
        out = Fields((*self, (name, value)))
        index = dict(self.by_name)
        lname = name.lower()
        index[lname] = [*index.get(lname, ()), value]
        out._by_name = index
        return out


def as_fields(headers: Headers) -> Fields:
    """``headers`` as Fields (itself when it already is)."""
    if type(headers) is Fields:
        return headers
    return Fields(header_pairs(headers))


def header_pairs(headers: Headers) -> HeaderTuple:
    """The fields as a tuple of (name, value) pairs, names as received."""
    if isinstance(headers, tuple):
        return headers
    if isinstance(headers, Sequence):
        return tuple((str(k), str(v)) for k, v in headers)
    return tuple((str(k), str(v)) for k, v in headers.items())


def field_values(headers: Headers, name: str) -> list[str]:
    """Every field line value of ``name`` (case-insensitive), in order."""
    if type(headers) is Fields:
        return list(headers.by_name.get(name.lower(), ()))
    lname = name.lower()
    items: Iterable[tuple[str, str]]
    # tuple and list first: the Sequence check goes through the ABC machinery.
    if isinstance(headers, tuple | list) or isinstance(headers, Sequence):
        items = headers
    else:
        items = headers.items()
    return [v for k, v in items if k.lower() == lname]


def field_value(headers: Headers, name: str) -> str | None:
    """The combined value of ``name`` (lines joined by ", "), or None if absent."""
    values = field_values(headers, name)
    if not values:
        return None
    return ", ".join(values)


def split_list(value: str) -> Iterator[str]:
    """Split a comma-separated list field (RFC 9110 §5.6.1), honouring quoted strings.

    Empty elements are dropped; each element is stripped of surrounding whitespace.
    """
    start = 0
    in_quote = False
    escaped = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif in_quote:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == ",":
            element = value[start:i].strip(" \t")
            if element:
                yield element
            start = i + 1
    element = value[start:].strip(" \t")
    if element:
        yield element


def list_elements(headers: Headers, name: str) -> list[str]:
    """All list elements of every line of a list-based field."""
    out: list[str] = []
    for value in field_values(headers, name):
        out.extend(split_list(value))
    return out


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_token(s: str) -> bool:
    return bool(s) and all(c in _TCHAR for c in s)


def unquote(value: str) -> str | None:
    """The content of a quoted-string, or None if ``value`` is not one."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return None
    out: list[str] = []
    i = 1
    end = len(value) - 1
    while i < end:
        ch = value[i]
        if ch == "\\":
            if i + 1 >= end:
                return None
            out.append(value[i + 1])
            i += 2
            continue
        if ch == '"':
            return None
        out.append(ch)
        i += 1
    return "".join(out)


def qvalue(params: str) -> float:
    """The weight in the ``;``-separated parameters of a list element (RFC 9110 §12.4.2).

    1.0 without a ``q`` parameter; 0.0 (not acceptable) when it is not a number in 0..1.
    """
    for p in params.split(";"):
        k, eq, v = p.strip().partition("=")
        if eq and k.strip().lower() == "q":
            try:
                q = float(v.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def parse_delta_seconds(value: str | None) -> int | None:
    """delta-seconds (RFC 9111 §1.2.2): 1*DIGIT; None when invalid. Huge values clamp."""
    if value is None or not value or not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    return min(n, DELTA_SECONDS_MAX)


@dataclass(frozen=True, slots=True)
class Directives:
    """Parsed cache directives in order; names lower-cased, values unquoted (None if bare).

    ``malformed`` lists names whose element could not be parsed as ``token [= value]``.
    """

    items: tuple[tuple[str, str | None], ...] = ()
    malformed: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(n for n, _ in self.items))

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __bool__(self) -> bool:
        return bool(self.items)

    def values(self, name: str) -> list[str | None]:
        return [v for n, v in self.items if n == name]

    def get(self, name: str) -> str | None:
        """Value of the first occurrence (None when absent or bare)."""
        for n, v in self.items:
            if n == name:
                return v
        return None

    def delta(self, name: str) -> int | None:
        """The first occurrence's delta-seconds; None if absent. -1 if present but invalid.

        RFC 9111 §4.2.1 lets a cache use the first of duplicated directives; an invalid
        value (e.g. ``max-age=abc`` or bare ``max-age``) is reported as -1 so freshness code
        can treat the response as stale.
        """
        for n, v in self.items:
            if n == name:
                parsed = parse_delta_seconds(v)
                return -1 if parsed is None else parsed
        return None

    def field_names(self, name: str) -> tuple[str, ...] | None:
        """For qualified ``no-cache="a, b"`` / ``private="x"``: the lower-cased field names.

        None when the directive is absent; () when it is present without a list.
        """
        if name not in self:
            return None
        names: list[str] = []
        for v in self.values(name):
            if v is None:
                return ()
            names.extend(e.strip().lower() for e in v.split(",") if e.strip())
        return tuple(names)


def parse_directives(values: Iterable[str]) -> Directives:
    """Parse Cache-Control style field values (several lines allowed) into Directives.

    Remembered for the last 1024 distinct field values of up to REMEMBERED_MAX characters
    in all (Directives are immutable): an origin sends a handful of distinct Cache-Control
    values, and a miss parses its own several times (storability, freshness, the entry).
    Longer values are parsed each time, so that the memo holds about 10 MiB at the very
    most (1,024 values of 256 characters in bare two-letter directives), whatever an origin
    sends.

    Grammar: ``#( token [ "=" ( token / quoted-string ) ] )``. Whitespace around "=" is not
    allowed by the grammar; such elements are kept under their (stripped) name as malformed,
    so ``max-age =3600`` does not give a lifetime. Quoted values are unquoted: commas inside
    quotes never start a new directive.
    """
    lines = tuple(values)
    if sum(map(len, lines)) > REMEMBERED_MAX:
        return _parse_directives.__wrapped__(lines)
    return _parse_directives(lines)


# The longest Cache-Control (all its lines) parse_directives remembers.
REMEMBERED_MAX = 256


@functools.lru_cache(maxsize=1024)
def _parse_directives(values: tuple[str, ...]) -> Directives:
    items: list[tuple[str, str | None]] = []
    malformed: list[str] = []
    for value in values:
        for element in split_list(value):
            name, eq, raw = element.partition("=")
            if not eq:
                lname = name.strip().lower()
                if is_token(lname):
                    items.append((lname, None))
                else:
                    malformed.append(lname)
                continue
            if name != name.rstrip() or raw != raw.lstrip():
                malformed.append(name.strip().lower())
                continue
            lname = name.lower()
            if not is_token(lname):
                malformed.append(lname)
                continue
            if raw.startswith('"'):
                unq = unquote(raw)
                if unq is None:
                    malformed.append(lname)
                    continue
                items.append((lname, unq))
            elif is_token(raw):
                items.append((lname, raw))
            else:
                malformed.append(lname)
    return Directives(tuple(items), tuple(malformed))


def cache_control(headers: Headers) -> Directives:
    """The parsed Cache-Control field of a request or response."""
    return parse_directives(field_values(headers, "cache-control"))
