"""JSON access log: one object per line, written after each response.

Writes go to a buffered stream that the edge's application flushes every half second (and
at close, edge.app), so logging does not cost a syscall per request on the hit path.
`reopen` serves log rotation (SIGUSR1, like nginx) and reloads that change
`log.access_log`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO

log = logging.getLogger("edge")

# json.dumps's own string encoder (C, ASCII-only output with \uXXXX escapes).
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _open(target: str) -> tuple[IO[str] | None, bool]:
    """The stream for a `log.access_log` value, and whether it is ours to close."""
    if not target:
        return None, False
    if target == "-":
        return sys.stdout, False
    return open(target, "a", encoding="utf-8", buffering=1 << 16), True


class AccessLog:
    def __init__(self, target: str) -> None:
        self.target = target
        self._stream, self._own = _open(target)
        self._msec, self._msec_text = -1, ""  # the last line's time, and as written

    def reopen(self, target: str | None = None) -> None:
        """Open `target` (by default the current one) again: after logrotate moved the file,
        lines go to a new file of that name. The old stream is flushed and closed first; if
        the new one cannot be opened, logging stays on the old stream and says why."""
        target = self.target if target is None else target
        try:
            stream, own = _open(target)
        except OSError as exc:
            log.error("access log %s cannot be opened, still writing the old one: %s", target, exc)
            return
        self.close()
        self.target, self._stream, self._own = target, stream, own

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(
        self,
        remote: str | None,
        method: str,
        host: str,
        path: str,
        status: int,
        sent: int,
        duration_ms: float,
        cache: str,
        origin: str,
        user_agent: str,
    ) -> None:
        """One line: the JSON object json.dumps would write for these fields (in this
        order, `sent` as "bytes", then "time"), built directly: on the hit path the
        generic encoder was most of what logging cost. `duration_ms` and `time` (Unix
        seconds) are written with three decimals, as nginx writes `$request_time` and
        `$msec`: a float's shortest repr, and rounding it first, cost 1.2-1.6 µs each
        here, most of a line's cost; `time` is formatted once a millisecond."""
        if self._stream is None:
            return
        msec = time.time_ns() // 1_000_000
        if msec != self._msec:
            self._msec, self._msec_text = msec, f"{msec // 1000}.{msec % 1000:03d}"
        self._stream.write(
            f'{{"remote":{"null" if remote is None else _quote(remote)},'
            f'"method":{_quote(method)},"host":{_quote(host)},"path":{_quote(path)},'
            f'"status":{int(status)},"bytes":{int(sent)},"duration_ms":{duration_ms:.3f},'
            f'"cache":{_quote(cache)},"origin":{_quote(origin)},'
            f'"user_agent":{_quote(user_agent)},"time":{self._msec_text}}}\n'
        )

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        """Flush and close (a stream that is not ours, stdout, is flushed only). Lines that
        cannot be written now (a full disk) are lost, and said to be; nothing is raised."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            log.error("access log %s: the last lines could not be written: %s", self.target, exc)
        if self._own:
            with contextlib.suppress(OSError, ValueError):
                stream.close()
