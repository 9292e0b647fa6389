"""The GSLB HTTP API (aiohttp, its own port): health check, metrics, edge state.

    GET  /healthz                      {"status": "ok", ...}
    GET  /metrics                      Prometheus text format
    GET  /v1/edges                     {"version": n, "edges": {name: state}}
    GET  /v1/edges/{name}              one edge's state
    POST|PUT /v1/edges/{name}          JSON {"up": bool, "load": 0..1, "drained": bool}, any subset
                                       ("up" and "load" of an edge with a status_url belong to
                                       its probes: 409)
    POST /v1/edges/{name}/drain        stop answering with the edge
    POST /v1/edges/{name}/undrain      answer with it again

With `api.token_file` configured, the requests that change state (POST, PUT) need
`Authorization: Bearer TOKEN` (401 otherwise); reads stay open.

The app only talks to a `HealthStore` (the authoritative one: in the parent process when there
are several workers, which pushes every change to them) and to a callable returning merged
query counters (see gslb.metrics). With edge probes (gslb.poller) it also gets `probes`, whose
`probed()` adds a "probe" object to each probed edge's state and whose `export()` feeds the
probe counters in /metrics.
"""

from __future__ import annotations

import hmac
import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gslb.health import HealthError, HealthStore, UnknownEdgeError
from gslb.metrics import make_registry

__all__ = ["HEALTH", "make_app", "start_api"]

HEALTH = web.AppKey("health", HealthStore)
_INFO = web.AppKey("info", dict)
_REGISTRY = web.AppKey("registry", object)

_FIELDS = {"up": bool, "drained": bool, "load": float}


class ProbeSource(Protocol):
    """What the API reads from gslb.poller.EdgePoller."""

    def probed(self) -> Mapping[str, Mapping[str, Any]]: ...

    def export(self) -> Mapping[str, Any]: ...


def make_app(
    health: HealthStore,
    metrics: Callable[[], Mapping[str, Any]],
    *,
    info: Callable[[], Mapping[str, Any]] | None = None,
    synced: Callable[[], Awaitable[object]] | None = None,
    probes: ProbeSource | None = None,
    token: Callable[[], str | None] = lambda: None,
) -> web.Application:
    """`synced`, when given, is awaited after every change before the reply, so a client that
    got its 200 can rely on every worker answering with the new state. `token` gives the
    current bearer token for changes (None: no token needed); a reload may change it."""

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
    app[HEALTH] = health
    app[_INFO] = {"info": info, "synced": synced, "probes": probes}
    app[_REGISTRY] = make_registry(
        metrics, health.snapshot, probes.export if probes is not None else None
    )
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/edges", _edges)
    app.router.add_get("/v1/edges/{name}", _edge)
    app.router.add_post("/v1/edges/{name}", _set_edge)
    app.router.add_put("/v1/edges/{name}", _set_edge)
    app.router.add_post("/v1/edges/{name}/drain", _drain)
    app.router.add_post("/v1/edges/{name}/undrain", _undrain)
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


async def _edges(request: web.Request) -> web.Response:
    snap = request.app[HEALTH].snapshot()
    for name, probe in _probed(request.app).items():
        if name in snap["edges"]:
            snap["edges"][name]["probe"] = dict(probe)
    return web.json_response(snap)


def _edge_body(app: web.Application, name: str) -> dict[str, Any]:
    snap = app[HEALTH].snapshot()
    body = {"name": name, "version": snap["version"], **snap["edges"][name]}
    probe = _probed(app).get(name)
    if probe is not None:
        body["probe"] = dict(probe)
    return body


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
        )
    except UnknownEdgeError as exc:
        return _error(404, str(exc))
    except HealthError as exc:
        return _error(400, str(exc))
    await _synced(request)
    return web.json_response(_edge_body(request.app, name))


async def _drain_to(request: web.Request, drained: bool) -> web.Response:
    health = request.app[HEALTH]
    name = request.match_info["name"]
    try:
        health.set_drained(name, drained)
    except UnknownEdgeError as exc:
        return _error(404, str(exc))
    await _synced(request)
    return web.json_response(_edge_body(request.app, name))


async def _synced(request: web.Request) -> None:
    synced = request.app[_INFO]["synced"]
    if synced is not None:
        await synced()


async def _drain(request: web.Request) -> web.Response:
    return await _drain_to(request, True)


async def _undrain(request: web.Request) -> web.Response:
    return await _drain_to(request, False)


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
