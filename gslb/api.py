"""The GSLB HTTP API (aiohttp, its own port): health check, metrics, edge state, status page.

    GET  /                             the status page (gslb.statuspage): map, edges, pools,
                                       catchment, recent state changes; polls the reads below
    GET  /healthz                      {"status": "ok", ...}
    GET  /metrics                      Prometheus text format
    GET  /v1/topology                  edges, pools, this node, recent transitions
                                       (gslb.topology_view)
    GET  /v1/explain?name=N&client=C[&type=A|AAAA]
                                       which edges the answer names for that client, and why
                                       (gslb.explain, through the real selection code)
    GET  /v1/catchment?pool=P[&step=D][&type=A|AAAA]
                                       the edge a client at each grid cell's centre gets
    GET  /v1/edges                     {"version": n, "edges": {name: state}}
    GET  /v1/edges/{name}              one edge's state
    POST|PUT /v1/edges/{name}          JSON {"up": bool, "load": 0..1, "drained": bool}, any subset
                                       ("up" and "load" of an edge with a status_url belong to
                                       its probes: 409)
    POST /v1/edges/{name}/drain        stop answering with the edge
    POST /v1/edges/{name}/undrain      answer with it again
    POST /v1/purge                     JSON {"url": U} | {"prefix": P} | {"tag": T}: purge it
                                       from every edge through their admin APIs (gslb.purge,
                                       gslb.purger); 200 when every edge purged, 502 otherwise,
                                       with a verdict and each edge's result

With `api.token_file` configured, the requests that change state (POST, PUT) need
`Authorization: Bearer TOKEN` (401 otherwise); reads stay open, the status page and the
endpoints it polls included: the page changes nothing, so it never needs the token (and a
browser page holding a token would be one more place to leak it).

The app only talks to a `HealthStore` (the authoritative one: in the parent process when there
are several workers, which pushes every change to them) and to a callable returning merged
query counters (see gslb.metrics). With edge probes (gslb.poller) it also gets `probes`, whose
`probed()` adds a "probe" object to each probed edge's state and whose `export()` feeds the
probe counters in /metrics.

The topology, explain and catchment reads need the config: `config()` gives the current one
(by default the one the probes were last given: the poller is reconfigured with every config
the process adopts, so it is always the config the DNS side answers with). For explanations
the API opens the config's GeoIP database itself, once per config (and reopens it when the
file changes, as the DNS side does), and resolves names with the config's zones.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from geo.errors import GeoError
from geo.locator import GeoIPLocator
from geoedge.http import on_response_prepare
from gslb.config import GslbConfig
from gslb.errors import ExplainError, PurgeError
from gslb.explain import catchment, explain_answer, target
from gslb.health import HealthError, HealthStore, UnknownEdgeError
from gslb.metrics import make_registry
from gslb.models import Clock
from gslb.purge import parse_request, report, verdict
from gslb.purger import Purger
from gslb.selection import on_fallback
from gslb.server import format_addr
from gslb.service import make_locator
from gslb.statuspage import page
from gslb.topology_view import edge_facts, topology
from gslb.zone import Zones, name_to_text

log = logging.getLogger("gslb.api")

__all__ = ["HEALTH", "make_app", "start_api"]

HEALTH = web.AppKey("health", HealthStore)
_INFO = web.AppKey("info", dict)
_REGISTRY = web.AppKey("registry", object)
_PURGER = web.AppKey("purger", Purger)
_CATCHMENTS_MAX: Final = 64  # catchment grids kept (per pool, type and step)

_FIELDS = {"up": bool, "drained": bool, "load": float}


class ProbeSource(Protocol):
    """What the API reads from gslb.poller.EdgePoller."""

    config: GslbConfig  # the config the process answers with (see the module docstring)

    def probed(self) -> Mapping[str, Mapping[str, Any]]: ...

    def export(self) -> Mapping[str, Any]: ...


class _Lookups:
    """Per config: its zones, a GeoIP locator of the API's own (opened on first use) and
    the catchment grids drawn under it."""

    def __init__(self, config: Callable[[], GslbConfig | None], clock: Clock) -> None:
        self.current = config
        self.clock = clock
        self.started = clock()
        self._config: GslbConfig | None = None
        self._zones: Zones | None = None
        self._locator: GeoIPLocator | None = None
        # (pool, type, step) -> (pool generation, grid)
        self.catchments: dict[tuple[str, str, int], tuple[int, dict[str, Any]]] = {}

    def config(self) -> GslbConfig:
        config = self.current()
        if config is None:
            raise ExplainError("the API has no configuration to read (no probe source)", 503)
        if config is not self._config:
            self.close()
            self._config = config
            self._zones = Zones(config.zones)
        return config

    def zones(self) -> Zones:
        self.config()
        assert self._zones is not None
        return self._zones

    def locator(self) -> GeoIPLocator:
        config = self.config()
        try:
            if self._locator is None:
                self._locator = make_locator(config)
            else:
                self._locator.maybe_reload()
        except GeoError as exc:
            if self._locator is None:
                raise ExplainError(f"cannot open the GeoIP database: {exc}", 503) from exc
            log.error("%s", exc)  # keep the open database, as the DNS side does
        return self._locator

    def close(self) -> None:
        if self._locator is not None:
            self._locator.close()
        self._config = self._zones = self._locator = None
        self.catchments.clear()


_LOOKUPS = web.AppKey("lookups", _Lookups)


def make_app(
    health: HealthStore,
    metrics: Callable[[], Mapping[str, Any]],
    *,
    info: Callable[[], Mapping[str, Any]] | None = None,
    synced: Callable[[], Awaitable[object]] | None = None,
    probes: ProbeSource | None = None,
    token: Callable[[], str | None] = lambda: None,
    config: Callable[[], GslbConfig | None] | None = None,
    clock: Clock = time.time,
) -> web.Application:
    """`synced`, when given, is awaited after every change before the reply, so a client that
    got its 200 can rely on every worker answering with the new state. `token` gives the
    current bearer token for changes (None: no token needed); a reload may change it.
    `config` gives the current config (default: `probes.config`; None: the reads that need
    it answer 503)."""
    if config is None:
        config = (lambda: probes.config) if probes is not None else (lambda: None)

    @web.middleware
    async def authorize(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD") and not bearer_ok(request, token()):
            return web.json_response(
                {"error": "this request needs Authorization: Bearer <api.token_file's token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="gslb"'},
            )
        return await handler(request)

    app = web.Application(client_max_size=64 * 1024, middlewares=[authorize])
    app.on_response_prepare.append(on_response_prepare)
    app[HEALTH] = health
    app[_INFO] = {"info": info, "synced": synced, "probes": probes, "token": token}
    app[_PURGER] = Purger()
    current = config

    def fallbacks() -> dict[str, bool]:
        cfg = current()
        return {} if cfg is None else {p.name: on_fallback(p, health) for p in cfg.pools}

    app[_REGISTRY] = make_registry(
        metrics,
        health.snapshot,
        probes.export if probes is not None else None,
        health.transitions.counts,
        pools=fallbacks,
        purges=app[_PURGER].export,
    )
    app[_LOOKUPS] = _Lookups(config, clock)
    app.on_cleanup.append(_close_lookups)
    app.cleanup_ctx.append(_purger_ctx)
    app.router.add_get("/", _status_page)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/topology", _topology)
    app.router.add_get("/v1/explain", _explain)
    app.router.add_get("/v1/catchment", _catchment)
    app.router.add_get("/v1/edges", _edges)
    app.router.add_get("/v1/edges/{name}", _edge)
    app.router.add_post("/v1/edges/{name}", _set_edge)
    app.router.add_put("/v1/edges/{name}", _set_edge)
    app.router.add_post("/v1/edges/{name}/drain", _drain)
    app.router.add_post("/v1/edges/{name}/undrain", _undrain)
    app.router.add_post("/v1/purge", _purge)
    return app


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_ok(request: web.BaseRequest, token: str | None) -> bool:
    """True when no token is required or the request carries it (compared in constant time)."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _healthz(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"status": "ok", "health_version": request.app[HEALTH].version}
    info = request.app[_INFO]["info"]
    if info is not None:
        body.update(info())
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    output = generate_latest(request.app[_REGISTRY])  # type: ignore[arg-type]
    return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _probed(app: web.Application) -> Mapping[str, Mapping[str, Any]]:
    probes: ProbeSource | None = app[_INFO]["probes"]
    return probes.probed() if probes is not None else {}


