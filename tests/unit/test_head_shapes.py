"""edge.head_shapes against the full decisions it stands in for.

Differential: heads generated at random, each shape's decisions by position compared with
cache_policy's, compression's and headers' own on other heads of that shape (the same
names and steering values, every other value drawn again), for requests whose Vary fields
differ."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable

import pytest

from edge import cache_policy as cp
from edge.cache_control import Fields
from edge.config import CompressionConfig
from edge.head_shapes import Shape, ShapeMemo
from edge.headers import client_response_fields

NOW = 1_800_000_000.0
VIA = "edge-test"

Draw = Callable[[random.Random], str]


def _date(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(["garbage", "", "Sun, 06 Nov 1994 08:49:37 GMT, again"])
    if rng.random() < 0.3:  # the second the response arrived, as most origins say
        return email.utils.formatdate(NOW, usegmt=True)
    return email.utils.formatdate(NOW + rng.randint(-90_000, 5_000), usegmt=True)


def _token(rng: random.Random) -> str:
    return "".join(rng.choice("abcxyz019") for _ in range(rng.randint(1, 8)))


# Field names (in the spellings origins use) and how their values are drawn. Steering
# fields draw from short lists, as an origin repeats them; the others vary per response.
FIELDS: dict[str, Draw] = {
    "Cache-Control": lambda r: r.choice(
        [
            "max-age=60",
            "max-age=0",
            "public, max-age=600",
            "s-maxage=30, max-age=5",
            "no-cache",
            "no-store",
            "private",
            'private="X-Foo"',
            'no-cache="Set-Cookie, X-Foo"',
            'no-cache="date"',
            "must-revalidate, max-age=10",
            "max-age=abc",
            "stale-while-revalidate=30, stale-if-error=60, max-age=1",
            "must-understand, no-store",
            "no-transform, max-age=100",
            "",
        ]
    ),
    "cache-control": lambda r: r.choice(["max-age=5", "no-cache"]),
    "CDN-Cache-Control": lambda r: r.choice(["max-age=100", "no-store", "max-age=x", "private"]),
    "Vary": lambda r: r.choice(["Accept-Encoding", "*", "Accept-Language, X-Foo", "", "x-foo"]),
    "Connection": lambda r: r.choice(
        ["keep-alive", "close", "X-Foo", "keep-alive, X-Bar", "date", "Via, Surrogate-Key"]
    ),
    "Content-Type": lambda r: r.choice(
        ["application/octet-stream", "image/png", "text/html", "text/plain; charset=utf-8"]
    ),
    "Content-Encoding": lambda r: r.choice(["gzip", "identity", "br"]),
    "Transfer-Encoding": lambda r: r.choice(["chunked", "gzip, chunked", "gzip"]),
    "Content-Length": lambda r: r.choice([str(r.randint(0, 40_000)), "abc", " 12 ", "1, 1"]),
    "Date": _date,
    "Last-Modified": _date,
    "Expires": lambda r: r.choice([_date(r), "0", "-1"]),
    "Age": lambda r: r.choice([str(r.randint(0, 500)), "abc", "10, 20"]),
    "ETag": lambda r: f'"{_token(r)}"',
    "Set-Cookie": lambda r: f"id={_token(r)}",
    "Surrogate-Key": lambda r: " ".join(_token(r) for _ in range(r.randint(0, 3))),
    "Content-Range": lambda r: f"bytes 0-{r.randint(1, 9)}/10",
    "Via": lambda r: f"1.1 proxy-{_token(r)}",
    "Keep-Alive": lambda r: f"timeout={r.randint(1, 9)}",
    "Cache-Status": lambda r: f"other; hit; ttl={r.randint(1, 9)}",
    "X-Foo": _token,
    "X-Bar": _token,
    "X-Request-Id": _token,
    "Server": lambda r: r.choice(["nginx/1.22.1", "caf\xc3\xa9"]),  # UTF-8 bytes as latin-1
    "Accept-Ranges": lambda r: "bytes",
}
STATUSES = [200, 200, 200, 203, 204, 206, 301, 304, 404, 410, 500, 599]


def _head(rng: random.Random, names: list[str], steering: dict[int, str]) -> tuple:
    """A head of `names`, the lines at the positions in `steering` holding those values."""
    return tuple(
        (name, steering[i] if i in steering else FIELDS[name](rng)) for i, name in enumerate(names)
    )


def _request(rng: random.Random) -> cp.CacheRequest:
    pairs = [("Host", "example.com"), ("User-Agent", _token(rng))]
    if rng.random() < 0.7:
        pairs.append(("Accept-Encoding", rng.choice(["gzip", "br, gzip", "identity"])))
    if rng.random() < 0.5:
        pairs.append(("Accept-Language", rng.choice(["en", "de;q=0.5, en"])))
    if rng.random() < 0.5:
        pairs.append(("X-Foo", rng.choice(["1", "2"])))
    return cp.CacheRequest("GET", "http", "example.com", f"/{_token(rng)}", Fields(pairs))


def _check(shape: Shape, memo: ShapeMemo, request: cp.CacheRequest, status: int, pairs) -> None:
    """Every decision `shape` makes on `pairs` is the full decision's."""
    head = Fields(pairs)
    t_req, t_resp = NOW - 0.5, NOW
    verdict = cp.storability(
        request, status, head, memo.policy, request_time=t_req, response_time=t_resp
    )
    assert shape.storability(pairs, t_req, t_resp) == verdict
    assert shape.length(pairs) == cp.declared_length("GET", head)
    assert shape.writable == (cp.delimited(head) or cp.bodyless("GET", status))
    for known in (verdict.freshness, None):
        by_shape = shape.entry(
            request,
            "Fine",
            pairs,
            request_time=t_req,
            response_time=t_resp,
            body_length=7,
            sha256="a" * 64,
            now=NOW + 1,
            known=known,
        )
        full = cp.make_entry(
            request,
            status,
            "Fine",
            head,
            request_time=t_req,
            response_time=t_resp,
            body_length=7,
            sha256="a" * 64,
            now=NOW + 1,
            config=memo.policy,
            known=known,
        )
        assert by_shape == full
    for version in ((1, 1), (1, 0)):
        assert shape.sent(pairs, version) == client_response_fields(head, version=version, via=VIA)


