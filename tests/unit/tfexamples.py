"""The Terraform examples' nodes re-done in Python (there is no terraform binary here): the
node-config inputs each example builds for every node (from its terraform.tfvars.example,
converted with the declared variable types and their optional() defaults), and what
modules/node-config makes of them (the rendered config, the secret files, cloud-init).
tests/unit/test_terraform.py holds the mirrors to the HCL and feeds the results to the real
gslb and edge loaders; tests/integration/test_packaging.py runs the units against them.
"""

from __future__ import annotations

import copy
import datetime
import functools
from collections.abc import Mapping
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from tests.unit.tfcheck import blocks, jsonencode, load, plain, render, variable_value

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
PACKAGING = ROOT / "packaging"
NODE_CONFIG = TF / "modules" / "node-config"
TEMPLATES = NODE_CONFIG / "templates"

# --- modules/node-config (test_node_config_mirror_is_current keeps this and main.tf together)

ADMIN_CERT = "/etc/geoedge/tls/admin-cert.pem"
ADMIN_KEY = "/etc/geoedge/tls/admin-key.pem"
HEALTH_CA = "/etc/geoedge/tls/health-ca.pem"
EDGE_TOKEN = "/etc/geoedge/edge-admin.token"
PEER_TOKEN = "/etc/geoedge/peer.token"


