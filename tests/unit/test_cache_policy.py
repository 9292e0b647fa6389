"""The cache policy (edge.cache_policy): storability, lookup, staleness, invalidation,
Cache-Status, entries as JSON. Time is always passed in."""

import calendar
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import freshness as fr
from edge.cache_control import as_fields
from edge.cache_policy import (
    CacheEntry,
    CacheRequest,
    Fresh,
    Miss,
    PolicyConfig,
    Stale,
    after_fetch,
    age_value,
    cache_key,
    cache_status,
    decision_status,
    entries_json,
    freshen,
    invalidation_keys,
    lookup,
    make_entry,
    plain_fresh,
    stale_on_error_ok,
    storability,
)
from edge.errors import CacheMetadataError

T0 = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
SHA = "ab" * 32
DEFAULT = PolicyConfig()


def req(
    headers: list[tuple[str, str]] | None = None, method: str = "GET", target: str = "/p"
) -> CacheRequest:
    return CacheRequest(method, "https", "example.com", target, tuple(headers or ()))


def resp(cc: str | None = None, *extra: tuple[str, str], date: float = T0) -> list[tuple[str, str]]:
    h = [("Date", fr.format_http_date(date)), *extra]
    if cc is not None:
        h.append(("Cache-Control", cc))
    return h


def entry(
    headers: list[tuple[str, str]],
    request: CacheRequest | None = None,
    status: int = 200,
    at: float = T0,
    config: PolicyConfig = DEFAULT,
) -> CacheEntry:
    return make_entry(
        request or req(),
        status,
        "OK",
        headers,
        request_time=at,
        response_time=at,
        body_length=3,
        sha256=SHA,
        now=at,
        config=config,
    )


def storable(
    headers: list[tuple[str, str]],
    request: CacheRequest | None = None,
    status: int = 200,
    **kw: Any,
) -> str:
    s = storability(
        request or req(),
        status,
        headers,
        PolicyConfig(**kw),
        request_time=T0,
        response_time=T0,
    )
    return s.reason


# --- cache key -----------------------------------------------------------------------------


def test_cache_key_normalisation() -> None:
    assert cache_key("HTTPS", "Example.COM:443", "/a?b=1#frag") == "https://example.com/a?b=1"
    assert cache_key("http", "example.com:80", "") == "http://example.com/"
    assert cache_key("http", "example.com:8080", "/x") == "http://example.com:8080/x"
    assert cache_key("https", "[::1]:443", "/") == "https://[::1]/"
    assert req(method="HEAD").key == req().key


# --- storability ---------------------------------------------------------------------------


def test_storable_basics() -> None:
    assert storable(resp("max-age=60")) == "ok"
    assert storable(resp("max-age=60"), req(method="POST")) == "method"
    assert storable(resp("max-age=60"), req(method="HEAD")) == "method"
    assert storable(resp("max-age=60", ("Content-Range", "bytes 0-1/5")), status=200) == "partial"


@pytest.mark.parametrize("status", [100, 206, 304, 600])
def test_unstorable_statuses(status: int) -> None:
    assert storable(resp("max-age=60"), status=status) == "status"


@pytest.mark.parametrize("status", [200, 203, 204, 299, 302, 307, 400, 499, 500, 503, 599])
def test_any_final_status_with_explicit_freshness(status: int) -> None:
    assert storable(resp("max-age=60"), status=status) == "ok"


def test_must_understand() -> None:
    cc = "max-age=60, no-store, must-understand"
    assert storable(resp(cc), status=200) == "ok"
    assert storable(resp(cc), status=599) == "status"


def test_no_store_private() -> None:
    assert storable(resp("max-age=60, no-store")) == "no-store"
    assert storable(resp("max-age=60"), req([("Cache-Control", "no-store")])) == "request-no-store"
    assert storable(resp("max-age=60, private")) == "private"
    assert storable(resp("max-age=60, private"), shared=False) == "ok"
    # Qualified private: stored, with the named field removed.
    assert storable(resp('max-age=60, private="x-user"')) == "ok"
    e = entry(resp('max-age=60, private="x-user"', ("X-User", "bob")))
    assert all(k.lower() != "x-user" for k, _ in e.headers)


