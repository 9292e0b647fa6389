"""Vary handling (edge.vary)."""

from hypothesis import given
from hypothesis import strategies as st

from edge.vary import (
    ABSENT,
    matches,
    normalise,
    selecting_headers,
    variant_key,
    vary_fields,
)


def test_vary_fields() -> None:
    assert vary_fields([]) == ()
    assert vary_fields([("Vary", "Foo, bar"), ("vary", "FOO")]) == ("bar", "foo")
    assert vary_fields([("Vary", "Foo, *")]) is None


def test_star_never_matches() -> None:
    assert not matches(None, (), [])


def test_match_no_match_and_omission() -> None:
    fields = ("foo",)
    stored = selecting_headers(fields, [("Foo", "1")])
    assert matches(fields, stored, [("foo", "1")])
    assert not matches(fields, stored, [("Foo", "2")])
    assert not matches(fields, stored, [])
    omitted = selecting_headers(fields, [])
    assert omitted == (("foo", ABSENT),)
    assert matches(fields, omitted, [("Other", "x")])
    assert not matches(fields, omitted, [("Foo", "")])


def test_multiway_order_independent() -> None:
    fields = vary_fields([("Vary", "C, A, B")])
    assert fields is not None
    req = [("A", "1"), ("B", "2"), ("C", "3")]
    stored = selecting_headers(fields, req)
    assert matches(fields, stored, list(reversed(req)))
    assert not matches(fields, stored, [("A", "1"), ("B", "2"), ("C", "4")])


def test_normalise_combines_lines_and_whitespace() -> None:
    assert normalise("foo", ["1, 2"]) == normalise("foo", ["1", "2"]) == normalise("foo", ["1,2"])
    assert normalise("foo", [" 1 ,   2 "]) == "1,2"


def test_accept_language_normalisation() -> None:
    a = normalise("accept-language", ["en, de"])
    assert a == normalise("accept-language", ["de, en"])
    assert a == normalise("accept-language", ["eN, De"])
    assert a == normalise("accept-language", [" en ,   de"])
    assert normalise("accept-language", ["en;q=0.5, de"]) != a


def test_accept_language_drops_ranges_with_an_invalid_weight() -> None:
    # The same q-value rule as Accept-Encoding (edge.cache_control.qvalue).
    de = normalise("accept-language", ["de"])
    for bad in ("q=abc", "q=2", "q=0"):
        assert normalise("accept-language", [f"de, fr;{bad}"]) == de


def test_accept_encoding_normalises_to_negotiated_coding() -> None:
    assert normalise("accept-encoding", ["gzip, deflate, br"]) == "br"
    assert normalise("accept-encoding", ["gzip"]) == "gzip"
    assert normalise("accept-encoding", ["gzip;q=1, br;q=0.5"]) == "gzip"
    assert normalise("accept-encoding", ["identity"]) == "identity"
    assert normalise("accept-encoding", []) == ABSENT


def test_variant_key() -> None:
    assert variant_key(()) == ""
    a = variant_key((("foo", "1"),))
    assert a == variant_key((("foo", "1"),)) and a != variant_key((("foo", "2"),))
    assert len(a) == 32


@given(st.lists(st.text(alphabet="abc ,;=", max_size=8), max_size=3))
def test_a_request_matches_its_own_variant(values: list[str]) -> None:
    req = [("X", v) for v in values]
    stored = selecting_headers(("x",), req)
    assert matches(("x",), stored, req)