def node_config(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What modules/node-config outputs for these inputs (converted with its variable types)."""
    v = {
        name: variable_value(NODE_CONFIG, name, inputs.get(name))
        for name in blocks(NODE_CONFIG, "variable")
    }
    role, ssm = v["role"], v["ssm"]
    is_gslb = role == "gslb"
    service = f"geoedge-{role}.service"
    config_path = f"/etc/geoedge/{role}.toml"
    has_token, has_tls = v["token"] != "", v["tls"] is not None
    has_dnssec, geoip = v["dnssec_key_pem"] != "", v["geoip"] is not None
    has_admin_tls, has_health_ca = v["admin_tls"] is not None, v["health_ca_pems"] != []
    has_edge_token, has_peer_token = v["edge_admin_token"] != "", v["peer_token"] != ""
    token_path = "/etc/geoedge/api.token" if is_gslb else "/etc/geoedge/admin.token"
    if is_gslb:
        g = v["gslb"]
        config = render(
            TEMPLATES / "gslb.toml.tftpl",
            {
                "name": v["name"],
                "listen": g["listen"],
                "workers": g["workers"],
                "api_listen": g["api_listen"],
                "token_file": token_path if has_token else "",
                "health": g["health"],
                "ca_file": HEALTH_CA if has_health_ca else "",
                "purge": g["purge"],
                "edge_token_file": EDGE_TOKEN if has_edge_token else "",
                "peers": g["peers"],
                "peer_token_file": PEER_TOKEN if has_peer_token else "",
                "geo_database": "/var/lib/GeoIP/GeoLite2-City.mmdb" if geoip else "",
                "zone": g["zone"],
                "dnssec_key_file": "/etc/geoedge/keys/zone.pem" if has_dnssec else "",
                "edges": g["edges"],
                "pools": [
                    {**p, "fallback": jsonencode(p["fallback"] or "all")} for p in g["pools"]
                ],
            },
        )
    else:
        e = v["edge"]
        config = render(
            TEMPLATES / "edge.toml.tftpl",
            {
                "name": v["name"],
                **{k: e[k] for k in ("listen", "https_listen", "redirect_http", "workers")},
                **{k: e[k] for k in ("hosts", "algorithm", "origins", "probe_path")},
                **{k: e[k] for k in ("cache_size", "memory_cache", "admin_listen")},
                "capacity_rps": e["capacity_rps"],
                "admin_tls": has_admin_tls,
                "admin_cert": ADMIN_CERT,
                "admin_key": ADMIN_KEY,
                "admin_private": e["admin_private"],
                "tls_enabled": has_tls,
                "tls_cert_file": "/etc/geoedge/tls/cert.pem",
                "tls_key_file": "/etc/geoedge/tls/key.pem",
                "token_file": token_path if has_token else "",
                "access_log": "/var/log/geoedge/access.log",
            },
        )
    meta: dict[str, dict[str, str]] = {"config": {"path": config_path, "mode": "0644"}}
    contents = {"config": config}
    if has_token:
        meta["token"] = {"path": token_path, "mode": "0640"}
        contents["token"] = v["token"]
    if has_tls:
        meta["tls-cert"] = {"path": "/etc/geoedge/tls/cert.pem", "mode": "0644"}
        meta["tls-key"] = {"path": "/etc/geoedge/tls/key.pem", "mode": "0640"}
        contents["tls-cert"] = v["tls"]["certificate_pem"]
        contents["tls-key"] = v["tls"]["private_key_pem"]
    if has_admin_tls:
        meta["admin-tls-cert"] = {"path": ADMIN_CERT, "mode": "0644"}
        meta["admin-tls-key"] = {"path": ADMIN_KEY, "mode": "0640"}
        contents["admin-tls-cert"] = v["admin_tls"]["certificate_pem"]
        contents["admin-tls-key"] = v["admin_tls"]["private_key_pem"]
    if has_edge_token:
        meta["edge-admin-token"] = {"path": EDGE_TOKEN, "mode": "0640"}
        contents["edge-admin-token"] = v["edge_admin_token"]
    if has_peer_token:
        meta["peer-token"] = {"path": PEER_TOKEN, "mode": "0640"}
        contents["peer-token"] = v["peer_token"]
    if has_health_ca:
        meta["health-ca"] = {"path": HEALTH_CA, "mode": "0644"}
        contents["health-ca"] = "".join(f"{pem.strip()}\n" for pem in v["health_ca_pems"])
    if has_dnssec:
        meta["dnssec-key"] = {"path": "/etc/geoedge/keys/zone.pem", "mode": "0640"}
        contents["dnssec-key"] = v["dnssec_key_pem"]
    if geoip:
        meta["geoip-conf"] = {"path": "/etc/GeoIP.conf", "mode": "0600"}
        contents["geoip-conf"] = (
            f"AccountID {v['geoip']['account_id']}\nLicenseKey {v['geoip']['license_key']}\n"
            "EditionIDs GeoLite2-City\nDatabaseDirectory /var/lib/GeoIP\n"
        )
    install = v["install"]
    wheel = f"/var/tmp/{install['wheel_url'].rsplit('/', 1)[-1]}"
    script = [
        "#!/bin/sh",
        "# Installs the pinned GeoEdge release into /opt/geoedge (terraform/modules/node-config).",
        "set -eu",
        "[ -x /opt/geoedge/bin/pip ] || python3 -m venv /opt/geoedge",
    ]
    if install["wheel_url"]:
        script += [
            f"curl -fsSL --retry 5 -o {wheel} '{install['wheel_url']}'",
            f"echo '{install['wheel_sha256']}  {wheel}' | sha256sum -c -",
            f"/opt/geoedge/bin/pip install --quiet {wheel}",
        ]
    else:
        script.append(
            "/opt/geoedge/bin/pip install --quiet --require-hashes "
            "--requirement /etc/geoedge/requirements.txt"
        )
    install_script = "\n".join([*script, ""])
    units = {f"/etc/systemd/system/{service}": (PACKAGING / "systemd" / service).read_text()}
    if is_gslb and geoip:
        for name in ("geoedge-geoipupdate.service", "geoedge-geoipupdate.timer"):
            units[f"/etc/systemd/system/{name}"] = (PACKAGING / "systemd" / name).read_text()
    if not is_gslb:
        units["/etc/logrotate.d/geoedge-edge"] = (PACKAGING / "logrotate/geoedge-edge").read_text()
    if ssm is not None:
        dropin = PACKAGING / "aws" / f"{service}.d" / "ssm.conf"
        units[f"/etc/systemd/system/{service}.d/ssm.conf"] = dropin.read_text()
    files = [
        {"path": p, "mode": "0644", "owner": "root:root", "content": c}
        for p, c in sorted(units.items())
    ]
    files.append(
        {
            "path": "/usr/local/sbin/geoedge-install",
            "mode": "0755",
            "owner": "root:root",
            "content": install_script,
        }
    )
    if not install["wheel_url"]:
        files.append(
            {
                "path": "/etc/geoedge/requirements.txt",
                "mode": "0644",
                "owner": "root:root",
                "content": install["requirements"],
            }
        )
    if ssm is not None:
        ssm_list = "\n".join(
            [
                "# SSM parameters this node fetches at every start (packaging/aws/geoedge-fetch).",
                f"region {ssm['region']}",
                *(f"{ssm['prefix']}/{k} {m['mode']} {m['path']}" for k, m in sorted(meta.items())),
                "",
            ]
        )
        fetch = (PACKAGING / "aws" / "geoedge-fetch").read_text()
        files += [
            {"path": "/usr/local/sbin/geoedge-fetch", "mode": "0755", "owner": "root:root"}
            | {"content": fetch},
            {"path": "/etc/geoedge/ssm.list", "mode": "0644", "owner": "root:root"}
            | {"content": ssm_list},
        ]
    else:
        for k, m in sorted(meta.items()):
            owner = "root:geoedge" if m["mode"] == "0640" else "root:root"
            files.append({**m, "owner": owner, "content": contents[k]})
    packages = ["python3-venv", "curl"] + (["awscli"] if ssm else [])
    packages += ["geoipupdate"] if is_gslb and geoip else []
    user_data = render(
        TEMPLATES / "cloud-init.yaml.tftpl",
        {
            "role": role,
            "service": service,
            "geoipupdate": is_gslb and geoip,
            "ssm": ssm is not None,
            "packages": packages,
            "files": files,
        },
    )
    return {
        "config": config,
        "meta": meta,
        "contents": contents,
        "user_data": user_data,
        "install_script": install_script,
        "service": service,
    }


# --- the examples, re-done in Python -----------------------------------------------------

SECRET = "0123456789abcdef0123456789abcdef"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@functools.cache
def admin_pki() -> dict[str, str]:
    """What the AWS example's tls_* resources make, as PEM: the private CA's certificate
    (`ca`, a DNS node's health_ca_pems: gslb loads it) and one admin certificate it issued
    with its key (`cert`, `key`: an edge's admin_tls)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> str:
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    edge_key = ec.generate_private_key(ec.SECP256R1())
    pem = edge_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "ca": issue("edge admin CA", ca_key, "edge admin CA", ca_key, True),
        "cert": issue("edge", edge_key, "edge admin CA", ca_key, False),
        "key": pem,
    }


def _admin_tls(https: bool) -> dict[str, str] | None:
    """An edge's admin_tls: what modules/admin-cert issues from the example's CA."""
    pki = admin_pki()
    return {"certificate_pem": pki["cert"], "private_key_pem": pki["key"]} if https else None


def _missing(example: str, name: str) -> Any:
    raise AssertionError(f"{example}: required variable {name} not set")


def _tfvars(example: str, secrets: bool) -> dict[str, Any]:
    """The example's terraform.tfvars.example, plus the secrets people pass as TF_VAR_*
    (and, with them, private admin ports and dns_peers); without secrets, no HTTPS admin
    ports either."""
    given = plain(load(TF / "examples" / example / "terraform.tfvars.example"))
    if secrets:
        given |= {"gslb_api_token": SECRET, "edge_admin_token": SECRET[::-1]}
        given |= {"tls": {"certificate_pem": CERT, "private_key_pem": KEY}}
        given |= {"geoip": {"account_id": "123456", "license_key": "licence-key"}}
        given["edge"] = given.get("edge", {}) | {"admin_private": True}
        given["dns_peers"] = [{"name": "ns9", "api": "http://203.0.113.53:8053"}]
    else:
        given["edge_admin_https"] = False
    directory = TF / "examples" / example
    return {
        name: variable_value(directory, name, given.get(name))
        if (given.get(name) is not None or "default" in body)
        else _missing(example, name)
        for name, body in blocks(directory, "variable").items()
    }


def _pool(v: dict[str, Any], edges: dict[str, dict[str, Any]], pool_fqdn: str) -> dict[str, Any]:
    p = v["pool"]
    return {
        "name": pool_fqdn,
        "edges": list(edges),
        **{k: p[k] for k in ("policy", "answers", "ttl", "load_threshold", "hysteresis")},
        "fallback": [k for k, e in edges.items() if e["region"] in p["fallback_regions"]],
    }


def _names(v: dict[str, Any]) -> tuple[str, str, str, list[str]]:
    zone = v["zone"].lower().rstrip(".")
    origin = f"{zone}."
    pool_fqdn = origin if v["pool"]["name"] == "@" else f"{v['pool']['name']}.{origin}"
    hosts = v["edge"]["hosts"] or [pool_fqdn.rstrip(".")]
    hostmaster = f"{v['hostmaster'].rstrip('.')}." if v["hostmaster"] else f"hostmaster.{origin}"
    return origin, pool_fqdn, hostmaster, hosts


def _edge_object(v: dict[str, Any], hosts: list[str], listen: list[str], https: list[str]) -> Any:
    e = v["edge"]
    return {
        "listen": listen,
        "https_listen": https,
        "redirect_http": True,
        "workers": e["workers"],
        "hosts": hosts,
        "origins": v["origins"],
        **{k: e[k] for k in ("algorithm", "probe_path", "cache_size", "memory_cache")},
        "admin_listen": f"0.0.0.0:{e['admin_port']}",
        "admin_private": e["admin_private"],
    }


def _gslb_object(
    v: dict[str, Any], listen: list[str], api_host: str, records: list[str], edges: list[Any]
) -> dict[str, Any]:
    """The gslb object both examples build for a DNS node (pools added by the caller)."""
    origin, _, hostmaster, _ = _names(v)
    return {
        "listen": listen,
        "workers": v["gslb_workers"],
        "api_listen": f"{api_host}:{v['gslb_api_port']}",
        "health": v["health"],
        "zone": {
            "origin": origin,
            "ttl": v["zone_ttl"],
            "soa_mname": f"ns1.{origin}",
            "soa_rname": hostmaster,
            "soa_serial": v["soa_serial"],
            "records": records + v["extra_records"],
        },
        "edges": edges,
    }


def aws_nodes(secrets: bool) -> dict[str, dict[str, Any]]:
    """node-config inputs of every node of examples/aws-multi-region (as its main.tf and
    modules/aws-node build them), with documentation addresses for the Elastic IPs."""
    v = _tfvars("aws-multi-region", secrets)
    _, pool_fqdn, _, hosts = _names(v)
    glue = {"ns1": "192.0.2.1", "ns2": "192.0.2.2"}
    edges: dict[str, dict[str, Any]] = {}
    for n, region in enumerate(("eu", "us", "ap")):
        for i in range(v["regions"][region]["edges"]):
            edges[f"{region}-{i + 1}"] = {"region": region, "ip": f"198.51.100.{10 * n + i + 1}"}
    edges = dict(sorted(edges.items()))  # Terraform iterates maps in key order
    common = {"install": v["install"]}
    https = v["edge_admin_https"]
    pki = admin_pki()
    nodes: dict[str, dict[str, Any]] = {}
    for key, e in edges.items():
        r = v["regions"][e["region"]]
        name = f"{v['name_prefix']}-edge-{key}"
        nodes[name] = common | {
            "role": "edge",
            "name": name,
            "ssm": {"region": r["region"], "prefix": f"/geoedge/{name}"},
            "token": v["edge_admin_token"],
            "tls": v["tls"],
            # modules/aws-node issues it from the example's CA (admin_ca) for the Elastic IP.
            "admin_tls": _admin_tls(https),
            "edge": _edge_object(v, hosts, ["0.0.0.0:80"], ["0.0.0.0:443"])
            | {"capacity_rps": r["capacity"]},
        }
    records = [f"@ NS {k}" for k in glue] + [f"{k} A {ip}" for k, ip in glue.items()]
    gslb_edges = [
        {
            "name": k,
            "ipv4": e["ip"],
            "latitude": v["regions"][e["region"]]["latitude"],
            "longitude": v["regions"][e["region"]]["longitude"],
            "capacity": v["regions"][e["region"]]["capacity"],
            "status_url": f"{'https' if https else 'http'}://{e['ip']}:{v['edge']['admin_port']}"
            "/__edge/status",
        }
        for k, e in edges.items()
    ]
    gslb = _gslb_object(v, ["0.0.0.0:53"], "0.0.0.0", records, gslb_edges) | {
        "pools": [_pool(v, edges, pool_fqdn)],
    }
    for ns, region, other in (("ns1", "eu", "ns2"), ("ns2", "us", "ns1")):
        name = f"{v['name_prefix']}-{ns}"
        peer = {"name": other, "api": f"http://{glue[other]}:{v['gslb_api_port']}"}
        nodes[name] = common | {
            "role": "gslb",
            "name": name,
            "ssm": {"region": v["regions"][region]["region"], "prefix": f"/geoedge/{name}"},
            "token": v["gslb_api_token"],
            "edge_admin_token": v["edge_admin_token"],
            "peer_token": v["gslb_api_token"],
            "health_ca_pems": [pki["ca"]] if https else [],
            "dnssec_key_pem": v["dnssec_key_pem"],
            "geoip": v["geoip"],
            "gslb": copy.deepcopy(gslb) | {"peers": [peer, *v["dns_peers"]]},
        }
    return nodes


HETZNER_CITIES = {
    "fsn1": (50.4779, 12.3713),
    "nbg1": (49.4521, 11.0767),
    "hel1": (60.1699, 24.9384),
    "ash": (39.0438, -77.4874),
    "hil": (45.5229, -122.9898),
    "sin": (1.3521, 103.8198),
}


def hetzner_nodes(secrets: bool) -> dict[str, dict[str, Any]]:
    """node-config inputs of every node of examples/hetzner (as its main.tf and
    modules/hcloud-node build them), with documentation addresses for the servers."""
    v = _tfvars("hetzner", secrets)
    _, pool_fqdn, _, hosts = _names(v)
    https = v["edge_admin_https"]
    glue = {
        f"ns{i + 1}": {"ipv4": f"192.0.2.{i + 1}", "ipv6": str(ip_address(f"2001:db8:53:{i}::1"))}
        for i in range(len(v["dns_nodes"]))
    }
    edges: dict[str, dict[str, Any]] = {}
    for n, (region, r) in enumerate(v["edge_regions"].items()):
        lat, lon = HETZNER_CITIES.get(r["location"], (r["latitude"], r["longitude"]))
        for i in range(r["count"]):
            edges[f"{region}-{i + 1}"] = {
                "region": region,
                "r": r,
                "lat": r["latitude"] if r["latitude"] is not None else lat,
                "lon": r["longitude"] if r["longitude"] is not None else lon,
                "ipv4": f"198.51.100.{10 * n + i + 1}",
                "ipv6": f"2001:db8:e{n}::{i + 1}",
            }
    edges = dict(sorted(edges.items()))  # Terraform iterates maps in key order
    common = {"install": v["install"], "ssm": None}
    nodes: dict[str, dict[str, Any]] = {}
    for key, e in edges.items():
        name = f"{v['name_prefix']}-edge-{key}"
        nodes[name] = common | {
            "role": "edge",
            "name": name,
            "token": v["edge_admin_token"],
            "tls": v["tls"],
            # modules/hcloud-node issues it from the example's CA for the edge's primary IPv4.
            "admin_tls": _admin_tls(https),
            "edge": _edge_object(v, hosts, ["0.0.0.0:80", "[::]:80"], ["0.0.0.0:443", "[::]:443"])
            | {"capacity_rps": e["r"]["capacity"]},
        }
    records = [f"@ NS {k}" for k in glue]
    for k, g in glue.items():
        records += [f"{k} A {g['ipv4']}", f"{k} AAAA {g['ipv6']}"]
    gslb_edges = [
        {
            "name": ek,
            "ipv4": e["ipv4"],
            "ipv6": e["ipv6"],
            "latitude": e["lat"],
            "longitude": e["lon"],
            "weight": e["r"]["weight"],
            "capacity": e["r"]["capacity"],
            "status_url": f"{'https' if https else 'http'}://{e['ipv4']}:{v['edge']['admin_port']}"
            "/__edge/status",
        }
        for ek, e in edges.items()
    ]
    for k, g in glue.items():
        name = f"{v['name_prefix']}-{k}"
        peers = [
            {"name": o, "api": f"http://{og['ipv4']}:{v['gslb_api_port']}"}
            for o, og in glue.items()
            if o != k
        ]
        nodes[name] = common | {
            "role": "gslb",
            "name": name,
            "token": v["gslb_api_token"],
            "edge_admin_token": v["edge_admin_token"],
            "peer_token": v["gslb_api_token"],
            "health_ca_pems": [admin_pki()["ca"]] if https else [],
            "dnssec_key_pem": v["dnssec_key_pem"],
            "geoip": v["geoip"],
            "gslb": _gslb_object(
                v, [f"{g['ipv4']}:53", f"[{g['ipv6']}]:53"], g["ipv4"], records, gslb_edges
            )
            | {"peers": peers + v["dns_peers"], "pools": [_pool(v, edges, pool_fqdn)]},
        }
    return nodes
