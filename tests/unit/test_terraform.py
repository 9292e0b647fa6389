"""Static checks of terraform/: every .tf file parses (python-hcl2), every reference resolves
(variables, locals, module inputs and outputs, template variables), and the templates render
to what the hosts expect: TOML the gslb and edge config loaders accept, a systemd unit, and
cloud-init YAML that writes exactly the rendered files.

There is no terraform binary here, so templates are rendered by `render` below: a small
implementation of the subset of Terraform's template language the templates are allowed to
use (`${path}`, `${jsonencode(path)}`, `${base64encode(path)}`, and `%{ for x in path ~}`,
`%{ if path ~}` / `%{ if path != "" ~}`, `%{ else ~}`, `%{ endif ~}`, `%{ endfor ~}` directives
alone on a line at column 0, where Terraform's output is the same as dropping the line). It
raises on anything else, which keeps the templates inside what this test can check.
"""

from __future__ import annotations

import base64
import configparser
import functools
import importlib
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

TF = Path(__file__).resolve().parents[2] / "terraform"
MODULE_DIRS = [TF, TF / "modules" / "edge_node", TF / "modules" / "gslb_node"]
TF_FILES = sorted(TF.rglob("*.tf"))

# --- reading HCL -------------------------------------------------------------------------


def _unq(text: str) -> str:
    """python-hcl2 >= 5 keeps the quotes of string literals and block labels."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    """Parsed once per run: python-hcl2 is slow, and nothing here mutates the result."""
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = hcl2.load(f)
    return data


def _blocks(directory: Path, kind: str) -> dict[str, Any]:
    """Labelled blocks of one kind (variable, output, module) across a module's .tf files."""
    found: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for entry in _load(path).get(kind, []):
            for label, body in entry.items():
                assert label not in found, f"{path}: {kind} {label} declared twice"
                found[_unq(label)] = body
    return found


def _locals(directory: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for block in _load(path).get("locals", []):
            for name, value in block.items():
                if not name.startswith("__"):
                    found[name] = value
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not k.startswith("__"):
                yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _all_strings(directory: Path) -> list[str]:
    out: list[str] = []
    for path in sorted(directory.glob("*.tf")):
        out.extend(_strings(_load(path)))
    return out


def _refs(directory: Path, pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {m.group(1) for s in _all_strings(directory) for m in rx.finditer(s)}


def _default_is_set(body: Mapping[str, Any]) -> bool:
    return "default" in body


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(TF)))
def test_every_tf_file_parses(path: Path) -> None:
    data = _load(path)
    assert any(not k.startswith("__") for k in data), f"{path} declares nothing"


def test_the_expected_files_exist() -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "example.tfvars"):
        assert (TF / name).is_file(), name
    for module in ("edge_node", "gslb_node"):
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (TF / "modules" / module / name).is_file(), f"{module}/{name}"
    assert (TF / "README.md").is_file()


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=lambda p: p.name)
def test_referenced_variables_are_declared_and_declared_ones_used(directory: Path) -> None:
    declared = set(_blocks(directory, "variable"))
    used = _refs(directory, r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)")
    assert used - declared == set(), "referenced but not declared"
    assert declared - used == set(), "declared but never used"
    for name, body in _blocks(directory, "variable").items():
        assert "description" in body, f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=lambda p: p.name)
def test_referenced_locals_are_defined(directory: Path) -> None:
    defined = set(_locals(directory))
    used = _refs(directory, r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)")
    assert used - defined == set()
    assert defined - used == set(), "local defined but never used"


def test_module_calls_match_the_modules() -> None:
    calls = _blocks(TF, "module")
    assert set(calls) == {"edge", "dns"}
    meta = {"source", "for_each", "count", "depends_on", "providers"}
    for name, body in calls.items():
        source = TF / _unq(body["source"])
        assert source.is_dir(), f"module {name}: no directory {source}"
        variables = _blocks(source, "variable")
        passed = {k for k in body if k not in meta and not k.startswith("__")}
        assert passed - set(variables) == set(), f"module {name} passes unknown inputs"
        required = {v for v, b in variables.items() if not _default_is_set(b)}
        assert required - passed == set(), f"module {name} misses required inputs"


