"""bench/edgestore.py writes its million objects straight into the store's tables (a
minute, not a million fills): the store must read them as its own, or the bench measures
something the edge never holds."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

from edge.store import Store

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_store_bench_builds_a_cache_the_store_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the bench's own imports (`from _common ...`)
    edgestore = importlib.import_module("edgestore")
    edgestore.build(tmp_path, 8080, 300, tags=10)
    with Store(tmp_path) as s:
        (entry,) = s.variants("http://127.0.0.1:8080/o/7/1k")
        assert entry.surrogate_keys == ("g7",)
        assert s.get_body(entry) == hashlib.sha256(b"7").digest() * 32
        # 12 and 120-129; then the tag's 30 objects but 127, gone with the prefix.
        assert s.purge_prefix("http://127.0.0.1:8080/o/12") == 11
        assert s.purge_tag("g7") == 29
        assert s.variants("http://127.0.0.1:8080/o/7/1k") == ()
        assert s.variants("http://127.0.0.1:8080/o/8/1k")
