"""On-the-fly compression for the edge: negotiation, eligibility, streaming, header fix-ups.

Pure except for the codecs. Compressed responses are stored in the cache as their own
variants: they carry ``Vary: Accept-Encoding`` and edge.vary normalises a request's
Accept-Encoding to ``negotiate(value)``, so every request that would negotiate the same
coding selects the same stored variant and a hit is never compressed again.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import brotli

from edge.cache_control import (
    Headers,
    HeaderTuple,
    cache_control,
    field_values,
    header_pairs,
    list_elements,
    qvalue,
)
from edge.errors import CompressionError

# Codings we produce, in our order of preference when the client weighs them equally.
SUPPORTED = ("br", "gzip")
_ALIASES = {"x-gzip": "gzip"}


class CompressionOptions(Protocol):
    """What should_compress / Compressor read; edge.config.CompressionConfig fits."""

    @property
    def types(self) -> tuple[str, ...]: ...
    @property
    def min_size(self) -> int: ...
    @property
    def brotli_quality(self) -> int: ...
    @property
    def gzip_level(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Options:
    """A plain CompressionOptions for tests and defaults."""

    types: tuple[str, ...] = (
        "text/html",
        "text/css",
        "text/plain",
        "text/javascript",
        "application/javascript",
        "application/json",
        "application/xml",
        "image/svg+xml",
    )
    min_size: int = 256
    brotli_quality: int = 4
    gzip_level: int = 6


def parse_accept_encoding(value: str) -> dict[str, float]:
    """Coding -> q-value (lower-cased names, aliases folded, invalid q taken as 0)."""
    out: dict[str, float] = {}
    for element in value.split(","):
        coding, _, params = element.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        coding = _ALIASES.get(coding, coding)
        q = qvalue(params)
        out[coding] = max(q, out.get(coding, 0.0))
    return out


def negotiate(accept_encoding: str | None, available: Iterable[str] = SUPPORTED) -> str | None:
    """The content coding to send: one of ``available``, "identity", or None (nothing
    acceptable, RFC 9110 §12.5.3; callers usually send identity anyway).

    No Accept-Encoding field means identity. A coding is acceptable at its own q, else at
    the q of ``*``. Identity is acceptable unless excluded by ``identity;q=0`` or by
    ``*;q=0`` without an identity entry. The highest q wins; ties go to compression, in
    the order of ``available``.
    """
    if accept_encoding is None:
        return "identity"
    if len(accept_encoding) > _REMEMBERED_MAX:
        return _negotiate.__wrapped__(accept_encoding, tuple(available))
    return _negotiate(accept_encoding, tuple(available))


# Longer Accept-Encoding values (or media types) are negotiated (matched) afresh each time:
# a memo holds at most 1024 short strings whatever peers send.
_REMEMBERED_MAX = 256


@functools.lru_cache(maxsize=1024)
def _negotiate(accept_encoding: str, available: tuple[str, ...]) -> str | None:
    # Remembered: clients send a handful of distinct Accept-Encoding values, read on every
    # miss (compression) and every Vary match on it.
    prefs = parse_accept_encoding(accept_encoding)
    star = prefs.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in available:
        q = prefs.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    if "identity" in prefs:
        identity_q = prefs["identity"]
    elif star is not None:
        identity_q = star if star == 0.0 else 0.001
    else:
        identity_q = 0.001  # acceptable, but below any coding the client lists
    if best is not None and best_q >= identity_q:
        return best
    if identity_q > 0:
        return "identity"
    return best


def variant_coding(accept_encoding: str | None) -> str:
    """The Accept-Encoding value as far as cache variants are concerned: the coding this
    edge would send ("br", "gzip", "identity", or "none" when nothing is acceptable).
    edge.vary uses it, so stored compressed variants are shared by equivalent requests."""
    return negotiate(accept_encoding) or "none"


def media_type(headers: Headers) -> str | None:
    values = field_values(headers, "content-type")
    if not values:
        return None
    return values[0].split(";", 1)[0].strip().lower() or None


def type_matches(media: str, patterns: Iterable[str]) -> bool:
    """``text/*`` style patterns match a whole top-level type."""
    if isinstance(patterns, tuple) and len(media) <= _REMEMBERED_MAX:
        return _type_matches(media, patterns)
    return _type_matches.__wrapped__(media, patterns)


@functools.lru_cache(maxsize=1024)
def _type_matches(media: str, patterns: Iterable[str]) -> bool:
    # Remembered: an origin sends a few media types, each checked on every miss.
    for p in patterns:
        p = p.strip().lower()
        if p == media or (p.endswith("/*") and media.startswith(p[:-1])):
            return True
    return False


def should_compress(
    status: int,
    method: str,
    headers: Headers,
    length: int | None,
    options: CompressionOptions,
) -> bool:
    """Whether the edge should compress this response (before negotiating a coding).

    Yes for 200/203 and error statuses with a configured media type, at least
    ``min_size`` bytes (unknown length counts as large), not already content-coded, no
    Content-Range, no ``no-transform``. HEAD answers get the same decision as GET so their
    headers agree.
    """
    if method.upper() not in ("GET", "HEAD"):
        return False
    if status not in (200, 203) and not (400 <= status < 600):
        return False
    for enc in field_values(headers, "content-encoding"):
        if enc.strip().lower() not in ("", "identity"):
            return False
    if field_values(headers, "content-range"):
        return False
    if "no-transform" in cache_control(headers):
        return False
    media = media_type(headers)
    if media is None or not type_matches(media, options.types):
        return False
    return length is None or length >= options.min_size


def add_vary(headers: Headers, name: str = "Accept-Encoding") -> HeaderTuple:
    """Headers with ``name`` listed in Vary once (untouched when Vary is ``*``)."""
    pairs = header_pairs(headers)
    listed = list_elements(pairs, "vary")
    if {"*", name.lower()} & {e.lower() for e in listed}:
        return pairs
    others = tuple((k, v) for k, v in pairs if k.lower() != "vary")
    return (*others, ("Vary", ", ".join([*listed, name])))


def weaken_etag(tag: str) -> str:
    tag = tag.strip()
    return tag if tag.startswith("W/") else "W/" + tag


def compressed_headers(headers: Headers, encoding: str, length: int | None = None) -> HeaderTuple:
    """Response fields for the ``encoding`` version of a response.

    Content-Encoding is set, Vary gains Accept-Encoding, Content-Length is dropped (or
    set to ``length`` when the compressed size is known), a strong ETag becomes weak
    (the bytes differ, but the origin still recognises it in If-None-Match), and
    Accept-Ranges is dropped since ranges would apply to the compressed bytes.
    """
    out: list[tuple[str, str]] = []
    for k, v in add_vary(headers):
        lk = k.lower()
        if lk in ("content-length", "accept-ranges", "content-encoding"):
            continue
        if lk == "etag":
            v = weaken_etag(v)
        out.append((k, v))
    out.append(("Content-Encoding", encoding))
    if length is not None:
        out.append(("Content-Length", str(length)))
    return tuple(out)


class Compressor:
    """A streaming compressor: ``compress(chunk)`` then ``finish()`` once."""

    def __init__(self, encoding: str, *, brotli_quality: int = 4, gzip_level: int = 6) -> None:
        self.encoding = encoding
        self._done = False
        if encoding == "br":
            self._br = brotli.Compressor(quality=brotli_quality)
        elif encoding == "gzip":
            self._gz = zlib.compressobj(gzip_level, zlib.DEFLATED, 31)
        else:
            raise CompressionError(f"unsupported content coding {encoding!r}")

    def compress(self, chunk: bytes) -> bytes:
        if self._done:
            raise CompressionError("compressor already finished")
        try:
            if self.encoding == "br":
                return bytes(self._br.process(chunk))
            return self._gz.compress(chunk)
        except (brotli.error, zlib.error) as e:
            raise CompressionError(str(e)) from e

    def flush(self) -> bytes:
        """Emit what is buffered so far (for streaming to slow clients); costs ratio."""
        if self.encoding == "br":
            return bytes(self._br.flush())
        return self._gz.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        try:
            if self.encoding == "br":
                return bytes(self._br.finish())
            return self._gz.flush(zlib.Z_FINISH)
        except (brotli.error, zlib.error) as e:
            raise CompressionError(str(e)) from e


def compressor(encoding: str, options: CompressionOptions) -> Compressor:
    return Compressor(
        encoding, brotli_quality=options.brotli_quality, gzip_level=options.gzip_level
    )


def compress_chunks(chunks: Iterable[bytes], comp: Compressor) -> Iterator[bytes]:
    """Compressed chunks of a chunk stream (empty outputs skipped)."""
    for chunk in chunks:
        if out := comp.compress(chunk):
            yield out
    if tail := comp.finish():
        yield tail


async def compress_async(chunks: AsyncIterable[bytes], comp: Compressor) -> AsyncIterator[bytes]:
    """The async twin of compress_chunks, for aiohttp body streams."""
    async for chunk in chunks:
        if out := comp.compress(chunk):
            yield out
    if tail := comp.finish():
        yield tail


def compress(data: bytes, encoding: str, options: CompressionOptions = Options()) -> bytes:
    return b"".join(compress_chunks((data,), compressor(encoding, options)))


def decompress(data: bytes, encoding: str, limit: int | None = None) -> bytes:
    """Decode a whole body (for tests and identity fallbacks); ``limit`` caps the output
    size so a small hostile body cannot expand without bound (CompressionError)."""
    try:
        if encoding == "br":
            if limit is None:
                out = bytes(brotli.decompress(data))
            else:
                bd = brotli.Decompressor()
                out = bytes(bd.process(data, output_buffer_limit=limit + 1))
                if len(out) > limit or not bd.is_finished():
                    raise CompressionError("decompressed body exceeds the limit or is cut short")
        elif encoding == "gzip":
            d = zlib.decompressobj(47)
            out = d.decompress(data, limit or 0)
            if limit is not None and d.unconsumed_tail:
                raise CompressionError("decompressed body exceeds the limit")
            out += d.flush()
        elif encoding == "identity":
            out = data
        else:
            raise CompressionError(f"unsupported content coding {encoding!r}")
    except (brotli.error, zlib.error) as e:
        raise CompressionError(str(e)) from e
    if limit is not None and len(out) > limit:
        raise CompressionError("decompressed body exceeds the limit")
    return out
