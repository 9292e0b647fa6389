"""One DNS-serving process: config -> locator + Responder on the bound sockets.

`DnsRuntime` owns what a process needs to answer queries: the loaded config, the GeoIP
locator, the health store (authoritative with one worker, a replica in a worker process),
the query metrics and the `DnsServer`. `reload()` builds a new config, locator and Responder
first and swaps them in only when all of them built (atomic: a bad config keeps the old one);
health state is kept for edges still present. `refresh_geo()` swaps in a changed GeoIP file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from geo.errors import GeoError
from geo.locator import GeoIPLocator
from geo.table import default_cache_dir
from gslb.answer import Responder
from gslb.config import GslbConfig, example_config, load_config
from gslb.cookies import new_secret
from gslb.errors import GslbError
from gslb.health import HealthStore
from gslb.metrics import QueryMetrics
from gslb.models import Pool
from gslb.rrl import RateLimiter
from gslb.server import BoundPair, DnsServer, bind_dns_sockets, format_addr
from gslb.tcpadmit import TcpLimits

log = logging.getLogger("gslb")

__all__ = ["ConfigSource", "DnsRuntime", "config_pools", "listen_addresses"]

GEO_CHECK_INTERVAL = 60.0  # seconds between GeoIP file checks
TABLE_POLL_INTERVAL = 1.0  # seconds between looks at a GeoIP /24 table being built


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the config comes from: a file, or the embedded example when `path` is None."""

    path: Path | None

    def load(self) -> GslbConfig:
        if self.path is None:
            return example_config()
        return load_config(self.path)

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "<embedded example>"


def config_pools(config: GslbConfig) -> tuple[Pool, ...]:
    return config.pools


def config_edge_names(config: GslbConfig) -> tuple[str, ...]:
    return tuple(e.name for e in config.edges)


def listen_addresses(config: GslbConfig) -> list[tuple[str, int]]:
    return [(str(host), int(port)) for host, port in config.server.listen]


def api_address(config: GslbConfig) -> tuple[str, int] | None:
    host, port = config.api.listen
    return str(host), int(port)


def make_rate_limiter(config: GslbConfig) -> RateLimiter | None:
    return RateLimiter(config.rrl) if config.rrl.enabled else None


def tcp_limits(config: GslbConfig) -> TcpLimits:
    server = config.server
    return TcpLimits(
        max_connections=server.tcp_max_connections,
        per_network=server.tcp_max_per_network,
        idle_timeout=server.tcp_idle_timeout,
        busy_idle_timeout=server.tcp_busy_idle_timeout,
        ipv4_prefix=config.rrl.ipv4_prefix,
        ipv6_prefix=config.rrl.ipv6_prefix,
    )


def make_locator(config: GslbConfig) -> GeoIPLocator:
    geo = config.geo
    table_dir = (geo.table_dir or default_cache_dir()) if geo.table else None
    return GeoIPLocator(geo.database, geo.overrides, table_dir=table_dir)


class DnsRuntime:
    """Answers queries for one process; see the module docstring."""

    def __init__(
        self,
        source: ConfigSource,
        config: GslbConfig,
        *,
        health: HealthStore,
        metrics: QueryMetrics | None = None,
        cookie_secret: bytes | None = None,
    ) -> None:
        """`cookie_secret`: the DNS cookie secret of this start, used when the config names
        none (a worker gets its parent's); None: a random one, kept across reloads."""
        self.source = source
        self.config = config
        self.health = health
        if metrics is None:
            metrics = QueryMetrics(query_log=sys.stderr if config.log.query_log else None)
        self.metrics = metrics
        self.locator = make_locator(config)
        self.poll_geo()  # a table built before (by an earlier start) answers from the start
        self._cookie_secret = cookie_secret if cookie_secret is not None else new_secret()
        responder = self._responder(config, self.locator)
        self.server = DnsServer(
            responder, metrics, tcp=tcp_limits(config), rrl=make_rate_limiter(config)
        )

    def _responder(self, config: GslbConfig, locator: GeoIPLocator) -> Responder:
        return Responder(
            config, locator, self.health, observer=self.metrics, cookie_secret=self._cookie_secret
        )

    async def start(self, pairs: Iterable[BoundPair]) -> None:
        await self.server.start(list(pairs))
        for proto, host, port in self.server.addresses:
            log.info("listening %s %s", proto, format_addr(host, port))

    async def close(self) -> None:
        await self.server.close()
        self.locator.close()

    def reload(self, on_config: Callable[[GslbConfig], None] | None = None) -> bool:
        """Load the config again and swap it in; False (old config kept) on any error."""
        try:
            config = self.source.load()
            locator = make_locator(config)
        except (GslbError, GeoError, OSError) as exc:
            log.error("reload failed, keeping the old config: %s", exc)
            return False
        try:
            responder = self._responder(config, locator)
        except Exception as exc:
            locator.close()
            log.error("reload failed, keeping the old config: %s", exc)
            return False
        self.health.reconfigure(config_pools(config), config_edge_names(config))
        if listen_addresses(config) != listen_addresses(self.config):
            log.warning("server.listen changed: takes effect on restart only")
        old_locator, old_config = self.locator, self.config
        self.config, self.locator = config, locator
        self.server.responder = responder
        self.server.tcp_limits = tcp_limits(config)
        if config.rrl != old_config.rrl:  # unchanged, the buckets carry on
            self.server.rrl = make_rate_limiter(config)
        if isinstance(self.metrics, QueryMetrics):
            self.metrics.set_query_log(sys.stderr if config.log.query_log else None)
        old_locator.close()
        self.poll_geo()
        if on_config is not None:
            on_config(config)
        log.info("reloaded config %s", self.source.describe())
        log.debug(
            "serving %d zone(s), %d pool(s), %d edge(s)",
            len(config.zones),
            len(config.pools),
            len(config.edges),
        )
        return True

    def refresh_geo(self) -> None:
        """Swap in a changed GeoIP database (and drop answers cached from the old one)."""
        try:
            changed = self.locator.maybe_reload()
        except GeoError as exc:
            log.error("%s", exc)
            return
        if changed:
            self.server.responder = self._responder(self.config, self.locator)
            self.poll_geo()

    def poll_geo(self) -> None:
        """Map the GeoIP database's /24 table once it is built (GeoIPLocator.poll_table):
        called at start, after a swap, and every TABLE_POLL_INTERVAL. Until then the cold
        path walks the search tree; answers are the same either way."""
        self.locator.poll_table()
        self.metrics.geo_table = int(self.locator.table_ready)


def bind_all(addresses: Iterable[tuple[str, int]]) -> list[BoundPair]:
    pairs: list[BoundPair] = []
    try:
        for host, port in addresses:
            pairs.append(bind_dns_sockets(host, port))
    except Exception:
        for pair in pairs:
            pair.close()
        raise
    return pairs
