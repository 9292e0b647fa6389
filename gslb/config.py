"""The GSLB configuration: TOML parsed once, validated, and turned into frozen values.

gslb/example.toml is the schema by example and docs/configuration.md documents every key.
Every error is a ConfigError reading "FILE: KEY: PROBLEM", e.g.
"example.toml: pool[0].edges[2]: unknown edge 'xyz'"; unknown keys are errors too.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import ssl
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from dnslib import RD as RD_RAW

from geo.location import IPNetwork, Location
from gslb.dnssec import ZoneKey, dnskey_rdata, load_key
from gslb.errors import ConfigError, ZoneError
from gslb.models import Edge, Policy, Pool
from gslb.zone import (
    DNSKEY,
    MAX_TTL,
    Record,
    Zone,
    is_subdomain,
    name_from_text,
    parse_master,
    parse_ttl,
    parse_zone_file,
    soa_record,
)

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_EDGE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 5353),)
    workers: int = 1
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 512
    tcp_max_per_network: int = 64  # per client /24 (/56): [rrl] ipv4_prefix, ipv6_prefix
    tcp_busy_idle_timeout: float = 2.0  # the idle timeout when half the slots are taken
    max_udp_payload: int = 1232


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: tuple[str, int] = ("127.0.0.1", 8053)
    token: str | None = field(default=None, repr=False)  # from token_file: changes need it


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    query_log: bool = False


@dataclass(frozen=True, slots=True)
class GeoConfig:
    database: Path | None = None  # None: the bundled GeoLite2 snapshot
    overrides: tuple[Location, ...] = ()  # each Location carries its network
    table: bool = True  # build and map the database's /24 table (geo.table)
    table_dir: Path | None = None  # where tables are kept; None: geo.table.default_cache_dir()


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """How edges' status endpoints are probed (gslb.poller); see docs/configuration.md."""

    interval: float = 5.0  # seconds between probe rounds
    timeout: float = 2.0  # seconds one probe may take
    rise: int = 2  # consecutive good probes that bring a down edge up
    fall: int = 3  # consecutive failed probes that take an up edge down
    jitter: float = 0.5  # up to this many seconds of random delay per round
    quorum: int = 0  # with [[peers]]: vantage points that must see an edge down; 0: majority
    # PEM CA bundle for https status URLs (edges' admin.tls_cert from a private CA); None:
    # the system's CAs. Status probes carry each edge's admin token when it has one.
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One [[peers]] entry: another DNS node whose probe view joins the quorum."""

    name: str
    api: str  # its API base URL, e.g. "http://192.0.2.53:8053"
    token: str | None = field(default=None, repr=False)  # from token_file: sent as Bearer


@dataclass(frozen=True, slots=True)
class RrlConfig:
    """The [rrl] table; see docs/configuration.md."""

    enabled: bool = False
    rate: float = 20.0  # replies per second per client network and response class
    burst: float = 0.0  # bucket size; 0 means `rate` (one second's worth)
    slip: int = 2  # every slip-th limited reply goes out truncated; 0: drop them all
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    table_size: int = 100_000  # buckets kept at most
    exempt: tuple[IPNetwork, ...] = ()  # clients never limited (monitoring, own resolvers)


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """The [cookies] table (DNS COOKIE, RFC 7873 / RFC 9018); see docs/configuration.md."""

    enabled: bool = True
    # SipHash-2-4 keys from secret_file: the first makes cookies, all are accepted. Empty:
    # a random key per start (gslb.cookies.new_secret).
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    secret_file: Path | None = None
    require: bool = False  # BADCOOKIE to UDP queries with a client cookie but no valid one


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """The [identity] table (NSID, CHAOS TXT); see docs/configuration.md."""

    name: str = "gslb"  # the node's identity; the loader defaults it to the host name
    nsid: bool = True  # answer the EDNS NSID option (RFC 5001) with `name`
    chaos: bool = True  # answer CH TXT id.server and hostname.bind with `name`
    version: str | None = None  # CH TXT version.bind / version.server; None: REFUSED


@dataclass(frozen=True, slots=True)
class PurgeConfig:
    """The [purge] table: how `POST /v1/purge` reaches the edges' admin APIs (gslb.purger)."""

    timeout: float = 5.0  # seconds one purge request to one edge may take
    attempts: int = 3  # requests per edge at most (the first one and the retries)
    backoff: float = 0.5  # seconds before the first retry; doubled for each further one
    backoff_max: float = 5.0  # the longest wait between two attempts


