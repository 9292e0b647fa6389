"""The `gslb` command: serve, check-config, dnssec-keygen, ds, and run (a whole topology).

    gslb serve -c FILE [--workers N]   serve a config file
    gslb serve --example [--workers N] serve the embedded example on 127.0.0.1:5353
    gslb check-config FILE             validate a config: exit 0 with a summary, or exit 1 with
                                       the error ("FILE: KEY: PROBLEM") on stderr
    gslb dnssec-keygen FILE            write a new DNSSEC signing key (EC P-256, PKCS#8 PEM,
                                       mode 0600); refuses to overwrite FILE
    gslb ds -c FILE                    print the DNSKEY and DS records of every signed zone
                                       (the DS goes to the registrar)
    gslb explain NAME CLIENT [-t A|AAAA] [-c FILE | --api URL] [--json]
                                       which edges the pool answer for NAME names for CLIENT
                                       (an address or subnet) and why: live state from a
                                       running server's API (default http://127.0.0.1:8053),
                                       or offline from a config (every edge up, no load)
    gslb run [--topology FILE]         start a whole topology on this machine (make run): gslb,
             [--run-dir DIR]           edges and demo origins, by default the embedded
             [--check]                 gslb/topology.toml; --check validates and exits,
             [--print-topology]        --print-topology prints the embedded default
    gslb purge URL | --prefix P | --tag T [--api URL] [--token-file F] [--json]
                                       purge from every edge through a running gslb's API
                                       (POST /v1/purge); exit 0 when every edge purged, 1
                                       otherwise, with each edge's result

Signals while serving: SIGHUP reloads the config atomically (a bad one is logged and the old
one kept); SIGTERM and SIGINT stop gracefully. See gslb.workers for --workers N.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geo.errors import GeoError
from geoedge.lifetime import die_with_launcher
from gslb.config import LOG_LEVELS, GslbConfig, load_config
from gslb.dnssec import dnskey_rdata, dnskey_text, ds_rdata, ds_text, key_tag, write_new_key
from gslb.errors import GslbError
from gslb.server import format_addr
from gslb.zone import DNSKEY, name_to_text

log = logging.getLogger("gslb")

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gslb", description="GeoEdge authoritative GSLB DNS server"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve DNS and the HTTP API")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", type=Path, help="TOML config file")
    source.add_argument("--example", action="store_true", help="serve the embedded example config")
    serve.add_argument(
        "--workers", type=int, help="processes sharing the ports (overrides server.workers)"
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="overrides log.level, on reloads too",
    )
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    keygen = sub.add_parser("dnssec-keygen", help="write a new DNSSEC signing key")
    keygen.add_argument("file", type=Path)
    ds = sub.add_parser("ds", help="print each signed zone's DNSKEY and DS records")
    ds.add_argument("-c", "--config", type=Path, required=True, help="TOML config file")
    explain = sub.add_parser("explain", help="explain which edges a pool answer names, and why")
    explain.add_argument("name", help="a name a pool answers, e.g. www.example.test")
    explain.add_argument("client", help="the client: an address or subnet, e.g. 192.0.2.1")
    explain.add_argument("-t", "--type", type=str.upper, choices=("A", "AAAA"), default="A")
    where = explain.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", type=Path, help="offline: every edge up, no load")
    where.add_argument(
        "--api", default="http://127.0.0.1:8053", help="a running gslb's HTTP API (live state)"
    )
    explain.add_argument("--json", action="store_true", help="print the API's JSON document")
    run = sub.add_parser("run", help="start gslb, edges and demo origins together (make run)")
    run.add_argument("--topology", type=Path, help="topology file (default: the embedded one)")
    run.add_argument("--run-dir", type=Path, help="overrides the topology's run_dir")
    run.add_argument("--check", action="store_true", help="validate the topology and exit")
    run.add_argument(
        "--print-topology", action="store_true", help="print the embedded default topology"
    )
    purge = sub.add_parser("purge", help="purge a URL, prefix or tag from every edge")
    what = purge.add_mutually_exclusive_group(required=True)
    what.add_argument("url", nargs="?", help="an absolute URL, e.g. http://www.example.test/a")
    what.add_argument("--prefix", help="every URL starting with this, e.g. http://host/img/")
    what.add_argument("--tag", help="every object the origin tagged so (Surrogate-Key)")
    purge.add_argument("--api", default="http://127.0.0.1:8053", help="a running gslb's HTTP API")
    purge.add_argument(
        "--token-file", type=Path, help="a file holding the API's bearer token (api.token_file)"
    )
    purge.add_argument("--json", action="store_true", help="print the API's JSON document")
    return parser


def _summary(path: Path, config: GslbConfig) -> str:
    listen = ", ".join(format_addr(h, p) for h, p in config.server.listen)
    probed = sum(1 for e in config.edges if e.status_url is not None)
    probes = f" ({probed} probed every {config.health.interval:g}s)" if probed else ""
    signed = sum(1 for z in config.zones if z.dnssec is not None)
    dnssec = f" ({signed} signed)" if signed else ""
    return (
        f"{path}: OK: {len(config.zones)} zone(s){dnssec}, {len(config.pools)} pool(s), "
        f"{len(config.edges)} edge(s){probes}; listen {listen}; "
        f"api {format_addr(*config.api.listen)}"
    )


def _load(path: Path) -> GslbConfig | None:
    """The config at `path`, or None after printing why it does not load."""
    try:
        return load_config(path)
    except GslbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def check_config(path: Path) -> int:
    config = _load(path)
    if config is None:
        return 1
    print(_summary(path, config))
    return 0


def dnssec_keygen(path: Path) -> int:
    try:
        key = write_new_key(path)
    except FileExistsError:
        print(f"error: {path}: exists; not overwriting a key", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    rdata = dnskey_rdata(key.public_key())
    print(f"{path}: new key, tag {key_tag(rdata)}: DNSKEY {dnskey_text(rdata)}")
    print("next: name it in a zone's dnssec.key_file, then run `gslb ds -c CONFIG`")
    return 0


def print_ds(path: Path) -> int:
    """Each signed zone's DNSKEY RRset and the DS of each of its keys, in master-file form."""
    config = _load(path)
    if config is None:
        return 1
    signed = [z for z in config.zones if z.dnssec is not None]
    if not signed:
        print(f"error: {path}: no zone has a dnssec key", file=sys.stderr)
        return 1
    for zone in signed:
        assert zone.dnssec is not None
        origin = name_to_text(zone.origin)
        dnskeys = zone.rrset(zone.origin, DNSKEY)
        ttl = dnskeys.ttl if dnskeys is not None else 0
        for rdata in zone.dnssec.dnskeys:
            role = "signing" if rdata == zone.dnssec.dnskey else "published only"
            print(f"; {origin} key tag {key_tag(rdata)} ({role})")
            print(f"{origin} {ttl} IN DNSKEY {dnskey_text(rdata)}")
            print(f"{origin} IN DS {ds_text(ds_rdata(zone.origin, rdata))}")
    return 0