def test_authorization_rule() -> None:
    auth = req([("Authorization", "Basic eDp5")])
    assert storable(resp("max-age=60"), auth) == "authorization"
    for cc in ("public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"):
        assert storable(resp(cc), auth) == "ok", cc


def test_set_cookie() -> None:
    h = resp("max-age=60", ("Set-Cookie", "a=b"))
    assert storable(h) == "set-cookie"
    assert storable(h, store_set_cookie=True) == "ok"
    e = entry(h, config=PolicyConfig(store_set_cookie=True))
    assert ("Set-Cookie", "a=b") in e.headers
    # By default a 304 never slips a cookie into a stored entry.
    e = entry(resp("max-age=60"))
    new = freshen(e, [("Set-Cookie", "x=y")], request_time=T0, response_time=T0)
    assert all(k.lower() != "set-cookie" for k, _ in new.headers)


def test_vary_star_not_stored() -> None:
    assert storable(resp("max-age=60", ("Vary", "Accept, *"))) == "vary-star"


def test_freshness_needed() -> None:
    assert storable(resp(None)) == "no-freshness"
    assert storable(resp(None), default_ttl=10.0) == "ok"
    lm = ("Last-Modified", fr.format_http_date(T0 - 3600))
    assert storable(resp(None, lm)) == "ok"  # heuristic
    assert storable(resp(None, lm), status=302) == "no-freshness"
    # max-age=0 / no-cache with a validator: stored, to be revalidated.
    assert storable(resp("max-age=0", ("ETag", '"v"'))) == "ok"
    assert storable(resp("no-cache", ("ETag", '"v"'))) == "ok"
    assert storable(resp("max-age=0")) == "no-freshness"
    assert storable(resp("no-cache")) == "no-freshness"


def test_cdn_no_store_and_override() -> None:
    assert storable(resp("max-age=60", ("CDN-Cache-Control", "no-store"))) == "no-store"
    assert storable(resp("no-store", ("CDN-Cache-Control", "max-age=60"))) == "ok"
    assert storable(resp("max-age=60", ("CDN-Cache-Control", "private"))) == "private"


# --- entries -------------------------------------------------------------------------------


def test_make_entry_strips_hop_by_hop_and_adds_date() -> None:
    h = [
        ("Cache-Control", "max-age=60"),
        ("Connection", "x-hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Surrogate-Key", "a b  a"),
    ]
    e = entry(h)
    names = [k.lower() for k, _ in e.headers]
    assert "connection" not in names and "x-hop" not in names and "keep-alive" not in names
    assert "date" in names
    assert e.surrogate_keys == ("a", "b")
    assert e.key == "https://example.com/p"


def test_entry_json_roundtrip_and_validation() -> None:
    e = entry(resp("max-age=60", ("Vary", "Accept-Language")), req([("Accept-Language", "de")]))
    assert CacheEntry.from_json(e.to_json()) == e
    for bad in (b"[]", b"{", b'{"key": 1}', e.to_json().replace(SHA.encode(), b"zz")):
        with pytest.raises(CacheMetadataError):
            CacheEntry.from_json(bad)


def test_a_variant_list_is_the_json_of_its_entries_as_dataclasses_give_them() -> None:
    """entries_json (orjson) writes what the standard library would of `asdict`: every
    field, under its name, tuples as arrays, floats as they are."""
    e = entry(resp("max-age=60", ("Vary", "Accept-Language")), req([("Accept-Language", "de")]))
    other = dataclasses.replace(e, variant="x", request_time=1796275490.150211, stored_at=1e9)
    doc = entries_json([e, other])
    assert json.loads(doc) == json.loads(json.dumps([dataclasses.asdict(x) for x in (e, other)]))
    assert [CacheEntry.from_json(json.dumps(d).encode()) for d in json.loads(doc)] == [e, other]


