"""Topology files: which GeoEdge processes `gslb run` starts on one machine, and their configs.

Pure: TOML text -> a frozen, validated `Topology` -> a `RunPlan` (each process's command
line, log file and rendered config). gslb/launcher.py does the I/O. The embedded default,
gslb/topology.toml, is the layout of `make run` and the schema by example;
docs/configuration.md ("Topology files") describes every key. Errors are TopologyErrors
reading "FILE: KEY: PROBLEM"; the file is read with gslb.config's table helpers, so errors
are worded as a config's are and unknown keys are errors too.

Every rendered config goes through the loader of the program that will read it
(gslb.config.parse_config, edge.config.from_mapping) before anything starts, so a topology
that validates here cannot start a process on a config that program refuses. That check is
the one place gslb imports edge.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import edge.config
import edge.errors
from geo.location import IPNetwork
from gslb.config import _REQUIRED, _array_of_tables, _Invalid, _Table, parse_config, parse_hostport
from gslb.errors import ConfigError, TopologyError
from gslb.server import format_addr
from gslb.zone import name_from_text

__all__ = [
    "ClientSpec",
    "EdgeSpec",
    "GslbSpec",
    "OriginSpec",
    "Probes",
    "Process",
    "RunPlan",
    "Topology",
    "default_topology",
    "default_topology_text",
    "http_url",
    "listeners",
    "load_topology",
    "parse_topology",
    "plan",
    "toml_text",
]

HostPort = tuple[str, int]
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")  # also a file name and a cdn-id
_BARE_KEY: Final = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class Probes:
    """How often gslb probes the edges and the edges probe the origins."""

    interval: float = 1.0
    rise: int = 1
    fall: int = 2

    @property
    def timeout(self) -> float:
        return self.interval / 2

    @property
    def jitter(self) -> float:
        return self.interval / 10


@dataclass(frozen=True, slots=True)
class GslbSpec:
    listen: HostPort
    api: HostPort
    zone: str  # absolute, with the trailing dot
    pool: str  # the pool's name relative to the zone, e.g. "www"
    ttl: int
    workers: int

    @property
    def pool_name(self) -> str:
        return f"{self.pool}.{self.zone}"


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    name: str
    place: str
    latitude: float
    longitude: float
    listen: HostPort  # its host (IPv4) is the address DNS answers name the edge by
    admin: HostPort
    workers: int

    @property
    def url(self) -> str:
        return http_url(self.listen)

    @property
    def status_url(self) -> str:
        return http_url(self.admin, "/__edge/status")


@dataclass(frozen=True, slots=True)
class OriginSpec:
    name: str
    listen: HostPort

    @property
    def url(self) -> str:
        return http_url(self.listen)


def http_url(address: HostPort, path: str = "") -> str:
    return f"http://{format_addr(*address)}{path}"


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """A client network to try (`dig +subnet=`), and where it is."""

    place: str
    subnet: IPNetwork


@dataclass(frozen=True, slots=True)
class Topology:
    source: str  # the file name errors refer to
    run_dir: str  # as written: relative to the directory `gslb run` starts in
    probes: Probes
    gslb: GslbSpec
    edges: tuple[EdgeSpec, ...]
    origins: tuple[OriginSpec, ...]
    clients: tuple[ClientSpec, ...]


# -- loading ------------------------------------------------------------------------------------


def default_topology_text() -> str:
    return resources.files("gslb").joinpath("topology.toml").read_text(encoding="utf-8")


def default_topology() -> Topology:
    """The layout of `make run` (gslb/topology.toml)."""
    return parse_topology(default_topology_text(), "topology.toml")


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file. Raises TopologyError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot read: {exc}") from None
    return parse_topology(text, str(path))


def parse_topology(text: str, source: str) -> Topology:
    """Validate TOML `text`; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{source}: invalid TOML: {exc}") from None
    try:
        return _build(data, source)
    except _Invalid as exc:
        raise TopologyError(f"{source}: {exc.key}: {exc.problem}") from None