@dataclass(frozen=True, slots=True)
class GslbConfig:
    source: str  # the file name errors and logs refer to
    server: ServerConfig
    api: ApiConfig
    log: LogConfig
    geo: GeoConfig
    zones: tuple[Zone, ...]
    edges: tuple[Edge, ...]
    pools: tuple[Pool, ...]
    health: HealthConfig = HealthConfig()
    rrl: RrlConfig = RrlConfig()
    cookies: CookieConfig = CookieConfig()
    identity: IdentityConfig = IdentityConfig()
    peers: tuple[PeerConfig, ...] = ()
    purge: PurgeConfig = PurgeConfig()


def load_config(path: Path) -> GslbConfig:
    """Read and validate a config file. Raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, str(path), base=path.parent)


def example_config() -> GslbConfig:
    """The example config embedded in the package (gslb/example.toml)."""
    text = resources.files("gslb").joinpath("example.toml").read_text(encoding="utf-8")
    return parse_config(text, "example.toml")


def parse_config(text: str, source: str, *, base: Path | None = None) -> GslbConfig:
    """Validate TOML `text`; `source` names it in errors, `base` resolves relative paths
    (zone files, the GeoIP database); default: the directory of `source`."""
    if base is None:
        base = Path(source).parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        return _build(data, source, base)
    except ZoneError as exc:
        raise ConfigError(f"{source}: {exc.key}: {exc.problem}") from None
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc.key}: {exc.problem}") from None


# --------------------------------------------------------------------------- helpers


class _Invalid(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class _Table:
    """A TOML table being read; remembers which keys were used to reject the rest."""

    def __init__(self, data: Any, key: str) -> None:
        if not isinstance(data, dict):
            raise _Invalid(key, f"must be a table, not {_kind(data)}")
        self.data: dict[str, Any] = data
        self.key = key
        self.used: set[str] = set()

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise _Invalid(self.sub(name), "is required")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise _Invalid(self.sub(name), f"must be {names}, not {_kind(value)}")
        return value

    def number(
        self, name: str, default: Any, lo: float, hi: float, *, integer: bool = False
    ) -> Any:
        kind: tuple[type, ...] = (int,) if integer else (int, float)
        value = self.get(name, kind, default)
        if value is default and default is not _REQUIRED:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid(self.sub(name), f"must be a finite number, not {value}")
        if not lo <= value <= hi:
            raise _Invalid(self.sub(name), f"{value} is out of range [{lo}, {hi}]")
        return float(value) if not integer else value

    def strings(self, name: str, what: str) -> list[tuple[str, str]]:
        """The array of strings at `name` (empty when absent), each with its key for errors;
        `what` says what an item is, e.g. 'a string such as "192.0.2.0/24"'."""
        out = []
        for i, item in enumerate(self.get(name, list, [])):
            key = f"{self.sub(name)}[{i}]"
            if not isinstance(item, str):
                raise _Invalid(key, f"must be {what}, not {_kind(item)}")
            out.append((key, item))
        return out

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise _Invalid(self.sub(unknown[0]), "unknown key")


_REQUIRED: Final = object()
_TYPE_NAMES: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


def _kind(value: Any) -> str:
    for t, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, t):
            return name
    return type(value).__name__


def _array_of_tables(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise _Invalid(name, f"must be an array of tables ([[{name}]]), not {_kind(value)}")
    return value


def parse_hostport(text: str, key: str) -> tuple[str, int]:
    """ "127.0.0.1:53" or "[::1]:53" -> (host, port). Hosts must be IP addresses."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if m is None:
        raise _Invalid(key, f'{text!r} is not "host:port" (IPv6 as "[::1]:port")')
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _Invalid(key, f"{host!r} is not an IP address") from None
    if m.group(1) and ip.version != 6:
        raise _Invalid(key, f"{host!r} in brackets is not an IPv6 address")
    if m.group(3) and ip.version == 6:
        raise _Invalid(key, 'write IPv6 addresses in brackets, "[::1]:53"')
    if port > 65535:
        raise _Invalid(key, f"port {port} is out of range")
    return str(ip), port


