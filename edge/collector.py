"""When the cycle collector runs in an edge process, so that its passes stay short.

The cache's index holds tens of thousands of long-lived objects (variant lists, entries,
their header tuples), and fills add to them all the time. Python's collector walks every
object of a generation on each of its passes; with the index in them, young passes of the
50,000 allocations between them took 20-40 ms and older passes 100-500 ms, all with the
event loop stopped: the edge's p99 on random disk hits and misses was these pauses.

So what survives a second is frozen out of collection (``gc.freeze``: O(1), the objects
move to the permanent generation, which passes skip), and passes walk only what was made
since: a young pass every 10,000 allocations, a few milliseconds at most. Reference
counting frees everything as before, frozen or not; only garbage in reference cycles
(which the serving paths make next to none of; error paths, tracebacks, do) would wait
forever, so every ``FULL_EVERY`` seconds everything is thawed and walked once (one pause
of a few hundred milliseconds with a large index, logged), then frozen again.

The collector belongs to the process: ``run`` schedules it only in a process whose start
``tune``d it (``edge serve`` and its workers), not in one that embeds the app (tests).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger("edge.collector")

YOUNG_EVERY: Final = 10_000  # allocations between young passes
FREEZE_EVERY: Final = 1.0  # seconds
FULL_EVERY: Final = 600.0  # seconds


_tuned = False


def tune() -> None:
    """At start-up: freeze what exists (modules, config), set the young threshold, and
    let ``run`` take over the schedule."""
    global _tuned
    gc.freeze()
    gc.set_threshold(YOUNG_EVERY, 10, 10)
    _tuned = True


def full_pass() -> int:
    """Thaw everything, collect all generations, freeze again; the objects collected."""
    gc.unfreeze()
    try:
        return gc.collect()
    finally:
        gc.freeze()


async def run(
    freeze_every: float = FREEZE_EVERY,
    full_every: float = FULL_EVERY,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Freeze every ``freeze_every`` seconds and make a full pass every ``full_every``,
    until cancelled; returns at once in a process not ``tune``d."""
    if not _tuned:
        return
    due = clock() + full_every
    while True:
        await asyncio.sleep(freeze_every)
        if clock() < due:
            gc.freeze()
            continue
        started = clock()
        collected = full_pass()
        log.info(
            "full cycle collection: %d objects freed in %.0f ms (%d objects frozen)",
            collected,
            (clock() - started) * 1000,
            gc.get_freeze_count(),
        )
        due = clock() + full_every
