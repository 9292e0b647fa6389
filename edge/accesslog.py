"""JSON access log: one object per line, written after each response.

Writes go to a buffered stream that is flushed at most every `flush_interval` seconds (and at
close), so logging does not cost a syscall per request on the hit path.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any


class AccessLog:
    def __init__(self, target: str, flush_interval: float = 0.5) -> None:
        self._own = False
        self._stream: IO[str] | None
        if not target:
            self._stream = None
        elif target == "-":
            self._stream = sys.stdout
        else:
            self._stream = open(target, "a", encoding="utf-8", buffering=1 << 16)
            self._own = True
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, **fields: Any) -> None:
        if self._stream is None:
            return
        fields.setdefault("time", round(time.time(), 3))
        self._stream.write(json.dumps(fields, separators=(",", ":")) + "\n")
        now = time.monotonic()
        if now - self._last_flush >= self._flush_interval:
            self._last_flush = now
            self._stream.flush()

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            if self._own:
                self._stream.close()
        self._stream = None