def test_module_outputs_referenced_exist() -> None:
    calls = _blocks(TF, "module")
    rx = re.compile(r"\bmodule\.([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])?\.([A-Za-z_][A-Za-z0-9_]*)")
    seen = 0
    for s in _all_strings(TF):
        for m in rx.finditer(s):
            module, output = m.groups()
            outputs = _blocks(TF / _unq(calls[module]["source"]), "output")
            assert output in outputs, f"module.{module} has no output {output}"
            seen += 1
    assert seen > 0
    # `for k, m in module.dns : k => m.api_url` style references.
    for s in _all_strings(TF):
        for m in re.finditer(r"for \w+, (\w+) in module\.(\w+) : \w+ => \1\.(\w+)", s):
            _, module, output = m.groups()
            assert output in _blocks(TF / _unq(calls[module]["source"]), "output")


def test_providers_are_pinned_everywhere() -> None:
    for directory in MODULE_DIRS:
        terraform = _load(directory / "versions.tf")["terraform"][0]
        providers = terraform["required_providers"][0]
        assert _unq(providers["hcloud"]["source"]) == "hetznercloud/hcloud"
        assert _unq(providers["hcloud"]["version"]).startswith(">= 1.58")


def test_firewalls_restrict_admin_ports() -> None:
    for module, public in (("edge_node", {"80", "443"}), ("gslb_node", {"53"})):
        main = _load(TF / "modules" / module / "main.tf")
        firewalls = [r for r in main["resource"] if '"hcloud_firewall"' in r]
        assert len(firewalls) == 1
        rules = firewalls[0]['"hcloud_firewall"']['"this"']["rule"]
        open_ports = set()
        for rule in rules:
            sources = rule["source_ips"]
            port = _unq(rule.get("port", '""'))
            if sources == "${local.all_ips}":
                if port:
                    open_ports.add(port)
            else:
                # Everything not open to the world is limited to configured networks.
                assert "admin_cidrs" in str(sources), rule
        assert open_ports == public, module
        protocols = {(_unq(r["protocol"]), _unq(r.get("port", '""'))) for r in rules}
        if module == "gslb_node":
            assert {("udp", "53"), ("tcp", "53")} <= protocols


# --- templates ---------------------------------------------------------------------------

_TEMPLATEFILE = re.compile(r'templatefile\("\$\{path\.module\}/(templates/[^"]+)", \{')


def _top_level_keys(obj_text: str) -> set[str]:
    """Keys of an HCL object constructor `{a = ..., b = ...}` as python-hcl2 prints it."""
    keys: set[str] = set()
    depth = 0
    start = 1
    body = obj_text
    for i, ch in enumerate(body):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if (ch == "," and depth == 1) or (depth == 0 and ch == "}"):
            part = body[start:i].strip()
            if part:
                keys.add(part.split("=", 1)[0].strip())
            start = i + 1
        if depth == 0 and ch == "}":
            break
    return keys


def _templatefile_calls() -> list[tuple[Path, Path, set[str]]]:
    """(calling module dir, template path, keys passed) for every templatefile() call."""
    calls = []
    for directory in MODULE_DIRS:
        for s in _all_strings(directory):
            for m in _TEMPLATEFILE.finditer(s):
                obj_start = m.end() - 1
                calls.append((directory, directory / m.group(1), _top_level_keys(s[obj_start:])))
    return calls


