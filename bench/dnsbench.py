"""DNS benchmark: gslb against NSD on the same zone, driven by dnsperf.

Both servers are pinned to core 0 and dnsperf to core 1; they take turns within one run
(ours, NSD, NSD, ours, ...) and each measured run starts a fresh server process, so no run
inherits another's warm caches. Scenarios:

  static   a static A record from the zone                      goal >= 0.6x NSD
  ecs10k   a pool answer, ECS from 10k distinct client /24s      goal >= 0.5x NSD
  ecs1m    a pool answer, ECS from 1M distinct client /24s       goal >= 0.3x NSD (issue #10)
  edges    pool of 1000 edges vs pool of 10 (ours, 1M /24s)      goal >= 0.9x
  signed   static A with DO=1: ours signing online (signatures
           cached) vs NSD serving the zone pre-signed              no goal: reported
  signed-ecs10k  pool answer with DO=1, ECS from 10k /24s, signed
           per edge set, vs NSD's pre-signed static record         no goal: reported

For the signed scenarios both servers run a second time with DNSSEC: gslb with the zone's
`dnssec = { key_file }` (ECDSA P-256), NSD with a copy of its zone signed once up front by
dnspython with the same key (NSEC chain, ECDSA P-256), as an operator of a static zone would.

NSD ignores ECS and answers its static A record of the same name, so both send answers of
comparable size. Client /24s are sampled at random from the IPv4 space and kept only when the
GeoIP database (the bundled GeoLite2 snapshot unless --geoip-db) locates them, so every query
makes the server do a real lookup. Query files are dnsperf's binary format (-B: each message
prefixed by its 2-byte length) generated once into bench/.work/dns/ and reused.

Run through bench/dns.sh (installs nsd and dnsperf) or `make bench-dns`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import re
import struct
import time
import urllib.request
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from statistics import median

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import maxminddb
from _common import (
    LOADGEN_CPU,
    LOOPBACK,
    PYTHON,
    REPO,
    SERVER_CPU,
    BenchError,
    Proc,
    alternate,
    arg_parser,
    free_port,
    log,
    machine_summary,
    parse_lists,
    pick,
    result_row,
    run_main,
    run_tool,
    start_harness,
    table,
)

ZONE = "bench.test."
STATIC = "static.bench.test."
POOL10 = "p0010.bench.test."  # same length as POOL1000: both scenarios send the same bytes
POOL1000 = "p1000.bench.test."
FILLER_NAMES = 5000  # static names besides the ones queried, so neither zone is trivially small
SOA = {
    "mname": "ns1.bench.test.",
    "rname": "hostmaster.bench.test.",
    "serial": 2026112701,
    "refresh": 7200,
    "retry": 3600,
    "expire": 1209600,
    "minimum": 300,
}
# Ten edges spread over the world for the small pool: (name, latitude, longitude).
CITIES = [
    ("fra", 50.11, 8.68),
    ("iad", 39.04, -77.49),
    ("sjc", 37.34, -121.89),
    ("gru", -23.55, -46.63),
    ("lhr", 51.47, -0.45),
    ("nrt", 35.68, 139.69),
    ("sin", 1.35, 103.82),
    ("syd", -33.87, 151.21),
    ("bom", 19.08, 72.88),
    ("jnb", -26.20, 28.05),
]
# Not unicast client space: never sampled as a client /24.
RESERVED = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",
    )
]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    queries: str  # query-file key
    goal: float | None  # None: reported, no goal
    warmup: bool  # a short unmeasured dnsperf run after each start
    signed: bool = False  # against the DNSSEC-signed servers, queries with DO=1


SCENARIOS = {
    "static": Scenario("static", "static A record", "static", 0.6, True),
    "ecs10k": Scenario("ecs10k", "pool answer, ECS from {small} /24s", "ecs10k-p0010", 0.5, True),
    "ecs1m": Scenario("ecs1m", "pool answer, ECS from {large} /24s", "ecs1m-p0010", 0.3, False),
    "signed": Scenario("signed", "signed: static A, DO", "static-do", None, True, True),
    "signed-ecs10k": Scenario(
        "signed-ecs10k", "signed: pool, DO, ECS {small} /24s", "ecs10k-p0010-do", None, True, True
    ),
}
EDGES_GOAL = 0.9


@dataclass(frozen=True)
class PerfResult:
    qps: float
    sent: int
    completed: int
    lost: int
    avg_ms: float
    sd_ms: float
    max_ms: float
    rcodes: str
    server_cpu: float = 0.0  # CPU seconds the server's processes used during the run

    @property
    def rate(self) -> float:
        return self.qps

    @property
    def cpu_us(self) -> float:
        """The server's CPU time per answered query, in microseconds."""
        return self.server_cpu / max(1, self.completed) * 1e6

    @property
    def latency(self) -> str:
        return f"{self.avg_ms:.3f} ±{self.sd_ms:.3f}"


