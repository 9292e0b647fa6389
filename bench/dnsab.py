"""Two builds of the answer engine in one process, taking turns: CPU time per query of the
working tree's `Responder.respond` against another commit's, over the same query file.

On a machine shared with other work, runs of bench/dnsprofile.py a minute apart differ by up
to 2x, which hides a 10-20% change. Here both builds answer the same queries in the same
process, alternating every `--chunk` queries (who goes first alternates too), so whatever
slows the machine slows both alike, and the ratio is what to read. Each build has its own
responder, locator (both map the same /24 table), health store and metrics, built as
bench/dnsprofile.py builds them; the other commit's packages are unpacked from git into a
temporary directory and imported under other names (gslb_b, geo_b, geoedge_b). Afterwards
both answer the first 20,000 queries again and the replies are compared.

    PYTHONPATH=$PWD .venv/bin/python bench/dnsab.py main ecs1m-p0010 --queries 300000

`--base-queries` gives the base its own query file, and the base `worktree` is the working
tree again: so two pools of one build can be compared the same way, e.g. the 1000-edge pool
against the 10-edge one (issue #10's goal: >= 0.9x):

    PYTHONPATH=$PWD .venv/bin/python bench/dnsab.py worktree ecs1m-p1000 \
        --base-queries ecs1m-p0010 --queries 500000

Run bench/dns.sh once first (query files, config) and let bench/dnsprofile.py build the
GeoIP /24 table if it is missing.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BenchError, run_main, unpack_packages
from dnsprofile import WORKDIR, read_queries, wait_for_table

PACKAGES = ("gslb", "geo", "geoedge")
SUFFIX = "_b"
_IMPORT = re.compile(r"\b(from|import) (gslb|geo|geoedge)(\.|\b)")


def unpack(commit: str, into: Path) -> None:
    """The packages of `commit`, renamed with SUFFIX (directories and their imports)."""
    unpack_packages(commit, PACKAGES, into)
    for name in PACKAGES:
        (into / name).rename(into / (name + SUFFIX))
    for path in into.rglob("*.py"):
        text = path.read_text()
        path.write_text(_IMPORT.sub(rf"\1 \2{SUFFIX}\3", text))


def build(suffix: str) -> tuple[Any, Any]:
    """(responder, tune_gc) of the packages named with `suffix`, as dnsprofile builds them."""

    def mod(name: str) -> Any:
        package, _, rest = name.partition(".")
        return importlib.import_module(f"{package}{suffix}.{rest}")

    config = mod("gslb.config").load_config(WORKDIR / "gslb.toml")
    service = mod("gslb.service")
    health = mod("gslb.health").HealthStore(
        service.config_pools(config), service.config_edge_names(config)
    )
    locator = service.make_locator(config)
    wait_for_table(locator)
    observer = mod("gslb.metrics").QueryMetrics()
    responder = mod("gslb.answer").Responder(config, locator, health, observer=observer)
    return responder, mod("gslb.workers").tune_gc


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "base", help="the commit to compare the working tree with (main, a sha, or worktree)"
    )
    p.add_argument("queries", help="query file key: static, ecs10k-p0010, ecs1m-p0010, ...")
    p.add_argument("--queries", dest="count", type=int, default=300_000, help="how many")
    p.add_argument("--chunk", type=int, default=2000, help="queries per turn")
    p.add_argument("--base-queries", help="the base's own query file key (default: the same)")
    args = p.parse_args(argv)
    files = [WORKDIR / f"q-{key}.bin" for key in (args.queries, args.base_queries) if key]
    for qfile in files:
        if not qfile.exists() or not (WORKDIR / "gslb.toml").exists():
            raise BenchError(f"{qfile} or its config missing: run bench/dns.sh once first")
    queries = read_queries(files[0], args.count)
    base_queries = read_queries(files[-1], args.count)
    with tempfile.TemporaryDirectory(prefix="dnsab-") as tmp:
        if args.base == "worktree":
            base, tune_gc = build("")
        else:
            unpack(args.base, Path(tmp))
            sys.path.insert(0, tmp)
            base, tune_gc = build(SUFFIX)
        ours, _ = build("")
        client = ipaddress.IPv4Address("127.0.0.1")
        tune_gc()
        spent = {id(base): 0.0, id(ours): 0.0}
        count = min(len(queries), len(base_queries))
        given = {id(base): base_queries, id(ours): queries}
        for turn, at in enumerate(range(0, count, args.chunk)):
            for responder in (base, ours) if turn % 2 == 0 else (ours, base):
                chunk = given[id(responder)][at : at + args.chunk]
                respond = responder.respond
                started = time.process_time()
                for wire in chunk:
                    respond(wire, client, tcp=False)
                spent[id(responder)] += time.process_time() - started
        compared = ""
        if not args.base_queries:
            differ = sum(
                base.respond(wire, client, tcp=False) != ours.respond(wire, client, tcp=False)
                for wire in queries[:20_000]
            )
            compared = f"; replies differing in the first 20,000: {differ}"
    per = {k: v / count * 1e6 for k, v in spent.items()}
    print(
        f"{count} queries: {args.base} on {args.base_queries or args.queries} "
        f"{per[id(base)]:.2f} µs, working tree on {args.queries} {per[id(ours)]:.2f} µs per "
        f"query: {per[id(ours)] / per[id(base)]:.3f}x the CPU time{compared}"
    )
    return 0


if __name__ == "__main__":
    run_main(main, "bench/dnsab.py")
