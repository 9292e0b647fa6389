"""Cache-Control directive parsing and header access (edge.cache_control)."""

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cache_control import (
    DELTA_SECONDS_MAX,
    Fields,
    as_fields,
    cache_control,
    field_value,
    field_values,
    list_elements,
    parse_delta_seconds,
    parse_directives,
    qvalue,
    split_list,
    unquote,
)


def test_qvalue() -> None:
    assert qvalue("") == 1.0
    assert qvalue(" level=1; Q=0.5") == 0.5
    assert qvalue("q=0") == 0.0
    for bad in ("q=abc", "q=1.5", "q=-1", "q=nan"):
        assert qvalue(bad) == 0.0


@given(st.floats(0, 1))
def test_qvalue_reads_any_weight(q: float) -> None:
    assert qvalue(f"q={q!r}") == q


def test_field_access_is_case_insensitive_and_keeps_lines() -> None:
    h = [("Cache-Control", "max-age=1"), ("X", "y"), ("cache-control", "public")]
    assert field_values(h, "CACHE-CONTROL") == ["max-age=1", "public"]
    assert field_value(h, "cache-control") == "max-age=1, public"
    assert field_value(h, "missing") is None


def test_multidict_input() -> None:
    md = CIMultiDict([("Vary", "a"), ("vary", "B")])
    assert field_values(md, "VARY") == ["a", "B"]
    assert list_elements(md, "vary") == ["a", "B"]


def test_split_list_respects_quotes_and_drops_empties() -> None:
    assert list(split_list('a, b="x, y" ,, c')) == ["a", 'b="x, y"', "c"]
    assert list(split_list(" , ")) == []


def test_unquote() -> None:
    assert unquote('"a\\"b"') == 'a"b'
    assert unquote("abc") is None
    assert unquote('"abc') is None


def test_delta_seconds() -> None:
    assert parse_delta_seconds("0") == 0
    assert parse_delta_seconds("3600") == 3600
    assert parse_delta_seconds("99999999999") == DELTA_SECONDS_MAX
    for bad in ("", "-1", "1.5", "abc", " 1", "\uff11", None):
        assert parse_delta_seconds(bad) is None


def test_basic_directives() -> None:
    d = parse_directives(["max-age=60, No-Store", 'private="set-cookie, x"'])
    assert "max-age" in d and "no-store" in d and "private" in d
    assert d.delta("max-age") == 60
    assert d.field_names("private") == ("set-cookie", "x")
    assert d.field_names("no-cache") is None


def test_quoted_max_age_is_accepted() -> None:
    assert parse_directives(['max-age="3600"']).delta("max-age") == 3600


def test_max_age_inside_quoted_extension_is_not_a_directive() -> None:
    d = parse_directives(['extension="max-age=3600", max-age=1'])
    assert d.delta("max-age") == 1
    d = parse_directives(['max-age=1, extension="max-age=3600"'])
    assert d.values("max-age") == ["1"]


def test_duplicates_first_wins() -> None:
    assert parse_directives(["max-age=1800, max-age=1"]).delta("max-age") == 1800
    assert parse_directives(["max-age=1", "max-age=1800"]).delta("max-age") == 1


def test_space_around_equals_is_malformed() -> None:
    for v in ("max-age =3600", "max-age= 3600"):
        d = parse_directives([v])
        assert "max-age" not in d
        assert d.malformed == ("max-age",)


def test_invalid_delta_reports_minus_one() -> None:
    assert parse_directives(["max-age=abc"]).delta("max-age") == -1
    assert parse_directives(["max-age"]).delta("max-age") == -1
    assert parse_directives(["public"]).delta("max-age") is None


def test_cache_control_of_headers() -> None:
    d = cache_control([("Cache-Control", "no-cache"), ("Pragma", "no-cache")])
    assert d.field_names("no-cache") == ()


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=10**12).map(str),
    st.text(alphabet="abc ,=;", max_size=10).map(lambda s: '"' + s + '"'),
)


@given(st.lists(st.tuples(_token, _value), max_size=8))
def test_roundtrip_of_well_formed_directives(pairs: list[tuple[str, str | None]]) -> None:
    text = ", ".join(n if v is None else f"{n}={v}" for n, v in pairs)
    d = parse_directives([text])
    assert d.malformed == ()
    expected = [(n, v if v is None or not v.startswith('"') else v[1:-1]) for n, v in pairs]
    assert list(d.items) == expected


@given(st.text(max_size=60))
def test_parser_never_raises_and_names_are_lowercase_tokens(text: str) -> None:
    d = parse_directives([text])
    for name, _ in d.items:
        assert name == name.lower()
        assert "," not in name and "=" not in name
    delta = d.delta("max-age")
    assert delta is None or -1 <= delta <= DELTA_SECONDS_MAX


_field_names = st.sampled_from(["Date", "date", "Age", "Vary", "ETag", "X-A", "x-a", "Via"])
_field_lines = st.lists(st.tuples(_field_names, st.text("ab ,=", max_size=6)), max_size=10)


@given(_field_lines, st.sets(st.sampled_from(["date", "age", "x-a", "vary"])))
def test_fields_answer_as_the_pairs_they_hold(
    pairs: list[tuple[str, str]], dropped: set[str]
) -> None:
    """Fields read by name (their index) as a scan of the same pairs reads, and so do the
    Fields that `without` and `plus` derive from them (their index derived, not rebuilt)."""
    plain = tuple(pairs)
    f = as_fields(plain)
    assert f == plain and as_fields(f) is f
    names = ["date", "AGE", "x-a", "vary", "etag", "via", "missing"]
    for name in names:
        assert field_values(f, name) == field_values(plain, name)
    less = f.without(dropped)
    kept = tuple(p for p in plain if p[0].lower() not in dropped)
    assert less == kept and type(less) is Fields
    more = less.plus("X-A", "z")
    for name in names:
        assert field_values(less, name) == field_values(kept, name)
        assert field_values(more, name) == field_values((*kept, ("X-A", "z")), name)
    # The index a derived Fields shares with its parent is never modified through it.
    assert field_values(f, "x-a") == field_values(plain, "x-a")


def test_long_values_are_parsed_alike_but_not_remembered() -> None:
    from edge.cache_control import REMEMBERED_MAX, _parse_directives

    long_value = "max-age=60, " + ", ".join(f"ext{i}" for i in range(200))
    assert len(long_value) > REMEMBERED_MAX

    def asked() -> int:
        info = _parse_directives.cache_info()
        return info.hits + info.misses

    before = asked()
    d = parse_directives([long_value])
    assert d.delta("max-age") == 60 and "ext199" in d
    assert d == _parse_directives.__wrapped__((long_value,))
    assert asked() == before  # the memo never saw it
    assert parse_directives(["max-age=61, ext"]).delta("max-age") == 61
    assert asked() == before + 1