# --- zone, configs and query files -------------------------------------------------------


def default_geoip_db() -> Path:
    import _geoip_geolite2

    return Path(_geoip_geolite2.__file__).parent / str(_geoip_geolite2.database_name)


def zone_text(extra: list[str]) -> str:
    s = SOA
    lines = [
        f"$ORIGIN {ZONE}",
        "$TTL 3600",
        f"@ IN SOA {s['mname']} {s['rname']} {s['serial']} {s['refresh']} {s['retry']} "
        f"{s['expire']} {s['minimum']}",
        "@ IN NS ns1",
        "ns1 IN A 127.0.0.1",
        "static 300 IN A 192.0.2.1",
    ]
    lines += [f"h{i} IN A 198.18.{i // 256}.{i % 256}" for i in range(FILLER_NAMES)]
    return "\n".join(lines + extra) + "\n"


def edges_1000(seed: int) -> list[tuple[str, float, float]]:
    rnd = random.Random(seed)
    return [
        (f"e{i:04d}", round(rnd.uniform(-50.0, 65.0), 4), round(rnd.uniform(-180.0, 180.0), 4))
        for i in range(1000)
    ]


def write_zones(workdir: Path) -> tuple[Path, Path]:
    """The shared zone file (gslb reads it via `file =`) and NSD's copy of it, which adds
    static A records for the two pool names so NSD answers the same questions."""
    shared = workdir / "bench.test.zone"
    shared.write_text(zone_text([]))
    nsd_zone = workdir / "bench.test.nsd.zone"
    nsd_zone.write_text(
        zone_text([f"{POOL10.split('.')[0]} 30 IN A 198.19.0.1", "p1000 30 IN A 198.19.0.1"])
    )
    return shared, nsd_zone


def sign_zone_file(zone_file: Path, key_file: Path, out: Path) -> Path:
    """`zone_file` signed once with the key in `key_file` (dnspython: DNSKEY, NSEC chain,
    RRSIGs valid for 30 days), for NSD."""
    import dns.dnssec
    import dns.zone
    from dns.dnssectypes import Algorithm

    from gslb.dnssec import load_key

    key = load_key(key_file)
    dnskey = dns.dnssec.make_dnskey(key.public_key(), Algorithm.ECDSAP256SHA256, 257)
    zone = dns.zone.from_text(zone_file.read_text(), origin=ZONE, relativize=False)
    dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], lifetime=30 * 86400)
    out.write_text(zone.to_text(relativize=False))
    return out


