"""The demo origin's content: a valid PNG and SVG drawn in code, the same bytes every time."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
import zlib

from edge.demo_origin import LARGE_SIZE, png, site


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        pos += 12 + length
    return out


def test_png_is_a_valid_rgb_image() -> None:
    chunks = _chunks(png(5, 3, lambda x, y: (x, y, 7)))
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (5, 3, 8, 2, 0, 0, 0)
    rows = zlib.decompress(chunks[1][1])
    assert len(rows) == 3 * (1 + 5 * 3)
    assert rows[1 + 5 * 3 + 1 : 1 + 5 * 3 + 4] == bytes((0, 1, 7))  # pixel (0, 1)


def test_the_site_is_deterministic_and_complete() -> None:
    pages = site()
    assert pages == site()
    assert len(pages["/large.bin"].body) == LARGE_SIZE
    _chunks(pages["/badge.png"].body)
    assert ET.fromstring(pages["/logo.svg"].body).tag == "{http://www.w3.org/2000/svg}svg"
    html = pages["/"].body.decode()
    linked = set(re.findall(r'(?:href|src)="(/[^"]*)"', html))
    assert set(pages) - {"/"} <= linked
    assert {"/api/time", "/api/random", "/api/me"} <= linked
    assert all(page.surrogate_key for page in pages.values())
    assert len({page.etag for page in pages.values()}) == len(pages)
