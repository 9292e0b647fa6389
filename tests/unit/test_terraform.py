"""Static checks of terraform/ (there is no terraform binary here): every .tf file parses
(python-hcl2) and is laid out as `terraform fmt` writes it; variables, locals, outputs and
module calls agree; every module has its README; and the files a node runs are what the
services expect: each example's values, taken through modules/node-config the way its HCL
does (re-done here in Python, inputs converted with the declared types and their optional()
defaults), render to configs the real gslb and edge loaders accept, and to cloud-init that
writes exactly the files in packaging/ and, on AWS, no secret.

Checkov runs in test_checkov_passes (skipped when checkov is not installed: `make checkov`).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import config as edge_config
from gslb import config as gslb_config
from tests.unit.tfcheck import (
    TemplateError,
    all_strings,
    blocks,
    expr,
    fmt_problems,
    jsonencode,
    load,
    locals_of,
    lookup,
    plain,
    readme_tables,
    refs,
    render,
    resources,
    template_variables,
    tf_str,
    top_level_keys,
    unq,
    variable_value,
)

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
PACKAGING = ROOT / "packaging"
MODULES = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())
EXAMPLES = sorted(p for p in (TF / "examples").iterdir() if p.is_dir() and p.name != "shared")
DIRS = MODULES + EXAMPLES
NODE_CONFIG = TF / "modules" / "node-config"
TEMPLATES = NODE_CONFIG / "templates"
TF_FILES = sorted(p for p in TF.rglob("*.tf") if not p.is_symlink())
FMT_FILES = TF_FILES + sorted(TF.rglob("*.tfvars.example"))


def _rel(p: Path) -> str:
    return str(p.relative_to(TF))


# --- parsing, layout, formatting --------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=_rel)
def test_every_tf_file_parses(path: Path) -> None:
    data = load(path)
    assert any(not k.startswith("__") for k in data), f"{path} declares nothing"


@pytest.mark.parametrize("path", FMT_FILES, ids=_rel)
def test_terraform_fmt_layout(path: Path) -> None:
    assert fmt_problems(path.read_text(encoding="utf-8")) == []


def test_fmt_checker_knows_the_rules() -> None:
    good = 'locals {\n  a = 1\n  bbbb = {\n    c = 2\n  }\n  dd = "x = ${y}"\n  e  = [1]\n}\n'
    assert fmt_problems(good) == []
    assert fmt_problems("locals {\n  a = 1\n  bb = 2\n}\n") == [
        "line 2: '=' at column 5, fmt puts it at 6"
    ]
    assert fmt_problems("locals {\n   a = 1\n}\n") == ["line 2: indented 3 spaces, fmt indents 2"]
    # A comment line ends an alignment run, as in hclwrite.
    assert fmt_problems("locals {\n  a = 1\n  # c\n  bb = 2\n}\n") == []
    assert fmt_problems("x = <<-EOT\n  a   = b\nEOT\n") == []
    assert fmt_problems("a = 1 \n") == ["line 1: trailing whitespace"]
    # hclwrite puts no space between a name and "(" or "[", `in [` aside: it would write
    # `for x in(y)`, a form we avoid.
    assert fmt_problems("x = [for a in (b) : a]\n") == ["line 1: fmt writes no space in 'in ('"]
    assert fmt_problems("x = [for a in [1] : a]\ny = f(a[0])\n") == []
    assert fmt_problems("aa = 1 # x\nbb = 2  # y\n") == [
        "line 2: comment at column 9, fmt puts it at 8"
    ]


@pytest.mark.parametrize("directory", DIRS, ids=lambda p: p.name)
def test_module_layout_and_readme(directory: Path) -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (directory / name).is_file(), name
    readme = (directory / "README.md").read_text(encoding="utf-8")
    # Regenerate with: python -m tests.unit.tfcheck terraform/modules/NAME
    assert readme.endswith("\n\n" + readme_tables(directory)), "README tables out of date"
    versions = load(directory / "versions.tf")["terraform"][0]
    assert unq(versions["required_version"]) == ">= 1.5.0"


def test_examples_share_the_operator_inputs() -> None:
    shared = TF / "examples" / "shared" / "operator-variables.tf"
    for example in EXAMPLES:
        link = example / "operator-variables.tf"
        assert link.is_symlink() and link.resolve() == shared.resolve(), example.name


# --- references --------------------------------------------------------------------------


@pytest.mark.parametrize("directory", DIRS, ids=lambda p: p.name)
def test_variables_declared_and_used(directory: Path) -> None:
    declared = set(blocks(directory, "variable"))
    used = refs(directory, r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)")
    assert used - declared == set(), "referenced but not declared"
    assert declared - used == set(), "declared but never used"
    for name, body in blocks(directory, "variable").items():
        assert "description" in body and "type" in body, name


@pytest.mark.parametrize("directory", DIRS, ids=lambda p: p.name)
def test_locals_defined_and_used(directory: Path) -> None:
    defined = set(locals_of(directory))
    used = refs(directory, r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)")
    assert used - defined == set()
    assert defined - used == set(), "local defined but never used"


@pytest.mark.parametrize("directory", DIRS, ids=lambda p: p.name)
def test_resources_and_data_referenced_exist(directory: Path) -> None:
    declared = {f"{k}.{n}" for k, n in resources(directory)}
    for path in directory.glob("*.tf"):
        for entry in load(path).get("data", []):
            for kind, named in entry.items():
                declared |= {f"data.{unq(kind)}.{unq(n)}" for n in named}
    text = " ".join(all_strings(directory))
    kinds = r"(?:(?:aws|hcloud|terraform)_[a-z0-9_]+|external)"
    used = set(re.findall(rf"\b((?:data\.)?{kinds}\.[a-z0-9_]+)", text))
    assert used - declared == set()


def _module_calls() -> list[tuple[Path, str, dict[str, Any]]]:
    return [(d, name, body) for d in DIRS for name, body in blocks(d, "module").items()]


@pytest.mark.parametrize(
    ("directory", "name", "body"), _module_calls(), ids=lambda x: getattr(x, "name", str(x))
)
def test_module_call_matches_the_module(directory: Path, name: str, body: dict[str, Any]) -> None:
    source = (directory / unq(body["source"])).resolve()
    assert source.is_dir(), f"module {name}: no directory {source}"
    variables = blocks(source, "variable")
    meta = {"source", "for_each", "count", "depends_on", "providers"}
    passed = {k for k in body if k not in meta and not k.startswith("__")}
    assert passed - set(variables) == set(), f"module {name} passes unknown inputs"
    required = {v for v, b in variables.items() if "default" not in b}
    assert required - passed == set(), f"module {name} misses required inputs"
    # Every output read from this call exists: module.NAME[..].OUT, and `for k, m in
    # module.NAME : ... m.OUT`, and the `node = m` entries of examples read as e.node.OUT.
    outputs = set(blocks(source, "output"))
    text = all_strings(directory)
    read = {
        m.group(1)
        for s in text
        for m in re.finditer(rf"\bmodule\.{name}(?:\[[^\]]*\])?\.([A-Za-z_]\w*)", s)
    }
    for s in text:
        for alias in re.findall(rf"for \w+, (\w+) in module\.{name} :", s):
            read |= set(re.findall(rf"\b{alias}\.([A-Za-z_]\w*)", s))
        if re.search(rf"node = \w+ \}} for|in module\.{name} : .*node = ", s):
            read |= set(re.findall(r"\bnode\.([A-Za-z_]\w*)", " ".join(text)))
    assert read - outputs == set(), f"module {name} has no output(s) {read - outputs}"


@pytest.mark.parametrize("directory", DIRS, ids=lambda p: p.name)
def test_checkov_skips_are_justified(directory: Path) -> None:
    for path in directory.glob("*.tf"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip" in line:
                assert re.fullmatch(r"\s*#checkov:skip=CKV2?_[A-Z]+_\d+:\S.{30,}", line), line


@pytest.mark.parametrize("directory", DIRS, ids=lambda p: p.name)
def test_sensitive_inputs_never_decide_for_each(directory: Path) -> None:
    """Terraform refuses for_each over anything derived from a sensitive value: a sensitive
    input is passed on as it is, read inside nonsensitive(...) for a yes/no, or becomes
    file contents (node-config's `contents`), nothing else."""
    sensitive = [n for n, b in blocks(directory, "variable").items() if b.get("sensitive")]
    for path in directory.glob("*.tf"):
        if path.name == "variables.tf" or path.is_symlink():
            continue
        in_contents = False
        for line in path.read_text(encoding="utf-8").splitlines():
            in_contents = (in_contents or line.startswith("  contents = {")) and line != "  }"
            for name in sensitive:
                for m in re.finditer(rf"\bvar\.{name}\b", line):
                    passed_on = re.fullmatch(rf"\s*\w+\s*= var\.{name}", line)
                    guarded = "nonsensitive(" in line[: m.start()]
                    assert passed_on or guarded or in_contents, f"{path.name}: {line.strip()}"


def test_glue_addresses_are_protected() -> None:
    aws = resources(TF / "examples" / "aws-multi-region")
    for ns in ("ns1", "ns2"):
        assert aws[("aws_eip", ns)]["lifecycle"][0]["prevent_destroy"] is True
    hetzner = resources(TF / "examples" / "hetzner")
    for family in ("ipv4", "ipv6"):
        ip = hetzner[("hcloud_primary_ip", family)]
        assert ip["delete_protection"] is True and ip["auto_delete"] is False
        assert ip["lifecycle"][0]["prevent_destroy"] is True


def test_aws_secrets_stay_out_of_user_data() -> None:
    aws = resources(TF / "modules" / "aws-node")
    assert unq(aws[("aws_ssm_parameter", "this")]["type"]) == "SecureString"
    instance = aws[("aws_instance", "this")]
    assert unq(instance["metadata_options"][0]["http_tokens"]) == "required"
    assert instance["root_block_device"][0]["encrypted"] is True
    module = blocks(TF / "modules" / "aws-node", "module")["config"]
    assert "ssm" in module and "null" not in str(module["ssm"])


# --- templates: what the node-config module passes ---------------------------------------

_TEMPLATEFILE = re.compile(r'templatefile\("\$\{path\.module\}/(templates/[^"]+)", \{')


def _templatefile_calls() -> dict[Path, set[str]]:
    calls: dict[Path, set[str]] = {}
    for s in all_strings(NODE_CONFIG):
        for m in _TEMPLATEFILE.finditer(s):
            calls[NODE_CONFIG / m.group(1)] = top_level_keys(s[m.end() - 1 :])
    return calls


def test_every_template_is_used_with_exactly_its_variables() -> None:
    calls = _templatefile_calls()
    assert set(calls) == set(TEMPLATES.glob("*.tftpl"))
    for template, keys in calls.items():
        used = template_variables(template)
        assert used - keys == set(), f"{template.name}: used but not passed"
        assert keys - used == set(), f"{template.name}: passed but not used"


def test_renderer_matches_terraform_semantics() -> None:
    assert tf_str(True) == "true"
    assert tf_str(2.0) == "2"
    assert tf_str(1.5) == "1.5"
    assert jsonencode({"a": [1.0, "<&>"]}) == '{"a":[1,"\\u003c\\u0026\\u003e"]}'
    with pytest.raises(TemplateError):
        tf_str([1])
    with pytest.raises(TemplateError):
        expr("upper(x)", {"x": "a"})
    with pytest.raises(TemplateError):
        lookup("missing", {})


# node-config, re-done in Python from its main.tf (test_node_config_mirror_is_current keeps
# the two from drifting apart where it matters: the keys passed to every template).

PACKAGES = {
    "unit": lambda svc: PACKAGING / "systemd" / svc,
    "ssm_dropin": lambda svc: PACKAGING / "aws" / f"{svc}.d" / "ssm.conf",
}


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


def test_node_config_mirror_is_current() -> None:
    """The Python mirror above passes the same keys to each template as main.tf does, and
    main.tf builds the same file keys and paths."""
    text = (NODE_CONFIG / "main.tf").read_text(encoding="utf-8")
    for key in ("config", "token", "tls-cert", "tls-key", "dnssec-key", "geoip-conf"):
        assert re.search(rf"\b{key}\s+= \{{", text), key
    assert '"/var/log/geoedge/access.log"' in text
    assert "--require-hashes --requirement /etc/geoedge/requirements.txt" in text
    assert 'packages    = concat(["python3-venv", "curl"]' in text


# --- the examples, re-done in Python -----------------------------------------------------

SECRET = "0123456789abcdef0123456789abcdef"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def _tfvars(example: str, secrets: bool) -> dict[str, Any]:
    """The example's terraform.tfvars.example, plus the secrets people pass as TF_VAR_*."""
    given = plain(load(TF / "examples" / example / "terraform.tfvars.example"))
    if secrets:
        given |= {"gslb_api_token": SECRET, "edge_admin_token": SECRET[::-1]}
        given |= {"tls": {"certificate_pem": CERT, "private_key_pem": KEY}}
        given |= {"geoip": {"account_id": "123456", "license_key": "licence-key"}}
    directory = TF / "examples" / example
    return {
        name: variable_value(directory, name, given.get(name))
        if (given.get(name) is not None or "default" in body)
        else pytest.fail(f"{example}: required variable {name} not set")
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
            "status_url": f"http://{e['ip']}:{v['edge']['admin_port']}/__edge/status",
        }
        for k, e in edges.items()
    ]
    gslb = _gslb_object(v, ["0.0.0.0:53"], "0.0.0.0", records, gslb_edges) | {
        "pools": [_pool(v, edges, pool_fqdn)],
    }
    for ns, region in (("ns1", "eu"), ("ns2", "us")):
        name = f"{v['name_prefix']}-{ns}"
        nodes[name] = common | {
            "role": "gslb",
            "name": name,
            "ssm": {"region": v["regions"][region]["region"], "prefix": f"/geoedge/{name}"},
            "token": v["gslb_api_token"],
            "dnssec_key_pem": v["dnssec_key_pem"],
            "geoip": v["geoip"],
            "gslb": copy.deepcopy(gslb),
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
            "status_url": f"http://{e['ipv4']}:{v['edge']['admin_port']}/__edge/status",
        }
        for ek, e in edges.items()
    ]
    for k, g in glue.items():
        name = f"{v['name_prefix']}-{k}"
        nodes[name] = common | {
            "role": "gslb",
            "name": name,
            "token": v["gslb_api_token"],
            "dnssec_key_pem": v["dnssec_key_pem"],
            "geoip": v["geoip"],
            "gslb": _gslb_object(
                v, [f"{g['ipv4']}:53", f"[{g['ipv6']}]:53"], g["ipv4"], records, gslb_edges
            )
            | {"pools": [_pool(v, edges, pool_fqdn)]},
        }
    return nodes