def write_gslb_config(
    workdir: Path,
    zone_file: Path,
    port: int,
    api_port: int,
    seed: int,
    key_file: Path | None = None,
    filename: str = "gslb.toml",
    geoip_db: Path | None = None,
) -> Path:
    out = [
        "# Generated by bench/dnsbench.py: the benchmark zone plus a 10-edge and a 1000-edge pool.",
        "[server]",
        f'listen = ["{LOOPBACK}:{port}"]',
        "workers = 1",
        "",
        "[api]",
        f'listen = "{LOOPBACK}:{api_port}"',
        "",
        "[log]",
        'level = "warning"',
        "query_log = false",
        "",
        "[[zone]]",
        f'origin = "{ZONE}"',
        "ttl = 3600",
        "# the SOA, NS and static records come from the zone file NSD serves too",
        f"file = {json.dumps(str(zone_file))}",
        *([f"dnssec = {{ key_file = {json.dumps(str(key_file))} }}"] if key_file else []),
        "",
    ]
    edges = [(f"c{i:02d}{name}", lat, lon) for i, (name, lat, lon) in enumerate(CITIES)]
    for i, (name, lat, lon) in enumerate(edges):
        out += ["[[edge]]", f'name = "{name}"', f'ipv4 = "198.19.0.{i + 1}"']
        out += [f"latitude = {lat}", f"longitude = {lon}", ""]
    big = edges_1000(seed)
    for i, (name, lat, lon) in enumerate(big):
        out += ["[[edge]]", f'name = "{name}"', f'ipv4 = "198.19.{4 + i // 250}.{1 + i % 250}"']
        out += [f"latitude = {lat}", f"longitude = {lon}", ""]
    for pool, members in ((POOL10, edges), (POOL1000, big)):
        names = ", ".join(json.dumps(m[0]) for m in members)
        out += ["[[pool]]", f'name = "{pool}"', f"edges = [{names}]"]
        out += ['policy = "nearest"', "answers = 1", "ttl = 30", ""]
    if geoip_db is not None:
        out += ["[geo]", f"database = {json.dumps(str(geoip_db))}", ""]
    path = workdir / filename
    path.write_text("\n".join(out))
    return path


def write_nsd_config(workdir: Path, zone_file: Path, port: int, name: str = "nsd") -> Path:
    nsd_dir = workdir / name
    nsd_dir.mkdir(exist_ok=True)
    conf = f"""# Generated by bench/dnsbench.py. One server process on loopback, no rate limiting.
server:
    server-count: 1
    ip-address: {LOOPBACK}@{port}
    port: {port}
    do-ip4: yes
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{workdir}"
    database: ""
    zonelistfile: "{nsd_dir}/zone.list"
    xfrdfile: "{nsd_dir}/xfrd.state"
    xfrdir: "{nsd_dir}"
    pidfile: "{nsd_dir}/nsd.pid"
    logfile: "{nsd_dir}/nsd.log"
    verbosity: 0
    hide-version: yes
    hide-identity: yes
    minimal-responses: yes
    refuse-any: yes
    round-robin: no
    reuseport: no
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    statistics: 0

remote-control:
    control-enable: no

zone:
    name: "{ZONE.rstrip(".")}"
    zonefile: "{zone_file}"
"""
    path = nsd_dir / "nsd.conf"
    path.write_text(conf)
    return path


def sample_subnets(db: Path, count: int, seed: int) -> list[int]:
    """`count` distinct /24s (as 24-bit ints) that the GeoIP database locates."""
    reader = maxminddb.open_database(str(db), maxminddb.MODE_AUTO)
    reserved = [(int(n.network_address) >> 8, n.num_addresses >> 8) for n in RESERVED]
    rnd = random.Random(seed)
    seen: set[int] = set()
    out: list[int] = []
    for _ in range(40 * count):  # bounded: a sane database locates most unicast space
        s = rnd.getrandbits(24)
        if s in seen or any(lo <= s < lo + size for lo, size in reserved):
            continue
        seen.add(s)
        rec = reader.get(ipaddress.IPv4Address((s << 8) | 1))
        loc = rec.get("location") if isinstance(rec, dict) else None
        if isinstance(loc, dict) and "latitude" in loc and "longitude" in loc:
            out.append(s)
            if len(out) == count:
                return out
    raise BenchError(f"{db} located only {len(out)} of the {count} /24s asked for")


