"""Freshness lifetime, HTTP dates and Age (edge.freshness)."""

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import freshness as fr

T0 = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
DATE0 = "Thu, 01 Jan 2026 00:00:00 GMT"


def hdate(t: float) -> str:
    return fr.format_http_date(t)


def compute(headers: list[tuple[str, str]], status: int = 200, **kw: object) -> fr.Freshness:
    return fr.compute(status, headers, T0, T0, fr.Rules(**kw))  # type: ignore[arg-type]


# --- dates ---------------------------------------------------------------------------------


def test_date_field_needs_one_valid_line() -> None:
    assert fr.date_field([("Expires", DATE0)], "expires") == T0
    assert fr.date_field([("Expires", DATE0), ("Expires", DATE0)], "expires") is None
    assert fr.date_field([("Expires", "0")], "expires") is None
    assert fr.date_field([], "expires") is None
    assert fr.origin_date([("Date", DATE0)], T0 + 5) == T0
    assert fr.origin_date([("Date", "garbage")], T0 + 5) == T0 + 5


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 01 Jan 2026 00:00:00 GMT",
        "THU, 01 JAN 2026 00:00:00 gmt",
        "Thursday, 01-Jan-26 00:00:00 GMT",
        "Thu Jan  1 00:00:00 2026",
    ],
)
def test_http_date_forms(value: str) -> None:
    assert fr.parse_http_date(value, now=T0) == T0


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 01 Jan 2026 00:00:00 UTC",
        "Thu, 01 Jan 2026 00:00:00 AEST",
        "Thu, 01 Jan 26 00:00:00 GMT",
        "Thu 01 Jan 2026 00:00:00 GMT",
        "Thu, 01  Jan  2026 00:00:00 GMT",
        "Thu, 01-Jan-2026 00:00:00 GMT",
        "Thu, 01 Jan 2026 00.00.00 GMT",
        "Thu, 01 Jan 2026 0:00:00 GMT",
        "Thu, 31 Feb 2026 00:00:00 GMT",
        "0",
        "",
    ],
)
def test_invalid_http_dates(value: str) -> None:
    assert fr.parse_http_date(value) is None


def test_far_future_and_32bit_dates() -> None:
    assert fr.parse_http_date("Tue, 19 Jan 2038 03:14:08 GMT") == 2**31
    assert fr.parse_http_date("Sat, 20 Nov 2286 17:46:39 GMT") == 9999999999


def test_rfc850_two_digit_year_window() -> None:
    assert fr.parse_http_date("Thursday, 18-Aug-50 02:01:18 GMT", now=T0) == calendar.timegm(
        (2050, 8, 18, 2, 1, 18, 0, 0, 0)
    )
    assert fr.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=T0) == calendar.timegm(
        (1994, 11, 6, 8, 49, 37, 0, 0, 0)
    )


@given(st.integers(min_value=0, max_value=2**34))
def test_format_parse_roundtrip(t: int) -> None:
    assert fr.parse_http_date(fr.format_http_date(t)) == t


# --- Age -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], 0),
        (["abc"], 0),
        (["-7200"], 0),
        (["7200.0"], 0),
        (["7200, 0"], 7200),
        (["0, 7200"], 0),
        (["7200", "0"], 7200),
        (["0", "7200"], 0),
        (["7200;foo=bar"], 7200),
        (["99999999999"], fr.DELTA_SECONDS_MAX),
    ],
)
def test_age_header_parsing(lines: list[str], expected: int) -> None:
    assert fr.age_header([("Age", v) for v in lines]) == expected


def test_initial_age_uses_apparent_age_and_response_delay() -> None:
    # Date 10s before the response arrived, Age 3, 2s round trip: max(10, 3 + 2) = 10.
    h = [("Date", hdate(T0 - 10)), ("Age", "3")]
    assert fr.initial_age(h, T0 - 2, T0) == 10
    # Age dominates when the clocks agree.
    h = [("Date", hdate(T0)), ("Age", "30")]
    assert fr.initial_age(h, T0 - 2, T0) == 32
    # A Date in the future does not make the age negative.
    assert fr.initial_age([("Date", hdate(T0 + 100))], T0, T0) == 0


def test_current_age_adds_resident_time() -> None:
    assert fr.current_age(5.0, T0, T0 + 20) == 25.0
    assert fr.current_age(5.0, T0, T0 - 20) == 5.0  # clock went backwards


# --- lifetime ------------------------------------------------------------------------------