# --------------------------------------------------------------------------- sections


def _build(data: dict[str, Any], source: str, base: Path) -> GslbConfig:
    top = _Table(data, "")
    tables = ("server", "api", "log", "geo", "health", "rrl", "cookies", "identity", "purge")
    for name in (*tables, "zone", "edge", "pool", "peers"):
        top.used.add(name)
    top.done()
    server = _server(_Table(data.get("server", {}), "server"))
    api = _api(_Table(data.get("api", {}), "api"), base)
    log = _log(_Table(data.get("log", {}), "log"))
    geo = _geo(_Table(data.get("geo", {}), "geo"), base)
    health = _health(_Table(data.get("health", {}), "health"), base)
    rrl = _rrl(_Table(data.get("rrl", {}), "rrl"))
    cookies = _cookies(_Table(data.get("cookies", {}), "cookies"), base)
    identity = _identity(_Table(data.get("identity", {}), "identity"))
    peers = _peers(_array_of_tables(data, "peers"), base)
    purge, admin_token = _purge(_Table(data.get("purge", {}), "purge"), base)
    edges = _edges(_array_of_tables(data, "edge"), base, admin_token)
    pools = _pools(_array_of_tables(data, "pool"), {e.name: e for e in edges})
    zones = _zones(_array_of_tables(data, "zone"), pools, base)
    return GslbConfig(
        source,
        server,
        api,
        log,
        geo,
        zones,
        edges,
        tuple(p for p, _ in pools),
        health,
        rrl,
        cookies,
        identity,
        peers,
        purge,
    )


def _server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    listen = d.listen
    if "listen" in t.data:
        out = [parse_hostport(item, key) for key, item in t.strings("listen", "a string")]
        if not out:
            raise _Invalid(t.sub("listen"), "needs at least one address")
        if len(set(out)) != len(out):
            raise _Invalid(t.sub("listen"), "lists an address twice")
        listen = tuple(out)
    cfg = ServerConfig(
        listen=listen,
        workers=t.number("workers", d.workers, 1, 256, integer=True),
        tcp_idle_timeout=t.number("tcp_idle_timeout", d.tcp_idle_timeout, 0.001, 3600.0),
        tcp_max_connections=t.number(
            "tcp_max_connections", d.tcp_max_connections, 1, 1_000_000, integer=True
        ),
        tcp_max_per_network=t.number(
            "tcp_max_per_network", d.tcp_max_per_network, 1, 1_000_000, integer=True
        ),
        tcp_busy_idle_timeout=t.number(
            "tcp_busy_idle_timeout", d.tcp_busy_idle_timeout, 0.001, 3600.0
        ),
        max_udp_payload=t.number("max_udp_payload", d.max_udp_payload, 512, 4096, integer=True),
    )
    t.done()
    return cfg


def _api(t: _Table, base: Path) -> ApiConfig:
    raw = t.get("listen", str, None)
    token_file = t.get("token_file", str, None)
    t.done()
    listen = ApiConfig().listen if raw is None else parse_hostport(raw, t.sub("listen"))
    token = None if token_file is None else _token(base / token_file, t.sub("token_file"))
    return ApiConfig(listen, token)