def test_entry_json_checks_every_field() -> None:
    good = json.loads(entry(resp("max-age=60")).to_json())
    wrong = {"str": 1, "int": "1", "float": "1.0", "HeaderTuple": [["a"]], "tuple[str, ...]": [1]}
    for cls, doc in ((CacheEntry, good), (fr.Freshness, good["freshness"])):
        for f in dataclasses.fields(cls):
            if f.type not in wrong:
                continue
            saved = doc[f.name]
            doc[f.name] = wrong[str(f.type)]
            with pytest.raises(CacheMetadataError):
                CacheEntry.from_json(json.dumps(good).encode())
            del doc[f.name]
            with pytest.raises(CacheMetadataError):
                CacheEntry.from_json(json.dumps(good).encode())
            doc[f.name] = saved
    assert CacheEntry.from_json(json.dumps(good).encode()) == entry(resp("max-age=60"))
    for freshness in ([], None, "fresh"):
        with pytest.raises(CacheMetadataError):
            CacheEntry.from_json(json.dumps({**good, "freshness": freshness}).encode())
    good["body_length"] = -1
    with pytest.raises(CacheMetadataError):
        CacheEntry.from_json(json.dumps(good).encode())


# --- lookup --------------------------------------------------------------------------------


def test_miss_kinds() -> None:
    assert lookup(req(), [], T0) == Miss("uri-miss")
    e = entry(resp("max-age=60", ("Vary", "Accept-Language")), req([("Accept-Language", "de")]))
    assert lookup(req([("Accept-Language", "fr")]), [e], T0) == Miss("vary-miss")
    assert lookup(req([("Cache-Control", "only-if-cached")]), [], T0) == Miss("uri-miss", True)
    assert lookup(req(method="POST"), [e], T0) == Miss("request")


def test_fresh_then_stale() -> None:
    e = entry(resp("max-age=60"))
    d = lookup(req(), [e], T0 + 10)
    assert isinstance(d, Fresh) and d.age == 10 and d.ttl == 50
    d = lookup(req(method="HEAD"), [e], T0 + 10)
    assert isinstance(d, Fresh)
    d = lookup(req(), [e], T0 + 61)
    assert isinstance(d, Stale) and d.fwd == "stale" and not d.background


def test_age_header_counts() -> None:
    e = entry(resp("max-age=60", ("Age", "50")))
    assert isinstance(lookup(req(), [e], T0 + 9), Fresh)
    assert isinstance(lookup(req(), [e], T0 + 11), Stale)
    e = entry(resp("max-age=3600", ("Age", "2147483648")))
    assert isinstance(lookup(req(), [e], T0), Stale)


def test_newest_matching_variant_wins() -> None:
    old = entry(resp("max-age=60"), at=T0)
    new = entry(resp("max-age=600"), at=T0 + 100)
    d = lookup(req(), [new, old], T0 + 120)
    assert isinstance(d, Fresh) and d.entry is new


def test_response_no_cache_always_revalidates() -> None:
    e = entry(resp("max-age=600, no-cache", ("ETag", '"a"')))
    d = lookup(req(), [e], T0)
    assert isinstance(d, Stale) and d.fwd == "stale"


def test_request_directives() -> None:
    e = entry(resp("max-age=600"))
    d = lookup(req([("Cache-Control", "no-cache")]), [e], T0)
    assert isinstance(d, Stale) and d.fwd == "request"
    d = lookup(req([("Pragma", "no-cache")]), [e], T0)
    assert isinstance(d, Stale) and d.fwd == "request"
    assert isinstance(lookup(req([("Cache-Control", "max-age=0")]), [e], T0 + 1), Stale)
    assert isinstance(lookup(req([("Cache-Control", "max-age=5")]), [e], T0 + 4), Fresh)
    assert isinstance(lookup(req([("Cache-Control", "max-age=5")]), [e], T0 + 6), Stale)
    assert isinstance(lookup(req([("Cache-Control", "min-fresh=100")]), [e], T0 + 499), Fresh)
    assert isinstance(lookup(req([("Cache-Control", "min-fresh=100")]), [e], T0 + 501), Stale)
    # only-if-cached with something that would need the origin: 504, not a forward.
    d = lookup(req([("Cache-Control", "only-if-cached, no-cache")]), [e], T0)
    assert isinstance(d, Miss) and d.only_if_cached
    assert isinstance(lookup(req([("Cache-Control", "only-if-cached")]), [e], T0), Fresh)


