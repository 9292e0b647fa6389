"""The operator's handbook, followed: the commands docs/delegation.md and docs/production.md
show with their output are run again, on what the pages say they were run on (the Hetzner
example's ns1 config as Terraform renders it, tests/unit/tfexamples.py, served by a real
`gslb serve` on loopback), and every output line a page shows must be among what the command
prints now, in the same order. A page that drifts from the program (a changed flag, a record
the example no longer renders, another explain format) fails here. The figures (the SVGs
in docs/) are held to the defaults they draw: the failover bound and the ports; the
Terraform addresses and outputs the pages name, to the examples.

Left out: commands that need the Internet or a fleet (`dig +trace`, the parent's servers,
systemctl); the values of a freshly generated DNSSEC key (tag, key, digest), which are
matched by shape.
"""

from __future__ import annotations

import copy
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gslb.config import HealthConfig
from gslb.edgeprobe import detection_bound
from tests.integration.gslb_helpers import GslbProcess, dig, gslb_cmd, running
from tests.unit.tfcheck import blocks, resources, unq
from tests.unit.tfexamples import hetzner_nodes, node_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Where the pages say their dig commands were pointed.
DOC_SERVER = "@127.0.0.1 -p 5353"


def fenced(page: str, lang: str | None = None) -> list[list[str]]:
    """The fenced code blocks of a page (of one language: ```toml), as lists of lines."""
    found: list[tuple[str, list[str]]] = []
    inside = False
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        fence = re.fullmatch(r"\s*```(\w*)", line)
        if fence:
            inside = not inside
            if inside:
                found.append((fence.group(1), []))
        elif inside:
            found[-1][1].append(line)
    return [block for kind, block in found if lang in (None, kind)]


def sessions(page: str) -> list[tuple[str, list[str]]]:
    """Every `$ command` shown with its output in a page's code blocks."""
    out: list[tuple[str, list[str]]] = []
    for block in fenced(page):
        command = False
        for line in block:
            if line.startswith("$ "):
                out.append((line[2:], []))
                command = True
            elif command and line.strip():
                out[-1][1].append(line)
    return out


def norm(line: str) -> str:
    """A dig line with its per-query parts (message id) masked and blanks collapsed."""
    return " ".join(re.sub(r"\bid: \d+", "id: N", line).split())


def in_order(shown: list[str], printed: list[str]) -> None:
    """Each shown line is one of the printed lines, after the previous one."""
    rest = [norm(p) for p in printed]
    for line in shown:
        assert norm(line) in rest, f"{line!r} is not printed (now):\n" + "\n".join(printed)
        rest = rest[rest.index(norm(line)) + 1 :]


def rendered_ns1() -> dict[str, Any]:
    """node-config's inputs for the Hetzner example's ns1, on loopback ports of our own."""
    inputs = copy.deepcopy(hetzner_nodes(False)["geoedge-ns1"])
    inputs["gslb"] |= {"listen": ["127.0.0.1:0"], "api_listen": "127.0.0.1:0"}
    return inputs