def _build(data: dict[str, Any], source: str) -> Topology:
    top = _Table(data, "")
    top.used.update(("probes", "gslb", "edge", "origin", "client"))
    run_dir = top.get("run_dir", str, ".run")
    if not run_dir.strip():
        raise _Invalid("run_dir", "must not be empty")
    top.done()
    probes = _probes(_Table(data.get("probes", {}), "probes"))
    gslb = _gslb(_Table(data.get("gslb", {}), "gslb"))
    names: dict[str, str] = {"gslb": "gslb"}  # process name -> its key
    edges = tuple(
        _edge(_Table(raw, f"edge[{i}]"), names)
        for i, raw in enumerate(_array_of_tables(data, "edge"))
    )
    if not edges:
        raise _Invalid("edge", "at least one [[edge]] is required")
    origins = tuple(
        _origin(_Table(raw, f"origin[{i}]"), names)
        for i, raw in enumerate(_array_of_tables(data, "origin"))
    )
    if not origins:
        raise _Invalid("origin", "at least one [[origin]] is required")
    clients = tuple(
        _client(_Table(raw, f"client[{i}]"))
        for i, raw in enumerate(_array_of_tables(data, "client"))
    )
    topology = Topology(source, run_dir, probes, gslb, edges, origins, clients)
    _check_addresses(topology)
    return topology


def _address(t: _Table, name: str, default: Any = _REQUIRED) -> HostPort:
    raw = t.get(name, str, default)
    host, port = parse_hostport(raw, t.sub(name))
    if port == 0:
        raise _Invalid(t.sub(name), "port 0 is not allowed: the other processes need the port")
    return host, port


def _process_name(t: _Table, names: dict[str, str]) -> str:
    name = t.get("name", str, _REQUIRED)
    if not _NAME.match(name):
        raise _Invalid(
            t.sub("name"), f"{name!r} is not a name: lower-case letters, digits and '-', 1-31"
        )
    if name in names:
        raise _Invalid(t.sub("name"), f"{name!r} is already the name of {names[name]}")
    names[name] = t.key
    return str(name)


def _probes(t: _Table) -> Probes:
    d = Probes()
    probes = Probes(
        interval=float(t.number("interval", d.interval, 0.1, 60.0)),
        rise=t.number("rise", d.rise, 1, 100, integer=True),
        fall=t.number("fall", d.fall, 1, 100, integer=True),
    )
    t.done()
    return probes


def _gslb(t: _Table) -> GslbSpec:
    zone = t.get("zone", str, "example.test").lower().rstrip(".") + "."
    pool = t.get("pool", str, "www").lower().rstrip(".")
    for key, name in (("zone", zone), ("pool", f"{pool}.{zone}")):
        try:
            name_from_text(name)
        except ValueError as exc:
            raise _Invalid(t.sub(key), str(exc)) from None
    if not pool or "." in pool or pool in ("@", "*"):
        raise _Invalid(t.sub("pool"), f"{pool!r} is not one label such as 'www'")
    spec = GslbSpec(
        listen=_address(t, "listen", "127.0.0.1:5353"),
        api=_address(t, "api", "127.0.0.1:8053"),
        zone=zone,
        pool=pool,
        ttl=t.number("ttl", 5, 0, 86400, integer=True),
        workers=t.number("workers", 1, 1, 64, integer=True),
    )
    t.done()
    return spec


def _edge(t: _Table, names: dict[str, str]) -> EdgeSpec:
    name = _process_name(t, names)
    listen = _address(t, "listen")
    if ipaddress.ip_address(listen[0]).version != 4:
        raise _Invalid(t.sub("listen"), f"{listen[0]} is not IPv4: the pool answers A records")
    spec = EdgeSpec(
        name=name,
        place=t.get("place", str, name),
        latitude=float(t.number("latitude", _REQUIRED, -90.0, 90.0)),
        longitude=float(t.number("longitude", _REQUIRED, -180.0, 180.0)),
        listen=listen,
        admin=_address(t, "admin"),
        workers=t.number("workers", 1, 1, 64, integer=True),
    )
    t.done()
    return spec


