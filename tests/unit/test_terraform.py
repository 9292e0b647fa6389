"""Static checks of terraform/ (there is no terraform binary here): every .tf file parses
(python-hcl2) and is laid out as `terraform fmt` writes it; variables, locals, outputs and
module calls agree; every module has its README; and the files a node runs are what the
services expect: each example's values, taken through modules/node-config the way its HCL
does (re-done in Python in tests/unit/tfexamples.py, inputs converted with the declared
types and their optional() defaults), render to configs the real gslb and edge loaders
accept, and to cloud-init that writes exactly the files in packaging/ and, on AWS, no secret.

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
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import config as edge_config
from edge.errors import ConfigError as EdgeConfigError
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
    resources,
    template_variables,
    tf_str,
    top_level_keys,
    unq,
)
from tests.unit.tfexamples import (
    ADMIN_CERT,
    ADMIN_KEY,
    EDGE_TOKEN,
    HEALTH_CA,
    NODE_CONFIG,
    PEER_TOKEN,
    SECRET,
    TEMPLATES,
    aws_nodes,
    hetzner_nodes,
    node_config,
)

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
PACKAGING = ROOT / "packaging"
MODULES = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())
EXAMPLES = sorted(p for p in (TF / "examples").iterdir() if p.is_dir() and p.name != "shared")
DIRS = MODULES + EXAMPLES
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
    kinds = r"(?:(?:aws|hcloud|terraform|tls)_[a-z0-9_]+|external)"
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
    input is passed on as it is (or one attribute of it), read inside nonsensitive(...) for a
    yes/no, or becomes file contents (node-config's `contents`), nothing else."""
    sensitive = [n for n, b in blocks(directory, "variable").items() if b.get("sensitive")]
    for path in directory.glob("*.tf"):
        if path.name == "variables.tf" or path.is_symlink():
            continue
        in_contents = False
        for line in path.read_text(encoding="utf-8").splitlines():
            in_contents = (in_contents or line.startswith("  contents = {")) and line != "  }"
            for name in sensitive:
                for m in re.finditer(rf"\bvar\.{name}\b", line):
                    passed_on = re.fullmatch(rf"\s*\w+\s*= var\.{name}(\.\w+)?", line)
                    guarded = "nonsensitive(" in line[: m.start()]
                    assert passed_on or guarded or in_contents, f"{path.name}: {line.strip()}"


def test_for_each_keys_do_not_wait_for_apply() -> None:
    """Addresses made in the same apply (the glue Elastic IPs in health_checker_cidrs and
    peer_cidrs) and the CA certificate (health_ca_pems) are unknown at plan: they may be
    for_each values, never keys, and never decide which files (so which SSM parameters)
    a node has, or the first apply fails."""
    text = (TF / "modules" / "aws-node" / "main.tf").read_text(encoding="utf-8")
    for name in ("health_checker_cidrs", "peer_cidrs"):
        assert not re.search(rf"(toset|distinct)\([^\n]*var\.{name}", text), name
        assert re.search(rf'for i, c in var\.{name} : "[a-z]+-\$\{{i\}}" => c', text), name
    (rule,) = [b for (k, n), b in resources(TF / "modules" / "aws-node").items() if n == "admin"]
    assert unq(rule["for_each"]) == "${local.admin_sources}"
    node = (NODE_CONFIG / "main.tf").read_text(encoding="utf-8")
    assert "has_health_ca  = length(var.health_ca_pems) > 0" in node
    for example in EXAMPLES:
        assert "admin_ca_pems = var.edge_admin_https ? [" in (example / "main.tf").read_text()


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