def test_s_maxage_beats_max_age_beats_expires() -> None:
    h = [
        ("Date", DATE0),
        ("Cache-Control", "max-age=100, s-maxage=200"),
        ("Expires", hdate(T0 + 300)),
    ]
    f = compute(h)
    assert f.lifetime == 200 and f.explicit and f.must_revalidate
    assert compute(h, shared=False).lifetime == 100
    h[1] = ("Cache-Control", "max-age=100")
    assert compute(h).lifetime == 100 and not compute(h).must_revalidate
    del h[1]
    assert compute(h).lifetime == 300


def test_expires_relative_to_date() -> None:
    h = [("Date", hdate(T0 - 50)), ("Expires", hdate(T0 + 50))]
    assert compute(h).lifetime == 100


def test_invalid_expires_is_stale() -> None:
    h = [("Date", DATE0), ("Expires", "0")]
    f = compute(h)
    assert f.lifetime == 0 and f.explicit
    # Two Expires lines: invalid, stale.
    h = [("Date", DATE0), ("Expires", hdate(T0 + 9)), ("Expires", hdate(T0 + 10))]
    assert compute(h).lifetime == 0


def test_invalid_max_age_is_stale_even_with_expires() -> None:
    h = [("Cache-Control", "max-age=abc"), ("Expires", hdate(T0 + 1000)), ("Date", DATE0)]
    assert compute(h).lifetime == 0


def test_heuristic_is_ten_percent_capped() -> None:
    h = [("Date", DATE0), ("Last-Modified", hdate(T0 - 1000))]
    f = compute(h)
    assert f.heuristic and not f.explicit and f.lifetime == pytest.approx(100)
    h = [("Date", DATE0), ("Last-Modified", hdate(T0 - 10_000_000))]
    assert compute(h).lifetime == 86400
    assert compute(h, heuristic_max=60.0).lifetime == 60


def test_heuristic_only_for_heuristic_statuses_or_public() -> None:
    h = [("Date", DATE0), ("Last-Modified", hdate(T0 - 1000))]
    assert compute(h, status=302).lifetime == 0
    assert compute([*h, ("Cache-Control", "public")], status=302).lifetime == pytest.approx(100)
    for status in (200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501):
        assert compute(h, status=status).heuristic


def test_no_freshness_without_information_unless_default_ttl() -> None:
    assert compute([("Date", DATE0)]).lifetime == 0
    assert compute([("Date", DATE0)], default_ttl=30.0).lifetime == 30


def test_directive_flags() -> None:
    f = compute([("Cache-Control", "max-age=5, no-cache, stale-while-revalidate=7")])
    assert f.no_cache and f.stale_while_revalidate == 7 and not f.must_revalidate
    f = compute([("Cache-Control", "max-age=5, proxy-revalidate, stale-if-error=9")])
    assert f.must_revalidate and f.stale_if_error == 9
    assert not compute([("Cache-Control", "proxy-revalidate")], shared=False).must_revalidate
    # A qualified no-cache does not force revalidation of the whole response.
    assert not compute([("Cache-Control", 'max-age=5, no-cache="x-foo"')]).no_cache


# --- CDN-Cache-Control (RFC 9213) -----------------------------------------------------------


def test_cdn_cache_control_replaces_cache_control_and_expires() -> None:
    h = [
        ("Date", DATE0),
        ("Cache-Control", "max-age=10"),
        ("CDN-Cache-Control", "max-age=1000"),
        ("Expires", hdate(T0 + 5)),
    ]
    f = compute(h)
    assert f.lifetime == 1000 and f.targeted
    h[2] = ("CDN-Cache-Control", "max-age=0")
    assert compute(h).lifetime == 0
    h[2] = ("CDN-Cache-Control", "no-cache")
    f = compute(h)
    assert f.no_cache and f.lifetime == 0  # Expires ignored too


def test_invalid_cdn_cache_control_is_ignored() -> None:
    for bad in ("max-age=10000, &&&&&", 'max-age="10000"', "max-age =10", "max-age= 10"):
        h = [("CDN-Cache-Control", bad), ("Cache-Control", "max-age=7")]
        f = compute(h)
        assert f.lifetime == 7 and not f.targeted, bad


def test_cdn_cache_control_case_and_extensions() -> None:
    assert compute([("CDN-Cache-Control", "MaX-aGe=50")]).lifetime == 50
    assert compute([("CDN-Cache-Control", "max-age=50, foo=bar;x=1")]).lifetime == 50
    assert compute([("CDN-Cache-Control", "max-age=99999999999")]).lifetime == 2**31


def test_targeted_fields_can_be_disabled() -> None:
    h = [("CDN-Cache-Control", "max-age=100"), ("Cache-Control", "max-age=5")]
    assert compute(h, targeted_fields=()).lifetime == 5