def test_the_mirrors_pass_what_the_examples_pass() -> None:
    """The node inputs built above name the same module inputs the examples' calls pass."""
    for example, nodes in (("aws-multi-region", aws_nodes), ("hetzner", hetzner_nodes)):
        calls = blocks(TF / "examples" / example, "module")
        passed = {k for body in calls.values() for k in body if not k.startswith("__")}
        config_inputs = set(blocks(NODE_CONFIG, "variable")) - {"ssm"}
        for inputs in nodes(True).values():
            assert set(inputs) - {"ssm"} <= passed & config_inputs | {"gslb", "edge"}


NODES = {
    **{f"aws/{k}/secrets": v for k, v in aws_nodes(True).items()},
    **{f"aws/{k}": v for k, v in aws_nodes(False).items()},
    **{f"hetzner/{k}/secrets": v for k, v in hetzner_nodes(True).items()},
    **{f"hetzner/{k}": v for k, v in hetzner_nodes(False).items()},
}


def _localize(text: str, files: Mapping[str, str], tmp_path: Path) -> str:
    """The config with every file it names (token, certificate, keys) written under
    tmp_path, as the node has them, so the loaders can read them."""
    for path, content in files.items():
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content)
        text = text.replace(f'"{path}"', f'"{local}"')
    return text


