"""The access log line is the JSON object json.dumps writes for the same fields, its two
times with three decimals (as nginx's $request_time and $msec)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.accesslog import AccessLog
from edge.app import _every

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
    before = time.time()
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
    after = time.time()
    log.close()
    line = target.read_text(encoding="utf-8")
    assert line.endswith("\n") and line.count("\n") == 1
    stamp = re.fullmatch(r'.*,"time":(\d+\.\d{3})}\n', line, re.S)
    assert stamp is not None, line
    assert before - 0.001 <= float(stamp[1]) <= after + 0.001
    expected = {
        "remote": remote,
        "method": "GET",
        "host": host,
        "path": path,
        "status": status,
        "bytes": sent,
        "duration_ms": "@D@",
        "cache": cache,
        "origin": origin,
        "user_agent": agent,
        "time": "@T@",
    }
    text = json.dumps(expected, separators=(",", ":")) + "\n"
    text = text.replace('"duration_ms":"@D@"', f'"duration_ms":{duration:.3f}', 1)
    text = text.replace('"time":"@T@"', f'"time":{stamp[1]}', 1)
    assert line == text
    doc = json.loads(line)
    assert abs(doc["duration_ms"] - duration) <= 0.0005 + duration * 1e-15


async def test_a_failing_flush_is_logged_once_and_flushing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The application's flusher (edge.app._every) outlives a full disk: /dev/full refuses
    # every write with ENOSPC; once writes work again, it says so and keeps flushing.
    log = AccessLog("/dev/full")
    calls = []

    def flush() -> None:
        calls.append(1)
        if len(calls) <= 5:
            log.flush()

    log.write(
        remote=None, method="GET", host="h", path="/", status=200, sent=0,
        duration_ms=0.0, cache="hit", origin="", user_agent="",
    )  # fmt: skip
    task = asyncio.create_task(_every(0.01, flush, "access log flush"))
    try:
        for _ in range(500):
            if len(calls) >= 8:
                break
            await asyncio.sleep(0.01)
        assert len(calls) >= 8 and not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.close()  # its buffer cannot be written anywhere: said, not raised
    errors = [r for r in caplog.records if "access log flush failed" in r.getMessage()]
    assert len(errors) == 1 and "No space left" in caplog.text
    assert "access log /dev/full: the last lines could not be written" in caplog.text
    assert [r.getMessage() for r in caplog.records].count("access log flush works again") == 1