_INTERP = re.compile(r"\$\{([^{}]*)\}")
_DIRECTIVE = re.compile(r"^%\{ (.+?) ~\}$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


class TemplateError(Exception):
    pass


def _tf_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    raise TemplateError(f"cannot interpolate {type(value).__name__} {value!r}")


def _lookup(path: str, scope: Mapping[str, Any]) -> Any:
    if not re.fullmatch(rf"{_IDENT}(\.{_IDENT})*", path):
        raise TemplateError(f"unsupported expression {path!r}")
    head, *rest = path.split(".")
    if head not in scope:
        raise TemplateError(f"unknown variable {head!r}")
    value = scope[head]
    for attr in rest:
        value = value[attr]
    return value


def _expr(text: str, scope: Mapping[str, Any]) -> Any:
    text = text.strip()
    m = re.fullmatch(r"(jsonencode|base64encode)\((.*)\)", text)
    if m:
        value = _lookup(m.group(2).strip(), scope)
        if m.group(1) == "jsonencode":
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return base64.b64encode(value.encode()).decode()
    return _lookup(text, scope)


def _condition(text: str, scope: Mapping[str, Any]) -> bool:
    m = re.fullmatch(r'(\S+) != ""', text)
    if m:
        return bool(_lookup(m.group(1), scope) != "")
    value = _lookup(text, scope)
    if not isinstance(value, bool):
        raise TemplateError(f"condition {text!r} is not a bool")
    return value


def _block_end(lines: list[str], i: int, opener: str, closer: str) -> tuple[int, int | None]:
    """Index of the matching closer after line i, and of an `else` at the same depth."""
    depth = 0
    middle = None
    for j in range(i + 1, len(lines)):
        m = _DIRECTIVE.match(lines[j])
        if not m:
            continue
        word = m.group(1).split()[0]
        if word == opener:
            depth += 1
        elif word == closer:
            if depth == 0:
                return j, middle
            depth -= 1
        elif word == "else" and depth == 0 and opener == "if":
            middle = j
    raise TemplateError(f"line {i + 1}: no {closer}")


def _render_lines(lines: list[str], scope: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if m:
            words = m.group(1)
            if words.startswith("for "):
                fm = re.fullmatch(rf"for ({_IDENT}) in (\S+)", words)
                if not fm:
                    raise TemplateError(f"unsupported directive {words!r}")
                end, _ = _block_end(lines, i, "for", "endfor")
                for item in _lookup(fm.group(2), scope):
                    out += _render_lines(lines[i + 1 : end], {**scope, fm.group(1): item})
                i = end + 1
                continue
            if words.startswith("if "):
                end, middle = _block_end(lines, i, "if", "endif")
                then = lines[i + 1 : middle if middle is not None else end]
                other = lines[middle + 1 : end] if middle is not None else []
                out += _render_lines(then if _condition(words[3:], scope) else other, scope)
                i = end + 1
                continue
            raise TemplateError(f"unexpected directive {words!r}")
        if "%{" in line:
            raise TemplateError(f"directive not alone on its line: {line!r}")
        out.append(_INTERP.sub(lambda mm: _tf_str(_expr(mm.group(1), scope)), line))
        i += 1
    return out


def render(path: Path, variables: Mapping[str, Any]) -> str:
    """Render a Terraform template the way templatefile() does (for the supported subset)."""
    return "\n".join(_render_lines(path.read_text(encoding="utf-8").split("\n"), variables))


def _template_variables(path: Path) -> set[str]:
    """Top-level names a template reads (loop variables excluded)."""
    text = path.read_text(encoding="utf-8")
    loop_vars = set(re.findall(rf"%\{{ for ({_IDENT}) in", text))
    names = set()
    for expr in re.findall(r"\$\{([^{}]*)\}", text) + re.findall(r"%\{ (.+?) ~\}", text):
        for m in re.finditer(rf"(?<![.\w\"]){_IDENT}", expr):
            names.add(m.group(0))
    keywords = {"for", "in", "if", "else", "endif", "endfor", "jsonencode", "base64encode"}
    return names - keywords - loop_vars


def test_every_template_is_used_with_exactly_its_variables() -> None:
    calls = _templatefile_calls()
    templates = {t for _, t, _ in calls}
    on_disk = {p for d in MODULE_DIRS for p in (d / "templates").glob("*.tftpl")}
    assert templates == on_disk
    for directory, template, keys in calls:
        where = f"{template.relative_to(TF)} (from {directory.relative_to(TF.parent)})"
        assert template.is_file(), where
        used = _template_variables(template)
        assert used - keys == set(), f"{where}: used but not passed"
        assert keys - used == set(), f"{where}: passed but not used"


def _keys_passed(template: Path) -> set[str]:
    (keys,) = [k for _, t, k in _templatefile_calls() if t == template]
    return keys


# Sample inputs, shaped like what the .tf files pass (the test below checks the key sets).

EDGE_DIR = TF / "modules" / "edge_node" / "templates"
GSLB_DIR = TF / "modules" / "gslb_node" / "templates"


TOKEN = "0123456789abcdef0123456789abcdef"  # a sample admin token
PURGE_TOKEN = "edge-admin-token-0123456789abcdef"  # a sample edge_admin_token


def edge_config_vars(tls: bool, token: bool = True) -> dict[str, Any]:
    return {
        "name": "geoedge-edge-eu-central-1",
        "http_listen": ["0.0.0.0:80", "[::]:80"],
        "https_listen": ["0.0.0.0:443", "[::]:443"],
        "tls_enabled": tls,
        "redirect_http": True,
        "workers": 2,
        "hosts": ["www.example.com"],
        "algorithm": "round_robin",
        "origins": [
            {"url": "https://origin-a.example.com", "weight": 1},
            {"url": "http://origin-b.example.com:8080", "weight": 2},
        ],
        "probe_path": "/healthz",
        "cache_size": "20GiB",
        "memory_cache": "256MiB",
        "admin_listen": "0.0.0.0:9090",
        "capacity_rps": "1000.0",
        "admin_token_file": "/etc/geoedge/admin.token" if token else "",
    }


EDGES = [
    {
        "name": "eu-central-1",
        "ipv4": "192.0.2.10",
        "ipv6": "2001:db8:10::1",
        "latitude": "50.4779",
        "longitude": "12.3713",
        "weight": "1.000000",
        "status_url": "http://192.0.2.10:9090/__edge/status",
        "capacity": "2000.0",
    },
    {
        "name": "us-east-1",
        "ipv4": "198.51.100.10",
        "ipv6": "2001:db8:20::1",
        "latitude": "39.0438",
        "longitude": "-77.4874",
        "weight": "1.000000",
        "status_url": "http://198.51.100.10:9090/__edge/status",
        "capacity": "1000.0",
    },
    {
        "name": "ap-southeast-1",
        "ipv4": "203.0.113.10",
        "ipv6": "2001:db8:30::1",
        "latitude": "1.3521",
        "longitude": "103.8198",
        "weight": "0.500000",
        "status_url": "http://203.0.113.10:9090/__edge/status",
        "capacity": "1000.0",
    },
]


def gslb_config_vars(geo_database: str = "", token: bool = True) -> dict[str, Any]:
    return {
        "node_name": "ns1.example.com.",
        "listen": ["192.0.2.53:53", "[2001:db8:53::1]:53"],
        "api_listen": "192.0.2.53:8053",
        "api_token_file": "/etc/geoedge/api.token" if token else "",
        "purge_token_file": "/etc/geoedge/edge-admin.token" if token else "",
        "workers": 2,
        "geo_database": geo_database,
        "origin": "example.com.",
        "soa_mname": "ns1.example.com.",
        "soa_rname": "hostmaster.example.com.",
        "soa_serial": 2026112701,
        "records": [
            "@ NS ns1",
            "@ NS ns2",
            "ns1 A 192.0.2.53",
            "ns1 AAAA 2001:db8:53::1",
            "ns2 A 198.51.100.53",
            "ns2 AAAA 2001:db8:54::1",
            "@ MX 10 mail",
            "mail A 198.51.100.25",
            '@ TXT "v=spf1 mx -all"',
        ],
        "edges": EDGES,
        "edge_names": [e["name"] for e in EDGES],
        "pool_fqdn": "www.example.com.",
        "pool_policy": "nearest",
        "pool_answers": 1,
        "pool_ttl": 30,
    }


def unit_vars(config: str) -> dict[str, Any]:
    return {"config_path": config}


def edge_cloud_init_vars(tls: bool, token: bool = True) -> dict[str, Any]:
    return {
        "geoedge_package": "geoedge==0.1.0",
        "config_path": "/etc/geoedge/edge.toml",
        "config_toml": render(EDGE_DIR / "edge.toml.tftpl", edge_config_vars(tls, token)),
        "service_name": "geoedge-edge.service",
        "unit": render(EDGE_DIR / "geoedge-edge.service.tftpl", unit_vars("/etc/x.toml")),
        "tls_enabled": tls,
        "tls_certificate_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        if tls
        else "",
        "tls_private_key_pem": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
        if tls
        else "",
        "admin_token": TOKEN if token else "",
        "token_path": "/etc/geoedge/admin.token",
    }


def gslb_cloud_init_vars(geoipupdate: bool, token: bool = True) -> dict[str, Any]:
    return {
        "geoedge_package": "https://example.com/geoedge-0.1.0-py3-none-any.whl",
        "config_path": "/etc/geoedge/gslb.toml",
        "config_toml": render(TF / "templates" / "gslb.toml.tftpl", gslb_config_vars()),
        "service_name": "geoedge-gslb.service",
        "unit": render(GSLB_DIR / "geoedge-gslb.service.tftpl", unit_vars("/etc/x.toml")),
        "geoipupdate": geoipupdate,
        "geoip_conf": "AccountID 1\nLicenseKey k\nEditionIDs GeoLite2-City\n"
        "DatabaseDirectory /var/lib/GeoIP\n",
        "api_token": TOKEN if token else "",
        "token_path": "/etc/geoedge/api.token",
        "purge_token": PURGE_TOKEN if token else "",
        "purge_token_path": "/etc/geoedge/edge-admin.token",
    }


SAMPLES = {
    EDGE_DIR / "edge.toml.tftpl": edge_config_vars(True),
    EDGE_DIR / "geoedge-edge.service.tftpl": unit_vars("/etc/geoedge/edge.toml"),
    EDGE_DIR / "cloud-init.yaml.tftpl": edge_cloud_init_vars(True),
    GSLB_DIR / "geoedge-gslb.service.tftpl": unit_vars("/etc/geoedge/gslb.toml"),
    GSLB_DIR / "cloud-init.yaml.tftpl": gslb_cloud_init_vars(True),
    TF / "templates" / "gslb.toml.tftpl": gslb_config_vars(),
}


@pytest.mark.parametrize("template", sorted(SAMPLES), ids=lambda p: str(p.relative_to(TF)))
def test_samples_match_what_terraform_passes(template: Path) -> None:
    assert set(SAMPLES[template]) == _keys_passed(template)


def test_renderer_matches_terraform_semantics() -> None:
    # The subset's semantics, pinned so the renderer cannot drift into accepting anything.
    assert _tf_str(True) == "true"
    assert _tf_str(2.0) == "2"
    assert _tf_str(1.5) == "1.5"
    with pytest.raises(TemplateError):
        _tf_str([1])
    with pytest.raises(TemplateError):
        _expr("upper(x)", {"x": "a"})
    with pytest.raises(TemplateError):
        _lookup("missing", {})


@pytest.mark.parametrize(("tls", "token"), [(False, False), (True, True)])
def test_edge_config_renders_to_valid_toml(tls: bool, token: bool, tmp_path: Path) -> None:
    text = render(EDGE_DIR / "edge.toml.tftpl", edge_config_vars(tls, token))
    data = tomllib.loads(text)
    assert data["server"]["listen"] == ["0.0.0.0:80", "[::]:80"]
    assert data["server"]["hosts"] == ["www.example.com"]
    assert [o["url"] for o in data["pool"]["origins"]] == [
        "https://origin-a.example.com",
        "http://origin-b.example.com:8080",
    ]
    assert data["admin"]["capacity_rps"] == 1000.0
    assert data["admin"].get("token_file", "") == ("/etc/geoedge/admin.token" if token else "")
    assert ("tls" in data) is tls
    if tls:
        assert data["tls"]["redirect_http"] is True
        # The edge's own loader checks the certificate files exist; give it some.
        for name in ("cert", "key"):
            target = tmp_path / f"{name}.pem"
            target.write_text("placeholder\n")
            text = text.replace(f"/etc/geoedge/tls/{name}.pem", str(target))
    if token:  # likewise the token file, as cloud-init writes it
        (tmp_path / "admin.token").write_text(TOKEN + "\n")
        text = text.replace("/etc/geoedge/admin.token", str(tmp_path / "admin.token"))
    edge_config = importlib.import_module("edge.config")
    config_file = tmp_path / "edge.toml"
    config_file.write_text(text)
    config = edge_config.load(str(config_file))
    assert config.server.hosts == ("www.example.com",)
    assert config.admin.listen is not None
    assert config.admin.listen.port == 9090
    assert config.cache.dir == "/var/cache/geoedge"
    assert bool(config.tls.listen) is tls
    assert config.admin.token == (TOKEN if token else None)


@pytest.mark.parametrize(
    ("geo_database", "token"), [("", False), ("/var/lib/GeoIP/GeoLite2-City.mmdb", True)]
)
def test_gslb_config_renders_to_valid_toml(geo_database: str, token: bool, tmp_path: Path) -> None:
    text = render(TF / "templates" / "gslb.toml.tftpl", gslb_config_vars(geo_database, token))
    data = tomllib.loads(text)
    assert data["server"]["listen"] == ["192.0.2.53:53", "[2001:db8:53::1]:53"]
    assert [e["name"] for e in data["edge"]] == ["eu-central-1", "us-east-1", "ap-southeast-1"]
    assert all(isinstance(e["latitude"], float) for e in data["edge"])
    assert data["edge"][2]["longitude"] == pytest.approx(103.8198)
    assert data["pool"][0]["edges"] == ["eu-central-1", "us-east-1", "ap-southeast-1"]
    assert data["zone"][0]["origin"] == "example.com."
    assert "ns1 A 192.0.2.53" in data["zone"][0]["records"]
    assert data["geo"].get("database", "") == geo_database
    assert data["api"].get("token_file", "") == ("/etc/geoedge/api.token" if token else "")
    assert data.get("purge", {}).get("token_file", "") == (
        "/etc/geoedge/edge-admin.token" if token else ""
    )

    try:
        gslb_config = importlib.import_module("gslb.config")
    except ImportError:
        return  # gslb's loader not there yet: the TOML checks above are what we can do
    if geo_database:
        # The loader may check the database exists; point it at a real one.
        from geo import default_database_path

        text = text.replace(geo_database, str(default_database_path()))
    if token:  # the token file, as cloud-init writes it
        (tmp_path / "api.token").write_text(TOKEN + "\n")
        text = text.replace("/etc/geoedge/api.token", str(tmp_path / "api.token"))
        (tmp_path / "edge-admin.token").write_text(PURGE_TOKEN + "\n")
        text = text.replace("/etc/geoedge/edge-admin.token", str(tmp_path / "edge-admin.token"))
    config_file = tmp_path / "gslb.toml"
    config_file.write_text(text)
    config = gslb_config.load_config(config_file)
    assert {e.name for e in config.edges} == {"eu-central-1", "us-east-1", "ap-southeast-1"}
    assert {e.status_url for e in config.edges} == {
        f"http://{e['ipv4']}:9090/__edge/status" for e in EDGES
    }
    (pool,) = config.pools
    assert len(pool.edges) == 3
    assert config.api.token == (TOKEN if token else None)
    # fleet purges reach each edge's admin port (from its status_url) with the edges' token
    assert {e.admin_url for e in config.edges} == {f"http://{e['ipv4']}:9090" for e in EDGES}
    assert {e.admin_token for e in config.edges} == {PURGE_TOKEN if token else None}


@pytest.mark.parametrize(
    ("template", "command", "config"),
    [
        (EDGE_DIR / "geoedge-edge.service.tftpl", "edge", "/etc/geoedge/edge.toml"),
        (GSLB_DIR / "geoedge-gslb.service.tftpl", "gslb", "/etc/geoedge/gslb.toml"),
    ],
    ids=["edge", "gslb"],
)
def test_systemd_units(template: Path, command: str, config: str) -> None:
    text = render(template, unit_vars(config))
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert parser.sections() == ["Unit", "Service", "Install"]
    service = parser["Service"]
    assert service["ExecStart"] == f"/opt/geoedge/bin/{command} serve -c {config}"
    assert service["ExecStartPre"] == f"/opt/geoedge/bin/{command} check-config {config}"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] == "geoedge"
    assert "CAP_NET_BIND_SERVICE" in service["AmbientCapabilities"]
    assert service["Restart"] == "always"
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def _write_files(doc: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    files = {}
    for entry in doc["write_files"]:
        content = entry["content"]
        if entry.get("encoding") == "b64":
            content = base64.b64decode(content).decode()
        files[entry["path"]] = (content, entry["permissions"])
    return files


@pytest.mark.parametrize(("tls", "token"), [(False, False), (True, True), (False, True)])
def test_edge_cloud_init(tls: bool, token: bool) -> None:
    variables = edge_cloud_init_vars(tls, token)
    text = render(EDGE_DIR / "cloud-init.yaml.tftpl", variables)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = _write_files(doc)
    assert files["/etc/geoedge/edge.toml"] == (variables["config_toml"], "0644")
    assert files["/etc/systemd/system/geoedge-edge.service"] == (variables["unit"], "0644")
    assert ("/etc/geoedge/tls/key.pem" in files) is tls
    if tls:
        assert files["/etc/geoedge/tls/key.pem"] == (variables["tls_private_key_pem"], "0600")
    assert ("/etc/geoedge/admin.token" in files) is token
    runcmd = doc["runcmd"]
    if token:
        # Written for root alone, then opened to the service's group once that exists.
        assert files["/etc/geoedge/admin.token"] == (TOKEN, "0600")
        group = runcmd.index(["chgrp", "geoedge", "/etc/geoedge/admin.token"])
        assert runcmd.index(["chmod", "0640", "/etc/geoedge/admin.token"]) == group + 1
        assert group > 0 and runcmd[0][0] == "useradd"
    assert "python3-venv" in doc["packages"]
    runcmd = doc["runcmd"]
    assert ["/opt/geoedge/bin/pip", "install", "--quiet", "geoedge==0.1.0"] in runcmd
    assert runcmd[-1] == ["systemctl", "enable", "--now", "geoedge-edge.service"]
    assert runcmd[0][0] == "useradd"


@pytest.mark.parametrize(("geoipupdate", "token"), [(False, False), (True, True)])
def test_gslb_cloud_init(geoipupdate: bool, token: bool) -> None:
    variables = gslb_cloud_init_vars(geoipupdate, token)
    text = render(GSLB_DIR / "cloud-init.yaml.tftpl", variables)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = _write_files(doc)
    assert files["/etc/geoedge/gslb.toml"] == (variables["config_toml"], "0644")
    assert files["/etc/systemd/system/geoedge-gslb.service"] == (variables["unit"], "0644")
    runcmd = doc["runcmd"]
    assert ["/opt/geoedge/bin/pip", "install", "--quiet", variables["geoedge_package"]] in runcmd
    assert runcmd[-1] == ["systemctl", "enable", "--now", "geoedge-gslb.service"]
    assert ("/etc/geoedge/api.token" in files) is token
    if token:
        assert files["/etc/geoedge/api.token"] == (TOKEN, "0600")
        group = runcmd.index(["chgrp", "geoedge", "/etc/geoedge/api.token"])
        assert runcmd.index(["chmod", "0640", "/etc/geoedge/api.token"]) == group + 1
        assert group > 0 and runcmd[0][0] == "useradd"
    assert ("/etc/geoedge/edge-admin.token" in files) is token
    if token:
        assert files["/etc/geoedge/edge-admin.token"] == (PURGE_TOKEN, "0600")
        group = runcmd.index(["chgrp", "geoedge", "/etc/geoedge/edge-admin.token"])
        assert runcmd.index(["chmod", "0640", "/etc/geoedge/edge-admin.token"]) == group + 1
    assert ("/etc/GeoIP.conf" in files) is geoipupdate
    assert ("geoipupdate" in doc["packages"]) is geoipupdate
    if geoipupdate:
        assert files["/etc/GeoIP.conf"] == (variables["geoip_conf"], "0600")
        assert doc["apt"]["sources"]["geoedge-contrib.list"]["source"].endswith(" contrib")
        timer = configparser.ConfigParser(interpolation=None)
        timer.read_string(files["/etc/systemd/system/geoedge-geoipupdate.timer"][0])
        assert timer["Timer"]["Persistent"] == "true"
        update = configparser.ConfigParser(interpolation=None)
        update.read_string(files["/etc/systemd/system/geoedge-geoipupdate.service"][0])
        assert "geoedge-gslb.service" in update["Service"]["ExecStartPost"]
        # The database must be fetched before gslb first starts.
        assert runcmd.index(["/usr/bin/geoipupdate", "-f", "/etc/GeoIP.conf"]) < len(runcmd) - 1


def test_example_tfvars_sets_every_required_root_variable() -> None:
    tfvars = {k: v for k, v in _load(TF / "example.tfvars").items() if not k.startswith("__")}
    variables = _blocks(TF, "variable")
    required = {name for name, body in variables.items() if not _default_is_set(body)}
    assert required - set(tfvars) == set()
    assert set(tfvars) - set(variables) == set(), "example.tfvars sets unknown variables"
    assert len(tfvars["dns_nodes"]) >= 2