def test_max_stale() -> None:
    e = entry(resp("max-age=60"))
    assert isinstance(lookup(req([("Cache-Control", "max-stale=100")]), [e], T0 + 150), Fresh)
    assert isinstance(lookup(req([("Cache-Control", "max-stale=100")]), [e], T0 + 170), Stale)
    d = lookup(req([("Cache-Control", "max-stale")]), [e], T0 + 10**6)
    assert isinstance(d, Fresh) and d.ttl < 0
    assert isinstance(lookup(req([("Cache-Control", "max-stale=x")]), [e], T0 + 61), Stale)
    for cc in ("max-age=60, must-revalidate", "max-age=60, proxy-revalidate", "s-maxage=60"):
        e2 = entry(resp(cc))
        d = lookup(req([("Cache-Control", "max-stale")]), [e2], T0 + 61)
        assert isinstance(d, Stale), cc


def test_stale_while_revalidate_window() -> None:
    e = entry(resp("max-age=60, stale-while-revalidate=30"))
    d = lookup(req(), [e], T0 + 80)
    assert isinstance(d, Stale) and d.background
    d = lookup(req(), [e], T0 + 95)
    assert isinstance(d, Stale) and not d.background
    e = entry(resp("max-age=60, stale-while-revalidate=30, must-revalidate"))
    d = lookup(req(), [e], T0 + 80)
    assert isinstance(d, Stale) and not d.background


def test_stale_on_error() -> None:
    e = entry(resp("max-age=60, stale-if-error=100"))
    assert stale_on_error_ok(e, (), T0 + 150, disconnected=False)
    assert not stale_on_error_ok(e, (), T0 + 170, disconnected=False)
    e = entry(resp("max-age=60"))
    assert not stale_on_error_ok(e, (), T0 + 70, disconnected=False)
    assert stale_on_error_ok(
        e, [("Cache-Control", "stale-if-error=20")], T0 + 70, disconnected=False
    )
    cfg = PolicyConfig(stale_when_disconnected=3600.0)
    assert not stale_on_error_ok(e, (), T0 + 70, disconnected=False, config=cfg)
    assert stale_on_error_ok(e, (), T0 + 70, disconnected=True, config=cfg)
    for cc in (
        "max-age=60, stale-if-error=100, must-revalidate",
        "s-maxage=60, stale-if-error=100",
    ):
        e = entry(resp(cc))
        assert not stale_on_error_ok(e, (), T0 + 70, disconnected=True, config=cfg), cc


def test_age_value_truncates_and_caps() -> None:
    assert age_value(17.9) == 17
    assert age_value(1e12) == 2147483648


# --- freshening ----------------------------------------------------------------------------


def test_freshen_from_304() -> None:
    e = entry(resp("max-age=1", ("ETag", '"a"'), ("X-Test", "A"), ("Content-Length", "3")))
    new = freshen(
        e,
        [
            ("Cache-Control", "max-age=100"),
            ("X-Test", "B"),
            ("Content-Length", "0"),
            ("ETag", '"a"'),
        ],
        request_time=T0 + 50,
        response_time=T0 + 50,
    )
    assert new.freshness.lifetime == 100
    hd = dict(new.headers)
    assert hd["X-Test"] == "B" and hd["Content-Length"] == "3"
    assert isinstance(lookup(req(), [new], T0 + 120), Fresh)  # Date added for the 304
    assert new.sha256 == e.sha256 and new.body_length == e.body_length


def test_freshen_keeps_weak_etag_of_compressed_variant() -> None:
    e = entry(resp("max-age=1", ("ETag", 'W/"a"'), ("Content-Encoding", "br")))
    new = freshen(e, [("ETag", '"a"')], request_time=T0, response_time=T0)
    assert dict(new.headers)["ETag"] == 'W/"a"'


# --- invalidation --------------------------------------------------------------------------


def test_invalidation_keys() -> None:
    post = req(method="POST", target="/p")
    h = [("Location", "/new"), ("Content-Location", "https://other.example/x")]
    assert invalidation_keys(post, 201, h) == (
        "https://example.com/p",
        "https://example.com/new",
    )
    assert invalidation_keys(post, 500, h) == ()
    assert invalidation_keys(req(), 200, h) == ()
    d = invalidation_keys(req(method="DELETE"), 204, [("Content-Location", "/p?x=1")])
    assert d == ("https://example.com/p", "https://example.com/p?x=1")