def _origin(t: _Table, names: dict[str, str]) -> OriginSpec:
    spec = OriginSpec(name=_process_name(t, names), listen=_address(t, "listen"))
    t.done()
    return spec


def _client(t: _Table) -> ClientSpec:
    place = t.get("place", str, _REQUIRED)
    raw = t.get("subnet", str, _REQUIRED)
    try:
        subnet = ipaddress.ip_network(raw)
    except ValueError as exc:
        raise _Invalid(t.sub("subnet"), f"{raw!r} is not a network: {exc}") from None
    t.done()
    return ClientSpec(place, subnet)


def listeners(topology: Topology) -> list[tuple[str, HostPort]]:
    """Every address a process of `topology` listens on, with its key in the file."""
    g = topology.gslb
    out = [("gslb.listen", g.listen), ("gslb.api", g.api)]
    for i, e in enumerate(topology.edges):
        out += [(f"edge[{i}].listen", e.listen), (f"edge[{i}].admin", e.admin)]
    out += [(f"origin[{i}].listen", o.listen) for i, o in enumerate(topology.origins)]
    return out


def _check_addresses(topology: Topology) -> None:
    """No two listeners on one address and port; no two edges on one host (a DNS answer
    names an edge by its address alone)."""
    seen: dict[HostPort, str] = {}
    for key, address in listeners(topology):
        if address in seen:
            raise _Invalid(key, f"{format_addr(*address)} is already {seen[address]}")
        seen[address] = key
    hosts: dict[str, str] = {}
    for i, e in enumerate(topology.edges):
        host = e.listen[0]
        if host in hosts:
            raise _Invalid(
                f"edge[{i}].listen",
                f"host {host} is already {hosts[host]}'s: DNS answers tell edges apart by address",
            )
        hosts[host] = f"edge[{i}]"


# -- rendering ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Process:
    """One process to start: `python ARGS`, its output going to `log`."""

    name: str
    role: str  # "gslb", "edge" or "origin"
    args: tuple[str, ...]
    log: Path


@dataclass(frozen=True, slots=True)
class RunPlan:
    topology: Topology
    run_dir: Path  # absolute
    configs: tuple[tuple[Path, str], ...]  # rendered config files and their text
    cache_dirs: tuple[Path, ...]
    processes: tuple[Process, ...]  # in start order: origins, edges, gslb

    @property
    def etc(self) -> Path:
        return self.run_dir / "etc"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"


def plan(topology: Topology, run_dir: Path) -> RunPlan:
    """What `gslb run` writes and starts for `topology` under the absolute `run_dir`.
    Raises TopologyError when a rendered config does not load."""
    etc, logs, cache = run_dir / "etc", run_dir / "logs", run_dir / "cache"
    configs: list[tuple[Path, str]] = []
    processes = [
        Process(
            o.name,
            "origin",
            ("-m", "edge", "demo-origin", "--listen", format_addr(*o.listen), "--name", o.name),
            logs / f"{o.name}.log",
        )
        for o in topology.origins
    ]
    for i, e in enumerate(topology.edges):
        path = etc / f"edge-{e.name}.toml"
        text = toml_text(edge_config(topology, e, run_dir), _rendered(topology))
        try:
            edge.config.from_mapping(tomllib.loads(text), str(path), str(etc))
        except edge.errors.ConfigError as exc:
            raise _unloadable(topology, f"edge[{i}]", path, exc) from None
        configs.append((path, text))
        processes.append(
            Process(
                e.name, "edge", ("-m", "edge", "serve", "-c", str(path)), logs / f"{e.name}.log"
            )
        )
    path = etc / "gslb.toml"
    text = toml_text(gslb_config(topology), _rendered(topology))
    try:
        parse_config(text, str(path), base=etc)
    except ConfigError as exc:
        raise _unloadable(topology, "gslb", path, exc) from None
    configs.append((path, text))
    processes.append(
        Process("gslb", "gslb", ("-m", "gslb", "serve", "-c", str(path)), logs / "gslb.log")
    )
    return RunPlan(
        topology,
        run_dir,
        tuple(configs),
        tuple(cache / e.name for e in topology.edges),
        tuple(processes),
    )