@pytest.mark.parametrize("node", sorted(NODES), ids=str)
def test_example_config_passes_the_real_loader(node: str, tmp_path: Path) -> None:
    inputs = NODES[node]
    out = node_config(inputs)
    secret_files = {m["path"]: out["contents"][k] for k, m in out["meta"].items() if k != "config"}
    if "dnssec-key" in out["meta"]:
        pytest.fail("the examples pass no DNSSEC key here")  # exercised below
    text = _localize(out["config"], secret_files, tmp_path)
    db = "/var/lib/GeoIP/GeoLite2-City.mmdb"
    if db in text:  # what geoipupdate fetches; the bundled snapshot stands in for it
        from geo import default_database_path

        text = text.replace(f'"{db}"', f'"{default_database_path()}"')
    config_file = tmp_path / "node.toml"
    config_file.write_text(text)
    if inputs["role"] == "gslb":
        config = gslb_config.load_config(config_file)
        gslb = inputs["gslb"]
        assert [e.name for e in config.edges] == [e["name"] for e in gslb["edges"]]
        (pool,) = config.pools
        assert pool.ttl == gslb["pools"][0]["ttl"]
        assert config.api.token == (SECRET if inputs["token"] else None)
        assert config.health.fall == gslb["health"]["fall"]
    else:
        econfig = edge_config.load(str(config_file))
        assert econfig.server.hosts == tuple(inputs["edge"]["hosts"])
        assert econfig.pool.probe.path == inputs["edge"]["probe_path"]
        assert bool(econfig.tls.listen) is (inputs["tls"] is not None)
        assert econfig.admin.token == (SECRET[::-1] if inputs["token"] else None)