def _facts(app: web.Application) -> dict[str, dict[str, Any]]:
    """Per configured edge: addresses, place and pools (nothing when no config is known)."""
    config = app[_LOOKUPS].current()
    if config is None:
        return {}
    keys = ("ipv4", "ipv6", "latitude", "longitude", "pools")
    out = {}
    for edge in config.edges:
        facts = edge_facts(edge, config)
        out[edge.name] = {k: facts[k] for k in keys}
    return out


async def _edges(request: web.Request) -> web.Response:
    snap = request.app[HEALTH].snapshot()
    facts = _facts(request.app)
    for name, state in snap["edges"].items():
        state.update(facts.get(name, {}))
    for name, probe in _probed(request.app).items():
        if name in snap["edges"]:
            snap["edges"][name]["probe"] = dict(probe)
    return web.json_response(snap)


def _edge_body(app: web.Application, name: str) -> dict[str, Any]:
    snap = app[HEALTH].snapshot()
    body = {"name": name, "version": snap["version"], **snap["edges"][name]}
    body.update(_facts(app).get(name, {}))
    probe = _probed(app).get(name)
    if probe is not None:
        body["probe"] = dict(probe)
    return body


# -- status page, topology, explanations ---------------------------------------------------


async def _close_lookups(app: web.Application) -> None:
    app[_LOOKUPS].close()


