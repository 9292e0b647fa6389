"""Active health probes: an APScheduler 3.x AsyncIOScheduler probing each origin.

`ScheduledProbes` is the schedule and the rise/fall bookkeeping; `Prober` is its HTTP
probe, edge.stream_probes.StreamProber the TCP/UDP one of the `[[stream]]` pools.

The scheduler is started inside the running loop (from the app's cleanup_ctx). Jobs are
coalesced and jittered so a fleet of edges does not probe in lock-step. Each job starts its
origin's probe as a task of its own, unless the last one is still on its way (a timeout
above the interval, an origin that hangs): then that run is skipped, quietly, as nginx and
HAProxy skip a check still running, where APScheduler's own one-instance rule logged a
warning at every run until the probe ended. Results go to the pool's rise/fall counters.

On a node of several workers with a run directory (edge.nodestats) only the worker in
slot 0 probes, and publishes `verdicts(pool)` in its record; every other worker runs a
`ProbeFollower` instead, which applies those verdicts to its own pool and starts its own
probes only while the leader is silent. The same holds for every pool that probes: the HTTP
origin pool and each `[[stream]]` pool (edge.stream), whose verdicts the record carries
under a `prefix` naming the pool, so one record holds them all.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edge import nodestats
from edge.origins import Origin, OriginPool

log = logging.getLogger("edge.probes")

ProbeListener = Callable[[str, bool, int | None, float], None]


class ScheduledProbes:
    """One coalesced, jittered APScheduler job per origin of `pool`, each running `_check`
    and feeding the pool's rise/fall; subclasses say what a probe is."""

    def __init__(self, pool: OriginPool, on_result: ProbeListener | None = None) -> None:
        self.pool = pool
        self.on_result = on_result
        self._scheduler: AsyncIOScheduler | None = None
        self._probing: dict[str, asyncio.Task[bool]] = {}  # by origin URL

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
                self._due,
                "interval",
                seconds=probe.interval,
                jitter=probe.jitter or None,
                coalesce=True,
                max_instances=2,  # a run ends at once (_due); a reload's may meet it
                misfire_grace_time=max(1, int(probe.interval)),
                args=[origin.url, self._scheduler],
                id=f"probe:{origin.url}",
                next_run_time=now,
            )

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        for task in self._probing.values():
            task.cancel()
        self._probing.clear()

    async def _due(self, url: str, scheduler: AsyncIOScheduler) -> None:
        """The job of the origin at `url` on `scheduler`: its probe, as a task, unless the
        last one is still on its way, or the scheduler was shut down (its shutdown takes
        effect a turn of the loop later: a run may come meanwhile)."""
        if scheduler is not self._scheduler:
            return
        if url in self._probing:
            log.debug("probe of origin %s skipped: the last one is still on its way", url)
            return
        task = asyncio.ensure_future(self.probe_once(url))
        self._probing[url] = task
        task.add_done_callback(lambda done: self._probed(url, done))

    def _probed(self, url: str, task: asyncio.Task[bool]) -> None:
        if self._probing.get(url) is task:
            del self._probing[url]
        if not task.cancelled() and task.exception() is not None:
            log.error("probe of origin %s failed", url, exc_info=task.exception())

    async def probe_once(self, url: str) -> bool:
        """Probe the origin at `url` once and count the outcome. A probe whose config was
        replaced while it ran (a reload: another path, host or timeout) is not counted: it
        probes again under the new one (the reload's own run of the job may have been
        skipped as a second instance of it)."""
        for _ in range(2):
            config = self.pool.config
            origin = next((o for o in self.pool.origins if o.url == url), None)
            if origin is None or not config.probe.enabled:
                return False  # gone, or probes turned off by a reload meanwhile
            ok, status, elapsed = await self._check(origin)
            if self.pool.config is config:
                break
        else:
            log.info("probe of origin %s not counted: reloaded twice while it ran", url)
            return False
        changed = self.pool.probe_result(origin, ok, status)
        if changed:
            log.warning("origin %s is now %s (probe status %s)", url, _word(origin.up), status)
        if self.on_result is not None:
            self.on_result(url, ok, status, elapsed)
        return ok

    async def _check(self, origin: Origin) -> tuple[bool, int | None, float]:
        """(healthy, status if any, seconds taken) of one probe of `origin`."""
        raise NotImplementedError


class Prober(ScheduledProbes):
    """HTTP probes: a GET of probe.path on each origin of the HTTP pool."""

    def __init__(
        self,
        pool: OriginPool,
        session: aiohttp.ClientSession,
        on_result: ProbeListener | None = None,
    ) -> None:
        super().__init__(pool, on_result)
        self.session = session

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


def verdicts(pool: OriginPool, prefix: str = "") -> tuple[nodestats.Verdict, ...]:
    """The probes' verdicts the probe leader publishes for its followers, each origin's URL
    after `prefix` (the pool's name in the record; "" for the HTTP pool)."""
    return tuple(
        nodestats.Verdict(prefix + o.url, o.probe_up, o.probes, o.probe_ok) for o in pool.origins
    )


class ProbeFollower:
    """A worker that does not lead the probes: it applies the leader's verdicts under
    `prefix` (see `verdicts`) to its own pool (what to apply, and when to probe by itself
    with `prober`, is nodestats.Follower's call)."""

    def __init__(
        self,
        pool: OriginPool,
        prober: ScheduledProbes,
        stats: nodestats.StatsDir,
        prefix: str = "",
    ) -> None:
        self.pool = pool
        self.prober = prober
        self.stats = stats
        self.prefix = prefix
        self._policy = nodestats.Follower(stats.clock())

    async def run(self) -> None:
        """Follow until cancelled, reading the run directory once per probe interval (at
        least once per leader record)."""
        while True:
            self.step()
            interval = self.pool.config.probe.interval
            await asyncio.sleep(min(interval, nodestats.PUBLISH_INTERVAL))

    def step(self) -> None:
        probe = self.pool.config.probe
        bound = nodestats.leader_silence_bound(probe.interval)
        follow = self._policy.step(self.stats.peers(max_age=bound), self.stats.clock(), bound)
        if not probe.enabled:
            return
        if follow.probe:
            if not self.prober.running:
                log.warning(
                    "no probe verdicts from the probe leader for %.1fs: probing here", bound
                )
                self.prober.start()
            return
        if follow.leader is None:  # silent, not yet for long: keep the state we have
            return
        if self.prober.running:
            log.warning("probe leader (pid %d) is back: following its verdicts", follow.leader)
            self.prober.shutdown()
        by_url = {self.prefix + o.url: o for o in self.pool.origins}
        for verdict, new in follow.apply:
            origin = by_url.get(verdict.url)  # not (or no longer) in our configuration
            if origin is None:
                continue
            if self.pool.apply_verdict(origin, verdict.up, new, verdict.ok_run):
                log.warning(
                    "origin %s is now %s (probe leader's verdict)", origin.url, _word(origin.up)
                )


def _word(up: bool) -> str:
    return "up" if up else "down"