@pytest.mark.parametrize("form", ["pkcs8", "sec1"])
def test_dnssec_key_in_ds_out(
    form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key reaches the zone, and modules/dnssec-ds/ds.py, run as Terraform's external
    data source runs it, prints the DS and DNSKEY `gslb ds` prints for that config."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from gslb import cli as gslb_cli

    formats = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "sec1": serialization.PrivateFormat.TraditionalOpenSSL,
    }
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, formats[form], serialization.NoEncryption()
    ).decode()
    inputs = next(v for v in aws_nodes(False).values() if v["role"] == "gslb")
    out = node_config(inputs | {"dnssec_key_pem": pem})
    assert out["meta"]["dnssec-key"] == {"path": "/etc/geoedge/keys/zone.pem", "mode": "0640"}
    text = _localize(out["config"], {"/etc/geoedge/keys/zone.pem": pem}, tmp_path)
    (tmp_path / "gslb.toml").write_text(text)
    (zone,) = gslb_config.load_config(tmp_path / "gslb.toml").zones
    assert zone.dnssec is not None

    assert gslb_cli.main(["ds", "-c", str(tmp_path / "gslb.toml")]) == 0
    printed = capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, str(TF / "modules" / "dnssec-ds" / "ds.py")],
        input=json.dumps({"zone": "example.com", "key_pem": pem}),
        capture_output=True,
        text=True,
        check=True,
    )
    records = json.loads(result.stdout)
    assert all(isinstance(v, str) for v in records.values())  # the external protocol
    assert records["ds"] in printed.splitlines()
    assert records["dnskey"].replace(" IN ", " 3600 IN ") in printed.splitlines()
    assert f"key tag {records['key_tag']} " in printed


