"""Compression negotiation, eligibility, streaming and header fix-ups (edge.compression)."""

import asyncio
import gzip
import os
from collections.abc import AsyncIterator

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.cache_control import field_values
from edge.compression import (
    Compressor,
    Options,
    add_vary,
    compress,
    compress_async,
    compress_chunks,
    compressed_headers,
    decompress,
    negotiate,
    should_compress,
    variant_coding,
)
from edge.errors import CompressionError

OPTS = Options()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("br;q=0.5, gzip", "gzip"),
        ("br;q=0, gzip;q=0", "identity"),
        ("*", "br"),
        ("*;q=0.5, gzip;q=0.8", "gzip"),
        ("*;q=0", None),
        ("*;q=0, identity", "identity"),
        ("identity;q=0", None),
        ("identity;q=0, gzip;q=0.1", "gzip"),
        ("identity, gzip;q=0.5", "identity"),
        ("deflate", "identity"),
        ("GZIP;Q=1", "gzip"),
        ("gzip;q=abc", "identity"),
        ("gzip;q=2", "identity"),
        ("br;q=0.001, identity;q=0.001", "br"),
    ],
)
def test_negotiation_table(header: str | None, expected: str | None) -> None:
    assert negotiate(header) == expected


def test_negotiate_respects_available() -> None:
    assert negotiate("br, gzip", available=("gzip",)) == "gzip"


def html(length: int | None = 1000, **extra: str) -> list[tuple[str, str]]:
    h = [("Content-Type", "text/html; charset=utf-8")]
    h += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return h


def test_should_compress_rules() -> None:
    assert should_compress(200, "GET", html(), 1000, OPTS)
    assert should_compress(200, "HEAD", html(), 1000, OPTS)
    assert should_compress(200, "GET", html(), None, OPTS)  # unknown length
    assert should_compress(404, "GET", html(), 1000, OPTS)
    assert not should_compress(200, "GET", html(), 10, OPTS)  # too small
    assert not should_compress(206, "GET", html(), 1000, OPTS)
    assert not should_compress(304, "GET", html(), 1000, OPTS)
    assert not should_compress(204, "GET", html(), 1000, OPTS)
    assert not should_compress(200, "POST", html(), 1000, OPTS)
    assert not should_compress(200, "GET", html(Content_Encoding="gzip"), 1000, OPTS)
    assert should_compress(200, "GET", html(Content_Encoding="identity"), 1000, OPTS)
    assert not should_compress(
        200, "GET", html(Cache_Control="max-age=1, no-transform"), 1000, OPTS
    )
    assert not should_compress(200, "GET", [("Content-Type", "image/png")], 1000, OPTS)
    assert not should_compress(200, "GET", [], 1000, OPTS)
    assert should_compress(
        200, "GET", [("Content-Type", "text/x-foo")], 1000, Options(types=("text/*",))
    )


def test_add_vary() -> None:
    assert field_values(add_vary([]), "vary") == ["Accept-Encoding"]
    assert field_values(add_vary([("Vary", "Accept")]), "vary") == ["Accept, Accept-Encoding"]
    assert field_values(add_vary([("vary", "accept-encoding")]), "vary") == ["accept-encoding"]
    assert field_values(add_vary([("Vary", "*")]), "vary") == ["*"]


def test_compressed_headers() -> None:
    h = [
        ("Content-Type", "text/html"),
        ("Content-Length", "1000"),
        ("ETag", '"abc"'),
        ("Accept-Ranges", "bytes"),
    ]
    out = compressed_headers(h, "br")
    assert field_values(out, "content-length") == []
    assert field_values(out, "content-encoding") == ["br"]
    assert field_values(out, "etag") == ['W/"abc"']
    assert field_values(out, "vary") == ["Accept-Encoding"]
    assert field_values(out, "accept-ranges") == []
    out = compressed_headers([("ETag", 'W/"x"')], "gzip", length=12)
    assert field_values(out, "etag") == ['W/"x"']
    assert field_values(out, "content-length") == ["12"]


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from(["br", "gzip"]))
def test_roundtrip(data: bytes, encoding: str) -> None:
    assert decompress(compress(data, encoding), encoding) == data


@pytest.mark.parametrize("encoding", ["br", "gzip"])
def test_streaming_matches_standard_decoders(encoding: str) -> None:
    data = b"".join(os.urandom(100).hex().encode() * 20 for _ in range(50))
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    out = b"".join(compress_chunks(chunks, Compressor(encoding)))
    assert len(out) < len(data)
    std = brotli.decompress(out) if encoding == "br" else gzip.decompress(out)
    assert std == data


def test_async_stream() -> None:
    async def source() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"hello world " * 100

    async def run() -> bytes:
        return b"".join([c async for c in compress_async(source(), Compressor("gzip"))])

    assert gzip.decompress(asyncio.run(run())) == b"hello world " * 1000


def test_no_double_compression() -> None:
    # A response the edge compressed carries Content-Encoding: it is never compressed again.
    h = compressed_headers(html(), "gzip")
    assert not should_compress(200, "GET", h, 1000, OPTS)


def test_flush_and_finish() -> None:
    c = Compressor("gzip")
    first = c.compress(b"abc") + c.flush()
    assert first
    rest = c.finish()
    assert c.finish() == b""
    assert gzip.decompress(first + rest) == b"abc"
    with pytest.raises(CompressionError):
        c.compress(b"more")


def test_errors() -> None:
    with pytest.raises(CompressionError):
        Compressor("zstd")
    with pytest.raises(CompressionError):
        decompress(b"not gzip", "gzip")
    with pytest.raises(CompressionError):
        decompress(compress(b"a" * 100000, "gzip"), "gzip", limit=1000)
    with pytest.raises(CompressionError):
        decompress(compress(b"a" * 100000, "br"), "br", limit=1000)


def test_variant_coding_groups_equivalent_requests() -> None:
    assert variant_coding("gzip, deflate, br") == variant_coding("br;q=1, gzip;q=0.5") == "br"
    assert variant_coding(None) == variant_coding("identity") == "identity"
    assert variant_coding("*;q=0") == "none"


def test_limited_decompress_accepts_small_bodies() -> None:
    for enc in ("br", "gzip"):
        assert decompress(compress(b"abc" * 10, enc), enc, limit=30) == b"abc" * 10