# --- Cache-Status --------------------------------------------------------------------------


def test_cache_status_values() -> None:
    assert cache_status(hit=True, ttl=12.7) == "GeoEdge; hit; ttl=12"
    assert cache_status(fwd="uri-miss", fwd_status=200, stored=True) == (
        "GeoEdge; fwd=uri-miss; fwd-status=200; stored"
    )
    assert cache_status(fwd="stale", detail='x"y') == 'GeoEdge; fwd=stale; detail="x\\"y"'
    e = entry(resp("max-age=60"))
    assert decision_status(lookup(req(), [e], T0 + 10)) == "GeoEdge; hit; ttl=50"
    assert decision_status(Miss("vary-miss")) == "GeoEdge; fwd=vary-miss"


# --- the safety property -------------------------------------------------------------------

_resp_cc = st.lists(
    st.sampled_from(
        [
            "max-age=0",
            "max-age=30",
            "max-age=300",
            "s-maxage=60",
            "must-revalidate",
            "proxy-revalidate",
            "no-cache",
            "stale-while-revalidate=60",
            "stale-if-error=60",
            "public",
        ]
    ),
    max_size=4,
)
_req_cc = st.lists(
    st.sampled_from(
        ["max-stale", "max-stale=20", "max-age=10", "min-fresh=10", "no-cache", "only-if-cached"]
    ),
    max_size=3,
)


@given(_resp_cc, _req_cc, st.integers(min_value=0, max_value=1000), st.integers(0, 100))
def test_never_serves_stale_without_permission(
    rcc: list[str], qcc: list[str], elapsed: int, age: int
) -> None:
    h = resp(", ".join(rcc) if rcc else None, ("Age", str(age)), ("ETag", '"e"'))
    h.append(("Last-Modified", fr.format_http_date(T0 - 1000)))
    e = entry(h)
    request = req([("Cache-Control", ", ".join(qcc))] if qcc else [])
    d = lookup(request, [e], T0 + elapsed)
    f = e.freshness
    if isinstance(d, Fresh):
        assert not f.no_cache and "no-cache" not in qcc
        if d.ttl <= 0:
            assert not f.must_revalidate
            assert "max-stale" in qcc or ("max-stale=20" in qcc and -d.ttl <= 20)
    if isinstance(d, Stale) and d.background:
        assert not f.must_revalidate and not f.no_cache
        assert 0 <= -d.ttl <= f.stale_while_revalidate
    if "only-if-cached" in qcc:
        assert not isinstance(d, Stale)


_any_cc = st.lists(
    st.sampled_from(
        [
            "max-age=60",
            "s-maxage=60",
            "public",
            "private",
            "no-store",
            "no-cache",
            "must-revalidate",
            "must-understand",
        ]
    ),
    max_size=4,
)


@given(_any_cc, st.booleans(), st.booleans(), st.sampled_from([200, 404, 206, 304, 599]))
def test_storability_never_breaks_the_hard_rules(
    cc: list[str], auth: bool, cookie: bool, status: int
) -> None:
    h = resp(", ".join(cc) if cc else None, ("ETag", '"e"'))
    if cookie:
        h.append(("Set-Cookie", "s=1"))
    request = req([("Authorization", "Bearer x")] if auth else [])
    ok = storability(request, status, h, DEFAULT, request_time=T0, response_time=T0).storable
    if not ok:
        return
    assert status not in (206, 304)
    assert "private" not in cc and not cookie
    assert "no-store" not in cc or ("must-understand" in cc and status != 599)
    if auth:
        assert {"public", "s-maxage=60", "must-revalidate"} & set(cc)


