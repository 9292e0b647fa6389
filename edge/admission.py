"""Request admission: what the edge refuses before a request touches the cache or an origin.

Limits (header count and size, URL length, body size), the Host (one, well formed, listed in
server.hosts when that is set; an absolute-form target naming it), methods and transfer
codings the edge does not forward, HTTP major versions other than 1, and forwarding loops
(this node's id in CDN-Loop or Via, or too many hops). The full handler asks `check` and
`check_loop`; the raw fast path asks `admits_plain` of the requests it would answer, the
same limits and the same loop decision, and leaves every refusal to the full handler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web

from edge import cache_policy as cp
from edge.aiohttp_internals import requested_version
from edge.config import EdgeConfig
from edge.exchange import bare_host, status_response, transfer_coding
from edge.fasthit import SimpleGet
from edge.headers import loop_verdict, valid_host
from edge.metrics import Metrics

log = logging.getLogger("edge.proxy")


class Admission:
    """The admission rules of one configuration (a reload makes a new one)."""

    def __init__(self, config: EdgeConfig, metrics: Metrics) -> None:
        self.metrics = metrics
        self._hosts = frozenset(config.server.hosts)
        limits = config.limits
        self._max_headers = limits.max_headers
        self._max_header_bytes = limits.max_header_bytes
        self._max_url = limits.max_url_length
        self._max_body = limits.max_body_bytes
        self._node_id = config.server.node_id
        self._max_hops = config.server.max_hops
        self._cache_tag = config.server.cache_name

    def admits_plain(self, req: SimpleGet) -> bool:
        """Whether `check` and `check_loop` would let the plain GET `req` pass."""
        return not (
            req.fields > self._max_headers
            or req.field_bytes > self._max_header_bytes
            or len(req.target) > self._max_url
            or not valid_host(req.host)
            or (self._hosts and bare_host(req.host) not in self._hosts)
            or (req.loop_fields and self.loop_verdict(req.loop_fields) is not None)
        )

    def check(self, request: web.BaseRequest) -> web.Response | None:
        """Requests we refuse before touching an origin; None when the request may pass."""
        method = request.method
        if requested_version(request).major != 1:
            # RFC 9110 §15.6.6: an HTTP/2.0 (or 3.0) request line on an HTTP/1 connection.
            return status_response(505)
        if method == "CONNECT":
            return status_response(405, Allow="GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
        raw_headers = request.raw_headers
        if len(raw_headers) > self._max_headers:
            return status_response(431)
        size = sum([len(k) + len(v) for k, v in raw_headers]) + 4 * len(raw_headers)
        if size > self._max_header_bytes:
            return status_response(431)
        target = request.raw_path
        if len(target) > self._max_url:
            return status_response(414)
        hosts = request.headers.getall("Host", [])
        if len(hosts) != 1 and request.version >= (1, 1):
            return status_response(400)
        host_header = hosts[0].lower() if hosts else ""
        if not valid_host(host_header):
            return status_response(400)
        if not target.startswith("/"):
            if target == "*" and method == "OPTIONS":
                return status_response(400)
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return status_response(400)
            authority = parts.netloc.lower().rsplit("@", 1)[-1]
            # Absolute-form naming another host than Host: never an open proxy. (Requiring
            # them to agree also keeps the Host we forward and key the cache by correct.)
            if bare_host(authority) != bare_host(host_header):
                return status_response(421)
        if self._hosts and bare_host(host_header) not in self._hosts:
            return status_response(421)
        if transfer_coding(request.headers):
            # aiohttp undoes chunked only; forwarding the rest as the body would change it
            # (RFC 9112 §6.1). The body was not read: the connection closes.
            resp = status_response(501)
            resp.force_close()
            return resp
        length = request.content_length
        if length is not None and length > self._max_body:
            return status_response(413)
        return None

    def check_loop(self, request: web.BaseRequest) -> web.Response | None:
        """508 for a request that already went through this node (our node id in its
        CDN-Loop or Via) or through more than server.max_hops CDN-Loop entries: forwarding
        it would make it come back again, until something times out. None otherwise."""
        headers = request.headers
        if "CDN-Loop" not in headers and "Via" not in headers:
            return None
        verdict = self.loop_verdict(headers.items())
        if verdict is None:
            return None
        self.metrics.loops.labels(verdict).inc()
        log.warning(
            "forwarding loop (%s) for %s %s: CDN-Loop %r, Via %r",
            verdict,
            request.method,
            request.raw_path[:200],
            ", ".join(headers.getall("CDN-Loop", []))[:500],
            ", ".join(headers.getall("Via", []))[:500],
        )
        # no-store: a cache in front (another edge of the loop) must not keep the refusal.
        return status_response(
            508,
            cp.cache_status(self._cache_tag, fwd="request", detail=verdict),
            **{"Cache-Control": "no-store"},
        )

    def loop_verdict(
        self, pairs: Iterable[tuple[str, str]]
    ) -> Literal["loop", "too-many-hops"] | None:
        """The one loop decision, for the fast path (which leaves a refusal to `handle`)
        and `check_loop` alike."""
        return loop_verdict(pairs, self._node_id, self._max_hops)
