"""Typed edge configuration: TOML (or CLI quick-start flags) -> frozen dataclasses.

Everything is validated once at load; errors name the file, the key and the problem, and
unknown keys are errors. The rest of the edge only reads these values.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edge import screen_config
from edge.errors import ConfigError
from edge.screen_config import GeoConfig, ScreeningConfig

ALGORITHMS = ("round_robin", "weighted", "least_conn", "consistent_hash")
STREAM_ALGORITHMS = ("round_robin", "least_connections", "hash")
STREAM_PROTOCOLS = ("tcp", "udp")
PROXY_PROTOCOL_VERSIONS = ("", "v1", "v2")
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FORWARDED_MODES = ("x-forwarded", "forwarded", "both")

# Request fields that make common frameworks route, rewrite or re-method a request (or
# build URLs from another host) but are no part of the cache key: forwarded, they would let
# one client make the origin answer differently for a URL everybody else then gets from the
# cache. X-Forwarded-Host/-Proto/-For and the other X-Forwarded-* are handled by the
# forwarding rules (server.trusted_proxies).
DEFAULT_STRIP_REQUEST = (
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-host",
    "x-original-host",
    "x-http-host-override",
    "x-forwarded-server",
)
# Fields the edge needs to frame and route the request, and CDN-Loop, which intermediaries
# must never remove (RFC 8586 §2): refused in server.strip_request_headers.
_NEVER_STRIP = frozenset({"host", "content-length", "transfer-encoding", "cdn-loop"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# An RFC 8586 cdn-id: uri-host [":" port] (a name or an IP literal) or a pseudonym (token).
_CDN_ID = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")

DEFAULT_COMPRESSIBLE = (
    "text/html",
    "text/css",
    "text/plain",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/wasm",
    "image/svg+xml",
)


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: str
    key: str
    server_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TLSConfig:
    listen: tuple[Address, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    redirect_http: bool = False  # plain [server].listen answers 308 to https
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[Address, ...] = (Address("127.0.0.1", 8080),)
    workers: int = 1
    hosts: tuple[str, ...] = ()  # empty: any Host header (quick start); absolute-form still checked
    via: str = "geoedge"
    cache_name: str = "GeoEdge"  # the cache's name in Cache-Status
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    forwarded: str = "x-forwarded"
    # Answer plain GETs straight from the received bytes (edge.fasthit): fresh hits, and
    # misses of URLs with nothing stored (Proxy.answer_plain_get); off sends every request
    # through aiohttp's parser and the full handler.
    fast_hits: bool = True
    # This node's cdn-id in CDN-Loop (RFC 8586): a request carrying it came back to us.
    # Per node, not per product: GeoEdge tiers chain (edge -> shield edge -> origin).
    node_id: str = field(default_factory=lambda: default_node_id(()))
    max_hops: int = 16  # CDN-Loop entries a request may carry; more: 508
    strip_request_headers: tuple[str, ...] = DEFAULT_STRIP_REQUEST


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_url_length: int = 8192
    max_body_bytes: int = 100 * 1024 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0


@dataclass(frozen=True, slots=True)
class OriginConfig:
    url: str
    weight: int = 1

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    enabled: bool = True
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    expected_status: tuple[int, ...] = ()  # empty: any status below 500
    rise: int = 2
    fall: int = 3
    jitter: float = 0.5
    host: str = ""  # Host header for probes; default: the origin's own authority


@dataclass(frozen=True, slots=True)
class PoolConfig:
    origins: tuple[OriginConfig, ...]
    algorithm: str = "round_robin"
    connect_timeout: float = 5.0
    first_byte_timeout: float = 30.0
    total_timeout: float = 300.0
    max_fails: int = 3  # consecutive failures before passive ejection
    retry: bool = True  # idempotent requests retried once on another origin
    ca_bundle: str = ""
    connections_per_origin: int = 256
    keepalive_timeout: float = 4.0  # idle pooled connections closed before origins do it
    preserve_host: bool = True  # send the client's Host to the origin
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True, slots=True)
class StreamOrigin:
    address: Address
    weight: int = 1


@dataclass(frozen=True, slots=True)
class StreamProbeConfig:
    """Active checks of a stream pool: a TCP connect (and, with `send`/`expect`, an exchange
    of bytes), or for UDP a datagram sent and a reply expected."""

    enabled: bool = True
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    jitter: float = 0.5
    send: bytes = b""
    expect: bytes = b""  # empty: any reply (UDP), a connect (TCP) is enough


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One `[[stream]]` table: an L4 listener relaying to a pool of origins (edge.stream)."""

    name: str
    protocol: str  # tcp | udp
    listen: Address
    origins: tuple[StreamOrigin, ...]
    algorithm: str = "round_robin"
    connect_timeout: float = 5.0
    idle_timeout: float = 300.0
    max_connections: int = 10000  # UDP: flows in the flow table
    max_fails: int = 3  # consecutive connect failures before passive ejection
    proxy_protocol: str = ""  # "", v1, v2 (TCP only)
    probe: StreamProbeConfig = field(default_factory=StreamProbeConfig)

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.listen}"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    dir: str = ""  # empty: a private temporary directory per process (not persistent)
    size_limit: int = 1 << 30
    memory_bytes: int = 64 << 20
    memory_object_max: int = 1 << 20
    # The index: parsed metadata of stored entries and where their bodies lie, so a hit
    # on a body not in the memory tier needs no database read (nginx's keys_zone).
    index_bytes: int = 128 << 20
    max_object_bytes: int = 256 << 20
    cache_set_cookie: bool = False
    default_ttl: float = 0.0  # freshness for responses with none; 0 = do not cache them
    heuristic_max: float = 86400.0
    # How long a miss waits for a concurrent miss of the same URL (request collapsing)
    # before it goes to the origin itself: the first request may be streaming to a slow
    # client, and it must not hold everyone else back for as long.
    collapse_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    enabled: bool = True
    types: tuple[str, ...] = DEFAULT_COMPRESSIBLE
    min_size: int = 256
    brotli_quality: int = 4
    gzip_level: int = 6


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address | None = None
    capacity_rps: float = 1000.0
    token: str | None = field(default=None, repr=False)  # from token_file: purges need it
    # tls_cert + tls_key: the admin listener speaks HTTPS (the DNS tier's probes, purges).
    certificate: Certificate | None = None
    # private: /__edge/status and /metrics need the token too (probes then send it).
    private: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    access_log: str = "-"  # "-": stdout, "": off, else a file path


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    pool: PoolConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    streams: tuple[StreamConfig, ...] = ()
    geo: GeoConfig = field(default_factory=GeoConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    source: str = "<config>"

    @property
    def has_http(self) -> bool:
        """Whether the edge has HTTP listeners (a stream-only edge has none)."""
        return bool(self.server.listen or self.tls.listen)

    def with_listen(self, listen: tuple[Address, ...]) -> EdgeConfig:
        return replace(self, server=replace(self.server, listen=listen))


# ---------------------------------------------------------------------------- parsing helpers

T = TypeVar("T")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


class _Section:
    """A TOML table being read: each key is taken once; leftovers are unknown keys."""

    def __init__(self, source: str, prefix: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(source, prefix or "<root>", "must be a table")
        self.source = source
        self.prefix = prefix
        self.data = dict(data)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def take(self, name: str, kind: type[T] | tuple[type, ...], default: T) -> T:
        if name not in self.data:
            return default
        value = self.data.pop(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.error(name, f"expected {_kind_name(kinds)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has inf and nan: no duration, fraction or rate of ours means either.
            raise self.error(name, f"must be a finite number, got {value}")
        return value  # type: ignore[return-value]

    def positive(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.take(name, float, float(default))
        if value < 0 or (value == 0 and not allow_zero):
            raise self.error(name, "must be positive")
        return value

    def count(self, name: str, default: int, *, minimum: int = 1) -> int:
        value = self.take(name, int, default)
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}")
        return value

    def size(self, name: str, default: int) -> int:
        value: int | str = self.take(name, (int, str), default)
        if isinstance(value, int):
            if value < 0:
                raise self.error(name, "must not be negative")
            return value
        match = _SIZE.match(value)
        if not match:
            raise self.error(name, f"not a size: {value!r} (use bytes or e.g. '512MiB', '1GB')")
        unit = (match.group(2) or "").lower()
        base = 1024 if "i" in unit else 1000
        power = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.replace("i", "")[:1]]
        return int(float(match.group(1)) * base**power)

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.take(name, list, list(default))
        if not all(isinstance(v, str) for v in value):
            raise self.error(name, "expected a list of strings")
        return tuple(value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.take(name, str, default)
        if value not in options:
            raise self.error(name, f"must be one of {', '.join(options)}; got {value!r}")
        return value

    def sub(self, name: str) -> _Section:
        return _Section(self.source, self.key(name), self.data.pop(name, {}))

    def done(self) -> None:
        for name in self.data:
            raise self.error(name, "unknown key")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
    names.update({list: "a list", dict: "a table"})
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_address(text: str, *, default_port: int = 0) -> Address:
    """`host:port`, `[v6]:port`, or `:port` (all interfaces is not a default: 127.0.0.1)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"IPv6 addresses need brackets: {text!r}")
    else:
        host, port_text = text, ""
    host = host or "127.0.0.1"
    if not port_text:
        if not default_port:
            raise ValueError(f"missing port in {text!r}")
        port = default_port
    else:
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"bad port in {text!r}")
        port = int(port_text)
    return Address(host, port)


def default_node_id(listen: tuple[Address, ...]) -> str:
    """The host name (as far as it is a valid cdn-id), with the port of the first listener
    when that is not 0: two edges on one host (an edge and its shield) differ by port."""
    name = "".join(
        c for c in socket.gethostname().lower() if c.isascii() and (c.isalnum() or c in ".-")
    )
    name = name.strip(".-") or "geoedge"
    port = next((a.port for a in listen if a.port), 0)
    return f"{name}:{port}" if port else name


def _addresses(sec: _Section, name: str, default: tuple[Address, ...]) -> tuple[Address, ...]:
    if name not in sec.data:
        return default
    raw = sec.data.get(name)
    items = [raw] if isinstance(raw, str) else raw
    sec.data[name] = items
    texts = sec.strings(name, ())
    try:
        return tuple(parse_address(t) for t in texts)
    except ValueError as exc:
        raise sec.error(name, str(exc)) from None


def _origin(source: str, key: str, raw: Any) -> OriginConfig:
    if isinstance(raw, str):
        raw = {"url": raw}
    sec = _Section(source, key, raw)
    url = sec.take("url", str, "")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise sec.error("url", f"expected http(s)://host[:port], got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise sec.error("url", "origin URLs carry no path, query or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise sec.error("url", f"bad port in {url!r}") from None
    weight = sec.count("weight", 1, minimum=0)
    sec.done()
    return OriginConfig(url=url.rstrip("/"), weight=weight)


def _probe(sec: _Section) -> ProbeConfig:
    d = ProbeConfig()
    path = sec.take("path", str, d.path)
    if not path.startswith("/"):
        raise sec.error("path", "must start with '/'")
    statuses: int | list[Any] = sec.take("expected_status", (int, list), list(d.expected_status))
    if isinstance(statuses, int):
        statuses = [statuses]
    if not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
        raise sec.error("expected_status", "expected HTTP status codes (100..599)")
    probe = ProbeConfig(
        enabled=sec.take("enabled", bool, d.enabled),
        path=path,
        interval=sec.positive("interval", d.interval),
        timeout=sec.positive("timeout", d.timeout),
        expected_status=tuple(statuses),
        rise=sec.count("rise", d.rise),
        fall=sec.count("fall", d.fall),
        jitter=sec.positive("jitter", d.jitter, allow_zero=True),
        host=sec.take("host", str, d.host),
    )
    sec.done()
    return probe


def _pool(sec: _Section, base_dir: str) -> PoolConfig:
    d_timeouts = PoolConfig(origins=())
    raw_origins = sec.take("origins", list, [])
    if not raw_origins:
        raise sec.error("origins", "at least one origin is required")
    origins = tuple(
        _origin(sec.source, f"{sec.key('origins')}[{i}]", o) for i, o in enumerate(raw_origins)
    )
    if all(o.weight == 0 for o in origins):
        raise sec.error("origins", "at least one origin needs a weight above 0")
    ca = sec.take("ca_bundle", str, "")
    if ca:
        ca = _resolve(base_dir, ca)
        if not os.path.isfile(ca):
            raise sec.error("ca_bundle", f"no such file: {ca}")
    pool = PoolConfig(
        origins=origins,
        algorithm=sec.choice("algorithm", ALGORITHMS, d_timeouts.algorithm),
        connect_timeout=sec.positive("connect_timeout", d_timeouts.connect_timeout),
        first_byte_timeout=sec.positive("first_byte_timeout", d_timeouts.first_byte_timeout),
        total_timeout=sec.positive("total_timeout", d_timeouts.total_timeout),
        max_fails=sec.count("max_fails", d_timeouts.max_fails),
        retry=sec.take("retry", bool, d_timeouts.retry),
        ca_bundle=ca,
        connections_per_origin=sec.count(
            "connections_per_origin", d_timeouts.connections_per_origin
        ),
        preserve_host=sec.take("preserve_host", bool, d_timeouts.preserve_host),
        keepalive_timeout=sec.positive("keepalive_timeout", d_timeouts.keepalive_timeout),
        probe=_probe(sec.sub("probe")),
    )
    sec.done()
    return pool


def _resolve(base_dir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def _server(sec: _Section) -> ServerConfig:
    d = ServerConfig()
    hosts = tuple(h.lower().rstrip(".") for h in sec.strings("hosts", d.hosts))
    nets = []
    for i, text in enumerate(sec.strings("trusted_proxies", ())):
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise sec.error(f"trusted_proxies[{i}]", f"not an IP network: {text!r}") from None
    listen = _addresses(sec, "listen", d.listen)
    strip = []
    for i, name in enumerate(sec.strings("strip_request_headers", d.strip_request_headers)):
        key = f"strip_request_headers[{i}]"
        if not _TOKEN.fullmatch(name):
            raise sec.error(key, f"not a header field name: {name!r}")
        if name.lower() in _NEVER_STRIP:
            raise sec.error(key, f"{name} cannot be stripped")
        if name.lower() not in strip:
            strip.append(name.lower())
    server = ServerConfig(
        listen=listen,
        workers=sec.count("workers", d.workers),
        hosts=hosts,
        via=sec.take("via", str, d.via),
        cache_name=sec.take("cache_name", str, d.cache_name),
        trusted_proxies=tuple(nets),
        forwarded=sec.choice("forwarded", FORWARDED_MODES, d.forwarded),
        fast_hits=sec.take("fast_hits", bool, d.fast_hits),
        node_id=sec.take("node_id", str, "") or default_node_id(listen),
        max_hops=sec.count("max_hops", d.max_hops),
        strip_request_headers=tuple(strip),
    )
    if not _CDN_ID.fullmatch(server.node_id):
        raise sec.error("node_id", "must be a host name, host:port or token (an RFC 8586 cdn-id)")
    for key in ("via", "cache_name"):
        value = getattr(server, key)
        if not value or any(c in value for c in ' ,;="\r\n'):
            raise sec.error(key, "must be a single token (no spaces, commas or quotes)")
    sec.done()
    return server


def _limits(sec: _Section) -> LimitsConfig:
    d = LimitsConfig()
    limits = LimitsConfig(
        max_header_bytes=sec.count("max_header_bytes", d.max_header_bytes, minimum=256),
        max_headers=sec.count("max_headers", d.max_headers, minimum=4),
        max_url_length=sec.count("max_url_length", d.max_url_length, minimum=64),
        max_body_bytes=sec.size("max_body_bytes", d.max_body_bytes),
        header_timeout=sec.positive("header_timeout", d.header_timeout),
        keepalive_timeout=sec.positive("keepalive_timeout", d.keepalive_timeout),
    )
    sec.done()
    return limits


def _tls(sec: _Section, base_dir: str) -> TLSConfig:
    certs = []
    for i, raw in enumerate(sec.take("certificates", list, [])):
        c = _Section(sec.source, f"{sec.key('certificates')}[{i}]", raw)
        cert = _resolve(base_dir, c.take("cert", str, ""))
        key = _resolve(base_dir, c.take("key", str, ""))
        for name, path in (("cert", cert), ("key", key)):
            if not os.path.isfile(path):
                raise c.error(name, f"no such file: {path}")
        names = tuple(n.lower().rstrip(".") for n in c.strings("server_names", ()))
        c.done()
        certs.append(Certificate(cert=cert, key=key, server_names=names))
    tls = TLSConfig(
        listen=_addresses(sec, "listen", ()),
        certificates=tuple(certs),
        redirect_http=sec.take("redirect_http", bool, False),
        min_version=sec.choice("min_version", ("1.2", "1.3"), "1.2"),
    )
    if tls.listen and not tls.certificates:
        raise sec.error("certificates", "tls.listen is set but no certificate is configured")
    sec.done()
    return tls


def _cache(sec: _Section, base_dir: str) -> CacheConfig:
    d = CacheConfig()
    directory = sec.take("dir", str, d.dir)
    cache = CacheConfig(
        enabled=sec.take("enabled", bool, d.enabled),
        dir=_resolve(base_dir, directory) if directory else "",
        size_limit=sec.size("size_limit", d.size_limit),
        memory_bytes=sec.size("memory_bytes", d.memory_bytes),
        memory_object_max=sec.size("memory_object_max", d.memory_object_max),
        index_bytes=sec.size("index_bytes", d.index_bytes),
        max_object_bytes=sec.size("max_object_bytes", d.max_object_bytes),
        cache_set_cookie=sec.take("cache_set_cookie", bool, d.cache_set_cookie),
        default_ttl=sec.positive("default_ttl", d.default_ttl, allow_zero=True),
        heuristic_max=sec.positive("heuristic_max", d.heuristic_max, allow_zero=True),
        collapse_timeout=sec.positive("collapse_timeout", d.collapse_timeout, allow_zero=True),
    )
    sec.done()
    return cache


def _compression(sec: _Section) -> CompressionConfig:
    d = CompressionConfig()
    comp = CompressionConfig(
        enabled=sec.take("enabled", bool, d.enabled),
        types=tuple(t.lower() for t in sec.strings("types", d.types)),
        min_size=sec.count("min_size", d.min_size, minimum=0),
        brotli_quality=sec.count("brotli_quality", d.brotli_quality, minimum=0),
        gzip_level=sec.count("gzip_level", d.gzip_level, minimum=1),
    )
    if comp.brotli_quality > 11:
        raise sec.error("brotli_quality", "must be 0..11")
    if comp.gzip_level > 9:
        raise sec.error("gzip_level", "must be 1..9")
    sec.done()
    return comp


def _admin(sec: _Section, base_dir: str) -> AdminConfig:
    listen = _addresses(sec, "listen", ())
    if len(listen) > 1:
        raise sec.error("listen", "one admin address only")
    token_file = sec.take("token_file", str, "")
    cert = sec.take("tls_cert", str, "")
    key = sec.take("tls_key", str, "")
    certificate = None
    if cert or key:
        if not (cert and key):
            raise sec.error("tls_key" if cert else "tls_cert", "tls_cert and tls_key go together")
        cert, key = _resolve(base_dir, cert), _resolve(base_dir, key)
        for name, path in (("tls_cert", cert), ("tls_key", key)):
            if not os.path.isfile(path):
                raise sec.error(name, f"no such file: {path}")
        certificate = Certificate(cert=cert, key=key)
    private = sec.take("private", bool, False)
    if private and not token_file:
        raise sec.error("private", "needs admin.token_file: the token the status readers send")
    admin = AdminConfig(
        listen=listen[0] if listen else None,
        capacity_rps=sec.positive("capacity_rps", AdminConfig().capacity_rps),
        token=_token(sec, os.path.join(base_dir, token_file)) if token_file else None,
        certificate=certificate,
        private=private,
    )
    sec.done()
    return admin


def _token(sec: _Section, path: str) -> str:
    """A bearer token read from `path`: one line of at least 16 visible ASCII characters."""
    try:
        with open(path, encoding="ascii") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise sec.error("token_file", f"cannot read {path!r}: {exc}") from None
    if len(token) < 16 or not all("!" <= c <= "~" for c in token):
        raise sec.error("token_file", f"{path!r} must hold one token of 16+ visible characters")
    return token


def _log(sec: _Section) -> LogConfig:
    log = LogConfig(
        level=sec.choice("level", ("debug", "info", "warning", "error"), "info"),
        access_log=sec.take("access_log", str, "-"),
    )
    sec.done()
    return log


def _stream_origin(sec: _Section, index: int, raw: Any, protocol: str) -> StreamOrigin:
    key = f"origins[{index}]"
    if isinstance(raw, str):
        raw = {"address": raw}
    o = _Section(sec.source, sec.key(key), raw)
    text = o.take("address", str, "")
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise o.error("address", str(exc)) from None
    if protocol == "udp":
        try:
            ipaddress.ip_address(address.host)
        except ValueError:
            raise o.error(
                "address", f"UDP origins are IP addresses, got {address.host!r}"
            ) from None
    origin = StreamOrigin(address, o.count("weight", 1, minimum=0))
    o.done()
    return origin


def _stream_probe(sec: _Section, protocol: str) -> StreamProbeConfig:
    d = StreamProbeConfig()
    send = sec.take("send", str, "").encode()
    expect = sec.take("expect", str, "").encode()
    # A UDP origin that is up says nothing unless asked: probing it needs `send`.
    enabled = sec.take("enabled", bool, protocol == "tcp" or bool(send))
    if enabled and protocol == "udp" and not send:
        raise sec.error("send", "UDP probes need a datagram to send")
    if expect and not send and protocol == "tcp":
        raise sec.error("expect", "needs send (origins that talk first: send nothing and expect)")
    probe = StreamProbeConfig(
        enabled=enabled,
        interval=sec.positive("interval", d.interval),
        timeout=sec.positive("timeout", d.timeout),
        rise=sec.count("rise", d.rise),
        fall=sec.count("fall", d.fall),
        jitter=sec.positive("jitter", d.jitter, allow_zero=True),
        send=send,
        expect=expect,
    )
    sec.done()
    return probe


def _stream(sec: _Section) -> StreamConfig:
    name = sec.take("name", str, "")
    if not _STREAM_NAME.fullmatch(name):
        raise sec.error("name", f"expected a name of letters, digits, '.', '_', '-'; got {name!r}")
    listen_text = sec.take("listen", str, "")
    protocol, sep, rest = listen_text.partition("://")
    if not sep or protocol not in STREAM_PROTOCOLS:
        raise sec.error(
            "listen", f'expected "tcp://HOST:PORT" or "udp://HOST:PORT", got {listen_text!r}'
        )
    try:
        listen = parse_address(rest)
    except ValueError as exc:
        raise sec.error("listen", str(exc)) from None
    raw_origins = sec.take("origins", list, [])
    if not raw_origins:
        raise sec.error("origins", "at least one origin is required")
    origins = tuple(_stream_origin(sec, i, o, protocol) for i, o in enumerate(raw_origins))
    if all(o.weight == 0 for o in origins):
        raise sec.error("origins", "at least one origin needs a weight above 0")
    if len({o.address for o in origins}) != len(origins):
        raise sec.error("origins", "an origin is listed twice")
    d = StreamConfig(name="", protocol=protocol, listen=listen, origins=())
    proxy_protocol = sec.choice("proxy_protocol", PROXY_PROTOCOL_VERSIONS, d.proxy_protocol)
    if proxy_protocol and protocol != "tcp":
        raise sec.error("proxy_protocol", "is sent on TCP streams only")
    stream = StreamConfig(
        name=name,
        protocol=protocol,
        listen=listen,
        origins=origins,
        algorithm=sec.choice("algorithm", STREAM_ALGORITHMS, d.algorithm),
        connect_timeout=sec.positive("connect_timeout", d.connect_timeout),
        idle_timeout=sec.positive("idle_timeout", d.idle_timeout if protocol == "tcp" else 30.0),
        max_connections=sec.count("max_connections", d.max_connections),
        max_fails=sec.count("max_fails", d.max_fails),
        proxy_protocol=proxy_protocol,
        probe=_stream_probe(sec.sub("probe"), protocol),
    )
    sec.done()
    return stream


def _streams(root: _Section) -> tuple[StreamConfig, ...]:
    raw = root.take("stream", list, [])
    streams = tuple(
        _stream(_Section(root.source, f"stream[{i}]", item)) for i, item in enumerate(raw)
    )
    names: set[str] = set()
    bound: set[tuple[str, Address]] = set()
    for i, s in enumerate(streams):
        if s.name in names:
            raise ConfigError(root.source, f"stream[{i}].name", f"{s.name!r} is used twice")
        if s.listen.port and (s.protocol, s.listen) in bound:
            raise ConfigError(root.source, f"stream[{i}].listen", f"{s.url} is used twice")
        names.add(s.name)
        bound.add((s.protocol, s.listen))
    return streams


def _stream_only(root: _Section, streams: tuple[StreamConfig, ...]) -> bool:
    """Whether this is an edge of [[stream]] tables alone: no [pool], hence no HTTP
    listeners (they would have nothing to proxy to) and no cache unless asked for."""
    if "pool" in root.data:
        return False
    if not streams:
        raise ConfigError(root.source, "pool", "missing: an [pool] table with origins is required")
    for section in ("server", "tls"):
        table = root.data.get(section)
        if isinstance(table, Mapping) and table.get("listen"):
            raise ConfigError(
                root.source, f"{section}.listen", "HTTP listeners need a [pool] of HTTP origins"
            )
    server = root.data.get("server", {})
    if isinstance(server, Mapping):  # anything else: _server reports it
        root.data["server"] = {**server, "listen": []}
    root.data.setdefault("cache", {"enabled": False})
    return True


def from_mapping(data: Mapping[str, Any], source: str, base_dir: str = ".") -> EdgeConfig:
    root = _Section(source, "", data)
    streams = _streams(root)
    stream_only = _stream_only(root, streams)
    builders: dict[str, Callable[[_Section], Any]] = {
        "server": _server,
        "limits": _limits,
        "tls": lambda s: _tls(s, base_dir),
        "pool": lambda s: _pool(s, base_dir),
        "cache": lambda s: _cache(s, base_dir),
        "compression": _compression,
        "admin": lambda s: _admin(s, base_dir),
        "log": _log,
    }
    if stream_only:
        del builders["pool"]
    parts = {name: build(root.sub(name)) for name, build in builders.items()}
    parts["geo"] = screen_config.geo(root.sub("geo"), base_dir)
    parts["screening"] = screen_config.screening(root.sub("screening"), parts["geo"])
    if stream_only:
        parts["pool"] = PoolConfig(origins=())
    root.done()
    config = EdgeConfig(source=source, streams=streams, **parts)
    if not config.has_http and not streams:
        raise ConfigError(source, "server.listen", "no listener configured")
    if config.tls.redirect_http and not config.tls.listen:
        raise ConfigError(source, "tls.redirect_http", "needs tls.listen")
    return config


def load(path: str) -> EdgeConfig:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(path, "<file>", exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "<toml>", str(exc)) from None
    return from_mapping(data, path, os.path.dirname(os.path.abspath(path)))


def quick_start(
    listen: str,
    origins: list[str],
    cache_dir: str | None = None,
    admin: str | None = None,
) -> EdgeConfig:
    """The `edge serve --listen ... --origin ...` configuration: defaults for everything else."""
    data: dict[str, Any] = {
        "server": {"listen": [listen]},
        "pool": {"origins": [{"url": o} for o in origins]},
    }
    if cache_dir:
        data["cache"] = {"dir": cache_dir}
    if admin:
        data["admin"] = {"listen": admin}
    return from_mapping(data, "<command line>", os.getcwd())


def stream_quick_start(
    listen: str,
    origins: list[str],
    *,
    algorithm: str = "round_robin",
    proxy_protocol: str = "",
    admin: str | None = None,
) -> EdgeConfig:
    """The `edge stream --listen tcp://... --origin ...` configuration: one stream, no HTTP."""
    stream = {
        "name": "stream",
        "listen": listen,
        "origins": origins,
        "algorithm": algorithm,
        "proxy_protocol": proxy_protocol,
    }
    data: dict[str, Any] = {"stream": [stream], "log": {"access_log": ""}}
    if admin:
        data["admin"] = {"listen": admin}
    return from_mapping(data, "<command line>", os.getcwd())
