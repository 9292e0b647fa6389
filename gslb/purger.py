"""Fleet-wide purges, the I/O half: requests to every edge's admin API at once (aiohttp).

`Purger.purge(config, request)` sends the purge to every target of gslb.purge.plan
concurrently (at most MAX_CONCURRENT in flight) through one `ClientSession`; an edge whose
attempt gets no reply, a 5xx or a 429 is asked again after gslb.purge.backoff's delay, up
to `purge.attempts` requests per edge, each bounded by `purge.timeout`. The whole purge thus
takes at most about attempts x timeout plus the backoffs. What to send, whether to retry and
the verdict are gslb.purge's decisions; aiohttp's exceptions end here, as failed attempts.
`counts` ((edge, "ok"|"failed") -> purges) feeds gslb_edge_purges_total.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp

from gslb.config import GslbConfig, PurgeConfig
from gslb.purge import (
    EDGE_WAIT_SHARE,
    Attempt,
    EdgeResult,
    Judgement,
    PurgeRequest,
    PurgeTarget,
    backoff,
    judge,
    plan,
    result,
)

log = logging.getLogger("gslb.purge")

__all__ = ["MAX_CONCURRENT", "Purger"]

MAX_CONCURRENT: Final = 64  # edges purged at once
MAX_REPLY: Final = 64 * 1024  # bytes of an edge's reply read at most
_HEADERS: Final = {"User-Agent": "geoedge-gslb-purge", "Accept": "application/json"}

Sleep = Callable[[float], Awaitable[None]]


class Purger:
    """See the module docstring. `start()` and `close()` run inside the event loop."""

    def __init__(self, *, sleep: Sleep = asyncio.sleep) -> None:
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self.counts: dict[tuple[str, str], int] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONCURRENT, force_close=True),
            headers=_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def export(self) -> dict[str, Any]:
        return {"purges": [[e, r, n] for (e, r), n in sorted(self.counts.items())]}

    async def purge(self, config: GslbConfig, request: PurgeRequest) -> list[EdgeResult]:
        """Purge `request` from every edge of `config`; one result per edge, config order."""
        limit = asyncio.Semaphore(MAX_CONCURRENT)

        async def one(target: PurgeTarget) -> EdgeResult:
            async with limit:
                return await self._edge(target, request, config.purge)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(t)) for t in plan(config)]
        results = [t.result() for t in tasks]
        for r in results:
            key = (r.edge, "ok" if r.ok else "failed")
            self.counts[key] = self.counts.get(key, 0) + 1
            if not r.ok:
                log.warning("purge %s on edge %s failed: %s", request.describe(), r.edge, r.error)
        return results

    async def _edge(
        self, target: PurgeTarget, request: PurgeRequest, settings: PurgeConfig
    ) -> EdgeResult:
        attempts: list[Attempt] = []
        if target.url is None:
            return result(target, attempts)
        for n in range(1, settings.attempts + 1):
            attempt = await self._send(target, request, settings)
            attempts.append(attempt)
            delay = backoff(settings, n)
            if judge(attempt) is not Judgement.RETRY or delay is None:
                break
            log.debug("purge on %s: %s; retrying in %gs", target.edge, attempt, delay)
            await self._sleep(delay)
        return result(target, attempts)

    async def _send(
        self, target: PurgeTarget, request: PurgeRequest, settings: PurgeConfig
    ) -> Attempt:
        timeout = settings.timeout
        session = self._session
        if session is None:
            return Attempt(error="purger is not running")
        assert target.url is not None
        headers = {} if target.token is None else {"Authorization": f"Bearer {target.token}"}
        try:
            async with session.post(
                target.url,
                json=request.edge_body(wait=round(timeout * EDGE_WAIT_SHARE, 3)),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(MAX_REPLY)
                body: Any = None
                if resp.content_type == "application/json":
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                return Attempt(status=resp.status, body=body)
        except TimeoutError:
            return Attempt(error=f"no reply within {timeout:g}s", timed_out=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Attempt(error=f"{type(exc).__name__}: {exc}"[:200])
