"""A changed GeoIP database file is picked up by DnsRuntime.refresh_geo (the 60 s timer's job)
and by a config reload, without serving answers cached from the old database."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from pathlib import Path

import dns.edns
import dns.message

from gslb.config import load_config
from gslb.health import HealthStore
from gslb.service import ConfigSource, DnsRuntime
from tests.geodb import FIXTURE_JSON, build_city_db
from tests.integration.gslb_helpers import EDGE_IPS, write_config

CLIENT = ipaddress.IPv4Address("127.0.0.1")


def _ask(runtime: DnsRuntime) -> list[str]:
    q = dns.message.make_query("www.example.test", "A", use_edns=0)
    q.use_edns(0, options=[dns.edns.ECSOption("192.0.2.0", 24)])
    wire = runtime.server.responder.respond(q.to_wire(), CLIENT, tcp=False)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    return [rr.to_text() for rrset in reply.answer for rr in rrset]


def test_changed_database_is_swapped_in(tmp_path: Path, geo_db: Path) -> None:
    db = tmp_path / "cities.mmdb"
    shutil.copyfile(geo_db, db)
    config_path = write_config(tmp_path / "gslb.toml", db)
    config = load_config(config_path)
    health = HealthStore(config.pools, [e.name for e in config.edges])
    runtime = DnsRuntime(ConfigSource(config_path), config, health=health)
    try:
        assert _ask(runtime) == [EDGE_IPS["fra"]]  # 192.0.2.0/24 is London
        runtime.refresh_geo()  # unchanged file: nothing happens
        assert _ask(runtime) == [EDGE_IPS["fra"]]

        # Move "London" to Tokyo's coordinates and replace the file by rename, as geoipupdate does.
        spec = json.loads(Path(FIXTURE_JSON).read_text())
        for net in spec["networks"]:
            if net["network"] == "192.0.2.0/24":
                net["latitude"], net["longitude"] = 35.68, 139.69
        moved = tmp_path / "moved.json"
        moved.write_text(json.dumps(spec))
        build_city_db(moved, tmp_path / "new.mmdb")
        os.replace(tmp_path / "new.mmdb", db)

        runtime.refresh_geo()
        assert _ask(runtime) == [EDGE_IPS["nrt"]]

        # a reload keeps working with the new file
        assert runtime.reload()
        assert _ask(runtime) == [EDGE_IPS["nrt"]]
    finally:
        runtime.locator.close()