def query_template(qname: str, ecs: bool, do: bool = False) -> bytes:
    options: list[dns.edns.Option] = [dns.edns.ECSOption("203.0.113.0", 24)] if ecs else []
    q = dns.message.make_query(
        qname, "A", use_edns=0, payload=1232, options=options, want_dnssec=do
    )
    q.flags &= ~dns.flags.RD  # a resolver asking an authoritative server
    q.id = 0
    wire = q.to_wire()
    if ecs and wire[-3:] != bytes([203, 0, 113]):  # the ECS address ends the message
        raise BenchError("unexpected ECS wire layout from dnspython")
    return wire


def write_query_file(path: Path, qname: str, subnets: list[int] | None, do: bool) -> None:
    if subnets is None:
        wire = query_template(qname, ecs=False, do=do)
        path.write_bytes(struct.pack("!H", len(wire)) + wire)
        return
    head = query_template(qname, ecs=True, do=do)[:-3]
    prefix = struct.pack("!H", len(head) + 3) + head
    with open(path, "wb") as f:
        for s in subnets:
            f.write(prefix + s.to_bytes(3, "big"))


def prepare_queries(workdir: Path, db: Path, small: int, large: int, seed: int) -> dict[str, Path]:
    files = {
        "static": (STATIC, 0, False),
        "ecs10k-p0010": (POOL10, small, False),
        "ecs1m-p0010": (POOL10, large, False),
        "ecs1m-p1000": (POOL1000, large, False),
        "static-do": (STATIC, 0, True),
        "ecs10k-p0010-do": (POOL10, small, True),
    }
    manifest = {"db": str(db), "db_size": db.stat().st_size, "small": small, "large": large}
    manifest |= {"seed": seed, "version": 2}
    stamp = workdir / "queries.json"
    paths = {k: workdir / f"q-{k}.bin" for k in files}
    if stamp.exists() and json.loads(stamp.read_text()) == manifest:
        if all(p.exists() for p in paths.values()):
            return paths
    log(f"sampling {large} client /24s located by {db.name} (once; cached in {workdir})")
    t0 = time.monotonic()
    subnets = sample_subnets(db, max(small, large), seed)
    for key, (qname, n, do) in files.items():
        write_query_file(paths[key], qname, subnets[:n] if n else None, do)
    stamp.write_text(json.dumps(manifest))
    log(f"query files written in {time.monotonic() - t0:.0f}s")
    return paths


def first_query(path: Path) -> dns.message.Message:
    data = path.read_bytes()[:4096]
    (length,) = struct.unpack("!H", data[:2])
    return dns.message.from_wire(data[2 : 2 + length])


# --- servers -------------------------------------------------------------------------------


def ask(port: int, query: dns.message.Message, timeout: float = 0.5) -> dns.message.Message:
    return dns.query.udp(query, LOOPBACK, port=port, timeout=timeout)


def answers_static(port: int) -> bool:
    try:
        reply = ask(port, dns.message.make_query(STATIC, "A"))
    except (dns.exception.DNSException, OSError):
        # Not an answer yet: a timeout, or (BadResponse) a late reply to an earlier probe
        # reaching this probe's socket on a reused port. The caller probes again.
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