def test_node_config_mirror_is_current() -> None:
    """The Python mirror above passes the same keys to each template as main.tf does, and
    main.tf builds the same file keys and paths."""
    text = (NODE_CONFIG / "main.tf").read_text(encoding="utf-8")
    keys = ["config", "token", "tls-cert", "tls-key", "admin-tls-cert", "admin-tls-key"]
    keys += ["edge-admin-token", "peer-token", "health-ca", "dnssec-key", "geoip-conf"]
    for key in keys:
        assert re.search(rf"\b{key}\s+= \{{", text), key
    paths = {"ADMIN_CERT": ADMIN_CERT, "ADMIN_KEY": ADMIN_KEY, "HEALTH_CA": HEALTH_CA}
    paths |= {"EDGE_TOKEN": EDGE_TOKEN, "PEER_TOKEN": PEER_TOKEN}
    for name, path in paths.items():
        assert re.search(rf'\b{name.lower()}\s+= "{path}"', text), name
    assert '"/var/log/geoedge/access.log"' in text
    assert "--require-hashes --requirement /etc/geoedge/requirements.txt" in text
    assert 'packages    = concat(["python3-venv", "curl"]' in text


def test_the_mirrors_pass_what_the_examples_pass() -> None:
    """The node inputs built above name the same module inputs the examples' calls pass."""
    for example, nodes in (("aws-multi-region", aws_nodes), ("hetzner", hetzner_nodes)):
        calls = blocks(TF / "examples" / example, "module")
        passed = {k for body in calls.values() for k in body if not k.startswith("__")}
        config_inputs = set(blocks(NODE_CONFIG, "variable")) - {"ssm"}
        # modules/aws-node turns admin_ca into node-config's admin_tls (a certificate it issues).
        derived = {"admin_tls"} if "admin_ca" in passed else set()
        for inputs in nodes(True).values():
            assert set(inputs) - {"ssm"} <= passed & config_inputs | {"gslb", "edge"} | derived


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
        assert config.health.quorum == gslb["health"]["quorum"]
        # The quorum: every other DNS node of the example (and dns_peers), with the API token.
        assert [(p.name, p.api) for p in config.peers] == [
            (p["name"], p["api"]) for p in gslb["peers"]
        ]
        assert len(config.peers) >= 1 and all(p.api.startswith("http://") for p in config.peers)
        assert {p.token for p in config.peers} == {SECRET if inputs["token"] else None}
        # Purges and the probes of private edges carry the edges' admin token.
        edge_token = SECRET[::-1] if inputs["edge_admin_token"] else None
        assert {e.admin_token for e in config.edges} == {edge_token}
        https = {(e.status_url or "").split(":")[0] for e in config.edges}
        assert https == {"https" if inputs.get("health_ca_pems") else "http"}
        assert (config.health.ca_file is not None) is bool(inputs.get("health_ca_pems"))
    else:
        econfig = edge_config.load(str(config_file))
        assert econfig.server.hosts == tuple(inputs["edge"]["hosts"])
        assert econfig.pool.probe.path == inputs["edge"]["probe_path"]
        assert bool(econfig.tls.listen) is (inputs["tls"] is not None)
        assert econfig.admin.token == (SECRET[::-1] if inputs["token"] else None)
        assert econfig.admin.private is bool(inputs["edge"].get("admin_private"))
        assert (econfig.admin.certificate is not None) is (inputs.get("admin_tls") is not None)


def test_quorum_and_purge_settings_reach_the_loader(tmp_path: Path) -> None:
    """The settings the examples leave at their defaults: a quorum count, purge retries, an
    https peer without a token."""
    inputs = copy.deepcopy(next(v for v in hetzner_nodes(False).values() if v["role"] == "gslb"))
    gslb = inputs["gslb"]
    gslb["health"] |= {"quorum": 2}
    gslb["purge"] = {"timeout": 3, "attempts": 5, "backoff": 1, "backoff_max": 4}
    gslb["peers"] = [{"name": "ns9", "api": "https://[2001:db8::53]:8053/"}, *gslb["peers"]]
    out = node_config(inputs)
    assert "peer-token" not in out["meta"] and "edge-admin-token" not in out["meta"]
    (tmp_path / "gslb.toml").write_text(out["config"])
    config = gslb_config.load_config(tmp_path / "gslb.toml")
    assert config.health.quorum == 2 and config.health.ca_file is None
    assert (config.purge.timeout, config.purge.attempts) == (3.0, 5)
    assert (config.purge.backoff, config.purge.backoff_max) == (1.0, 4.0)
    assert config.peers[0].api == "https://[2001:db8::53]:8053" and config.peers[0].token is None


