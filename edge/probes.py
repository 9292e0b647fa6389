"""Active health probes: an APScheduler 3.x AsyncIOScheduler probing each origin.

The scheduler is started inside the running loop (from the app's cleanup_ctx). Jobs are
coalesced, never overlap (max_instances=1) and are jittered so a fleet of edges does not
probe in lock-step. Results go to the pool's rise/fall counters.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edge.origins import Origin, OriginPool

log = logging.getLogger("edge.probes")

ProbeListener = Callable[[str, bool, int | None, float], None]


class Prober:
    def __init__(
        self,
        pool: OriginPool,
        session: aiohttp.ClientSession,
        on_result: ProbeListener | None = None,
    ) -> None:
        self.pool = pool
        self.session = session
        self.on_result = on_result
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        """Start the scheduler; must run inside the event loop that serves requests."""
        asyncio.get_running_loop()  # fail loudly outside a loop
        self._scheduler = AsyncIOScheduler(timezone=datetime.UTC)
        self._schedule()
        self._scheduler.start()

    def reschedule(self) -> None:
        """Re-create the jobs after a config reload (origins or probe settings changed)."""
        if self._scheduler is None:
            return
        self._scheduler.remove_all_jobs()
        self._schedule()

    def _schedule(self) -> None:
        assert self._scheduler is not None
        probe = self.pool.config.probe
        if not probe.enabled:
            return
        now = datetime.datetime.now(datetime.UTC)
        for origin in self.pool.origins:
            self._scheduler.add_job(
                self.probe_once,
                "interval",
                seconds=probe.interval,
                jitter=probe.jitter or None,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(probe.interval)),
                args=[origin.url],
                id=f"probe:{origin.url}",
                next_run_time=now,
            )

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None

    async def probe_once(self, url: str) -> bool:
        origin = next((o for o in self.pool.origins if o.url == url), None)
        if origin is None:
            return False
        ok, status, elapsed = await self._check(origin)
        changed = self.pool.probe_result(origin, ok, status)
        if changed:
            log.warning("origin %s is now %s (probe status %s)", url, _word(origin.up), status)
        if self.on_result is not None:
            self.on_result(url, ok, status, elapsed)
        return ok

    async def _check(self, origin: Origin) -> tuple[bool, int | None, float]:
        probe = self.pool.config.probe
        headers = {"User-Agent": "geoedge-probe", "Connection": "close"}
        if probe.host:
            headers["Host"] = probe.host
        timeout = aiohttp.ClientTimeout(total=probe.timeout)
        start = time.monotonic()
        try:
            async with self.session.get(
                origin.config.base + probe.path,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("probe %s failed: %r", origin.url, exc)
            return False, None, time.monotonic() - start
        expected = probe.expected_status
        ok = status in expected if expected else status < 500
        return ok, status, time.monotonic() - start


def _word(up: bool) -> str:
    return "up" if up else "down"
