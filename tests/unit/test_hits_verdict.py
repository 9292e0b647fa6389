"""edge.hits.Hits._verdict: the fast path's verdict on a revalidation, judged at once,
remembered or evaluated in full, is always conditional.evaluate_validators'."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import conditional
from edge.cache_policy import CacheRequest, make_entry
from edge.hits import Hits
from edge.store import Store

LAST = "Tue, 01 Dec 2026 10:00:00 GMT"
STORED = [
    [("ETag", '"v1"'), ("Last-Modified", LAST)],
    [("ETag", 'W/"v1"')],
    [("ETag", "v1")],
    [("ETag", '"a,b"')],
    [("ETag", '""')],
    [("Last-Modified", "not a date")],
    [],
]
ASKED = [
    *(("if-none-match", v) for v in ['"v1"', 'W/"v1"', "v1", '"v1", "v2"', '"a,b"', '"a']),
    *(("if-none-match", v) for v in ['""', "*", '"V1"', '"v1" ']),
    *(("if-modified-since", v) for v in [LAST, " " + LAST, "Mon, 30 Nov 2026 10:00:00 GMT"]),
    *(("if-modified-since", v) for v in ["Sat, 02 Jan 2027 00:00:00 GMT", "not a date", ""]),
]


@pytest.mark.parametrize("stored", STORED)
def test_a_verdict_is_evaluate_validators(tmp_path: Path, stored: list[tuple[str, str]]) -> None:
    request = CacheRequest("GET", "http", "h.test", "/v")
    at = 1_796_000_000.0  # Dec 2026, after LAST: the Date stored when there is no Last-Modified
    entry = make_entry(
        request, 200, "OK", [("Cache-Control", "max-age=60"), *stored],
        request_time=at, response_time=at, body_length=0, sha256="0" * 64, now=at,
    )  # fmt: skip
    validators = conditional.stored_validators(entry.headers, entry.response_time)
    with Store(tmp_path) as store:
        hits = Hits(store, lambda: at)
        for condition in ASKED:
            conditions = (condition,)
            full = conditional.evaluate_validators("GET", conditions, *validators)
            for _ in range(2):  # judged, then as remembered (or at once again)
                assert hits._verdict(entry, conditions, validators) == full, (stored, condition)