def explain(args: argparse.Namespace) -> int:
    """Print the /v1/explain document of a running server, or one made from a config."""
    from gslb.explain import explain_answer, render

    note = ""
    if args.config is not None:
        from gslb.health import HealthStore
        from gslb.service import make_locator
        from gslb.zone import Zones

        config = _load(args.config)
        if config is None:
            return 1
        health = HealthStore(config.pools, [e.name for e in config.edges])
        try:
            locator = make_locator(config)
        except GeoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            doc = explain_answer(
                Zones(config.zones), locator, health, args.name, args.client, args.type
            )
        except GslbError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            locator.close()
        note = "(offline: every edge up, not drained, no load; --api URL shows the live state)"
    else:
        query = urllib.parse.urlencode(
            {"name": args.name, "client": args.client, "type": args.type}
        )
        url = f"{args.api.rstrip('/')}/v1/explain?{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as exc:
            print(f"error: {_api_error(exc)}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"error: {url}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    if note and not args.json:
        print(note)
    return 0


def purge(args: argparse.Namespace) -> int:
    """POST the purge to a running gslb and print each edge's result."""
    if args.url is not None:
        body = {"url": args.url}
    elif args.prefix is not None:
        body = {"prefix": args.prefix}
    else:
        body = {"tag": args.tag}
    req = urllib.request.Request(
        f"{args.api.rstrip('/')}/v1/purge",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: {args.token_file}: cannot read: {exc}", file=sys.stderr)
            return 1
        req.add_header("Authorization", f"Bearer {token}")
    try:
        # The API gives every edge purge.attempts x purge.timeout plus backoffs.
        with urllib.request.urlopen(req, timeout=300) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as exc:
        if exc.code != 502:
            print(f"error: {_api_error(exc)}", file=sys.stderr)
            return 1
        try:
            doc = json.load(exc)  # 502: some edge failed; the body says which
        except (ValueError, OSError):
            print(f"error: HTTP 502 from {exc.url}", file=sys.stderr)
            return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"error: {req.full_url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(_render_purge(doc))
    return 0 if doc.get("verdict") == "ok" else 1


def _render_purge(doc: dict[str, Any]) -> str:
    ((kind, value),) = doc["request"].items()
    lines = [
        f"purge {kind} {value}: {doc['verdict']} "
        f"({doc['edges_ok']} edge(s) ok, {doc['edges_failed']} failed)"
    ]
    for r in doc["edges"]:
        tries = f"{r['attempts']} attempt(s)"
        if r["ok"]:
            purged = "" if r["purged"] is None else f", {r['purged']} object(s) removed"
            if r.get("removing"):
                purged = ", accepted: still removing"
            lines.append(f"  {r['edge']:<16} ok      HTTP {r['status']}{purged}, {tries}")
        else:
            lines.append(f"  {r['edge']:<16} FAILED  {r['error']}, {tries}")
    return "\n".join(lines)


def _api_error(exc: urllib.error.HTTPError) -> str:
    try:
        body: Any = json.load(exc)
        return str(body["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code} from {exc.url}"


def _print_example_help(config: GslbConfig) -> None:
    from gslb.topology import default_topology

    host, port = config.server.listen[0]
    lines = ["", "GeoEdge GSLB is serving the example zone example.test. Try:"]
    for client in default_topology().clients:  # real prefixes, placed by the bundled GeoLite2
        lines.append(
            f"  dig @{host} -p {port} www.example.test +subnet={client.subnet}"
            f"   # from {client.place}"
        )
    lines.append(f"  dig @{host} -p {port} example.test ANY")
    api = format_addr(*config.api.listen)
    lines.append(f"  curl -s http://{api}/v1/edges")
    lines.append(f"  curl -s -X POST http://{api}/v1/edges/fra/drain")
    lines.append("")
    print("\n".join(lines), flush=True)


def serve(args: argparse.Namespace) -> int:
    from gslb.service import ConfigSource
    from gslb.workers import configure_logging, run, serve_parent, serve_single

    source = ConfigSource(None if args.example else args.config)
    try:
        config = source.load()
    except GslbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    level = args.log_level or str(config.log.level)
    configure_logging(level)
    workers = args.workers if args.workers is not None else int(config.server.workers)
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 1
    if args.example:
        _print_example_help(config)
    try:
        if workers == 1:
            return run(serve_single(source, config, args.log_level))
        return run(serve_parent(source, config, workers, args.log_level))
    except (GslbError, GeoError, OSError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def run_topology(args: argparse.Namespace) -> int:
    """`gslb run`: see gslb.launcher."""
    import asyncio

    from gslb.launcher import Launcher
    from gslb.topology import default_topology, default_topology_text, load_topology, plan

    if args.print_topology:
        print(default_topology_text(), end="")
        return 0
    try:
        topology = load_topology(args.topology) if args.topology else default_topology()
        run_dir = Path(args.run_dir or topology.run_dir).absolute()
        the_plan = plan(topology, run_dir)
        if args.check:
            print(
                f"{topology.source}: OK: gslb on {format_addr(*topology.gslb.listen)}, "
                f"{len(topology.edges)} edge(s), {len(topology.origins)} origin(s); "
                f"run directory {run_dir}"
            )
            return 0
        return asyncio.run(Launcher(the_plan).run())
    except GslbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the launcher's own signal handling was in place
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    die_with_launcher()  # started by `gslb run`: stop when it does, however it does
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "dnssec-keygen":
        return dnssec_keygen(args.file)
    if args.command == "ds":
        return print_ds(args.config)
    if args.command == "explain":
        return explain(args)
    if args.command == "run":
        return run_topology(args)
    if args.command == "purge":
        return purge(args)
    return serve(args)
