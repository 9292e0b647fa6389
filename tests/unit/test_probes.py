"""edge.probes.ScheduledProbes' schedule against its own shutdown: no probe starts once it
is shut down, though APScheduler's shutdown takes effect a turn of the loop later."""

from __future__ import annotations

import asyncio

from edge.config import from_mapping
from edge.origins import Origin, OriginPool
from edge.probes import ScheduledProbes


class Hangs(ScheduledProbes):
    """Probes that never end (until cancelled), counted as they start."""

    started = 0

    async def _check(self, origin: Origin) -> tuple[bool, int | None, float]:
        self.started += 1
        await asyncio.sleep(100)
        return True, 200, 0.0


def pool(interval: float) -> OriginPool:
    config = from_mapping(
        {
            "server": {"listen": ["127.0.0.1:0"]},
            "pool": {
                "origins": ["http://127.0.0.1:1"],
                "probe": {"interval": interval, "jitter": 0.0},
            },
        },
        "<test>",
    )
    return OriginPool(config.pool)


def test_no_probe_starts_once_shut_down() -> None:
    async def main() -> Hangs:
        probes = Hangs(pool(interval=3600))
        probes.start()
        await asyncio.sleep(0)  # the scheduler's first wakeup: the first run handed over
        probes.shutdown()
        await asyncio.sleep(0.1)
        return probes

    probes = asyncio.run(main())
    assert probes.started == 0 and probes._probing == {}


def test_shutdown_cancels_the_probes_on_their_way() -> None:
    async def main() -> tuple[Hangs, int]:
        probes = Hangs(pool(interval=3600))
        probes.start()
        for _ in range(100):
            if probes.started:
                break
            await asyncio.sleep(0.01)
        tasks = list(probes._probing.values())
        probes.shutdown()
        await asyncio.sleep(0)
        return probes, sum(t.cancelled() for t in tasks)

    probes, cancelled = asyncio.run(main())
    assert probes.started == 1 and cancelled == 1 and probes._probing == {}