def _token(path: Path, key: str) -> str:
    """A bearer token read from `path`: one line of at least 16 visible ASCII characters."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Invalid(key, f"cannot read {str(path)!r}: {exc}") from None
    if len(token) < 16 or not all("!" <= c <= "~" for c in token):
        raise _Invalid(key, f"{str(path)!r} must hold one token of 16+ visible characters")
    return token


def _log(t: _Table) -> LogConfig:
    level = t.get("level", str, "info").lower()
    if level not in LOG_LEVELS:
        raise _Invalid(t.sub("level"), f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    cfg = LogConfig(level=level, query_log=t.get("query_log", bool, False))
    t.done()
    return cfg


def _health(t: _Table, base: Path) -> HealthConfig:
    d = HealthConfig()
    interval = t.number("interval", d.interval, 0.05, 3600.0)
    timeout = t.number("timeout", min(d.timeout, interval), 0.01, 3600.0)
    if timeout > interval:
        # One round at a time (max_instances=1): a longer timeout would silently skip rounds.
        raise _Invalid(
            t.sub("timeout"), f"must not exceed health.interval ({interval}), got {timeout}"
        )
    jitter = t.number("jitter", min(d.jitter, interval / 10), 0.0, 3600.0)
    if jitter >= interval:
        raise _Invalid(t.sub("jitter"), f"must be below health.interval ({interval}), got {jitter}")
    cfg = HealthConfig(
        interval=float(interval),
        timeout=float(timeout),
        rise=t.number("rise", d.rise, 1, 100, integer=True),
        fall=t.number("fall", d.fall, 1, 100, integer=True),
        jitter=float(jitter),
        quorum=t.number("quorum", d.quorum, 0, 1000, integer=True),
        ca_file=_ca_file(t, base),
    )
    t.done()
    return cfg


def _ca_file(t: _Table, base: Path) -> Path | None:
    name = t.get("ca_file", str, None)
    if name is None:
        return None
    path = _zone_path(base, name)
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise _Invalid(t.sub("ca_file"), f"cannot load {str(path)!r}: {exc}") from None
    return path


def _rrl(t: _Table) -> RrlConfig:
    d = RrlConfig()
    exempt = [
        _network(item, key) for key, item in t.strings("exempt", 'a string such as "192.0.2.0/24"')
    ]
    cfg = RrlConfig(
        enabled=t.get("enabled", bool, d.enabled),
        rate=float(t.number("rate", d.rate, 0.1, 1e6)),
        burst=float(t.number("burst", d.burst, 0.0, 1e7)),
        slip=t.number("slip", d.slip, 0, 10, integer=True),
        ipv4_prefix=t.number("ipv4_prefix", d.ipv4_prefix, 8, 32, integer=True),
        ipv6_prefix=t.number("ipv6_prefix", d.ipv6_prefix, 16, 128, integer=True),
        table_size=t.number("table_size", d.table_size, 16, 10_000_000, integer=True),
        exempt=tuple(exempt),
    )
    if cfg.burst and cfg.burst < 1:
        raise _Invalid(
            t.sub("burst"), f"must be 0 (one second's worth) or at least 1, not {cfg.burst}"
        )
    t.done()
    return cfg


def _purge(t: _Table, base: Path) -> tuple[PurgeConfig, str | None]:
    """The [purge] table, and the admin token every edge gets unless it names its own."""
    d = PurgeConfig()
    token_file = t.get("token_file", str, None)
    backoff = t.number("backoff", d.backoff, 0.0, 60.0)
    cfg = PurgeConfig(
        timeout=float(t.number("timeout", d.timeout, 0.05, 300.0)),
        attempts=t.number("attempts", d.attempts, 1, 10, integer=True),
        backoff=float(backoff),
        backoff_max=float(t.number("backoff_max", max(d.backoff_max, backoff), 0.0, 600.0)),
    )
    if cfg.backoff_max < cfg.backoff:
        raise _Invalid(t.sub("backoff_max"), f"must not be below purge.backoff ({cfg.backoff})")
    token = None if token_file is None else _token(base / token_file, t.sub("token_file"))
    t.done()
    return cfg, token


def _cookies(t: _Table, base: Path) -> CookieConfig:
    enabled = t.get("enabled", bool, True)
    require = t.get("require", bool, False)
    name = t.get("secret_file", str, None)
    t.done()
    if name is None:
        return CookieConfig(enabled=enabled, require=require)
    path = _zone_path(base, name)
    key = t.sub("secret_file")
    return CookieConfig(enabled, _cookie_secrets(path, key), path, require)


def _cookie_secrets(path: Path, key: str) -> tuple[bytes, ...]:
    """The cookie secrets in `path`: one per line as 32 hex digits (128 bits), the first
    the one cookies are made with; blank lines and lines starting with # are skipped."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Invalid(key, f"cannot read {str(path)!r}: {exc}") from None
    out: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            secret = bytes.fromhex(line)
        except ValueError:
            secret = b""
        if len(secret) != 16:
            raise _Invalid(
                key, f"{str(path)!r} line {number}: a secret is 32 hex digits (128 bits)"
            )
        if secret in out:
            raise _Invalid(key, f"{str(path)!r} line {number}: the same secret twice")
        out.append(secret)
    if not out:
        raise _Invalid(key, f"{str(path)!r} holds no secret")
    return tuple(out)


