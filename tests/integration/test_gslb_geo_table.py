"""The GeoIP /24 table (geo.table) in a running `gslb serve`: built by a process of its own
after the start, then answering; the readiness is in the log and in /metrics, and a start
finding the table built maps it at once."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.integration.gslb_helpers import EDGE_IPS, GslbProcess, running, write_config


def table_processes(gslb: GslbProcess) -> int:
    """gslb_geo_table_processes from /metrics: processes answering from the table."""
    _, text = gslb.http("GET", "/metrics")
    m = re.search(r"^gslb_geo_table_processes (\S+)$", text, re.M)
    assert m, text
    return int(float(m.group(1)))


def wait_for_processes(gslb: GslbProcess, count: int) -> None:
    for _ in range(300):  # the build takes about a second here; metrics travel each second
        if table_processes(gslb) == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"not {count} table processes:\n{gslb.log_text()}")


def config(tmp_path: Path, geo_db: Path) -> Path:
    path = write_config(tmp_path / "gslb.toml", geo_db)
    text = path.read_text().replace("[geo]\n", '[geo]\ntable_dir = "tables"\n', 1)
    path.write_text(text)
    return path


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_table_is_built_after_the_start_and_then_answers(
    tmp_path: Path, geo_db: Path, workers: str
) -> None:
    path = config(tmp_path, geo_db)
    with running(path, "--workers", workers) as gslb:
        # answering from the start, from the walk
        assert gslb.addresses("www.example.test", subnet="192.0.2.0/24") == [EDGE_IPS["fra"]]
        wait_for_processes(gslb, int(workers))
        gslb.wait_for(r"/24 table ready")
        assert list((tmp_path / "tables").glob("geo24-*.bin"))
        assert gslb.addresses("www.example.test", subnet="192.0.2.0/24") == [EDGE_IPS["fra"]]
        assert gslb.addresses("www.example.test", subnet="203.0.113.0/24") == [EDGE_IPS["nrt"]]
    # the next start maps the table built before: ready before it answers
    with running(path) as again:
        assert table_processes(again) == 1
        assert "building its /24 table" not in again.log_text()


def test_the_table_can_be_turned_off(tmp_path: Path, geo_db: Path) -> None:
    path = config(tmp_path, geo_db)
    path.write_text(path.read_text().replace("[geo]\n", "[geo]\ntable = false\n", 1))
    with running(path) as gslb:
        assert gslb.addresses("www.example.test", subnet="192.0.2.0/24") == [EDGE_IPS["fra"]]
        assert table_processes(gslb) == 0
    assert not (tmp_path / "tables").exists()
