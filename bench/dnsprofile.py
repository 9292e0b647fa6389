"""Where a DNS answer's time goes, without sockets: replays a query file of bench/dns.sh
through a fresh `Responder.respond` in this process and prints microseconds per query
(process CPU time, so other load on the machine counts less), or its cProfile.

The query files are the ones bench/dns.sh writes (dnsperf's -B format) into bench/.work/dns/,
with the gslb config it writes there; run bench/dns.sh once first. The responder is built as
`gslb serve` builds it (GeoIP locator, health store, query metrics as the observer, the
garbage collector tuned the same way), so the first N queries of q-ecs1m-p0010.bin measure
the cold path: a new client /24 per query. It waits for the GeoIP /24 table (geo.table; built
on the first run, mapped after) unless --no-table.

    .venv/bin/python bench/dnsprofile.py ecs1m-p0010 --queries 150000
    .venv/bin/python bench/dnsprofile.py static --profile tottime
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import pstats
import struct
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, BenchError, run_main

from gslb.answer import Responder
from gslb.config import load_config
from gslb.health import HealthStore
from gslb.metrics import QueryMetrics
from gslb.service import config_edge_names, config_pools, make_locator
from gslb.workers import tune_gc

WORKDIR = REPO / "bench" / ".work" / "dns"


def read_queries(path: Path, limit: int) -> list[bytes]:
    """The first `limit` messages of a dnsperf -B file (each prefixed by its 2-byte length),
    repeated from the start when the file holds fewer."""
    data = path.read_bytes()
    out: list[bytes] = []
    at = 0
    while at + 2 <= len(data) and len(out) < limit:
        (size,) = struct.unpack_from("!H", data, at)
        out.append(data[at + 2 : at + 2 + size])
        at += 2 + size
    if not out:
        raise BenchError(f"{path}: no queries")
    while len(out) < limit:
        out.extend(out[: limit - len(out)])
    return out


def wait_for_table(locator: Any) -> None:  # any build's GeoIPLocator (bench/dnsab.py)
    """Wait (up to 300 s) until `locator`'s GeoIP /24 table is mapped, as a server does once
    it is built; BenchError if it is not."""
    deadline = time.monotonic() + 300.0
    while not locator.table_ready and time.monotonic() < deadline:
        locator.poll_table()
        time.sleep(0.2)
    if not locator.table_ready:
        raise BenchError("the GeoIP /24 table did not become ready (see the log above)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("queries", help="query file key: static, ecs10k-p0010, ecs1m-p0010, ...")
    p.add_argument("--queries", dest="count", type=int, default=150_000, help="how many")
    p.add_argument("--profile", metavar="SORT", help="print cProfile's top 30 (tottime, ...)")
    p.add_argument(
        "--no-table",
        action="store_true",
        help="place client /24s by walking the GeoIP tree, without the /24 table (geo.table)",
    )
    args = p.parse_args(argv)
    qfile = WORKDIR / f"q-{args.queries}.bin"
    config_file = WORKDIR / "gslb.toml"
    if not qfile.exists() or not config_file.exists():
        raise BenchError(f"{qfile} or {config_file} missing: run bench/dns.sh once first")
    queries = read_queries(qfile, args.count)
    config = load_config(config_file)
    health = HealthStore(config_pools(config), config_edge_names(config))
    locator = make_locator(config)
    if not args.no_table:  # as a server does once the table is built: wait for it
        wait_for_table(locator)
    responder = Responder(config, locator, health, observer=QueryMetrics())
    respond = responder.respond
    client = ipaddress.IPv4Address("127.0.0.1")
    tune_gc()
    profiler = cProfile.Profile() if args.profile else None
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    for wire in queries:
        respond(wire, client, tcp=False)
    if profiler is not None:
        profiler.disable()
    spent = time.process_time() - started
    print(f"{args.queries}: {spent / len(queries) * 1e6:.2f} µs per query over {len(queries)}")
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(args.profile).print_stats(30)
    return 0


if __name__ == "__main__":
    run_main(main, "bench/dnsprofile.py")
