"""Polling edges' status endpoints into the health store: the I/O half of gslb.edgeprobe.

`EdgePoller` runs in the process that owns the authoritative `HealthStore` (the only process
with one worker, the parent with several; the parent pushes every change to the workers). An
APScheduler 3.x `AsyncIOScheduler`, started inside the running loop, runs one probe *round*
every `health.interval` seconds (coalesce=True, max_instances=1, up to `health.jitter` seconds
of random delay). A round fetches every edge's `status_url` concurrently with one aiohttp
`ClientSession` (each probe bounded by `health.timeout`), feeds the replies through
gslb.edgeprobe, and writes the resulting up/down and loads with one `HealthStore.update_many`:
at most one version bump (one answer-cache flush, one snapshot to the workers) per round, and
none when nothing changed.

With `[[peers]]` (other DNS nodes), each round also GETs every peer's `/v1/edges` and the
up/down written is the quorum verdict of gslb.quorum over this node's probe view and the
peers' (their own probe views, `probe.probed_up`); a round in which no peer answered falls
back to this node's view. `probed()` (the `probe` field of /v1/edges) shows each edge's
verdict, and `export()` the peers answering, for /metrics.

Only `up` and `load` are written, and only for edges with a `status_url`: a drain set through
the API stays until the API lifts it, and edges without a status URL keep whatever the API
set. `reconfigure(config)` (SIGHUP) re-creates the job for the new edges and settings; edges
whose URL did not change keep their rise/fall counters, new or changed ones start afresh.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gslb.config import GslbConfig, HealthConfig, PeerConfig
from gslb.edgeprobe import MAX_BODY, Observation, ProbeResult, Reason, Tracker, interpret, step
from gslb.health import HealthError, HealthStore
from gslb.quorum import Verdict, decide, peer_views

log = logging.getLogger("gslb.probes")

__all__ = ["EdgePoller", "ProbeTarget"]

JOB_ID: Final = "gslb-edge-probes"
MAX_CONCURRENT: Final = 64  # probes in flight at once within one round
MAX_PEER_BODY: Final = 8 * 1024 * 1024  # a peer's /v1/edges reply
_HEADERS: Final = {"User-Agent": "geoedge-gslb-probe", "Accept": "application/json"}


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    edge: str
    url: str
    capacity: float
    token: str | None = field(default=None, repr=False)  # the edge's admin token, if any


def probe_targets(config: GslbConfig) -> tuple[ProbeTarget, ...]:
    return tuple(
        ProbeTarget(e.name, e.status_url, e.capacity, e.admin_token)
        for e in config.edges
        if e.status_url is not None
    )


@dataclass(slots=True)
class _EdgeProbe:
    target: ProbeTarget
    tracker: Tracker
    last: Observation | None = None
    verdict: Verdict | None = None  # with peers: the quorum's, from the last round


class EdgePoller:
    """See the module docstring. `start()` and `close()` must run inside the event loop."""

    def __init__(self, health: HealthStore, config: GslbConfig) -> None:
        self.health = health
        # The config this poller was last given: every config the process adopts reaches
        # it (start and reconfigure), so the HTTP API reads pools, edges and GeoIP settings
        # here (gslb.api).
        self.config = config
        self.settings: HealthConfig = config.health
        self._edges: dict[str, _EdgeProbe] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._session: aiohttp.ClientSession | None = None
        self._rounds: set[asyncio.Task[None]] = set()  # rounds running now (cancelled on close)
        self._jobs: set[asyncio.Task[Any]] = set()  # the scheduler's tasks awaiting them
        self.counts: dict[tuple[str, str, str], int] = {}  # (edge, result, reason) -> probes
        self.peers_answering: list[str] = []  # names of the peers that answered last round
        self._set_targets(probe_targets(config))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        asyncio.get_running_loop()  # AsyncIOScheduler binds to the loop it is started in
        ca = self.config.health.ca_file
        verify = ssl.create_default_context(cafile=None if ca is None else str(ca))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONCURRENT, force_close=True, ssl=verify),
            headers=_HEADERS,
        )
        self._scheduler = AsyncIOScheduler(timezone=datetime.UTC)
        self._schedule()
        self._scheduler.start()
        if self._edges:
            log.info(
                "probing %d edge(s) every %gs (rise %d, fall %d)",
                len(self._edges),
                self.settings.interval,
                self.settings.rise,
                self.settings.fall,
            )

    async def close(self) -> None:
        """Stop probing: no new rounds, the one in flight cancelled, the session closed."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
        for task in list(self._rounds):
            task.cancel()
        if self._jobs:
            await asyncio.wait(set(self._jobs))  # they end normally once their round is gone
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reconfigure(self, config: GslbConfig) -> None:
        """Adopt a reloaded config (after the health store was reconfigured)."""
        self.config = config
        self.settings = config.health
        self._set_targets(probe_targets(config))
        self._schedule()

    # -- state -------------------------------------------------------------------------------

    def _set_targets(self, targets: tuple[ProbeTarget, ...]) -> None:
        old = self._edges
        self._edges = {}
        for target in targets:
            prev = old.get(target.edge)
            if prev is not None and prev.target.url == target.url:
                prev.target = target  # the capacity may have changed; the counters stay
                self._edges[target.edge] = prev
            else:
                self._edges[target.edge] = _EdgeProbe(target, Tracker())
        for name in old.keys() - self._edges.keys():
            if name in self.health:
                log.info("edge %s has no status_url now: its state is set by the API only", name)
        self.counts = {k: n for k, n in self.counts.items() if k[0] in self._edges}

    def _schedule(self) -> None:
        if self._scheduler is None:
            return
        if self._scheduler.get_job(JOB_ID) is not None:
            self._scheduler.remove_job(JOB_ID)
        if not self._edges:
            return
        s = self.settings
        self._scheduler.add_job(
            self._scheduled_round,
            "interval",
            seconds=s.interval,
            jitter=s.jitter or None,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(s.interval)),
            id=JOB_ID,
            next_run_time=datetime.datetime.now(datetime.UTC),
        )

    def probed(self) -> dict[str, dict[str, Any]]:
        """Per probed edge: its URL and what the last probe said (for the API)."""
        out: dict[str, dict[str, Any]] = {}
        for name, ep in self._edges.items():
            last = ep.last
            out[name] = {
                "status_url": ep.target.url,
                "probed_up": ep.tracker.up,
                "last_ok": None if last is None else last.healthy,
                "last_error": None if last is None or last.healthy else last.detail,
            }
            verdict = ep.verdict
            if self.config.peers and verdict is not None:
                out[name]["quorum"] = {
                    "up": verdict.up,
                    "views": verdict.views,
                    "down": verdict.down,
                    "fallback": verdict.fallback,
                }
        return out

    def export(self) -> dict[str, Any]:
        """Probe counters as JSON-able data (gslb.metrics.ProbeCollector reads it)."""
        return {
            "probes": [[e, r, why, n] for (e, r, why), n in sorted(self.counts.items())],
            "peers": len(self.config.peers),
            "peers_answering": len(self.peers_answering),
        }

    # -- probing -----------------------------------------------------------------------------

    async def _scheduled_round(self) -> None:
        """The scheduler's job. The round runs as a task of ours that close() can cancel while
        this job still ends normally (APScheduler logs a cancelled job as a failed one)."""
        job = asyncio.current_task()
        round_task = asyncio.create_task(self.probe_round())
        self._rounds.add(round_task)
        if job is not None:
            self._jobs.add(job)
        try:
            await asyncio.wait({round_task})
        finally:
            self._rounds.discard(round_task)
            if job is not None:
                self._jobs.discard(job)
        if not round_task.cancelled():
            round_task.result()  # a bug in a round reaches APScheduler's error log

    async def probe_round(self) -> None:
        """Probe every edge once and apply the results. A round whose config was replaced
        while it ran (SIGHUP) is not applied: its targets and peers are the old ones, and its
        verdicts would overwrite those of a round under the new config. It probes once more
        under the new one (the reload's own round may have been skipped as a second instance
        of the job)."""
        for _ in range(2):
            config = self.config
            probes = list(self._edges.values())
            peers = config.peers
            results, views = await asyncio.gather(
                self._probe_all(probes), asyncio.gather(*(self.fetch_peer(p) for p in peers))
            )
            if self.config is config:
                break
        else:
            log.info("probe round not applied: reloaded twice while it ran")
            return
        if peers:
            answered = [(p.name, v) for p, v in zip(peers, views, strict=True) if v is not None]
            names = [name for name, _ in answered]
            if names != self.peers_answering:
                missing = sorted({p.name for p in peers} - set(names))
                if missing:
                    log.warning("peers not answering: %s", ", ".join(missing))
                else:
                    log.info("every peer answers (%d)", len(peers))
            self.peers_answering = names
            self._apply(results, [v for _, v in answered], quorum=True)
        else:
            self.peers_answering = []
            self._apply(results, [], quorum=False)

    async def _probe_all(self, probes: list[_EdgeProbe]) -> list[tuple[_EdgeProbe, ProbeResult]]:
        limit = asyncio.Semaphore(MAX_CONCURRENT)

        async def one(ep: _EdgeProbe) -> tuple[_EdgeProbe, ProbeResult]:
            async with limit:
                return ep, await self.fetch(ep.target.url, ep.target.token)

        return await asyncio.gather(*(one(ep) for ep in probes))

    async def fetch_peer(self, peer: PeerConfig) -> dict[str, bool | None] | None:
        """A peer's own probe view per edge, or None when it did not answer in time."""
        session = self._session
        if session is None:
            return None
        headers = {"Authorization": f"Bearer {peer.token}"} if peer.token else None
        try:
            async with session.get(
                peer.api + "/v1/edges",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    return None
                body = await resp.content.read(MAX_PEER_BODY + 1)
            if len(body) > MAX_PEER_BODY:
                return None
            return peer_views(json.loads(body))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.debug("peer %s (%s): %s", peer.name, peer.api, exc)
            return None

    async def fetch(self, url: str, token: str | None = None) -> ProbeResult:
        """GET `url` once (with `token` as a Bearer credential: an edge whose admin API is
        private wants it); a reply of any status, or the error that prevented one."""
        session = self._session
        if session is None:
            return ProbeResult(error="poller is not running")
        timeout = self.settings.timeout
        # aiohttp's exceptions end here, translated into a failed ProbeResult.
        try:
            async with session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
                headers=None if token is None else {"Authorization": f"Bearer {token}"},
            ) as resp:
                body = bytearray()
                while len(body) <= MAX_BODY:
                    chunk = await resp.content.read(65536)
                    if not chunk:
                        break
                    body += chunk
                return ProbeResult(status=resp.status, body=bytes(body))
        except TimeoutError:
            return ProbeResult(error=f"no reply within {timeout:g}s", timed_out=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return ProbeResult(error=f"{type(exc).__name__}: {exc}"[:200])

    def _apply(
        self,
        results: list[tuple[_EdgeProbe, ProbeResult]],
        peers: list[dict[str, bool | None]],
        *,
        quorum: bool,
    ) -> None:
        s = self.settings
        updates: dict[str, tuple[bool | None, float | None]] = {}
        why: dict[str, str] = {}
        for ep, result in results:
            if ep.target.edge not in self.health:
                continue  # the health store was reconfigured while the round ran
            obs = interpret(result, ep.target.capacity)
            key = (ep.target.edge, "success" if obs.healthy else "failure", obs.reason.value)
            self.counts[key] = self.counts.get(key, 0) + 1
            before = ep.tracker.up
            ep.tracker = step(ep.tracker, obs.healthy, s.rise, s.fall)
            ep.last = obs
            why[ep.target.edge] = self._verdict(ep, obs, first=before is None)
            if not obs.healthy and obs.reason is not Reason.UNHEALTHY:
                log.debug("probe %s (%s) failed: %s", ep.target.edge, ep.target.url, obs.detail)
            up = ep.tracker.up
            if quorum:
                name = ep.target.edge
                views = [view.get(name) for view in peers]
                ep.verdict = decide(up, views, s.quorum, peers_answered=bool(peers))
                if ep.verdict.up != up:
                    why[name] = (
                        f"quorum: {ep.verdict.down} of {ep.verdict.views} vantage points see "
                        f"it down (this node: {'up' if up else 'down'})"
                    )
                up = ep.verdict.up
            else:
                ep.verdict = None
            updates[ep.target.edge] = (up, obs.load)
        if not updates:
            return
        # The store logs and records each edge that goes up or down (or overloaded, or
        # recovered) with these reasons: gslb.health.
        try:
            self.health.update_many(updates, why=why, source="probe")
        except HealthError as exc:  # a bug, not an edge's fault: keep probing
            log.error("applying probe results failed: %s", exc)

    def _verdict(self, ep: _EdgeProbe, obs: Observation, *, first: bool) -> str:
        """Why the edge is up or down after this probe (the store uses it if the edge's
        state changed)."""
        if ep.tracker.up:
            return f"{1 if first else self.settings.rise} good probe(s)"
        count = 1 if first else self.settings.fall
        return f"{count} failed probe(s), last: {obs.detail or obs.reason.value} ({ep.target.url})"