async def _status_page(request: web.Request) -> web.Response:
    body, csp = page()
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


def _node(app: web.Application, config: GslbConfig) -> dict[str, Any]:
    """This DNS node: where it runs, what it serves, how it probes."""
    lookups = app[_LOOKUPS]
    h = config.health
    node: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "config": config.source,
        "started": lookups.started,
        "dns_listen": [format_addr(host, port) for host, port in config.server.listen],
        "api_listen": format_addr(*config.api.listen),
        "workers": 1,  # one process serves everything, unless `info` says otherwise
        "zones": [name_to_text(z.origin) for z in config.zones],
        "geo_database": str(config.geo.database or "bundled GeoLite2 City snapshot"),
        "probes": {"interval": h.interval, "timeout": h.timeout, "rise": h.rise, "fall": h.fall},
        "token_required_for_changes": app[_INFO]["token"]() is not None,
    }
    info = app[_INFO]["info"]
    if info is not None:  # a parent of workers: their pids, readiness, query counts
        extra = dict(info())
        node["worker_processes"] = extra.pop("workers", [])
        node["workers"] = len(node["worker_processes"])
        node.update(extra)
    return node


def _explain_error(exc: ExplainError) -> web.Response:
    return _error(exc.status, str(exc))


async def _topology(request: web.Request) -> web.Response:
    app = request.app
    lookups = app[_LOOKUPS]
    try:
        config = lookups.config()
    except ExplainError as exc:
        return _explain_error(exc)
    doc = topology(config, app[HEALTH], _probed(app), _node(app, config), lookups.clock())
    return web.json_response(doc)


async def _explain(request: web.Request) -> web.Response:
    q = request.query
    if not q.get("name") or not q.get("client"):
        return _error(
            400,
            "name and client are required, e.g. ?name=www.example.test"
            "&client=192.0.2.1 (optional: &type=AAAA)",
        )
    lookups = request.app[_LOOKUPS]
    try:
        doc = explain_answer(
            lookups.zones(),
            lookups.locator(),
            request.app[HEALTH],
            q["name"],
            q["client"],
            q.get("type", "A"),
        )
    except ExplainError as exc:
        return _explain_error(exc)
    return web.json_response(doc)


async def _catchment(request: web.Request) -> web.Response:
    q = request.query
    if not q.get("pool"):
        return _error(
            400,
            "pool is required, e.g. ?pool=www.example.test. (optional: "
            "&step=5 degrees, &type=AAAA)",
        )
    health = request.app[HEALTH]
    lookups = request.app[_LOOKUPS]
    try:
        step = int(q.get("step", "5"))
    except ValueError:
        return _error(400, f"step must be a whole number of degrees, not {q['step']!r}")
    try:
        t = target(lookups.zones(), q["pool"], q.get("type", "A"))
        pool = t.answer.pool
        key = (pool.name, t.rtype, step)
        generation = health.generations[health.slot(pool.name)]
        held = lookups.catchments.get(key)
        if held is not None and held[0] == generation:
            return web.json_response(held[1])
        doc = catchment(pool, health, step)
    except ExplainError as exc:
        return _explain_error(exc)
    if len(lookups.catchments) >= _CATCHMENTS_MAX:
        lookups.catchments.clear()
    lookups.catchments[key] = (generation, doc)
    return web.json_response(doc)


