"""edge.collector: survivors frozen out of the collector's passes, cycles still freed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from edge import collector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def process_gc() -> Iterator[None]:
    """The test process's collector as it was, afterwards."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        collector._tuned = False
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_a_frozen_cycle_survives_passes_until_the_full_pass(process_gc: None) -> None:
    alive = cycle()
    gc.freeze()
    gc.collect()
    assert alive() is not None  # frozen: no pass walks it
    assert collector.full_pass() >= 2
    assert alive() is None
    assert gc.get_freeze_count() > 0  # frozen again after the pass


def test_run_freezes_survivors_and_frees_cycles_on_its_full_passes(process_gc: None) -> None:
    collector.tune()
    assert gc.get_threshold()[0] == collector.YOUNG_EVERY

    now = [0.0]

    async def main() -> None:
        task = asyncio.create_task(
            collector.run(freeze_every=0.01, full_every=60.0, clock=lambda: now[0])
        )
        try:
            gc.unfreeze()
            alive = cycle()
            for _ in range(200):  # bounded: 4 s at most
                await asyncio.sleep(0.02)
                if gc.get_freeze_count() > 0:
                    break
            gc.collect()
            assert alive() is not None  # frozen by the schedule: passes skip it
            now[0] = 61.0  # the full pass is due
            for _ in range(200):
                if alive() is None:
                    break
                await asyncio.sleep(0.02)
            assert alive() is None  # freed by the full pass
            assert gc.get_freeze_count() > 0  # and the rest frozen again
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_run_leaves_a_process_that_did_not_tune_it_alone(process_gc: None) -> None:
    async def main() -> None:
        gc.unfreeze()
        await asyncio.wait_for(collector.run(freeze_every=0.01, full_every=0.01), 1.0)
        assert gc.get_freeze_count() == 0

    asyncio.run(main())
