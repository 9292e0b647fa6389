"""Process-tree helpers for the tests that check nothing outlives its parent (Linux /proc)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _children_by_parent() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None and fields[0] != "Z":
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def children(pid: int) -> set[int]:
    """The live child processes of `pid`."""
    return set(_children_by_parent().get(pid, []))


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, ...)."""
    by_parent = _children_by_parent()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def gone(pids: Iterable[int], *, tries: int = 400, step: float = 0.05) -> set[int]:
    """Poll (a bounded number of times) until none of `pids` runs; the ones still running."""
    left = set(pids)
    for _ in range(tries):
        left = {pid for pid in left if alive(pid)}
        if not left:
            break
        time.sleep(step)
    return left


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL what a failed test left running (processes the test started)."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
