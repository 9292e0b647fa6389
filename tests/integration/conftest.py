"""Fixtures shared by the integration test modules."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.geodb import bundled_table_dir
from tests.integration.fleet_helpers import Fleet, cacheable, running_fleet
from tests.integration.gslb_helpers import GslbProcess, write_config
from tests.integration.status_helpers import LoopThread


@pytest.fixture(scope="session", autouse=True)
def bundled_table() -> Path:
    """Servers on the bundled GeoIP database map its /24 table at start, as after their
    first start in production, rather than each starting a build their stop then ends."""
    return bundled_table_dir()


@pytest.fixture(scope="module", autouse=True)
def collect_cycles_per_module() -> Iterator[None]:
    """A full cycle collection after each module: a socket or transport a module leaks in a
    reference cycle fails that module's last test (ResourceWarning is an error here), not
    whichever later test the collector happens to run in."""
    yield
    gc.collect()


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The requests that reach the full handler (Proxy.handle), in order."""
    from edge.proxy import Proxy

    seen: list[str] = []
    full_handler = Proxy.handle

    async def counting(self: Proxy, request: web.BaseRequest) -> web.StreamResponse:
        seen.append(request.method + " " + request.raw_path)
        return await full_handler(self, request)

    monkeypatch.setattr(Proxy, "handle", counting)
    return seen


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, geo_db: Path) -> Iterator[GslbProcess]:
    """`gslb serve --workers 2` on the test config, one per test module."""
    config = write_config(tmp_path_factory.mktemp("gslb") / "gslb.toml", geo_db)
    proc = GslbProcess(config, "--workers", "2")
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    """An event loop on a thread for the fake edges' status servers (status_helpers)."""
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, geo_db: Path, loop_thread: LoopThread
) -> Iterator[Fleet]:
    """Three real edges behind a real gslb (fleet_helpers), every origin serving a
    cacheable "/", one fleet per test module (a module may override it with its routes)."""
    directory = tmp_path_factory.mktemp("fleet")
    with running_fleet(directory, loop_thread, geo_db, {"/": cacheable(b"ok")}) as fleet:
        yield fleet