@pytest.fixture(scope="module")
def ns1(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = tmp_path_factory.mktemp("ns1") / "gslb.toml"
    config.write_text(node_config(rendered_ns1())["config"], encoding="utf-8")
    with running(config) as proc:
        yield proc


def test_delegation_dig_commands(ns1: GslbProcess) -> None:
    digs = [(c, o) for c, o in sessions("delegation.md") if c.startswith("dig ")]
    assert len(digs) >= 3
    for command, shown in digs:
        assert DOC_SERVER in command, command
        argv = shlex.split(command.replace(DOC_SERVER, f"@{ns1.host} -p {ns1.port}"))[1:]
        # Every edge of the example is unreachable from here, so the pool answers its
        # fallback from the start, as the page says: no waiting for probes.
        in_order(shown, dig(*argv).splitlines())


def test_delegation_worked_zone_is_what_terraform_renders() -> None:
    (zone,) = fenced("delegation.md", "toml")
    in_order(zone, node_config(rendered_ns1())["config"].splitlines())


def _template_regex(template: str) -> re.Pattern[str]:
    """An HCL string template as a pattern: each ${...} stands for a word."""
    parts = re.split(r'\$\{(?:[^{}"]|"[^"]*")*\}', template)
    return re.compile(r"\S+".join(re.escape(p) for p in parts))


def test_delegation_registrar_instructions_are_the_output() -> None:
    """The page's `terraform output registrar_instructions` has the output's lines (the
    templates of examples/hetzner/outputs.tf) and the glue the zone records hold."""
    (block,) = [b for b in fenced("delegation.md") if b and b[0].startswith("Delegate ")]
    outputs = (ROOT / "terraform/examples/hetzner/outputs.tf").read_text(encoding="utf-8")
    start = outputs.index('output "registrar_instructions"')
    lines = re.findall(r'^ +\[(?:for [^:]+: )?"(.*)"\],?$', outputs[start:], re.M)
    first, each, last = (_template_regex(t) for t in lines[:3])
    assert first.fullmatch(block[0]) and last.fullmatch(block[-1]), block
    records = node_config(rendered_ns1())["config"]
    for line in block[1:-1]:
        assert each.fullmatch(line), line
        name, _, v4, _, v6 = line.split()
        label = name.split(".")[0]
        assert f'"{label} A {v4}"' in records and f'"{label} AAAA {v6}"' in records


def _shape(line: str, tag: str, key: str, digest: str) -> re.Pattern[str]:
    """A shown line with the values of the page's key made into patterns."""
    pattern = re.escape(line)
    for value, like in ((key, r"[A-Za-z0-9+/]+=*"), (digest, "[0-9A-F]{64}"), (tag, r"\d+")):
        pattern = pattern.replace(re.escape(value), like)
    return re.compile(pattern)


def test_delegation_dnssec_commands(tmp_path: Path) -> None:
    shown = dict(sessions("delegation.md"))
    keygen, ds = shown["gslb dnssec-keygen zone.pem"], shown["gslb ds -c signed.toml"]
    tag = re.search(r"tag (\d+)", keygen[0])
    key = re.search(r"DNSKEY 257 3 13 (\S+)", keygen[0])
    digest = re.search(r" DS \d+ 13 2 ([0-9A-F]+)$", ds[-1])
    assert tag and key and digest, (keygen, ds)
    values = (tag.group(1), key.group(1), digest.group(1))

    done = gslb_cmd("dnssec-keygen", str(tmp_path / "zone.pem"))
    assert done.returncode == 0, done.stderr
    printed = (done.stdout + done.stderr).replace(str(tmp_path / "zone.pem"), "zone.pem")
    for line, out in zip(keygen, printed.splitlines(), strict=True):
        assert _shape(line, *values).fullmatch(out), (line, out)

    # The rendered config with that key, at the path it names on the node.
    pem = (tmp_path / "zone.pem").read_text()
    key_obj = serialization.load_pem_private_key(pem.encode(), None)
    assert isinstance(key_obj, ec.EllipticCurvePrivateKey)
    text = node_config(rendered_ns1() | {"dnssec_key_pem": pem})["config"]
    text = text.replace('"/etc/geoedge/keys/zone.pem"', f'"{tmp_path / "zone.pem"}"')
    (tmp_path / "signed.toml").write_text(text)
    done = gslb_cmd("ds", "-c", str(tmp_path / "signed.toml"))
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert len(out) == len(ds), out
    for line, got in zip(ds, out, strict=True):
        assert _shape(line, *values).fullmatch(got), (line, got)
    new_tag = re.search(r"tag (\d+)", printed)
    assert new_tag and f"key tag {new_tag.group(1)} " in done.stdout


def test_production_explain_offline(tmp_path: Path) -> None:
    (command, shown) = next(
        (c, o) for c, o in sessions("production.md") if c.startswith("gslb explain ")
    )
    config = tmp_path / "gslb.toml"
    config.write_text(node_config(rendered_ns1())["config"], encoding="utf-8")
    argv = [str(config) if a == "gslb.toml" else a for a in shlex.split(command)[1:]]
    done = gslb_cmd(*argv)
    assert done.returncode == 0, done.stderr
    # The page shows the head of it (the edge table follows).
    assert done.stdout.splitlines()[: len(shown)] == shown


def _svg_text(name: str) -> str:
    root = ET.parse(DOCS / name).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg", name
    return " | ".join("".join(e.itertext()) for e in root.iter() if e.tag.endswith("}text"))


def test_figures_say_what_the_programs_do() -> None:
    """docs/failover-timeline.svg works the bound out for gslb's default [health] and the
    examples' default pool TTL; docs/deployment.svg names the ports the examples open."""
    h = HealthConfig()
    bound = detection_bound(h.interval, h.timeout, h.jitter, h.fall)
    variables = blocks(ROOT / "terraform/examples/hetzner", "variable")
    (ttl,) = re.findall(r"\bttl\s*= optional\(number, (\d+)\)", str(variables["pool"]["type"]))
    (admin,) = re.findall(r"admin_port\s*= optional\(number, (\d+)\)", str(variables["edge"]))
    api = variables["gslb_api_port"]["default"]
    timeline = _svg_text("failover-timeline.svg")
    times = "\N{MULTIPLICATION SIGN}"
    worked = f"{h.fall} {times} {h.interval + h.jitter:g} + {h.timeout:g} = {bound:g} s"
    assert worked in timeline, timeline
    assert f"pool TTL ({ttl} s)" in timeline, timeline
    assert f"≤ detection + TTL = {bound + int(ttl):g} s" in timeline, timeline
    deployment = _svg_text("deployment.svg")
    for words in ("53/udp+tcp", f"{api}/tcp API", "80,443", f"{admin} admin", "prevent_destroy"):
        assert words in deployment, words


# `terraform output NAME`, "the `NAME` output", "output NAME" (names with an underscore).
OUTPUT_NAMED = r"terraform output (\w+)|`(\w+)` output|\boutput `?([a-z]+_[a-z_]+)"


def test_terraform_names_in_the_pages_exist() -> None:
    """The resource addresses docs/production.md has people `-replace`, and the outputs the
    handbook and the examples' READMEs tell them to read, are in the examples."""
    examples = ROOT / "terraform" / "examples"
    aws = examples / "aws-multi-region"
    calls = blocks(aws, "module")
    production = (DOCS / "production.md").read_text(encoding="utf-8")
    addresses = re.findall(r"module\.(\w+)(\[\d+\])?\.(\w+)\.(\w+)", production)
    assert len(addresses) >= 3
    for module, index, kind, name in addresses:
        body = calls[module]
        assert bool(index) == ("count" in body), module
        assert (kind, name) in resources(aws / unq(body["source"])), (module, kind, name)
    outputs = {e.name: set(blocks(e, "output")) for e in examples.iterdir() if e.name != "shared"}
    pages = [*DOCS.glob("*.md"), *examples.glob("*/README.md")]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        named = set(re.findall(OUTPUT_NAMED, text))
        for name in {n for group in named for n in group if n}:
            owners = {e for e, names in outputs.items() if name in names}
            if page.parent.parent == examples:
                assert page.parent.name in owners, (page, name)
            else:
                assert owners, (page, name)
