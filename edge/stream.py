"""The edge's L4 streams: every `[[stream]]` table's listener, pool and probes.

`StreamSet` is what EdgeRuntime starts, reloads and stops next to the HTTP listeners. The
work is done by edge.stream_tcp (relays with back-pressure and half-close), edge.stream_udp
(flows), edge.stream_pool (origin choice and health through edge.origins.OriginPool, and
the counters) and edge.stream_probes (active probes).

With several workers and a run directory (edge.nodestats), the stream pools' probes follow
the HTTP pool's: the worker in slot 0 probes and publishes its verdicts (`verdicts`), the
others apply them (edge.probes.ProbeFollower) and probe by themselves only while it is
silent, so an origin gets one worker's probes, and every worker routes by the same verdict.

A reload applies what a running listener can take: origins, weights, algorithm, timeouts,
limits, PROXY protocol and probes. A stream added, removed, or moved to another listen
address needs a restart, and the reload says so in the log, as for the HTTP listeners.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from edge import nodestats
from edge.config import Address, StreamConfig
from edge.probes import ProbeFollower, verdicts
from edge.stream_pool import StreamCollector, StreamPool
from edge.stream_probes import StreamProber
from edge.stream_tcp import TcpListener
from edge.stream_udp import UdpListener

log = logging.getLogger("edge.stream")

Listener = TcpListener | UdpListener


class StreamSet:
    def __init__(self, configs: tuple[StreamConfig, ...]) -> None:
        self.pools: dict[str, StreamPool] = {c.name: StreamPool(c) for c in configs}
        self.listeners: dict[str, Listener] = {}
        self.probers: dict[str, StreamProber] = {}
        self.followers: list[asyncio.Task[None]] = []
        self.addresses: dict[str, list[Address]] = {"tcp": [], "udp": []}

    async def start(
        self,
        registry: CollectorRegistry,
        reuse_port: bool = False,
        follow: nodestats.StatsDir | None = None,
    ) -> None:
        """Bind every stream's listener and start its probes (inside the running loop), or,
        with `follow` (the run directory of a worker that does not lead the probes), follow
        the probe leader's verdicts."""
        if not self.pools:
            return
        registry.register(StreamCollector(self.pools.values))
        for name, pool in self.pools.items():
            listener: Listener
            if pool.stream.protocol == "tcp":
                listener = TcpListener(pool, reuse_port)
            else:
                listener = UdpListener(pool, reuse_port)
            self.listeners[name] = listener
            pool.bound = await listener.start()
            self.addresses[pool.stream.protocol].extend(pool.bound)
            prober = StreamProber(pool)
            self.probers[name] = prober
            if follow is None:
                prober.start()
            else:
                follower = ProbeFollower(pool.pool, prober, follow, _prefix(name))
                self.followers.append(asyncio.create_task(follower.run()))

    def reload(self, configs: tuple[StreamConfig, ...]) -> None:
        new = {c.name: c for c in configs}
        for name in self.pools.keys() - new.keys():
            log.warning("reload: stream %s was removed; its listener stays until a restart", name)
        for name, config in new.items():
            pool = self.pools.get(name)
            if pool is None:
                log.warning("reload: stream %s is new; it starts after a restart", name)
                continue
            old = pool.stream
            if config.protocol != old.protocol:
                log.warning("reload: stream %s changed protocol; kept until a restart", name)
                continue
            if config.listen != old.listen:
                log.warning(
                    "reload: stream %s listen changed; it takes effect after a restart", name
                )
                config = dataclasses.replace(config, listen=old.listen)
            pool.update(config)
            listener = self.listeners.get(name)
            if listener is not None:
                listener.reconfigure()
            prober = self.probers.get(name)
            if prober is not None:
                prober.reschedule()

    def verdicts(self) -> tuple[nodestats.Verdict, ...]:
        """The stream pools' probe verdicts, for the probe leader's record."""
        return tuple(v for n, p in self.pools.items() for v in verdicts(p.pool, _prefix(n)))

    def status(self) -> list[dict[str, Any]]:
        """Each stream pool's health for /__edge/status."""
        return [pool.status() for pool in self.pools.values()]

    async def stop(self) -> None:
        for task in self.followers:
            task.cancel()
        await asyncio.gather(*self.followers, return_exceptions=True)
        self.followers.clear()
        for prober in self.probers.values():
            prober.shutdown()
        self.probers.clear()
        for listener in self.listeners.values():
            await listener.stop()
        self.listeners.clear()


def _prefix(name: str) -> str:
    """A stream pool's verdicts in a probe leader's record: `stream NAME ` before the URL
    (a space is in no stream name nor HTTP origin URL, so no pool reads another's)."""
    return f"stream {name} "
