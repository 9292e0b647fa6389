"""The access log line is the JSON object json.dumps writes for the same fields."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.accesslog import AccessLog

TEXT = st.text(max_size=40)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    remote=st.none() | TEXT,
    host=TEXT,
    path=TEXT,
    status=st.integers(100, 599),
    sent=st.integers(0, 1 << 40),
    duration=st.floats(0, 1e6, allow_nan=False),
    cache=TEXT,
    origin=TEXT,
    agent=TEXT,
)
def test_line_is_what_json_dumps_writes(
    tmp_path_factory: pytest.TempPathFactory,
    remote: str | None,
    host: str,
    path: str,
    status: int,
    sent: int,
    duration: float,
    cache: str,
    origin: str,
    agent: str,
) -> None:
    target = tmp_path_factory.mktemp("log") / "access.log"
    log = AccessLog(str(target))
    log.write(
        remote=remote,
        method="GET",
        host=host,
        path=path,
        status=status,
        sent=sent,
        duration_ms=duration,
        cache=cache,
        origin=origin,
        user_agent=agent,
    )
    log.close()
    line = target.read_text(encoding="utf-8")
    assert line.endswith("\n") and line.count("\n") == 1
    doc = json.loads(line)
    expected = {
        "remote": remote,
        "method": "GET",
        "host": host,
        "path": path,
        "status": status,
        "bytes": sent,
        "duration_ms": duration,
        "cache": cache,
        "origin": origin,
        "user_agent": agent,
        "time": doc["time"],
    }
    assert line == json.dumps(expected, separators=(",", ":")) + "\n"
