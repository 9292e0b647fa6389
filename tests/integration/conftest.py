"""Fixtures shared by the integration test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gslb_helpers import GslbProcess, write_config


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, geo_db: Path) -> Iterator[GslbProcess]:
    """`gslb serve --workers 2` on the test config, one per test module."""
    config = write_config(tmp_path_factory.mktemp("gslb") / "gslb.toml", geo_db)
    proc = GslbProcess(config, "--workers", "2")
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()
