"""edge.origin_wire: the sans-IO reader of origin responses and the request head."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.origin_wire import (
    END,
    MAX_HEAD,
    MAX_INTERIM,
    Event,
    Head,
    Interim,
    ResponseReader,
    WireError,
    encode_request,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def read(data: bytes, method: str = "GET", pieces: int = 1) -> tuple[list[Event], ResponseReader]:
    reader = ResponseReader(method)
    events: list[Event] = []
    size = max(1, len(data) // pieces)
    for at in range(0, len(data), size):
        events += reader.feed(data[at : at + size])
    return events, reader


def body_of(events: list[Event]) -> bytes:
    return b"".join(e for e in events if isinstance(e, bytes))


def test_a_content_length_body_in_one_segment() -> None:
    events, reader = read(OK)
    fields = (("Content-Length", "5"), ("Cache-Control", "max-age=60"))
    assert events[0] == Head(200, "OK", fields)
    assert body_of(events) == b"hello" and events[-1] is END
    assert reader.done and reader.keep_alive and reader.leftover == 0


def test_byte_by_byte_gives_the_same_response() -> None:
    for raw in (OK, CHUNKED):
        whole, _ = read(raw)
        split, reader = read(raw, pieces=len(raw))
        assert split[0] == whole[0] and body_of(split) == body_of(whole) and split[-1] is END
        assert reader.done


def test_a_chunked_body_drops_extensions_and_trailers() -> None:
    events, reader = read(CHUNKED)
    assert body_of(events) == b"hello, world" and events[-1] is END
    assert reader.keep_alive and reader.leftover == 0


def test_a_body_delimited_by_the_close() -> None:
    reader = ResponseReader("GET")
    events = reader.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    events += reader.feed(b" bytes")
    assert END not in events and not reader.keep_alive
    assert reader.finish() == [END]
    assert body_of(events) == b"some bytes"


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        (OK, "HEAD"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "GET"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", "GET"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "GET"),
    ],
)
def test_responses_without_a_body_end_at_their_head(raw: bytes, method: str) -> None:
    events, reader = read(raw, method)
    assert isinstance(events[0], Head) and events[1:] == [END] and reader.done


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 12\r\n\r\n", "HEAD"),
        (b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\nContent-Length: 10,\r\n\r\n', "GET"),
        (
            b"HTTP/1.1 103 Early Hints\r\nContent-Length: 1, 2\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "GET",
        ),
    ],
)
def test_the_content_length_of_a_response_without_a_body_frames_nothing(
    raw: bytes, method: str
) -> None:
    # Whatever its Content-Length says, such a response ends at its head (RFC 9112 §6.3).
    events, reader = read(raw, method)
    assert isinstance(events[-2], Head) and events[-1] is END and reader.done


def test_interim_heads_come_before_the_final_one() -> None:
    raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK
    events, _ = read(raw)
    assert events[0] == Interim(103, ((b"Link", b"</a.css>; rel=preload"),))
    assert isinstance(events[1], Head) and events[1].status == 200


def test_bytes_past_the_end_are_counted_as_leftover() -> None:
    events, reader = read(OK + b"HTTP/1.1 200 OK\r\n")
    assert events[-1] is END and reader.leftover == len(b"HTTP/1.1 200 OK\r\n")
    reader.feed(b"more")
    assert reader.leftover == len(b"HTTP/1.1 200 OK\r\n") + 4


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (OK, True),
        (OK.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive, Close\r\n\r\n", 1), False),
        (OK.replace(b"HTTP/1.1", b"HTTP/1.0"), False),
    ],
)
def test_keep_alive(raw: bytes, keep_alive: bool) -> None:
    _, reader = read(raw)
    assert reader.keep_alive is keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nno",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nContent-Length: 5\r\n\r\nhello",
        # digits to str.isdigit but not to RFC 9110 (superscripts, in latin-1)
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        # NEL and NBSP are white space to str.strip(), not to HTTP: not "chunked" alone
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, \xa0\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \x85, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xa0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ],
)
def test_malformed_responses_are_refused(raw: bytes) -> None:
    with pytest.raises(WireError):
        read(raw)


def test_a_head_over_the_limit_is_refused_before_it_ends() -> None:
    reader = ResponseReader("GET")
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(WireError, match="head over"):
        for _ in range(MAX_HEAD // 1000 + 2):
            reader.feed(b"X-Pad: " + b"p" * 991 + b"\r\n")


@pytest.mark.parametrize("cut", [10, len(OK) - 2])
def test_a_close_within_the_head_or_a_sized_body_is_an_error(cut: int) -> None:
    reader = ResponseReader("GET")
    reader.feed(OK[:cut])
    with pytest.raises(WireError, match="closed the connection"):
        reader.finish()


def test_request_heads_and_header_injection() -> None:
    wire = encode_request("GET", "/a?b=1", [("Host", "example.test"), ("Via", "1.1 e")])
    assert wire == b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nVia: 1.1 e\r\n\r\n"
    assert encode_request("GET", "/", [("X-Name", "Zoë")]).endswith("Zoë\r\n\r\n".encode())
    for bad in ("a\r\nX-Evil: 1", "a\nb", "a\x00b"):
        with pytest.raises(ValueError, match="injection"):
            encode_request("GET", "/", [("X-A", bad)])
    for method, target in (("GET", "/a HTTP/1.1\r\nX-Evil: 1\r\n"), ("GET", "/a\tb"), ("G T", "/")):
        with pytest.raises(ValueError, match="request line"):
            encode_request(method, target, [])


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=300),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=20),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=40),
    extra=st.binary(max_size=20),
)
def test_any_split_of_any_framing_reads_the_same(
    body: bytes, sizes: list[int], cuts: list[int], extra: bytes
) -> None:
    # The same body, sent with Content-Length or in chunks of any sizes, fed in segments
    # cut anywhere, reads back whole, and what follows the response counts as leftover.
    pieces, rest = [], body
    for size in sizes:
        if not rest:
            break
        pieces.append(rest[:size])
        rest = rest[size:]
    if rest:
        pieces.append(rest)
    chunks = [b"%x\r\n%s\r\n" % (len(c), c) for c in pieces]
    framings = [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n",
        # the same with bare LF line ends (the body's own bytes untouched)
        b"HTTP/1.1 200 OK\nContent-Length: %d\n\n%s" % (len(body), body),
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n"
        + b"".join(b"%x\n%s\n" % (len(c), c) for c in pieces)
        + b"0\n\n",
    ]
    for raw in framings:
        reader = ResponseReader("GET")
        events: list[Event] = []
        data, at, i = raw + extra, 0, 0
        while at < len(data):
            step = cuts[i % len(cuts)]
            events += reader.feed(data[at : at + step])
            at, i = at + step, i + 1
        assert isinstance(events[0], Head) and events[-1] is END
        assert body_of(events) == body
        assert reader.leftover == len(extra)


def test_more_interim_responses_than_allowed_are_refused() -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\n\r\n"
    events, _ = read(interim * MAX_INTERIM + OK)
    assert sum(isinstance(e, Interim) for e in events) == MAX_INTERIM and events[-1] is END
    with pytest.raises(WireError, match="interim"):
        read(interim * (MAX_INTERIM + 1) + OK)


def test_obs_text_and_tabs_in_values_are_kept() -> None:
    events, _ = read(
        b'HTTP/1.1 200 OK\r\nETag: "\xc3\xbc"\r\nX-T: a\tb\r\nContent-Length: 0\r\n\r\n'
    )
    assert events[0] == Head(
        200, "OK", (("ETag", '"\xc3\xbc"'), ("X-T", "a\tb"), ("Content-Length", "0"))
    )


def test_bare_lf_line_ends_are_read_as_line_ends() -> None:
    # RFC 9112 §2.2 lets a recipient take LF alone as a line end (aiohttp's parser did).
    for raw in (
        b"HTTP/1.1 200 OK\nContent-Length: 5\nX-A: b\n\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\nX-A: b\r\n\nhello",
        b"HTTP/1.1 200 OK\nContent-Length: 5\r\nX-A: b\n\r\nhello",
    ):
        for pieces in (1, len(raw)):
            events, reader = read(raw, pieces=pieces)
            assert events[0] == Head(200, "OK", (("Content-Length", "5"), ("X-A", "b")))
            assert body_of(events) == b"hello" and events[-1] is END and reader.leftover == 0


NAME = st.text("!#$%&'*+-.^_`|~0123456789AZaz", min_size=1, max_size=12)
VALUE = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127).strip(b" \t")
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(st.tuples(NAME, VALUE), max_size=12),
    lf=st.booleans(),
    pad=st.sampled_from([b"", b" ", b"\t ", b"  "]),
)
def test_fields_are_the_lines_as_latin_1_text(
    fields: list[tuple[str, bytes]], lf: bool, pad: bytes
) -> None:
    # Any field lines (obs-text included) come out in order, each name and value the
    # bytes sent, one character per byte, the value's surrounding blanks dropped; framing
    # names among them in any case frame the response.
    framing = {"content-length", "transfer-encoding", "connection"}
    fields = [(n, v) for n, v in fields if n.lower() not in framing]
    end = b"\n" if lf else b"\r\n"
    lines = [b"%s:%s%s%s" % (n.encode(), pad, v, pad) for n, v in fields]
    raw = end.join([b"HTTP/1.1 200 OK", *lines, b"cOnTeNt-LeNgTh: 3", b"", b"abc"])
    events, reader = read(raw)
    expected = (*((n, v.decode("latin-1")) for n, v in fields), ("cOnTeNt-LeNgTh", "3"))
    assert events[0] == Head(200, "OK", expected)
    assert body_of(events) == b"abc" and events[-1] is END and reader.keep_alive
