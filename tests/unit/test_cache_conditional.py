"""Conditional requests and 304 handling (edge.conditional)."""

import calendar

from edge.cache_control import as_fields
from edge.conditional import (
    evaluate,
    merge_headers,
    normalise_etag,
    not_modified_headers,
    parse_etags,
    select_for_update,
    strip_hop_by_hop,
    strong_match,
    validators,
    weak_match,
)
from edge.freshness import format_http_date

T0 = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
LM = format_http_date(T0 - 100)


def test_parse_etags() -> None:
    assert parse_etags('"a", W/"b" ,"c,d"') == ['"a"', 'W/"b"', '"c,d"']
    assert parse_etags("*") is None
    assert parse_etags("") == []


def test_weak_comparison() -> None:
    assert weak_match('W/"a"', '"a"')
    assert not weak_match('"a"', '"b"')


def test_unquoted_etags_are_recovered_in_quoted_form() -> None:
    assert normalise_etag(" abc ") == '"abc"'
    assert normalise_etag("W/abc") == 'W/"abc"'
    assert normalise_etag('"abc"') == '"abc"'
    assert normalise_etag('W/"abc"') == 'W/"abc"'
    assert parse_etags('abc, W/def, "g"') == ['"abc"', 'W/"def"', '"g"']
    assert strong_match("abc", '"abc"') and strong_match('"abc"', "abc")
    assert not strong_match("W/abc", '"abc"')
    assert weak_match("W/abc", '"abc"')


def test_unquoted_etags_answer_conditional_requests() -> None:
    for stored_tag, asked in (('"abc"', "abc"), ("abc", '"abc"'), ("abc", "abc")):
        stored = [("ETag", stored_tag)]
        assert evaluate("GET", [("If-None-Match", asked)], stored, T0) == 304
        assert evaluate("GET", [("If-None-Match", '"other"')], stored, T0) is None


def test_validators_send_an_unquoted_stored_etag_verbatim() -> None:
    # The origin that made the tag compares it as it sent it.
    assert validators([[("ETag", "abc")], [("ETag", "W/def")]]) == (
        ("If-None-Match", "abc, W/def"),
    )


def test_validators() -> None:
    h1 = [("ETag", '"a"'), ("Last-Modified", LM)]
    h2 = [("ETag", 'W/"b"')]
    assert validators([h1, h2]) == (
        ("If-None-Match", '"a", W/"b"'),
        ("If-Modified-Since", LM),
    )
    assert validators([[("Last-Modified", "garbage")]]) == ()


def test_merge_headers_updates_all_but_content_length() -> None:
    stored = [("Content-Length", "36"), ("X-A", "1"), ("X-Keep", "k"), ("Content-Type", "a/b")]
    new = [
        ("Content-Length", "10"),
        ("X-A", "2"),
        ("Content-Type", "a/c"),
        ("Connection", "close"),
        ("Set-Cookie", "a=b"),
    ]
    merged = dict(merge_headers(stored, new))
    assert merged == {"Content-Length": "36", "X-A": "2", "X-Keep": "k", "Content-Type": "a/c"}


def test_merge_headers_keeps_the_stored_content_coding() -> None:
    stored = [("Content-Encoding", "br"), ("ETag", 'W/"e"')]
    for coding in (("Content-Encoding", "identity"), ("content-encoding", "gzip")):
        merged = merge_headers(stored, [coding, ("ETag", '"e"')])
        assert [v for k, v in merged if k.lower() == "content-encoding"] == ["br"]
    # Absent from the stored response, it is not added either.
    assert dict(merge_headers([("X-A", "1")], [("Content-Encoding", "gzip")])) == {"X-A": "1"}


def test_merge_headers_updates_set_cookie2_like_any_field() -> None:
    stored = [("Set-Cookie2", "a=b"), ("X-A", "1")]
    new = [("Set-Cookie2", "a=c"), ("Set-Cookie", "s=1")]
    assert dict(merge_headers(stored, new)) == {"Set-Cookie2": "a=c", "X-A": "1"}
    kept = dict(merge_headers(stored, new, keep_set_cookie=True))
    assert kept == {"Set-Cookie2": "a=c", "X-A": "1", "Set-Cookie": "s=1"}


