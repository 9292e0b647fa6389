"""gslb probing an edge whose admin API speaks HTTPS and keeps its status private (issue
12: probes between gslb and edges can use HTTPS with the admin token): a real edge with
admin.tls_cert / admin.private, gslb's real poller with health.ca_file and the edge's admin
token, on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from gslb.config import parse_config
from gslb.health import HealthStore
from gslb.poller import EdgePoller
from tests.integration.edge_helpers import edge_config, origins, running_edge
from tests.integration.test_edge_tls import _cert
from tests.integration.test_gslb_poller import running, until

TOKEN = "private-status-token-0123456789"


def _gslb(tmp_path: Path, url: str, cert: Path, token: bool) -> object:
    (tmp_path / "edge-admin.token").write_text(TOKEN + "\n")
    token_line = 'admin_token_file = "edge-admin.token"\n' if token else ""
    text = f"""
[health]
interval = 3600
timeout = 2
rise = 1
fall = 1
jitter = 0
ca_file = "{cert}"

[[zone]]
origin = "example.test."
soa = {{ mname = "ns1", rname = "hostmaster" }}
records = ["@ NS ns1", "ns1 A 127.0.0.1"]

[[edge]]
name = "fra"
ipv4 = "127.0.0.11"
latitude = 50.1
longitude = 8.7
status_url = "{url}"
{token_line}
[[pool]]
name = "www.example.test."
edges = ["fra"]
"""
    return parse_config(text, "gslb.toml", base=tmp_path)


async def test_gslb_probes_a_private_https_admin_api_with_the_edge_token(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path, "admin", "IP:127.0.0.1")
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    admin = {
        "listen": "127.0.0.1:0",
        "tls_cert": str(cert),
        "tls_key": str(key),
        "token_file": str(tmp_path / "admin.token"),
        "private": True,
    }
    async with origins("o") as (origin,), running_edge(edge_config([origin], admin=admin)) as edge:
        url = f"https://127.0.0.1:{edge.addresses['admin'][0].port}/__edge/status"
        for token, up in ((True, True), (False, False)):
            cfg = _gslb(tmp_path, url, cert, token)
            health = HealthStore(cfg.pools, [e.name for e in cfg.edges])  # type: ignore[attr-defined]
            async with running(EdgePoller(health, cfg)) as poller:  # type: ignore[arg-type]
                await until(lambda: poller.counts != {})
                assert health.state("fra").up is up, poller.counts
                if not up:  # without the token the edge answers 401: the probe fails
                    assert ("fra", "failure", "http_status") in poller.counts, poller.counts