def test_ds_program_refuses_other_keys() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    result = subprocess.run(
        [sys.executable, str(TF / "modules" / "dnssec-ds" / "ds.py")],
        input=json.dumps({"zone": "example.com", "key_pem": pem}),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "P-256" in result.stderr


def test_aws_configs_are_identical_on_both_dns_nodes() -> None:
    configs = {
        node_config(v)["config"].split("\n", 1)[1]
        for v in aws_nodes(True).values()
        if v["role"] == "gslb"
    }
    assert len(configs) == 1


def _write_files(user_data: str) -> dict[str, tuple[str, str, str]]:
    doc = yaml.safe_load(user_data)
    out = {}
    for entry in doc["write_files"]:
        assert entry["encoding"] == "b64"
        content = base64.b64decode(entry["content"]).decode()
        out[entry["path"]] = (content, entry["permissions"], entry["owner"])
    return out


@pytest.mark.parametrize("node", sorted(NODES), ids=str)
def test_example_cloud_init(node: str) -> None:
    inputs = NODES[node]
    out = node_config(inputs)
    text = out["user_data"]
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = _write_files(text)
    service = out["service"]
    # One source of truth: the units are packaging/'s files, byte for byte.
    unit = (PACKAGING / "systemd" / service).read_text()
    assert files[f"/etc/systemd/system/{service}"] == (unit, "0644", "root:root")
    assert doc["bootcmd"][0][:3] == ["cloud-init-per", "once", "geoedge-user"]
    assert doc["runcmd"][0] == ["/usr/local/sbin/geoedge-install"]
    assert doc["runcmd"][-1] == ["systemctl", "enable", "--now", service]
    install = files["/usr/local/sbin/geoedge-install"][0]
    assert "--require-hashes" in install or "sha256sum -c" in install
    if inputs["ssm"] is not None:
        # AWS: no secret in user data, only the names of the parameters that hold them.
        for k, secret in out["contents"].items():
            if k not in ("config", "tls-cert") and secret:
                assert secret not in text and base64.b64encode(secret.encode()).decode() not in text
        assert "/etc/geoedge/ssm.list" in files and "awscli" in doc["packages"]
        listed = files["/etc/geoedge/ssm.list"][0].splitlines()
        assert listed[1] == f"region {inputs['ssm']['region']}"
        assert {line.split()[0] for line in listed[2:]} == {
            f"{inputs['ssm']['prefix']}/{k}" for k in out["meta"]
        }
        assert doc["runcmd"][1] == ["/usr/local/sbin/geoedge-fetch"]
        assert out["config"] not in text
    else:
        for k, m in out["meta"].items():
            owner = "root:geoedge" if m["mode"] == "0640" else "root:root"
            assert files[m["path"]] == (out["contents"][k], m["mode"], owner)
    # EC2 takes 16 KB of user data (the config stays in SSM, so it does not grow with the
    # fleet); Hetzner Cloud 32 KiB, where the gslb config grows by ~300 bytes per edge.
    assert len(text.encode()) < (16384 if inputs["ssm"] is not None else 32768) // 2
    geoip = inputs["role"] == "gslb" and inputs.get("geoip") is not None
    assert ("geoipupdate" in doc["packages"]) is geoip
    if geoip:
        assert (
            doc["runcmd"].index(["systemctl", "start", "geoedge-geoipupdate.service"])
            < len(doc["runcmd"]) - 1
        )
    if inputs["role"] == "edge":
        rotate = (PACKAGING / "logrotate" / "geoedge-edge").read_text()
        assert files["/etc/logrotate.d/geoedge-edge"][0] == rotate


# --- inputs validation: the conditions of the examples' validation blocks ----------------


def _validations(directory: Path) -> dict[str, list[str]]:
    return {
        name: [unq(v["condition"]) for v in body.get("validation", [])]
        for name, body in blocks(directory, "variable").items()
    }


def test_operator_inputs_that_can_be_wrong_are_validated() -> None:
    shared = TF / "examples" / "hetzner"
    checks = _validations(shared)
    for name in (
        "zone",
        "soa_serial",
        "zone_ttl",
        "pool",
        "health",
        "origins",
        "edge",
        "gslb_workers",
        "gslb_api_port",
        "dns_peers",
        "admin_cidrs",
        "tls",
        "dnssec_key_pem",
        "edge_admin_token",
        "gslb_api_token",
    ):
        assert checks[name], f"{name} has no validation block"
    assert any("private_key_pem" in c for c in checks["tls"])
    assert any("hysteresis" in c and "load_threshold" in c for c in checks["pool"])
    assert any("timeout" in c and "interval" in c for c in checks["health"])
    node = _validations(NODE_CONFIG)
    assert any("--hash=sha256" in c for c in node["install"])
    assert any("wheel_sha256" in c for c in node["install"])


def test_soa_serial_description_is_right() -> None:
    body = blocks(TF / "examples" / "hetzner", "variable")["soa_serial"]
    text = unq(body["description"])
    assert "secondar" not in text and "zone transfers" in text


# --- checkov -----------------------------------------------------------------------------


def _checkov() -> str | None:
    for candidate in (os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("checkov")


@pytest.mark.slow
def test_checkov_passes() -> None:
    checkov = _checkov()
    if checkov is None:
        pytest.skip(
            "checkov is not installed: `make checkov` puts it in .venv-checkov (its own "
            "virtualenv: checkov pins packaging<24, which pytest 9 refuses, and ships an "
            "`hcl2` module that replaces python-hcl2's)"
        )
    dirs = ["examples/aws-multi-region", "modules/aws-node", "modules/node-config"]
    result = subprocess.run(
        [checkov, "--quiet", "--compact", "--skip-download", "--framework", "terraform"]
        + [arg for d in dirs for arg in ("-d", d)],
        cwd=TF,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = re.findall(r"Passed checks: (\d+), Failed checks: (\d+)", result.stdout)
    assert result.returncode == 0 and summary, result.stdout[-4000:] + result.stderr[-2000:]
    assert all(int(failed) == 0 for _, failed in summary)
    assert sum(int(passed) for passed, _ in summary) > 100