def test_a_private_admin_port_needs_the_token(tmp_path: Path) -> None:
    """What node-config's precondition on edge.admin_private spares the operator: the edge
    refuses the config at start."""
    inputs = copy.deepcopy(next(v for v in hetzner_nodes(False).values() if v["role"] == "edge"))
    assert inputs["token"] == ""
    inputs["edge"]["admin_private"] = True
    (tmp_path / "edge.toml").write_text(node_config(inputs)["config"])
    with pytest.raises(EdgeConfigError, match=r"admin\.private"):
        edge_config.load(str(tmp_path / "edge.toml"))
    text = (NODE_CONFIG / "outputs.tf").read_text(encoding="utf-8")
    assert "!try(var.edge.admin_private, false) || local.has_token" in text


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


def test_aws_configs_are_identical_on_both_dns_nodes_but_their_peers() -> None:
    """Each AWS DNS node names the other as its quorum peer; nothing else differs."""
    nodes = {v["name"]: v for v in aws_nodes(True).values() if v["role"] == "gslb"}
    configs = {name: node_config(v)["config"].split("\n", 1)[1] for name, v in nodes.items()}
    assert len(configs) == 2
    without_peers = {re.sub(r"\n\[\[peers\]\]\n(?:[^\n]+\n)+", "\n", c) for c in configs.values()}
    assert len(without_peers) == 1
    for name, text in configs.items():
        glue = dict(re.findall(r'^  "(ns\d) A ([0-9.]+)",$', text, re.M))
        (other,) = set(glue) - {name.rsplit("-", 1)[1]}
        peers = re.findall(r'^api = "(\S+)"$', text, re.M)
        assert peers == [f"http://{glue[other]}:8053", "http://203.0.113.53:8053"]


def test_hetzner_configs_differ_in_listen_addresses_and_peers_only() -> None:
    """docs/production.md: on Hetzner each DNS node binds its own primary IPs and names the
    others as peers; the rest of the config (zone, edges, pools, health) is the same."""
    nodes = {v["name"]: v for v in hetzner_nodes(True).values() if v["role"] == "gslb"}
    assert len(nodes) >= 2
    configs = {name: node_config(v)["config"].split("\n", 1)[1] for name, v in nodes.items()}
    own = r"^listen = .*$|\n\[\[peers\]\]\n(?:[^\n]+\n)+"
    assert len({re.sub(own, "", c, flags=re.M) for c in configs.values()}) == 1
    for name, text in configs.items():
        glue = nodes[name]["gslb"]["listen"][0].rsplit(":", 1)[0]
        assert re.findall(r'^listen = "?\[?"?([0-9.]+):', text, re.M) == [glue, glue], name
        peers = re.findall(r'^api = "http://([0-9.]+):8053"$', text, re.M)
        others = {v["gslb"]["listen"][0].rsplit(":", 1)[0] for n, v in nodes.items() if n != name}
        assert set(peers) == others | {"203.0.113.53"}, name


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
        "hostmaster",
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
        "geoip",
    ):
        assert checks[name], f"{name} has no validation block"
    (rname,) = _patterns(" ".join(checks["hostmaster"]), "var.hostmaster")
    for good in ("hostmaster.example.com", "Ops.Example.COM.", "dns-admin.example.co.uk"):
        assert rname.search(good), good
    for bad in ("hostmaster@example.com", "hostmaster", "host master.example.com", "a..b.com"):
        assert not rname.search(bad), bad
    assert any("private_key_pem" in c for c in checks["tls"])
    assert any("hysteresis" in c and "load_threshold" in c for c in checks["pool"])
    assert any("timeout" in c and "interval" in c for c in checks["health"])
    node = _validations(NODE_CONFIG)
    assert any("--hash=sha256" in c for c in node["install"])
    assert any("wheel_sha256" in c for c in node["install"])