def test_strip_hop_by_hop_honours_connection() -> None:
    h = [("Connection", "X-A, close"), ("X-A", "1"), ("TE", "trailers"), ("X-B", "2")]
    assert strip_hop_by_hop(h) == (("X-B", "2"),)


def test_select_for_update() -> None:
    cands = [(0, [("ETag", '"a"')]), (1, [("ETag", '"b"')]), (2, [("Last-Modified", LM)])]
    assert select_for_update(cands, [("ETag", '"b"')]) == [1]
    assert select_for_update(cands, [("Last-Modified", LM)]) == [2]
    assert select_for_update(cands, []) == []
    assert select_for_update(cands[:1], []) == [0]


def test_if_none_match() -> None:
    stored = [("ETag", '"v1"'), ("Last-Modified", LM)]
    assert evaluate("GET", [("If-None-Match", 'W/"v1"')], stored, T0) == 304
    assert evaluate("HEAD", [("If-None-Match", '"x", "v1"')], stored, T0) == 304
    assert evaluate("GET", [("If-None-Match", "*")], stored, T0) == 304
    assert evaluate("GET", [("If-None-Match", '"v2"')], stored, T0) is None
    # If-None-Match takes precedence over If-Modified-Since.
    req = [("If-None-Match", '"v2"'), ("If-Modified-Since", format_http_date(T0))]
    assert evaluate("GET", req, stored, T0) is None


def test_if_modified_since() -> None:
    stored = [("Last-Modified", LM)]
    assert evaluate("GET", [("If-Modified-Since", LM)], stored, T0) == 304
    assert evaluate("GET", [("If-Modified-Since", format_http_date(T0 - 200))], stored, T0) is None
    assert evaluate("GET", [("If-Modified-Since", "junk")], stored, T0) is None
    # Without Last-Modified the Date, then the time received, stand in.
    assert evaluate("GET", [("If-Modified-Since", LM)], [("Date", LM)], T0) == 304
    assert evaluate("GET", [("If-Modified-Since", LM)], [], T0) is None


def test_if_match_and_unmodified_since() -> None:
    stored = [("ETag", '"v1"'), ("Last-Modified", LM)]
    assert evaluate("GET", [("If-Match", '"v2"')], stored, T0) == 412
    assert evaluate("GET", [("If-Match", '"v1"')], stored, T0) is None
    assert evaluate("GET", [("If-Match", 'W/"v1"')], stored, T0) == 412
    ius = format_http_date(T0 - 500)
    assert evaluate("GET", [("If-Unmodified-Since", ius)], stored, T0) == 412


def test_not_modified_headers() -> None:
    stored = [
        ("ETag", '"a"'),
        ("Content-Length", "5"),
        ("Content-Type", "text/plain"),
        ("Cache-Control", "max-age=1"),
        ("Vary", "X"),
    ]
    assert not_modified_headers(stored) == (
        ("ETag", '"a"'),
        ("Cache-Control", "max-age=1"),
        ("Vary", "X"),
    )


def test_validators_offer_each_variant_tag_once() -> None:
    variants = [[("ETag", '"a"')], [("ETag", '"b"')], [("ETag", '"a"')], [("Vary", "X")]]
    assert validators(variants) == (("If-None-Match", '"a", "b"'),)


def test_select_for_update_among_variants_by_weak_and_strong_tags() -> None:
    cands = [(0, [("ETag", 'W/"a"')]), (1, [("ETag", '"a"')]), (2, [("ETag", '"b"')])]
    assert select_for_update(cands, [("ETag", 'W/"a"')]) == [0, 1]
    assert select_for_update(cands, [("ETag", '"a"')]) == [1]
    assert select_for_update(cands, [("ETag", '"c"')]) == []


def test_hop_by_hop_stripping_reads_fields_as_it_reads_pairs() -> None:
    """The Fields path (index, remembered answer) and the plain path agree."""
    cases = [
        (("Date", "x"), ("Connection", "keep-alive, X-A"), ("X-A", "1"), ("ETag", '"e"')),
        (("Date", "x"), ("ETag", '"e"')),
        (("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Age", "3")),
    ]
    for pairs in cases:
        plain = strip_hop_by_hop(pairs)
        head = as_fields(pairs)
        assert strip_hop_by_hop(head) == plain
        assert strip_hop_by_hop(head) == plain  # the remembered answer
        assert strip_hop_by_hop(plain) == plain