async def _edge(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    name = request.match_info["name"]
    if name not in health:
        return _error(404, f"unknown edge {name!r}")
    return web.json_response(_edge_body(request.app, name))


async def _set_edge(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    name = request.match_info["name"]
    if name not in health:
        return _error(404, f"unknown edge {name!r}")
    try:
        raw = await request.read()
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, 'body must be a JSON object such as {"up": true, "load": 0.5}')
    if not isinstance(body, dict) or not body:
        return _error(
            400, 'body must be a non-empty JSON object with "up", "load" and/or "drained"'
        )
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        return _error(400, f"unknown field(s) {', '.join(unknown)}: expected up, load, drained")
    for key in ("up", "drained"):
        if key in body and not isinstance(body[key], bool):
            return _error(400, f'"{key}" must be true or false, got {json.dumps(body[key])}')
    load = body.get("load")
    if load is not None and (isinstance(load, bool) or not isinstance(load, int | float)):
        return _error(400, f'"load" must be a number between 0 and 1, got {json.dumps(load)}')
    if "load" in body and load is None:
        return _error(400, '"load" must be a number between 0 and 1, got null')
    owned = sorted({"up", "load"} & set(body))
    if owned and name in _probed(request.app):
        return _error(
            409,
            f"edge {name!r} has a status_url: its {' and '.join(owned)} come(s) from its "
            "probes; drain it to take it out of answers",
        )
    try:
        health.update(
            name,
            up=body.get("up"),
            drained=body.get("drained"),
            load=float(load) if load is not None else None,
            source=_source(request),
        )
    except UnknownEdgeError as exc:
        return _error(404, str(exc))
    except HealthError as exc:
        return _error(400, str(exc))
    return await _changed(request, name)


async def _drain_to(request: web.Request, drained: bool) -> web.Response:
    health = request.app[HEALTH]
    name = request.match_info["name"]
    try:
        health.update(name, drained=drained, source=_source(request))
    except UnknownEdgeError as exc:
        return _error(404, str(exc))
    return await _changed(request, name)


async def _changed(request: web.Request, name: str) -> web.Response:
    """The answer to a change of edge `name`, once every worker has it: its state, or a
    409 when a config reload took the edge away meanwhile (its state went with it)."""
    await _synced(request)
    if name not in request.app[HEALTH]:
        return _error(409, f"edge {name!r} was removed by a config reload meanwhile")
    return web.json_response(_edge_body(request.app, name))


def _source(request: web.Request) -> str:
    """Where a change came from, for the transitions it causes."""
    return f"API {request.method} {request.path} from {request.remote}"


async def _synced(request: web.Request) -> None:
    synced = request.app[_INFO]["synced"]
    if synced is not None:
        await synced()


async def _drain(request: web.Request) -> web.Response:
    return await _drain_to(request, True)


async def _undrain(request: web.Request) -> web.Response:
    return await _drain_to(request, False)


async def _purger_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[_PURGER].start()
    yield
    await app[_PURGER].close()


async def _purge(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _error(400, 'body must be JSON such as {"url": "http://www.example.test/a"}')
    try:
        wanted = parse_request(body)
        config = request.app[_LOOKUPS].config()
    except (PurgeError, ExplainError) as exc:
        return _error(exc.status, str(exc))
    results = await request.app[_PURGER].purge(config, wanted)
    doc = report(wanted, results)
    log.info(
        "purge %s from %s: %s (%d ok, %d failed)",
        wanted.describe(),
        request.remote,
        doc["verdict"],
        doc["edges_ok"],
        doc["edges_failed"],
    )
    return web.json_response(doc, status=200 if verdict(results) == "ok" else 502)


async def start_api(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: any free port); returns the runner and the bound port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return runner, int(sock.getsockname()[1])