def _txt_string(t: _Table, name: str, default: Any) -> Any:
    value = t.get(name, str, default)
    if value is default:
        return value
    if not 1 <= len(value) <= 255 or not all(" " <= c <= "~" for c in value):
        raise _Invalid(t.sub(name), f"{value!r} must be 1 to 255 printable ASCII characters")
    return value


def _identity(t: _Table) -> IdentityConfig:
    host = socket.gethostname()[:255] or "gslb"
    if not all(" " <= c <= "~" for c in host):
        host = "gslb"
    cfg = IdentityConfig(
        name=_txt_string(t, "name", host),
        nsid=t.get("nsid", bool, True),
        chaos=t.get("chaos", bool, True),
        version=_txt_string(t, "version", None),
    )
    t.done()
    return cfg


def _peers(raw: list[Any], base: Path) -> tuple[PeerConfig, ...]:
    out: list[PeerConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = _Table(item, f"peers[{i}]")
        api = _http_url(t, "api", "http://192.0.2.53:8053", _REQUIRED)
        assert api is not None
        api = api.rstrip("/")
        name = t.get("name", str, urllib.parse.urlsplit(api).netloc)
        for key, value in (("api", api), ("name", name)):
            if value in seen:
                raise _Invalid(t.sub(key), f"{value!r} is already peers[{seen[value]}]")
        seen[api] = seen[name] = i
        token_file = t.get("token_file", str, None)
        token = None if token_file is None else _token(base / token_file, t.sub("token_file"))
        t.done()
        out.append(PeerConfig(name, api, token))
    return tuple(out)


def _http_url(t: _Table, key: str, example: str, default: Any = None) -> str | None:
    """An http(s) URL at `key` (`default` when absent): no user, fragment or spaces."""
    raw = t.get(key, str, default)
    if raw is None:
        return None
    try:
        url = urllib.parse.urlsplit(raw)
        port = url.port  # raises on a bad port
    except ValueError as exc:
        raise _Invalid(t.sub(key), f"{raw!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise _Invalid(t.sub(key), f"{raw!r} is not an http(s) URL such as {example!r}")
    if url.fragment or url.username is not None or any(c.isspace() for c in raw):
        raise _Invalid(t.sub(key), f"{raw!r} must not have a fragment, user or spaces")
    del port
    return str(raw)


def _status_url(t: _Table) -> str | None:
    return _http_url(t, "status_url", "http://192.0.2.10:9090/__edge/status")


def _admin_url(t: _Table, status_url: str | None) -> str | None:
    """The edge's admin base URL: `admin_url` as written (without a trailing slash, and
    with no query), else the scheme and authority of its status URL."""
    raw = _http_url(t, "admin_url", "http://192.0.2.10:9090")
    if raw is not None:
        if urllib.parse.urlsplit(raw).query:
            raise _Invalid(t.sub("admin_url"), f"{raw!r} must not have a query")
        return raw.rstrip("/")
    if status_url is None:
        return None
    url = urllib.parse.urlsplit(status_url)
    return f"{url.scheme}://{url.netloc}"


def _network(text: str, key: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise _Invalid(key, f"{text!r} is not a network: {exc}") from None


def _geo(t: _Table, base: Path) -> GeoConfig:
    db = t.get("database", str, None)
    path = None
    if db is not None:
        path = Path(db) if Path(db).is_absolute() else base / db
        if not path.is_file():
            raise _Invalid(t.sub("database"), f"file {str(path)!r} does not exist")
    table = t.get("table", bool, True)
    table_dir = None
    raw_dir = t.get("table_dir", str, None)
    if raw_dir is not None:
        table_dir = Path(raw_dir) if Path(raw_dir).is_absolute() else base / raw_dir
        if table_dir.exists() and not table_dir.is_dir():
            raise _Invalid(t.sub("table_dir"), f"{str(table_dir)!r} is not a directory")
    raw = t.get("override", list, [])
    overrides = []
    seen: dict[IPNetwork, int] = {}
    for i, item in enumerate(raw):
        o = _Table(item, f"geo.override[{i}]")
        net = _network(o.get("network", str, _REQUIRED), o.sub("network"))
        if net in seen:
            raise _Invalid(o.sub("network"), f"{net} is already geo.override[{seen[net]}]")
        seen[net] = i
        country = o.get("country", str, None)
        continent = o.get("continent", str, None)
        for name, value in (("country", country), ("continent", continent)):
            if value is not None and not re.fullmatch(r"[A-Za-z]{2}", value):
                raise _Invalid(o.sub(name), f"{value!r} is not a two-letter code")
        overrides.append(
            Location(
                latitude=o.number("latitude", _REQUIRED, -90.0, 90.0),
                longitude=o.number("longitude", _REQUIRED, -180.0, 180.0),
                country=country.upper() if country else None,
                continent=continent.upper() if continent else None,
                network=net,
            )
        )
        o.done()
    t.done()
    return GeoConfig(path, tuple(overrides), table, table_dir)


def _address(t: _Table, name: str, parse: Callable[[str], Any]) -> Any:
    raw = t.get(name, str, None)
    if raw is None:
        return None
    try:
        return parse(raw)
    except ValueError:
        raise _Invalid(t.sub(name), f"{raw!r} is not an {name} address") from None


def _edges(raw: list[Any], base: Path, admin_token: str | None) -> tuple[Edge, ...]:
    """The [[edge]] tables; `admin_token` (purge.token_file's) is every edge's admin token
    unless its own admin_token_file names another."""
    out: list[Edge] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = _Table(item, f"edge[{i}]")
        name = t.get("name", str, _REQUIRED)
        if not _EDGE_NAME.match(name):
            raise _Invalid(t.sub("name"), f"{name!r} is not a valid edge name")
        if name in seen:
            raise _Invalid(t.sub("name"), f"duplicate edge name {name!r} (also edge[{seen[name]}])")
        seen[name] = i
        ipv4 = _address(t, "ipv4", ipaddress.IPv4Address)
        ipv6 = _address(t, "ipv6", ipaddress.IPv6Address)
        if ipv4 is None and ipv6 is None:
            raise _Invalid(t.key, "needs ipv4 or ipv6 (or both)")
        status_url = _status_url(t)
        admin_url = _admin_url(t, status_url)
        token_file = t.get("admin_token_file", str, None)
        token = admin_token
        if token_file is not None:
            token = _token(base / token_file, t.sub("admin_token_file"))
        out.append(
            Edge(
                name=name,
                latitude=t.number("latitude", _REQUIRED, -90.0, 90.0),
                longitude=t.number("longitude", _REQUIRED, -180.0, 180.0),
                ipv4=ipv4,
                ipv6=ipv6,
                weight=t.number("weight", 1.0, 0.0, 1e9),
                capacity=t.number("capacity", 1000.0, 1e-9, 1e12),
                status_url=status_url,
                admin_url=admin_url,
                admin_token=token,
            )
        )
        t.done()
    return tuple(out)


def _edge_list(value: Any, key: str, edges: dict[str, Edge]) -> tuple[Edge, ...]:
    if not isinstance(value, list):
        raise _Invalid(key, f"must be an array of edge names, not {_kind(value)}")
    if not value:
        raise _Invalid(key, "needs at least one edge")
    out = []
    for j, name in enumerate(value):
        if not isinstance(name, str):
            raise _Invalid(f"{key}[{j}]", f"must be a string, not {_kind(name)}")
        if name not in edges:
            raise _Invalid(f"{key}[{j}]", f"unknown edge {name!r}")
        if name in value[:j]:
            raise _Invalid(f"{key}[{j}]", f"edge {name!r} is listed twice")
        out.append(edges[name])
    return tuple(out)


def _pools(raw: list[Any], edges: dict[str, Edge]) -> list[tuple[Pool, str]]:
    out: list[tuple[Pool, str]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = _Table(item, f"pool[{i}]")
        text = t.get("name", str, _REQUIRED)
        try:
            wire = name_from_text(text if text.endswith(".") else text + ".")
        except ValueError as exc:
            raise _Invalid(t.sub("name"), str(exc)) from None
        name = text.lower() if text.endswith(".") else text.lower() + "."
        if name in seen:
            raise _Invalid(t.sub("name"), f"duplicate pool name {name!r} (also pool[{seen[name]}])")
        seen[name] = i
        del wire
        members = _edge_list(t.get("edges", list, _REQUIRED), t.sub("edges"), edges)
        policy_text = t.get("policy", str, "nearest")
        try:
            policy = Policy(policy_text)
        except ValueError:
            choices = " | ".join(p.value for p in Policy)
            raise _Invalid(t.sub("policy"), f"{policy_text!r} is not one of {choices}") from None
        threshold = t.number("load_threshold", 0.8, 0.0, 1.0)
        if threshold <= 0:
            raise _Invalid(t.sub("load_threshold"), "must be above 0")
        hysteresis = t.number("hysteresis", 0.1, 0.0, 1.0)
        if hysteresis >= threshold:
            raise _Invalid(
                t.sub("hysteresis"), f"must be below load_threshold ({threshold}), got {hysteresis}"
            )
        fb_raw = t.get("fallback", (str, list), "all")
        fallback: tuple[Edge, ...] | None
        if isinstance(fb_raw, str):
            if fb_raw != "all":
                raise _Invalid(
                    t.sub("fallback"), f'must be "all" or a list of edge names, not {fb_raw!r}'
                )
            fallback = None
        else:
            fallback = _edge_list(fb_raw, t.sub("fallback"), edges)
        pool = Pool(
            name=name,
            edges=members,
            policy=policy,
            answers=t.number("answers", 1, 1, 64, integer=True),
            ttl=t.number("ttl", 30, 0, MAX_TTL, integer=True),
            load_threshold=threshold,
            hysteresis=hysteresis,
            fallback=fallback,
        )
        t.done()
        out.append((pool, t.sub("name")))
    return out


_SOA_TIMES: Final = (
    ("serial", 1, 2**32 - 1),
    ("refresh", 7200, MAX_TTL),
    ("retry", 3600, MAX_TTL),
    ("expire", 1209600, MAX_TTL),
    ("minimum", 300, MAX_TTL),
)


def _zone_path(base: Path, name: str) -> Path:
    """Where a zone file is: `name` as written in the config (or an $INCLUDE joined to the
    including file's directory), relative to the config file's directory."""
    return Path(name) if Path(name).is_absolute() else base / name


def _read(base: Path, name: str) -> str:
    return _zone_path(base, name).read_text(encoding="utf-8")


def _zones(raw: list[Any], pools: list[tuple[Pool, str]], base: Path) -> tuple[Zone, ...]:
    if not raw:
        raise _Invalid("zone", "at least one [[zone]] is required")
    specs: list[tuple[bytes, list[Record], str, ZoneKey | None]] = []
    origins: dict[bytes, int] = {}
    for i, item in enumerate(raw):
        t = _Table(item, f"zone[{i}]")
        text = t.get("origin", str, _REQUIRED)
        if not text.endswith("."):
            text += "."
        try:
            origin = name_from_text(text)
        except ValueError as exc:
            raise _Invalid(t.sub("origin"), str(exc)) from None
        if origin in origins:
            raise _Invalid(t.sub("origin"), f"zone {text!r} is already zone[{origins[origin]}]")
        origins[origin] = i
        ttl_raw = t.get("ttl", (int, str), 3600)
        try:
            ttl = parse_ttl(str(ttl_raw)) if not isinstance(ttl_raw, int) else ttl_raw
        except ValueError as exc:
            raise _Invalid(t.sub("ttl"), str(exc)) from None
        if not 0 <= ttl <= MAX_TTL:
            raise _Invalid(t.sub("ttl"), f"{ttl} is out of range [0, {MAX_TTL}]")
        records: list[Record] = []
        soa = t.get("soa", dict, None)
        if soa is not None:
            s = _Table(soa, t.sub("soa"))
            names = []
            for field in ("mname", "rname"):
                value = s.get(field, str, _REQUIRED)
                try:
                    names.append(name_from_text(value, origin))
                except ValueError as exc:
                    raise _Invalid(s.sub(field), str(exc)) from None
            times = tuple(s.number(n, d, 0, hi, integer=True) for n, d, hi in _SOA_TIMES)
            s.done()
            records.append(soa_record(origin, ttl, names[0], names[1], times, s.key))
        file = t.get("file", str, None)
        if file is not None:
            path = _zone_path(base, file)
            try:
                content = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise _Invalid(t.sub("file"), f"cannot read {str(path)!r}: {exc}") from None
            records.extend(
                parse_zone_file(content, file, origin, ttl, t.sub("file"), partial(_read, base))
            )
        lines = t.get("records", list, [])
        for j, line in enumerate(lines):
            key = f"{t.sub('records')}[{j}]"
            if not isinstance(line, str):
                raise _Invalid(key, f"must be a string, not {_kind(line)}")
            records.extend(parse_master(line, origin, ttl, lambda _n, k=key: k, directives=False))
        zone_key = None
        dnssec = t.get("dnssec", dict, None)
        if dnssec is not None:
            zone_key = _dnssec(_Table(dnssec, t.sub("dnssec")), base)
            for rdata in zone_key.dnskeys:
                rd = RD_RAW(rdata)
                records.append(Record(origin, DNSKEY, ttl, rd, t.sub("dnssec"), None, rdata.hex()))
        t.done()
        specs.append((origin, records, t.key, zone_key))
    assigned: dict[bytes, list[tuple[Pool, bytes, str]]] = {o: [] for o, _, _, _ in specs}
    for pool, key in pools:
        pname = name_from_text(pool.name)
        owner = max((o for o in assigned if is_subdomain(pname, o)), key=len, default=None)
        if owner is None:
            raise _Invalid(key, f"{pool.name!r} is not inside any configured zone")
        assigned[owner].append((pool, pname, key))
    return tuple(Zone(o, recs, assigned[o], key=k, dnssec=z) for o, recs, k, z in specs)


def _dnssec(t: _Table, base: Path) -> ZoneKey:
    """A zone's `dnssec` table: the signing key and the keys only published beside it."""

    def load(name: str, key: str) -> ec.EllipticCurvePrivateKey:
        try:
            return load_key(_zone_path(base, name))
        except ValueError as exc:
            raise _Invalid(key, str(exc)) from None

    private = load(t.get("key_file", str, _REQUIRED), t.sub("key_file"))
    published = [
        dnskey_rdata(load(name, key).public_key())
        for key, name in t.strings("publish", "a string (a key file)")
    ]
    t.done()
    active = dnskey_rdata(private.public_key())
    for i, rdata in enumerate(published):
        if rdata == active or rdata in published[:i]:
            raise _Invalid(f"{t.sub('publish')}[{i}]", "names a key that is already listed")
    return ZoneKey(private, active, tuple(published))