@given(
    cc=st.sampled_from(
        [
            None,
            "max-age=60",
            "max-age=0",
            "no-cache",
            "s-maxage=5, max-age=100",
            "private",
            "max-age=60, stale-while-revalidate=30",
            "must-revalidate, max-age=10",
        ]
    ),
    vary=st.sampled_from([None, "Accept-Encoding", "*"]),
    later=st.floats(min_value=0, max_value=200),
    method=st.sampled_from(["GET", "HEAD"]),
)
def test_plain_fresh_is_lookups_decision(
    cc: str | None, vary: str | None, later: float, method: str
) -> None:
    # Issue 7, "one cache decision": the raw fast path, the full handler and lookup all
    # decide a plain hit with plain_fresh; it must be lookup's decision whenever it decides.
    extra = [("Last-Modified", fr.format_http_date(T0 - 3600))]
    if vary:
        extra.append(("Vary", vary))
    e = entry(resp(cc, *extra))
    request = req(method=method)
    pf = plain_fresh([e], T0 + later)
    decision = lookup(request, [e], T0 + later)
    if pf is not None:
        assert decision == pf
    elif not vary:
        assert not isinstance(decision, Fresh)


@pytest.mark.parametrize(
    ("kwargs", "outcome"),
    [
        ({"status": 304, "offered_variants": True}, "choose-variant"),
        ({"status": 304, "revalidating": True}, "freshen"),
        ({"status": 304, "revalidating": True, "offered_variants": True}, "freshen"),
        ({"status": 200, "revalidating": True, "method": "HEAD"}, "freshen-from-head"),
        ({"status": 200, "revalidating": True}, "stream"),
        ({"status": 503, "revalidating": True, "stale_if_error": True}, "serve-stale"),
        ({"status": 503, "revalidating": True}, "stream"),
        ({"status": 503, "stale_if_error": True}, "stream"),  # nothing stale to serve
        ({"status": 200, "ranged": True, "too_big": True}, "refetch-range"),
        ({"status": 206, "ranged": True, "too_big": True}, "stream"),
        ({"status": 200, "ranged": True}, "stream"),
        ({"status": 200}, "stream"),
        ({"status": 304}, "stream"),  # an unasked-for 304 is passed on
    ],
)
def test_after_fetch(kwargs: dict[str, Any], outcome: str) -> None:
    args: dict[str, Any] = {
        "method": "GET",
        "revalidating": False,
        "offered_variants": False,
        "stale_if_error": False,
        "ranged": False,
        "too_big": False,
        **kwargs,
    }
    assert after_fetch(**args) == outcome


FRESHNESS_LINES = st.lists(
    st.sampled_from(
        [
            ("Date", fr.format_http_date(T0 - 30)),
            ("Date", "not a date"),
            ("Age", "20"),
            ("Expires", fr.format_http_date(T0 + 600)),
            ("Last-Modified", fr.format_http_date(T0 - 86400)),
            ("Cache-Control", "max-age=60"),
            ("Cache-Control", "s-maxage=5, public"),
            ("Cache-Control", 'no-cache="Age"'),
            ("Cache-Control", 'private="Expires"'),
            ("CDN-Cache-Control", "max-age=900"),
            ("Connection", "Cache-Control"),
            ("Connection", "Age, Expires"),
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("ETag", '"v"'),
        ]
    ),
    max_size=6,
)


@given(
    lines=FRESHNESS_LINES,
    status=st.sampled_from([200, 203, 301, 404, 500]),
    delay=st.floats(min_value=0, max_value=3),
    fraction=st.floats(min_value=0, max_value=0.999),
    targeted=st.booleans(),
)
def test_make_entry_with_storabilitys_freshness_makes_the_same_entry(
    lines: list[tuple[str, str]], status: int, delay: float, fraction: float, targeted: bool
) -> None:
    """make_entry's `known` (the freshness storability computed) never changes the entry,
    whatever storing the fields drops (hop-by-hop, Connection-named, qualified no-cache or
    private) or adds (Date)."""
    config = PolicyConfig(targeted_fields=("cdn-cache-control",) if targeted else ())
    times = {"request_time": T0 + fraction, "response_time": T0 + fraction + delay}
    fields = as_fields(lines)
    decided = storability(req(), status, fields, config, **times)
    assert decided.freshness is not None or not decided.storable

    def made(known: fr.Freshness | None) -> CacheEntry:
        return make_entry(
            req(),
            status,
            "OK",
            fields,
            body_length=3,
            sha256=SHA,
            now=T0,
            config=config,
            known=known,
            **times,
        )

    assert made(decided.freshness) == made(None)