def _patterns(text: str, subject: str) -> list[re.Pattern[str]]:
    """The RE2 patterns of `regex("...", subject)` calls in HCL `text` (Python's re reads
    these the same way: classes, groups, `+?`)."""
    calls = re.finditer(r'regex\("((?:[^"\\]|\\.)*)", ([\w.\[\]]+)\)', text)
    return [re.compile(json.loads(f'"{m.group(1)}"')) for m in calls if m.group(2) == subject]


def test_new_inputs_are_validated() -> None:
    """Admin HTTPS, the quorum peers, the CA bundle and the purge settings: each input that
    can be wrong has a validation block, and its patterns take and refuse what they should."""
    node = _validations(NODE_CONFIG)
    for name in ("admin_tls", "edge_admin_token", "peer_token", "health_ca_pems"):
        assert node[name], f"node-config: {name} has no validation block"
    assert any("private_key_pem" in c and "certificate_pem" in c for c in node["admin_tls"])
    gslb = " ".join(node["gslb"])
    for words in ("quorum <= length(g.peers) + 1", "distinct(g.peers[*].api)", "backoff_max"):
        assert words in gslb, words
    (api,) = _patterns(gslb, "p.api")
    for good in ("http://192.0.2.53:8053", "https://ns2.example.com:8053/", "http://[::1]:8053"):
        assert api.search(good), good
    for bad in ("ftp://192.0.2.53", "http://u@host:1", "http://h:1/?q", "http://h:1/#f", "h:1"):
        assert not api.search(bad), bad
    (ca,) = _patterns(" ".join(node["health_ca_pems"]), "pem")
    assert ca.search("-----BEGIN CERTIFICATE-----\nMIIB") and not ca.search("MIIB")
    # aws-node and hcloud-node pass admin_ca and the validity on to admin-cert, which checks them.
    cert = _validations(TF / "modules" / "admin-cert")
    assert cert["ca"] and cert["validity_days"] and cert["ip_addresses"]
    for node in ("aws-node", "hcloud-node"):
        calls = blocks(TF / "modules" / node, "module")
        assert {"ca", "validity_days"} <= set(calls["admin_cert"]), node

    operator = _validations(TF / "examples" / "hetzner")
    assert any("quorum" in c for c in operator["health"])
    (peer,) = _patterns(" ".join(operator["dns_peers"]), "p.api")
    for good in ("http://203.0.113.53:8053", "https://[2001:db8::53]:8053"):
        assert peer.search(good), good
    # The firewalls admit the peer's address: a name would not do.
    for bad in ("http://ns3.example.com:8053", "http://203.0.113.53", "http://203.0.113.53:80/x"):
        assert not peer.search(bad), bad
    # What the examples make of it: the address for the firewall rules.
    for example in ("aws-multi-region", "hetzner"):
        (host,) = _patterns(str(locals_of(TF / "examples" / example)["peer_hosts"]), "p.api")
        found = host.search("https://[2001:db8::53]:8053")
        assert found and found.group(1) == "2001:db8::53"
        found = host.search("http://203.0.113.53:8053")
        assert found and found.group(1) == "203.0.113.53"


def test_fallback_regions_must_exist() -> None:
    """A misspelt region in pool.fallback_regions would leave the pool's fallback empty,
    which gslb reads as "every edge": each example refuses it at plan, in a precondition
    (a validation block cannot see the example's regions in Terraform 1.5)."""
    for example, allowed in (
        ("aws-multi-region", '["eu", "us", "ap"]'),
        ("hetzner", "keys(var.edge_regions)"),
    ):
        output = blocks(TF / "examples" / example, "output")["gslb_config"]
        (check,) = [unq(p["condition"]) for p in output["precondition"]]
        assert check == f"${{length(setsubtract(var.pool.fallback_regions, {allowed})) == 0}}"
        # The example's own tfvars name a fallback region, and one the check lets through.
        tfvars = plain(load(TF / "examples" / example / "terraform.tfvars.example"))
        regions = set(tfvars.get("edge_regions", {"eu": 0, "us": 0, "ap": 0}))
        named = set(tfvars["pool"]["fallback_regions"])
        assert named and named <= regions, example


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
    dirs += ["modules/admin-cert"]
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