POLICIES = [
    cp.PolicyConfig(),
    cp.PolicyConfig(store_set_cookie=True, default_ttl=30.0),
    cp.PolicyConfig(shared=False, targeted_fields=()),
]
COMPRESSIONS = [CompressionConfig(), CompressionConfig(enabled=False)]


@pytest.mark.parametrize("seed", range(6))
def test_decisions_by_position_are_the_full_decisions(seed: int) -> None:
    rng = random.Random(seed)
    learnt = 0
    for trial in range(400):
        memo = ShapeMemo(rng.choice(POLICIES), rng.choice(COMPRESSIONS), VIA)
        names = rng.sample(list(FIELDS), rng.randint(0, 9))
        if rng.random() < 0.3:  # a name twice, its lines apart
            names.insert(rng.randint(0, len(names)), rng.choice(list(FIELDS)))
        steering = {i: FIELDS[n](rng) for i, n in enumerate(names) if n.lower() in memo.steering}
        status = rng.choice(STATUSES)
        template = _head(rng, names, steering)
        request = _request(rng)
        assert memo.shape(request, status, template, NOW - 0.5, NOW) is None  # first sight
        shape = memo.shape(request, status, template, NOW - 0.5, NOW)
        if shape is None:
            continue
        learnt += 1
        for _ in range(5):
            other = _head(rng, names, steering)
            found = memo.shape(_request(rng), status, other, NOW - 0.5, NOW)
            assert found is shape, (trial, names)
            _check(shape, memo, _request(rng), status, other)
    # Nearly every shape is learnt: all but those compressed (and any whose check failed).
    assert learnt > 350