class Server:
    def __init__(
        self, label: str, argv: list[str], port: int, logdir: Path, api: int | None = None
    ) -> None:
        self.label = label
        self.argv = argv
        self.port = port
        self.api = api  # gslb's API port
        self.logdir = logdir
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        logfile = self.logdir / f"{self.label}-{self.starts}.log"
        self.proc = Proc(self.label, self.argv, SERVER_CPU, logfile)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.proc.alive:
                raise BenchError(f"{self.label} exited at start:\n{self.proc.tail()}")
            if answers_static(self.port):
                return
        raise BenchError(f"{self.label} did not answer on {LOOPBACK}:{self.port} in 60s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def gslb_argv(config: Path) -> list[str]:
    return [str(PYTHON), "-m", "gslb", "serve", "-c", str(config), "--workers", "1"]


def check_answer(server: Server, qfile: Path, ours: bool, ecs: bool) -> str:
    """One real query from the file: NOERROR, AA, an A record (signed when the query has
    DO), and for our pool answers an ECS option echoed with a non-zero scope (tailored)."""
    query = first_query(qfile)
    reply = ask(server.port, query, timeout=2.0)
    rrs = [rr for rrset in reply.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A]
    if reply.rcode() != dns.rcode.NOERROR or not rrs or not reply.flags & dns.flags.AA:
        raise BenchError(f"{server.label}: bad reply to {query.question[0]}:\n{reply}")
    note = f"{server.label}: {query.question[0].name} -> {rrs[0]}"
    if query.ednsflags & dns.flags.DO:
        if not any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in reply.answer):
            raise BenchError(f"{server.label}: DO query answered unsigned:\n{reply}")
        note += " (signed)"
    if ours and ecs:
        opts = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
        if not opts or opts[0].scopelen == 0:
            raise BenchError(f"{server.label}: pool answer without a tailored ECS scope:\n{reply}")
        note += f" (ECS scope /{opts[0].scopelen})"
    return note


# --- dnsperf -------------------------------------------------------------------------------

_NUM = r"([0-9.]+)"


def parse_dnsperf(out: str) -> PerfResult:
    def grab(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out)
        if m is None:
            raise BenchError(f"dnsperf output lacks /{pattern}/:\n{out}")
        return m

    lat = grab(rf"Average Latency \(s\):\s+{_NUM} \(min {_NUM}, max {_NUM}\)")
    rc = re.search(r"Response codes:\s+(.*)", out)
    return PerfResult(
        qps=float(grab(rf"Queries per second:\s+{_NUM}").group(1)),
        sent=int(grab(r"Queries sent:\s+(\d+)").group(1)),
        completed=int(grab(r"Queries completed:\s+(\d+)").group(1)),
        lost=int(grab(r"Queries lost:\s+(\d+)").group(1)),
        avg_ms=float(lat.group(1)) * 1000,
        sd_ms=float(grab(rf"Latency StdDev \(s\):\s+{_NUM}").group(1)) * 1000,
        max_ms=float(lat.group(3)) * 1000,
        rcodes=rc.group(1).strip() if rc else "",
    )


def dnsperf(args: argparse.Namespace, port: int, qfile: Path, seconds: float) -> PerfResult:
    argv = ["dnsperf", "-B", "-d", str(qfile), "-s", LOOPBACK, "-p", str(port)]
    argv += ["-l", f"{seconds:g}", "-c", str(args.clients), "-q", str(args.outstanding)]
    argv += ["-T", "1", "-t", str(args.timeout)]
    res = parse_dnsperf(run_tool(argv, LOADGEN_CPU, timeout=seconds + args.timeout + 30))
    if res.completed == 0:
        raise BenchError(f"dnsperf got no answers from port {port}")
    return res


def measure(args: argparse.Namespace, server: Server, qfile: Path, warmup: bool) -> PerfResult:
    server.start()
    try:
        if warmup and args.warmup > 0:
            dnsperf(args, server.port, qfile, args.warmup)
        assert server.proc is not None
        before = server.proc.cpu_seconds()
        res = dnsperf(args, server.port, qfile, args.duration)
        res = replace(res, server_cpu=server.proc.cpu_seconds() - before)
    finally:
        server.stop()
    lost = res.lost / max(res.sent, 1)
    log(
        f"  {server.label:<5} {res.qps:>10,.0f} qps  avg {res.avg_ms:.3f} ms  sd {res.sd_ms:.3f}"
        f"  max {res.max_ms:.1f}  lost {lost:.2%}  CPU {res.cpu_us:.2f} µs/query  {res.rcodes}"
    )
    others = [c for c in re.findall(r"([A-Z]+) \d+", res.rcodes) if c != "NOERROR"]
    if others:
        log(f"  warning: {server.label} answered some queries with {', '.join(others)}")
    if lost > 0.01:
        log(f"  warning: {server.label} lost {lost:.1%} of the queries (UDP buffer overflow?)")
    return res