def _rendered(topology: Topology) -> str:
    return f"Written by `gslb run` from {topology.source}, on every start: edit that instead."


def _unloadable(topology: Topology, key: str, path: Path, exc: Exception) -> TopologyError:
    return TopologyError(f"{topology.source}: {key}: the rendered {path.name} does not load: {exc}")


def gslb_config(topology: Topology) -> dict[str, Any]:
    """The gslb config of `topology` (as a TOML tree): one zone, one nearest pool of all edges."""
    g, p = topology.gslb, topology.probes
    host = g.listen[0]
    ns = "A" if ipaddress.ip_address(host).version == 4 else "AAAA"
    return {
        "server": {"listen": [format_addr(*g.listen)], "workers": g.workers},
        "api": {"listen": format_addr(*g.api)},
        "health": {
            "interval": p.interval,
            "timeout": p.timeout,
            "rise": p.rise,
            "fall": p.fall,
            "jitter": p.jitter,
        },
        "zone": [
            {
                "origin": g.zone,
                "soa": {"mname": "ns1", "rname": "hostmaster"},
                "records": ["@ NS ns1", f"ns1 {ns} {host}"],
            }
        ],
        "edge": [
            {
                "name": e.name,
                "ipv4": e.listen[0],
                "latitude": e.latitude,
                "longitude": e.longitude,
                "status_url": e.status_url,
            }
            for e in topology.edges
        ],
        "pool": [
            {
                "name": g.pool_name,
                "edges": [e.name for e in topology.edges],
                "policy": "nearest",
                "ttl": g.ttl,
            }
        ],
    }


def edge_config(topology: Topology, spec: EdgeSpec, run_dir: Path) -> dict[str, Any]:
    """The config of edge `spec` (as a TOML tree): every origin of the topology in its pool."""
    p = topology.probes
    return {
        "server": {
            "listen": [format_addr(*spec.listen)],
            "workers": spec.workers,
            "node_id": spec.name,  # the edges share a host name and a port: the default clashes
        },
        "admin": {"listen": format_addr(*spec.admin)},
        "cache": {"dir": str(run_dir / "cache" / spec.name), "size_limit": "256MiB"},
        "pool": {
            "origins": [o.url for o in topology.origins],
            "probe": {
                "path": "/health",
                "interval": p.interval,
                "timeout": p.timeout,
                "rise": p.rise,
                "fall": p.fall,
                "jitter": p.jitter,
            },
        },
        "log": {"access_log": str(run_dir / "logs" / f"{spec.name}.access.log")},
    }


def toml_text(data: Mapping[str, Any], comment: str = "") -> str:
    """TOML for a tree of tables, arrays of tables and scalars (what the configs need),
    after `comment` as a comment line."""
    lines: list[str] = [f"# {comment}"] if comment else []
    _table(lines, (), data)
    return "\n".join(lines) + "\n"


def _table(
    lines: list[str], path: tuple[str, ...], table: Mapping[str, Any], array: bool = False
) -> None:
    scalars = [(k, v) for k, v in table.items() if not _is_table(v) and not _is_tables(v)]
    if path and (scalars or array):
        lines += ["", f"[[{_key(path)}]]" if array else f"[{_key(path)}]"]
    lines += [f"{_key((k,))} = {_value(v)}" for k, v in scalars]
    for k, v in table.items():
        if _is_table(v):
            _table(lines, (*path, k), v)
        elif _is_tables(v):
            for item in v:
                _table(lines, (*path, k), item, array=True)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(path: tuple[str, ...]) -> str:
    for part in path:
        if not _BARE_KEY.match(part):
            raise ValueError(f"not a bare TOML key: {part!r}")
    return ".".join(path)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value}")
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's, but for characters beyond the BMP (JSON writes UTF-16
        # surrogate pairs, TOML wants the character) and DEL (TOML wants it escaped).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} as TOML")