def test_a_head_of_other_steering_values_is_another_shape() -> None:
    memo = ShapeMemo(cp.PolicyConfig(), CompressionConfig(), VIA)
    request = _request(random.Random(1))

    def learnt(cc: str, etag: str) -> Shape | None:
        head = (("Cache-Control", cc), ("ETag", etag), ("Content-Length", "10"))
        memo.shape(request, 200, head, NOW, NOW)
        return memo.shape(request, 200, head, NOW, NOW)

    stored = learnt("max-age=60", '"a"')
    assert stored is not None and stored.refused is None
    refused = learnt("no-store", '"a"')
    assert refused is not None and refused.refused == cp.Storability(False, "no-store")
    assert learnt("max-age=60", '"b"') is stored  # an ETag is no steering value


def test_requests_the_response_alone_cannot_decide_are_decided_in_full() -> None:
    memo = ShapeMemo(cp.PolicyConfig(), CompressionConfig(), VIA)
    head = (("Cache-Control", "max-age=60"), ("Content-Length", "10"))
    plain = _request(random.Random(2))
    memo.shape(plain, 200, head, NOW, NOW)
    assert memo.shape(plain, 200, head, NOW, NOW) is not None
    for extra in (("Authorization", "Basic eA=="), ("Cache-Control", "no-store")):
        asking = cp.CacheRequest("GET", "http", "e.com", "/", Fields((extra,)))
        assert memo.shape(asking, 200, head, NOW, NOW) is None
    head_request = cp.CacheRequest("HEAD", "http", "e.com", "/", Fields(()))
    assert memo.shape(head_request, 200, head, NOW, NOW) is None
    # A response the edge compresses negotiates with the request: never a Shape.
    html = (("Content-Type", "text/html"), ("Content-Length", "4000"))
    memo.shape(plain, 200, html, NOW, NOW)
    assert memo.shape(plain, 200, html, NOW, NOW) is None


@pytest.mark.parametrize(
    "left_out", [("Cache-Control", 'max-age=60, private="Date"'), ("Connection", "Date")]
)
def test_a_date_left_out_is_the_edge_s_own_whatever_the_head_learnt_on(left_out) -> None:
    # The origin's Date kept out of the cache: the entry gets a Date of the edge's own and
    # its freshness from that. Learnt on a head whose Date is that very second, the shape
    # must not take the head's freshness for the stored one on a head with another Date.
    memo = ShapeMemo(cp.PolicyConfig(), CompressionConfig(enabled=False), VIA)
    request = _request(random.Random(3))
    extra = [("Cache-Control", "max-age=60")] if left_out[0] == "Connection" else []

    def head(date: float) -> tuple:
        when = email.utils.formatdate(date, usegmt=True)
        return (*extra, left_out, ("Date", when), ("Content-Length", "5"))

    memo.shape(request, 200, head(NOW), NOW, NOW)
    shape = memo.shape(request, 200, head(NOW), NOW, NOW)
    assert shape is not None
    other = head(NOW - 30)
    assert memo.shape(request, 200, other, NOW, NOW) is shape
    _check(shape, memo, request, 200, other)


def test_heads_too_long_to_remember_are_decided_in_full() -> None:
    memo = ShapeMemo(cp.PolicyConfig(), CompressionConfig(), VIA)
    request = _request(random.Random(4))
    long_value = (("Cache-Control", "max-age=60, " + "x" * 3000), ("Content-Length", "5"))
    long_names = tuple((f"X-{'n' * 60}-{i}", "v") for i in range(40))
    many_lines = tuple((f"X-{i}", "v") for i in range(65))
    for head in (long_value, long_names, many_lines):
        for _ in range(3):
            assert memo.shape(request, 200, head, NOW, NOW) is None
    short = (("Cache-Control", "max-age=60"), ("Content-Length", "5"))
    memo.shape(request, 200, short, NOW, NOW)
    assert memo.shape(request, 200, short, NOW, NOW) is not None
