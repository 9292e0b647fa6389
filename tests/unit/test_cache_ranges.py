"""Range requests served from a complete cached object (edge.ranges)."""

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.freshness import format_http_date
from edge.ranges import (
    Full,
    Multi,
    Partial,
    Span,
    Unsatisfiable,
    evaluate,
    multipart_body,
    parse_range,
    span,
)

T0 = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
STORED = [("ETag", '"s"'), ("Last-Modified", format_http_date(T0))]


def ev(value: str, length: int = 100, extra: list[tuple[str, str]] | None = None) -> object:
    return evaluate("GET", 200, [("Range", value), *(extra or [])], STORED, length)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-9", Partial(0, 9, 100)),
        ("bytes=90-", Partial(90, 99, 100)),
        ("bytes=-10", Partial(90, 99, 100)),
        ("bytes=-1000", Partial(0, 99, 100)),
        ("bytes=50-1000", Partial(50, 99, 100)),
        ("bytes=0-4, 5-9", Partial(0, 9, 100)),
        ("bytes=0-1, 10-11", Multi((Partial(0, 1, 100), Partial(10, 11, 100)))),
        ("bytes=100-", Unsatisfiable(100)),
        ("bytes=-0", Unsatisfiable(100)),
        ("bytes=5-1", Full()),
        ("items=0-1", Full()),
        ("bytes=abc", Full()),
        ("bytes=", Full()),
    ],
)
def test_range_table(value: str, expected: object) -> None:
    assert ev(value) == expected


def test_content_range_strings() -> None:
    assert Partial(0, 9, 100).content_range == "bytes 0-9/100"
    assert Partial(0, 9, 100).size == 10
    assert Unsatisfiable(100).content_range == "bytes */100"


def test_only_get_200_and_one_range_field() -> None:
    assert evaluate("HEAD", 200, [("Range", "bytes=0-1")], STORED, 10) == Full()
    assert evaluate("GET", 404, [("Range", "bytes=0-1")], STORED, 10) == Full()
    two = [("Range", "bytes=0-1"), ("Range", "bytes=2-3")]
    assert evaluate("GET", 200, two, STORED, 10) == Full()


def test_if_range() -> None:
    assert ev("bytes=0-1", extra=[("If-Range", '"s"')]) == Partial(0, 1, 100)
    assert ev("bytes=0-1", extra=[("If-Range", '"other"')]) == Full()
    assert ev("bytes=0-1", extra=[("If-Range", 'W/"s"')]) == Full()
    assert ev("bytes=0-1", extra=[("If-Range", format_http_date(T0))]) == Partial(0, 1, 100)
    assert ev("bytes=0-1", extra=[("If-Range", format_http_date(T0 - 1))]) == Full()


def test_too_many_ranges_gives_full() -> None:
    value = "bytes=" + ",".join(f"{i * 3}-{i * 3}" for i in range(20))
    assert ev(value) == Full()


def test_multipart_body() -> None:
    body = bytes(range(20))
    parts = (Partial(0, 1, 20), Partial(10, 11, 20))
    out = b"".join(multipart_body(body, parts, "application/octet-stream", "BND"))
    assert out.count(b"--BND\r\n") == 2 and out.endswith(b"--BND--\r\n")
    assert b"Content-Range: bytes 10-11/20\r\n\r\n\x0a\x0b" in out


@given(st.integers(0, 200), st.integers(0, 200), st.integers(1, 150))
def test_partials_always_inside_the_object(a: int, b: int, length: int) -> None:
    parts = parse_range(f"bytes={a}-{b}", length)
    if parts is None:
        assert b < a
        return
    for p in parts:
        assert 0 <= p.start <= p.end < length


def test_span_is_how_every_path_answers_a_decision() -> None:
    assert span(Partial(2, 5, 10), 200, 10) == Span(
        206, 2, 5, (("Content-Range", "bytes 2-5/10"), ("Content-Length", "4"))
    )
    assert span(Unsatisfiable(10), 200, 10) == Span(
        416, 0, None, (("Content-Range", "bytes */10"),)
    )
    assert span(Full(), 200, 10) == Span(200, 0, None, (("Content-Length", "10"),))
    assert span(Full(), 203, None) == Span(203)  # the response's own length stands
    multi = Multi((Partial(0, 1, 10), Partial(5, 6, 10)))
    assert span(multi, 200, 10) == Span(200, 0, None, (("Content-Length", "10"),))
