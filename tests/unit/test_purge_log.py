"""edge.fill.PurgeLog: which fills on their way a purge made after their origin request
names, within its bounds of time and count."""

from __future__ import annotations

from edge import cache_policy as cp
from edge.fill import PURGE_MEMORY, PURGES_MAX, PurgeLog


def entry(path: str, asked: float, tags: str = "") -> cp.CacheEntry:
    request = cp.CacheRequest("GET", "http", "h.test", path)
    fields = [("Cache-Control", "max-age=60")]
    if tags:
        fields.append(("Surrogate-Key", tags))
    return cp.make_entry(
        request, 200, "OK", fields, request_time=asked, response_time=asked + 1,
        body_length=0, sha256="0" * 64, now=asked + 1,
    )  # fmt: skip


def key(path: str) -> str:
    return cp.CacheRequest("GET", "http", "h.test", path).key


def test_a_purge_names_the_fills_asked_for_before_it_only() -> None:
    log = PurgeLog()
    log.add("url", key("/a"), at=100.0)
    log.add("prefix", key("/p/")[:-1], at=100.0)
    log.add("surrogate_key", "grp", at=100.0)
    assert log.refuses(entry("/a", 99.0))
    assert not log.refuses(entry("/a", 100.0))  # asked once the purge was made
    assert not log.refuses(entry("/b", 99.0))
    assert log.refuses(entry("/p/x", 99.0)) and not log.refuses(entry("/q/x", 99.0))
    assert log.refuses(entry("/t", 99.0, "one grp")) and not log.refuses(entry("/t", 99.0, "g"))


def test_its_bounds_forget_nothing_a_fill_on_its_way_needs() -> None:
    log = PurgeLog()
    for i in range(PURGES_MAX + 1):  # one too many: the first forgotten
        log.add("url", key(f"/{i}"), at=1000.0 + i)
    assert len(log._purges) == PURGES_MAX
    # The forgotten purge's fills, and every other fill asked for before it, are refused.
    assert log.refuses(entry("/0", 999.0)) and log.refuses(entry("/elsewhere", 999.0))
    assert not log.refuses(entry("/elsewhere", 1000.5))
    assert log.refuses(entry(f"/{PURGES_MAX}", 1000.5))
    # An hour on, no fill asked for then can be on its way: all of it is forgotten.
    later = 1000.0 + PURGES_MAX + PURGE_MEMORY + 1
    log.add("url", key("/new"), at=later)
    assert list(log._purges) == [(later, "url", key("/new"))]
    assert not log.refuses(entry("/elsewhere", 999.0))
