"""The pure half of fleet purges (gslb.purge): requests, targets, retries, verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gslb.cli import _render_purge
from gslb.config import PurgeConfig, parse_config
from gslb.errors import PurgeError
from gslb.purge import (
    Attempt,
    Judgement,
    PurgeRequest,
    backoff,
    judge,
    parse_request,
    plan,
    report,
    result,
)
from tests.unit.test_config import MINIMAL


def test_requests_map_to_the_edge_admin_api() -> None:
    assert parse_request({"url": "http://www.example.test/a?b"}).edge_body() == {
        "url": "http://www.example.test/a?b"
    }
    assert parse_request({"prefix": "https://h/img/"}).edge_body() == {"prefix": "https://h/img/"}
    assert parse_request({"tag": "docs"}).edge_body() == {"surrogate_key": "docs"}
    assert parse_request({"tag": "docs"}).edge_body(wait=4.0) == {
        "surrogate_key": "docs",
        "wait": 4.0,
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "body must be a JSON object"),
        ({}, "exactly one of"),
        ({"url": "http://h/", "tag": "x"}, "exactly one of"),
        ({"path": "/a"}, "unknown field(s) path"),
        ({"url": 3}, '"url" must be a non-empty string'),
        ({"tag": " "}, '"tag" must be a non-empty string'),
        ({"url": "/a"}, "absolute http(s) URL"),
        ({"tag": "a b"}, "without spaces"),
        ({"prefix": "http://h/" + "a" * 9000}, "at most 8192"),
    ],
)
def test_bad_requests(body: Any, problem: str) -> None:
    with pytest.raises(PurgeError, match=problem.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_request(body)
    assert info.value.status == 400


def test_plan_uses_admin_urls_and_tokens(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("fleet-0123456789abcdef\n")
    text = '[purge]\ntoken_file = "t"\n' + MINIMAL.replace(
        'name = "fra"', 'name = "fra"\nstatus_url = "http://10.0.0.1:9090/__edge/status"'
    )
    fra, iad = plan(parse_config(text, "g.toml", base=tmp_path))
    assert (fra.url, fra.token) == ("http://10.0.0.1:9090/__edge/purge", "fleet-0123456789abcdef")
    assert iad.url is None and "no admin_url" in iad.problem
    assert result(iad, []).error == iad.problem and not result(iad, []).ok


def test_judgements() -> None:
    assert judge(Attempt(status=200, body={"purged": 1})) is Judgement.DONE
    for status in (400, 401, 404, 409):
        assert judge(Attempt(status=status)) is Judgement.GIVE_UP
    for attempt in (Attempt(status=503), Attempt(status=429), Attempt(error="refused")):
        assert judge(attempt) is Judgement.RETRY


@given(
    attempts=st.integers(1, 10),
    first=st.floats(0, 60, allow_nan=False),
    cap=st.floats(0, 600, allow_nan=False),
)
def test_backoff_is_bounded_and_grows(attempts: int, first: float, cap: float) -> None:
    cap = max(cap, first)
    settings = PurgeConfig(timeout=1.0, attempts=attempts, backoff=first, backoff_max=cap)
    delays = [backoff(settings, n) for n in range(1, attempts + 1)]
    assert delays[-1] is None  # no wait after the last attempt: the loop ends
    waits = [d for d in delays[:-1] if d is not None]
    assert len(waits) == attempts - 1
    assert all(0 <= d <= cap for d in waits)
    assert waits == sorted(waits)


def test_results_and_verdicts() -> None:
    text = MINIMAL.replace(
        'name = "fra"', 'name = "fra"\nstatus_url = "http://10.0.0.1:9090/__edge/status"'
    ).replace('name = "iad"', 'name = "iad"\nadmin_url = "http://10.0.0.2:9090"')
    fra, iad = plan(parse_config(text, "g.toml"))
    ok = result(fra, [Attempt(error="refused"), Attempt(status=200, body={"purged": 2})])
    assert (ok.ok, ok.attempts, ok.status, ok.purged, ok.error) == (True, 2, 200, 2, None)
    bad = result(iad, [Attempt(status=401, body={"error": "purging needs a token"})])
    assert (bad.ok, bad.attempts, bad.error) == (False, 1, "HTTP 401: purging needs a token")
    down = result(iad, [Attempt(error="refused")] * 3)
    assert (down.ok, down.attempts, down.status, down.error) == (False, 3, None, "refused")
    request = PurgeRequest("tag", "docs")
    assert report(request, [ok, ok])["verdict"] == "ok"
    doc = report(request, [ok, bad])
    assert (doc["verdict"], doc["edges_ok"], doc["edges_failed"]) == ("partial", 1, 1)
    assert doc["request"] == {"tag": "docs"} and doc["edges"][1]["edge"] == "iad"
    assert report(request, [bad, down])["verdict"] == "failed"
    assert report(request, [])["verdict"] == "failed"  # nothing purged
    # A 202: the edge took the purge and was still removing when it answered.
    going = result(fra, [Attempt(status=202, body={"purged": None, "removing": True})])
    assert (going.ok, going.purged, going.removing) == (True, None, True)
    assert not ok.removing and not bad.removing
    text = _render_purge(report(request, [ok, going]))
    assert "HTTP 200, 2 object(s) removed, 2 attempt(s)" in text
    assert "HTTP 202, accepted: still removing, 1 attempt(s)" in text