# --- main ----------------------------------------------------------------------------------


def make_servers(
    args: argparse.Namespace,
    workdir: Path,
    logdir: Path,
    shared_zone: Path,
    nsd_zone: Path,
    *,
    signed: bool = False,
) -> dict[str, Server]:
    """The servers of `args.servers`; `signed`: with the zone DNSSEC-signed by one ECDSA
    P-256 key, gslb online, NSD from a copy of its zone file signed here once."""
    key = None
    if signed:
        from gslb.dnssec import write_new_key

        key = workdir / "bench.test.pem"
        if not key.exists():
            write_new_key(key)
    suffix = "-signed" if signed else ""
    out: dict[str, Server] = {}
    if "ours" in args.servers:
        port, api = free_port(udp_too=True), free_port()
        conf = write_gslb_config(
            workdir,
            shared_zone,
            port,
            api,
            args.seed,
            key_file=key,
            filename=f"gslb{suffix}.toml",
            geoip_db=args.geoip_db,
        )
        out["ours"] = Server("ours", gslb_argv(conf), port, logdir, api)
    if "nsd" in args.servers:
        zone = nsd_zone
        if key is not None:
            zone = sign_zone_file(nsd_zone, key, workdir / "bench.test.nsd.signed.zone")
        port = free_port(udp_too=True)
        conf = write_nsd_config(workdir, zone, port, name=f"nsd{suffix}")
        run_tool(["nsd-checkconf", str(conf)], None, timeout=30)
        out["nsd"] = Server("nsd", ["nsd", "-d", "-c", str(conf)], port, logdir)
    return out


def prebuild_table(db: Path) -> str:
    """Build the GeoIP /24 table (geo.table) of `db` before any run, as a production server
    has it after its first start: every gslb started here then maps it before answering.
    Unpinned; the first time about 10 s."""
    started = time.monotonic()
    out = run_tool([str(PYTHON), "-m", "geo.table", str(db)], None, timeout=600)
    took = time.monotonic() - started
    return (
        f"GeoIP /24 table {out.strip()} ready ({took:.1f} s, including a build if it was missing)"
    )


def check_table(api: int) -> None:
    """gslb answers from the /24 table (gslb_geo_table_processes), or BenchError."""
    url = f"http://{LOOPBACK}:{api}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(r"^gslb_geo_table_processes (\S+)$", text, re.M)
    if m is None or float(m.group(1)) != 1:
        raise BenchError(f"gslb does not answer from the GeoIP /24 table ({url})")


def count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def tail_headers(a: str, b: str) -> list[str]:
    return ["goal", "verdict", f"{a} avg ±sd ms", f"{b} avg ±sd ms"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = arg_parser(
        __doc__, what="server", warmup=1.0, warmup_help="unmeasured seconds after a start"
    )
    p.add_argument(
        "--scenarios",
        default="static,ecs10k,ecs1m,edges,signed,signed-ecs10k",
        help="comma-separated subset of static,ecs10k,ecs1m,edges,signed,signed-ecs10k",
    )
    p.add_argument("--servers", default="ours,nsd", help="ours,nsd or just one of them")
    p.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    p.add_argument("--timeout", type=float, default=2.0, help="dnsperf -t (s)")
    p.add_argument("--small", type=int, default=10_000, help="client /24s of ecs10k")
    p.add_argument("--large", type=int, default=1_000_000, help="client /24s of ecs1m and edges")
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--geoip-db", type=Path, default=None, help="default: bundled GeoLite2")
    return parse_lists(p, argv, {*SCENARIOS, "edges"}, {"ours", "nsd"})


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    tools = ["dnsperf", "taskset", *(["nsd"] if "nsd" in args.servers else [])]
    workdir, logdir = start_harness("dns", tools, "bench/dns.sh")
    db = args.geoip_db or default_geoip_db()

    shared_zone, nsd_zone = write_zones(workdir)
    servers = make_servers(args, workdir, logdir, shared_zone, nsd_zone)
    signed: dict[str, Server] = {}
    if any(SCENARIOS[k].signed for k in args.scenarios if k in SCENARIOS):
        signed = make_servers(args, workdir, logdir, shared_zone, nsd_zone, signed=True)
    queries = prepare_queries(workdir, db, args.small, args.large, args.seed)

    print(f"# GeoEdge DNS benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# machine: {machine_summary()}")
    print(
        f"# servers on core {SERVER_CPU}, dnsperf on core {LOADGEN_CPU}: -c {args.clients} "
        f"-q {args.outstanding}, {args.duration:g}s x {args.rounds} rounds per server, "
        f"{args.pick} of the rounds; fresh server process per run"
    )
    print(f"# GeoIP database: {db}")
    if "ours" in args.servers:
        log(prebuild_table(db))

    for label, server in servers.items():  # fail early, before any long run
        server.start()
        try:
            for qkey in ("static", "ecs10k-p0010", "ecs1m-p1000"):
                log(check_answer(server, queries[qkey], ours=label == "ours", ecs=qkey != "static"))
            if server.api is not None:
                check_table(server.api)
        finally:
            server.stop()
    for label, server in signed.items():
        server.start()
        try:
            for qkey in ("static-do", "ecs10k-p0010-do"):
                log(check_answer(server, queries[qkey], ours=label == "ours", ecs="ecs" in qkey))
        finally:
            server.stop()

    rows: list[list[str]] = []
    for key in args.scenarios:
        if key == "edges":
            continue
        sc = SCENARIOS[key]
        title = sc.title.format(small=count(args.small), large=count(args.large))
        log(f"scenario {key}: {title}")
        runs = alternate(
            args.rounds,
            signed if sc.signed else servers,
            partial(measure, args, qfile=queries[sc.queries], warmup=sc.warmup),
        )
        ours, nsd = pick(args.pick, runs.get("ours", [])), pick(args.pick, runs.get("nsd", []))
        rows.append(result_row(title, ours, nsd, sc.goal))

    edge_rows: list[list[str]] = []
    edge_cpu = ""
    if "edges" in args.scenarios and "ours" in servers:
        large = count(args.large)
        log(f"scenario edges: pool of 1000 edges vs pool of 10 (ours only, {large} /24s)")
        qfiles = {size: queries[f"ecs1m-p{size:04d}"] for size in (10, 1000)}
        pools = alternate(
            args.rounds, qfiles, partial(measure, args, servers["ours"], warmup=False)
        )
        big, small = pick(args.pick, pools[1000]), pick(args.pick, pools[10])
        edge_rows.append(result_row(f"ECS from {large} /24s", big, small, EDGES_GOAL))
        # The server's CPU per answered query, median of the rounds: steadier than the rate
        # on a machine shared with other work (the rate also counts time the server waited).
        cpu = {size: median(r.cpu_us for r in pools[size]) for size in (10, 1000)}
        edge_cpu = (
            f"server CPU per answered query, median of {args.rounds} round(s): 1000 edges "
            f"{cpu[1000]:.2f} µs, 10 edges {cpu[10]:.2f} µs; 10/1000 = "
            f"{cpu[10] / cpu[1000]:.2f}x (goal >= {EDGES_GOAL}x)"
        )

    print()
    if rows:
        print(
            table(
                ["scenario", "ours qps", "NSD qps", "ours/NSD", *tail_headers("ours", "NSD")], rows
            )
        )
        print()
    if edge_rows:
        print("pool size, ours only:")
        heads = [
            "scenario",
            "1000 edges qps",
            "10 edges qps",
            "1000/10",
            *tail_headers("1000", "10"),
        ]
        print(table(heads, edge_rows))
        print(edge_cpu)
        print()
    print("latency is dnsperf's average ± standard deviation at saturation (dnsperf 2.10 gives")
    print("no percentiles); logs of every server start are in", logdir.relative_to(REPO))
    return 0


if __name__ == "__main__":
    run_main(main, "bench/dnsbench.py")
