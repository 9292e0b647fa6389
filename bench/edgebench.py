"""Edge benchmark: our caching proxy against nginx proxy_cache in front of the same origin,
driven by wrk, cache hits only.

Both proxies run on core 0 with wrk on core 1 (the origin, bench/origin.py, shares core 1 with
wrk: it only serves the warm-up misses), they take turns within one run, and each is warmed
and checked before it is measured: the second request for an object must be a cache hit by the
proxy's own account (our `Cache-Status: GeoEdge; hit`, nginx's $upstream_cache_status in an
added `X-Cache-Status` header) with the full body, and the origin's request counter must not
move during a measured run. Scenarios:

  1k        1 KiB object, ours vs nginx                         goal >= 0.4x nginx
  100k      100 KiB object, ours vs nginx                       goal >= 0.35x nginx
  1k-log    1 KiB object, both proxies writing a JSON access log to a file (buffered
            64 KiB on both sides, the same fields)               goal >= 0.8x nginx
  disk10k, disk100k, disk1m, disk1m-range, disk10k-304, miss, miss1
            the edge at scale: see bench/edgescale.py
  text      20 KiB of HTML asked with a browser's Accept-Encoding (gzip, deflate, br):
            ours answers with the brotli variant it compressed once and stored, nginx
            (gzip on, as it is run in front of web pages) gzips each response
                                                                    goal >= 0.5x nginx
  1k-new, 1k-tls, 1k-tls-new
            1 KiB object on a new connection per request (1k-new: wrk sends `Connection:
            close`, as one-shot clients do), and over HTTPS, both proxies terminating TLS
            with the same ECDSA P-256 certificate, ciphers and TLS 1.3, on kept-alive
            connections (1k-tls) and on a new connection, so a full handshake, per request
            (1k-tls-new)                                            goal >= 0.5x nginx each
  1k-rules  1 KiB object, our edge with 20 screening rules (edge.screening) vs the same
            edge without: none refuses the benchmark's requests, but a per-client rate limit
            counts every one of them                              goal >= 0.85x no rules
  workers   1 KiB, our edge with 2 workers vs 1, unpinned: requests per edge CPU-second,
            2 workers keep >= 0.9x of one worker's (throughput 2/1 is reported, no goal:
            on two cores shared with wrk it is capped at 2E/(E+W), see below)

Every measured run also reports the CPU time per request of the proxy's processes and of wrk
(from /proc and the rusage of wrk), so the workers scenario prints the ceiling that sharing
two cores with wrk puts on it.

Run through bench/edge.sh (installs nginx and wrk) or `make bench-edge`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import edgescale
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
    children_cpu_seconds,
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

from edge.tls import MODERN_CIPHERS

K = TypeVar("K")
OBJECTS = {"1k": 1024, "100k": 100 * 1024}
# A web page as browsers ask for it: 20 KiB of HTML the origin sends uncompressed, asked
# with a browser's Accept-Encoding. Ours answers with the brotli variant it stored; nginx,
# configured as its operators run it (gzip on for text), gzips each response it serves.
TEXT_PATH = "/text/20k"
BROWSER_ENCODINGS = edgescale.BROWSER_ENCODINGS
TEXT_GOAL = 0.5
GOALS = {"1k": 0.4, "100k": 0.35}
# Connections: (over HTTPS, a new connection per request) and the goal of each scenario.
CONNECTION_SCENARIOS = {
    "1k-new": (False, True, 0.5),
    "1k-tls": (True, False, 0.5),
    "1k-tls-new": (True, True, 0.5),
}
LOGGED_GOAL = 0.8
RULES_GOAL = 0.85
WORKERS_EFFICIENCY_GOAL = 0.9


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx responses plus socket errors
    loadgen_cpu: float = 0.0  # CPU seconds wrk used
    server_cpu: float = 0.0  # CPU seconds the proxy's processes used meanwhile

    @property
    def rate(self) -> float:
        return self.rps

    @property
    def loadgen_us(self) -> float:
        return self.loadgen_cpu / max(1, self.requests) * 1e6

    @property
    def server_us(self) -> float:
        return self.server_cpu / max(1, self.requests) * 1e6

    @property
    def latency(self) -> str:
        return f"{self.p99_ms:.2f}"


# --- HTTP checks ---------------------------------------------------------------------------


def get(
    port: int, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def is_hit(label: str, headers: dict[str, str]) -> bool:
    if label == "nginx":
        return headers.get("x-cache-status", "").upper() == "HIT"
    # RFC 9211: the last member is the cache nearest the client, i.e. us.
    members = [m for m in headers.get("cache-status", "").split(",") if m.strip()]
    return bool(members) and "hit" in (p.strip().lower() for p in members[-1].split(";")[1:])


def origin_count(port: int) -> int:
    status, _, body = get(port, "/__origin/stats")
    if status != 200:
        raise BenchError(f"origin stats answered {status}")
    return int(json.loads(body)["requests"])


class Proxy:
    def __init__(
        self,
        label: str,
        argv: list[str],
        port: int,
        cpus: str | None,
        logdir: Path,
        tls_port: int | None = None,
    ):
        self.label = label
        self.argv = argv
        self.port = port
        self.tls_port = tls_port  # where it speaks HTTPS, if it does (checked on `port`)
        self.cpus = cpus
        self.logdir = logdir
        self.proc: Proc | None = None

    def endpoint(self, https: bool) -> tuple[int, str]:
        """The port and scheme wrk asks on: the HTTPS port when `https` and there is one."""
        if https and self.tls_port:
            return self.tls_port, "https"
        return self.port, "http"

    def start(self) -> None:
        self.proc = Proc(self.label, self.argv, self.cpus, self.logdir / f"{self.label}.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.proc.alive:
                raise BenchError(f"{self.label} exited at start:\n{self.proc.tail()}")
            try:
                if get(self.port, "/1k", timeout=2.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.label} did not answer on {LOOPBACK}:{self.port} in 60s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def check_hits(self, origin_port: int) -> str:
        """Every object comes back byte for byte as the origin sends it and, within a few
        requests (the first is a miss), as a hit."""
        notes = []
        for name, size in OBJECTS.items():
            path = f"/{name}"
            expected = get(origin_port, path)[2]
            if len(expected) != size:
                raise BenchError(f"origin GET {path}: {len(expected)} bytes, not {size}")
            for attempt in range(5):
                status, headers, body = get(self.port, path)
                if status != 200 or body != expected:
                    raise BenchError(f"{self.label} GET {path}: {status}, {len(body)} bytes differ")
                if is_hit(self.label, headers):
                    break
                time.sleep(0.2 * attempt)  # a store may land just after the first response
            else:
                shown = {k: v for k, v in headers.items() if "cache" in k or k == "age"}
                raise BenchError(f"{self.label} GET {path} is not a cache hit: {shown}")
            tag = headers.get("x-cache-status") or headers.get("cache-status")
            notes.append(f"{path} {size} B [{tag}]")
        procs = self.proc.group_size() if self.proc else 0
        plural = "es" if procs != 1 else ""
        return f"{self.label} ({procs} process{plural}): " + ", ".join(notes)


# nginx's line with the fields of ours (edge/accesslog.py), JSON-escaped.
NGINX_JSON_LOG = (
    'log_format edgejson escape=json \'{"remote":"$remote_addr","method":'
    '"$request_method","host":"$http_host","path":"$request_uri","status":'
    '$status,"bytes":$body_bytes_sent,"duration_ms":$request_time,"cache":'
    '"$upstream_cache_status","origin":"$upstream_addr","user_agent":'
    '"$http_user_agent","time":$msec}\';'
)


def nginx_proxy(
    workdir: Path,
    port: int,
    origin_port: int,
    logdir: Path,
    access_log: Path | None = None,
    tls: Certificate | None = None,
) -> Proxy:
    d = workdir / "nginx"
    shutil.rmtree(d, ignore_errors=True)
    (d / "tmp").mkdir(parents=True)
    conf = f"""# Generated by bench/edgebench.py: one worker, disk cache, keep-alive to the origin.
{edgescale.nginx_main(d)}
http {{
    {NGINX_JSON_LOG if access_log else ""}
    access_log {f"{access_log} edgejson buffer=64k flush=1s" if access_log else "off"};
    sendfile on;
    gzip on;  # as nginx is run in front of web pages: text compressed for clients
    gzip_types text/css application/javascript application/json;  # text/html always
    gzip_proxied any;
    gzip_vary on;
    # tcp_nopush stays off (nginx's default): with it on, this VM's kernel stalled each 100 KiB
    # response ~40 ms (1.5k req/s instead of 22k), which would flatter us unfairly.
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;  # wrk keeps its connections; do not make nginx reconnect
    default_type application/octet-stream;
{edgescale.nginx_temp_paths(d)}
    # Both disk budgets 4 GiB: the 1 GiB working set of disk100k fits either side (nginx
    # counts whole blocks; at 1g it evicted part of it and measured misses).
    proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:16m max_size=4g inactive=1h
                     use_temp_path=off;
    upstream origin {{
        server {LOOPBACK}:{origin_port};
        keepalive 32;
    }}
    server {{
        listen {LOOPBACK}:{port};
{_nginx_tls(tls)}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_cache bench;
            proxy_cache_lock on;  # collapse concurrent misses, as our edge does
            # No proxy_cache_valid: freshness comes from the origin's Cache-Control.
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""
    (d / "nginx.conf").write_text(conf)
    argv = ["nginx", "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
    run_tool([*argv, "-t", "-q"], None, timeout=30)
    return Proxy("nginx", argv, port, SERVER_CPU, logdir, tls.port if tls else None)


@dataclass(frozen=True)
class Certificate:
    """A self-signed ECDSA P-256 certificate both proxies serve HTTPS with, and the port
    each listens on for it."""

    cert: Path
    key: Path
    port: int


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"]
    argv += ["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost"]
    run_tool([*argv, "-keyout", str(key), "-out", str(cert)], None, timeout=30)
    return cert, key


def _nginx_tls(tls: Certificate | None) -> str:
    """An HTTPS listener as its operators write it (Mozilla's intermediate profile): the
    ciphers our edge offers (edge.tls), a shared session cache."""
    if tls is None:
        return ""
    return f"""        listen {LOOPBACK}:{tls.port} ssl;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {MODERN_CIPHERS};
        ssl_prefer_server_ciphers on;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 1d;"""


def _our_tls(tls: Certificate) -> str:
    certs = f"{{ cert = {json.dumps(str(tls.cert))}, key = {json.dumps(str(tls.key))} }}"
    return f'[tls]\nlisten = ["{LOOPBACK}:{tls.port}"]\ncertificates = [{certs}]\n'


def our_proxy(
    label: str,
    workdir: Path,
    port: int,
    origin_port: int,
    workers: int,
    cpus: str | None,
    logdir: Path,
    fast_hits: bool = True,
    memory: str | None = None,
    access_log: Path | None = None,
    extra: str = "",
    tls: Certificate | None = None,
) -> Proxy:
    """Our edge with the quick-start defaults, except that like nginx here it keeps no access
    log and logs only warnings (a config file, since the quick-start flags cannot say that)."""
    cache = workdir / f"cache-{label}"
    shutil.rmtree(cache, ignore_errors=True)
    conf = workdir / f"{label}.toml"
    conf.write_text(
        f"""# Generated by bench/edgebench.py
[server]
listen = ["{LOOPBACK}:{port}"]
workers = {workers}
fast_hits = {str(fast_hits).lower()}

[pool]
origins = [{{ url = "http://{LOOPBACK}:{origin_port}" }}]

[cache]
dir = {json.dumps(str(cache))}
size_limit = "4GiB"
{f'memory_bytes = "{memory}"' if memory else ""}

[admin]
listen = "{LOOPBACK}:{free_port()}"

[log]
level = "warning"
access_log = {json.dumps(str(access_log or ""))}
{extra}
{_our_tls(tls) if tls else ""}"""
    )
    edge = [str(PYTHON), "-m", "edge"]
    run_tool([*edge, "check-config", str(conf)], None, timeout=60)
    argv = [*edge, "serve", "-c", str(conf), "--workers", str(workers)]
    return Proxy(label, argv, port, cpus, logdir, tls.port if tls else None)


# --- wrk -----------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+([0-9.]+)(us|ms|s|m)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s|m)\s*$", out, re.M)
    if not (rps and total and p50 and p99):
        raise BenchError(f"unexpected wrk output:\n{out}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=_ms(*p50.groups()),
        p99_ms=_ms(*p99.groups()),
        requests=int(total.group(1)),
        errors=errors,
    )


def wrk(
    args: argparse.Namespace,
    port: int,
    path: str,
    seconds: float,
    cpus: str | None,
    script: Path | None = None,
    connections: int | None = None,
    scheme: str = "http",
) -> WrkResult:
    secs = max(1, round(seconds))  # wrk takes whole seconds
    conns = connections or args.connections
    argv = ["wrk", f"-t{args.threads}", f"-c{conns}", f"-d{secs}s", "--latency"]
    argv += [*(["-s", str(script)] if script is not None else [])]
    argv += [f"{scheme}://{LOOPBACK}:{port}{path}"]
    before = children_cpu_seconds()
    res = parse_wrk(run_tool(argv, cpus, timeout=seconds + 60))
    return replace(res, loadgen_cpu=children_cpu_seconds() - before)


def measure(
    args: argparse.Namespace,
    proxy: Proxy,
    path: str,
    origin_port: int,
    cpus: str | None,
    script: Callable[[], Path | None] = lambda: None,
    connections: int | None = None,
    served: Callable[[], int] | None = None,
    expect: str = "hits",
    https: bool = False,
) -> WrkResult:
    """One measured wrk run; the origin's counter (`served`, by default the bench origin's)
    checks that it was all hits, that every request reached it (expect="misses"), or
    about the mix's share of new URLs (expect="mix").
    `https`: on the proxy's HTTPS port."""
    assert proxy.proc is not None
    count = served or partial(origin_count, origin_port)
    before, cpu_before = count(), proxy.proc.cpu_seconds()
    port, scheme = proxy.endpoint(https)
    res = wrk(args, port, path, args.duration, cpus, script(), connections, scheme)
    res = replace(res, server_cpu=proxy.proc.cpu_seconds() - cpu_before)
    misses = count() - before
    log(
        f"  {proxy.label:<6} {path:<6} {res.rps:>10,.0f} req/s  p50 {res.p50_ms:.2f} ms  "
        f"p99 {res.p99_ms:.2f} ms  errors {res.errors}  origin requests {misses}  "
        f"CPU per request: {proxy.label} {res.server_us:.1f} us, wrk {res.loadgen_us:.1f} us"
    )
    if res.errors:
        log(f"  warning: {proxy.label}: {res.errors} errors or non-2xx responses during the run")
    if expect == "hits" and misses:
        log(f"  warning: {proxy.label}: {misses} requests reached the origin: not all hits")
    if expect == "misses" and misses < res.requests:
        log(f"  warning: {proxy.label}: only {misses} of {res.requests} requests were misses")
    if expect == "mix" and misses > 2 * edgescale.MIX_NEW * res.requests + 100:
        log(f"  warning: {proxy.label}: {misses} of {res.requests} requests reached the origin")
    return res


def cpu_row(what: str, one: WrkResult, two: WrkResult) -> list[str]:
    """The CPU figures of a workers run: per request for edge and wrk, the ceiling they put
    on 2 workers vs 1, and the goal that does not depend on wrk: requests per edge
    CPU-second with 2 workers (1/E2) against 1 worker's (1/E1)."""
    e, w = one.server_us, one.loadgen_us
    ceiling = 2 * e / (e + w) if e + w > 0 else 0.0
    efficiency = e / two.server_us if two.server_us else 0.0
    verdict = "ok" if efficiency >= WORKERS_EFFICIENCY_GOAL else "BELOW GOAL"
    return [
        f"1 KiB hit, {what}",
        f"{e:.1f}",
        f"{w:.1f}",
        f"{two.server_us:.1f}",
        f"{two.loadgen_us:.1f}",
        f"{ceiling:.2f}x",
        f"{two.rps / one.rps:.2f}x" if one.rps else "n/a",
        f"{1e6 / e:,.0f}" if e else "n/a",
        f"{1e6 / two.server_us:,.0f}" if two.server_us else "n/a",
        f"{efficiency:.2f}x",
        f">= {WORKERS_EFFICIENCY_GOAL}x",
        verdict,
    ]


# --- access logs on both sides -------------------------------------------------------------


def hit_runs(
    args: argparse.Namespace, pair: dict[K, Proxy], origin_port: int, cpus: str | None
) -> dict[K, list[WrkResult]]:
    """Start the proxies, check their hits, warm them, measure 1 KiB hits in turns, stop."""
    for proxy in pair.values():
        proxy.start()
        log(proxy.check_hits(origin_port))
        if args.warmup > 0:
            wrk(args, proxy.port, "/1k", args.warmup, cpus)
    runs = alternate(
        args.rounds, pair, partial(measure, args, path="/1k", origin_port=origin_port, cpus=cpus)
    )
    for proxy in pair.values():
        proxy.stop()
    return runs


def logged_rows(
    args: argparse.Namespace, workdir: Path, logdir: Path, origin_port: int
) -> list[list[str]]:
    """1 KiB hits with both proxies writing a JSON access log to a file (the same fields,
    both buffered 64 KiB: ours flushes every 0.5 s, nginx every 1 s)."""
    logs = {label: workdir / f"{label}-access.log" for label in ("ours", "nginx")}
    for path in logs.values():
        path.unlink(missing_ok=True)
    pair: dict[str, Proxy] = {}
    if "ours" in args.servers:
        pair["ours"] = our_proxy(
            "ours",
            workdir,
            free_port(),
            origin_port,
            1,
            SERVER_CPU,
            logdir,
            access_log=logs["ours"],
        )
    if "nginx" in args.servers:
        pair["nginx"] = nginx_proxy(
            workdir, free_port(), origin_port, logdir, access_log=logs["nginx"]
        )
    log("scenario 1k-log: cache hits of a 1024 B object, JSON access log to a file on both")
    runs = hit_runs(args, pair, origin_port, LOADGEN_CPU)
    for label, path in logs.items():
        if label in pair:
            lines = sum(1 for _ in path.open("rb")) if path.exists() else 0
            log(f"  {label}: {lines:,} access log lines in {path.name}")
            if lines < sum(r.requests for r in runs[label]):
                raise BenchError(f"{label} logged fewer lines than it answered requests")
    ours, nginx = pick(args.pick, runs.get("ours", [])), pick(args.pick, runs.get("nginx", []))
    return [result_row("1 KiB hit, access log on", ours, nginx, LOGGED_GOAL)]


# --- connections: new ones, HTTPS ------------------------------------------------------------


def connection_rows(
    args: argparse.Namespace, workdir: Path, logdir: Path, origin_port: int
) -> list[list[str]]:
    """1 KiB hits on a new connection per request, and over HTTPS (kept alive and not)."""
    wanted = [s for s in CONNECTION_SCENARIOS if s in args.scenarios]
    if not wanted:
        return []
    cert, key = make_certificate(workdir)
    pair: dict[str, Proxy] = {}
    if "ours" in args.servers:
        tls = Certificate(cert, key, free_port())
        pair["ours"] = our_proxy(
            "ours", workdir, free_port(), origin_port, 1, SERVER_CPU, logdir, tls=tls
        )
    if "nginx" in args.servers:
        tls = Certificate(cert, key, free_port())
        pair["nginx"] = nginx_proxy(workdir, free_port(), origin_port, logdir, tls=tls)
    close = workdir / "close.lua"
    close.write_text('wrk.headers["Connection"] = "close"\n')
    rows = []
    try:
        for proxy in pair.values():
            proxy.start()
            log(proxy.check_hits(origin_port))
        for scenario in wanted:
            https, new, goal = CONNECTION_SCENARIOS[scenario]
            script = close if new else None
            how = "a new connection per request" if new else "kept-alive connections"
            log(f"scenario {scenario}: 1024 B hits, {'HTTPS' if https else 'HTTP'}, {how}")
            run = partial(
                measure,
                args,
                path="/1k",
                origin_port=origin_port,
                cpus=LOADGEN_CPU,
                script=partial(_same, script),
                https=https,
            )
            for proxy in pair.values():
                if args.warmup > 0:
                    port, scheme = proxy.endpoint(https)
                    wrk(args, port, "/1k", args.warmup, LOADGEN_CPU, script, 0, scheme)
            runs = alternate(args.rounds, pair, run)
            ours = pick(args.pick, runs.get("ours", []))
            nginx = pick(args.pick, runs.get("nginx", []))
            title = f"1 KiB hit, {'HTTPS' if https else 'HTTP'}, "
            title += "new connection each" if new else "kept alive"
            rows.append(result_row(title, ours, nginx, goal))
    finally:
        for proxy in pair.values():
            proxy.stop()
    return rows


# --- compressible text --------------------------------------------------------------------


def text_row(
    args: argparse.Namespace, proxies: dict[str, Proxy], origin_port: int, workdir: Path
) -> list[str]:
    """20 KiB of HTML asked with a browser's Accept-Encoding: each proxy must answer it
    compressed, as a hit, before it is measured."""
    asked = {"Accept-Encoding": BROWSER_ENCODINGS}
    script = workdir / "browser.lua"
    script.write_text(f'wrk.headers["Accept-Encoding"] = "{BROWSER_ENCODINGS}"\n')
    log(f"scenario text: cache hits of {TEXT_PATH}, HTML, Accept-Encoding: {BROWSER_ENCODINGS}")
    for proxy in proxies.values():
        for attempt in range(5):
            status, headers, body = get(proxy.port, TEXT_PATH, headers=asked)
            if status != 200 or not headers.get("content-encoding"):
                raise BenchError(f"{proxy.label} GET {TEXT_PATH}: {status}, not compressed")
            if is_hit(proxy.label, headers):
                break
            time.sleep(0.2 * attempt)
        else:
            raise BenchError(f"{proxy.label} GET {TEXT_PATH} is not a cache hit: {headers}")
        coding = headers["content-encoding"]
        log(f"{proxy.label}: {TEXT_PATH} as {coding}, {len(body)} B")
        if args.warmup > 0:
            wrk(args, proxy.port, TEXT_PATH, args.warmup, LOADGEN_CPU, script)
    runs = alternate(
        args.rounds,
        proxies,
        partial(
            measure,
            args,
            path=TEXT_PATH,
            origin_port=origin_port,
            cpus=LOADGEN_CPU,
            script=partial(_same, script),
        ),
    )
    ours, nginx = pick(args.pick, runs.get("ours", [])), pick(args.pick, runs.get("nginx", []))
    return result_row("20 KiB HTML hit, browser Accept-Encoding", ours, nginx, TEXT_GOAL)


def _same(value: Path | None) -> Path | None:
    return value


# --- screening rules -----------------------------------------------------------------------


def screening_rules() -> str:
    """Twenty rules as an edge in front of a web site might have them: allow lists, deny
    lists by network, country, path, method, host and header, a close for a flood marker,
    rate limits by client network, API key and path, a concurrency limit. None refuses
    wrk's `GET /1k` from 127.0.0.1; the per-client flood limit takes a token for each."""
    try:
        from geo.locator import default_database_path

        geoip = str(default_database_path())
    except Exception:  # the bundled GeoLite2 snapshot is missing: a network rule instead
        geoip = ""
    rules = [
        ("office", "allow", 'clients = ["10.20.0.0/16", "2001:db8:20::/48"]'),
        ("bad-networks", "deny", 'clients = ["198.18.0.0/15", "203.0.113.0/24"]'),
        (
            "sanctions",
            "deny",
            'countries = ["KP", "IR"]' if geoip else 'clients = ["192.0.2.0/25"]',
        ),
        ("admin", "deny", 'path_prefix = ["/admin", "/wp-admin", "/wp-login.php"]'),
        ("dotfiles", "deny", r"path_regex = '/\.(git|env|svn|hg)(/|$)'"),
        ("scanners", "deny", 'header = "user-agent"\nheader_regex = "(?i)sqlmap|nikto|zgrab"'),
        ("flood-marker", "close", 'header = "x-flood"'),
        ("trace", "deny", 'methods = ["TRACE", "TRACK"]'),
        ("old-host", "deny", 'hosts = ["old.example.com"]'),
        ("debug-token", "deny", 'header = "x-debug-token"'),
        ("php", "deny", r"path_regex = '\.php$'"),
        ("cgi", "deny", 'path_prefix = "/cgi-bin/"'),
        ("spam-referer", "deny", 'header = "referer"\nheader_regex = "casino|pills"'),
        ("webdav", "deny", 'methods = ["PROPFIND", "MKCOL", "COPY", "MOVE"]'),
        ("login", "limit", 'methods = ["POST"]\npath_prefix = "/login"\nrate = "5/m"'),
        ("api-key", "limit", 'path_prefix = "/api/"\nrate = "50/s"\nkey = "header:x-api-key"'),
        ("search", "limit", 'path_prefix = "/search"\nrate = "10/s"\nprefix_v4 = 24'),
        ("uploads", "limit", 'methods = ["PUT", "POST"]\nconcurrency = 4'),
        ("crawl-path", "limit", 'path_prefix = "/feeds/"\nrate = "100/s"\nkey = "path"'),
        ("flood", "close", 'rate = "1000000/s"\nburst = 1000000\nban_after = 100'),
    ]
    out = [f"[geo]\ndatabase = {json.dumps(geoip)}\n" if geoip else ""]
    for name, action, conditions in rules:
        out.append(f'[[screening.rule]]\nname = "{name}"\naction = "{action}"\n{conditions}\n')
    return "\n".join(out)


def rules_rows(
    args: argparse.Namespace, workdir: Path, logdir: Path, origin_port: int
) -> list[list[str]]:
    """1 KiB hits on our edge with the 20 rules and without, pinned like the nginx runs."""
    log("scenario 1k-rules: cache hits of a 1024 B object, 20 screening rules vs none")
    pair = {
        label: our_proxy(
            label, workdir, free_port(), origin_port, 1, SERVER_CPU, logdir, extra=extra
        )
        for label, extra in (("rules", screening_rules()), ("none", ""))
    }
    runs = hit_runs(args, pair, origin_port, LOADGEN_CPU)
    ruled, bare = pick(args.pick, runs["rules"]), pick(args.pick, runs["none"])
    return [result_row("1 KiB hit, 20 rules", ruled, bare, RULES_GOAL)]


# --- the edge at scale (bench/edgescale.py) -------------------------------------------------


def scale_pair(
    args: argparse.Namespace, workdir: Path, logdir: Path, origin_port: int, memory: str | None
) -> dict[str, Proxy]:
    pair: dict[str, Proxy] = {}
    if "ours" in args.servers:
        pair["ours"] = our_proxy(
            "ours", workdir, free_port(), origin_port, 1, SERVER_CPU, logdir, memory=memory
        )
    if "nginx" in args.servers:
        pair["nginx"] = nginx_proxy(workdir, free_port(), origin_port, logdir)
    for proxy in pair.values():
        proxy.start()
    return pair


def scripted_runs(
    args: argparse.Namespace,
    pair: dict[str, Proxy],
    origin_port: int,
    script: Callable[[], Path | None],
    expect: str = "hits",
    connections: int | None = None,
    served: Callable[[], int] | None = None,
) -> dict[str, list[WrkResult]]:
    """The proxies of `pair` measured in turns, each run with a new `script()`: the runs
    of each (`connections`, `served`: as `measure` takes them)."""
    return alternate(
        args.rounds,
        pair,
        partial(
            measure,
            args,
            path="",
            origin_port=origin_port,
            cpus=LOADGEN_CPU,
            script=script,
            connections=connections,
            served=served,
            expect=expect,
        ),
    )


def measured_pair(
    args: argparse.Namespace,
    pair: dict[str, Proxy],
    origin_port: int,
    script: Callable[[], Path | None],
    expect: str = "hits",
) -> tuple[WrkResult | None, WrkResult | None]:
    """`scripted_runs`, then the proxies stopped: the picked runs of ours and of nginx."""
    runs = scripted_runs(args, pair, origin_port, script, expect)
    for proxy in pair.values():
        proxy.stop()
    return pick(args.pick, runs.get("ours", [])), pick(args.pick, runs.get("nginx", []))


def mix_row(args: argparse.Namespace, workdir: Path, logdir: Path, origin_port: int) -> list[str]:
    """The mix (edgescale): both proxies warmed with every ranked object, then measured
    in turns, each run with new URLs of its own."""
    n = args.objects_mix
    log(
        f"scenario mix: {n} objects by popularity (Zipf {edgescale.MIX_ZIPF}), binaries and "
        f"pages, {edgescale.MIX_NEW:.0%} new URLs, {edgescale.MIX_CLOSE:.0%} Connection: close"
    )
    pair = scale_pair(args, workdir, logdir, origin_port, None)
    seeds = iter(range(1, 1000))
    for label, proxy in pair.items():
        edgescale.warm_mix(label, proxy.port, n)
    script = partial(edgescale.mix_script, workdir, n, seeds)
    ours, nginx = measured_pair(args, pair, origin_port, script, "mix")
    title = f"the mix, {n} objects by popularity, {edgescale.MIX_NEW:.0%} new"
    return result_row(title, ours, nginx, edgescale.GOALS["mix"])


def scale_rows(
    args: argparse.Namespace, workdir: Path, logdir: Path, origin_port: int
) -> list[list[str]]:
    rows: list[list[str]] = []
    for key in (k for k in edgescale.DISK if k in args.scenarios):
        kib, memory, span, revalidate = edgescale.DISK[key]
        n = {
            "disk10k": args.objects,
            "disk10k-304": args.objects,
            "disk100k": args.objects_100k,
        }.get(key, args.objects_1m)
        tier = memory or "default"
        asked = f"random {span} KiB ranges of" if span else "random hits over"
        asked = "random revalidations (304) of" if revalidate else asked
        log(f"scenario {key}: {asked} {n} objects of {kib} KiB, memory tier {tier}")
        pair = scale_pair(args, workdir, logdir, origin_port, memory)
        seeds = iter(range(1, 1000))
        for label, proxy in pair.items():
            edgescale.warm(label, proxy.port, n, kib)
            if span:
                edgescale.check_range(label, proxy.port, kib, span)
            if revalidate:
                edgescale.check_revalidate(label, proxy.port, kib)
        asking = partial(edgescale.random_script, workdir, n, kib, seeds, span, revalidate)
        ours, nginx = measured_pair(args, pair, origin_port, asking)
        mib = n * kib // 1024
        title = f"{kib} KiB random hits, {n} objects ({mib} MiB)"
        if span:
            title = f"{span} KiB random ranges of {kib} KiB, {n} objects ({mib} MiB)"
        if revalidate:
            title = f"{kib} KiB random revalidations (304), {n} objects ({mib} MiB)"
        rows.append(result_row(title, ours, nginx, edgescale.GOALS[key]))
    if "mix" in args.scenarios:
        rows.append(mix_row(args, workdir, logdir, origin_port))
    misses = [s for s in ("miss", "miss1") if s in args.scenarios]
    if misses:
        origin, static_port, served = edgescale.static_origin(workdir, logdir)
        pair = scale_pair(args, workdir, logdir, static_port, None)
        if "ours" in args.servers:
            # The floor: a bare aiohttp proxy, no cache (bench/aiohttp_floor.py).
            port = free_port()
            script = str(REPO / "bench" / "aiohttp_floor.py")
            floor_argv = [str(PYTHON), script, str(port), str(static_port)]
            pair["aiohttp"] = Proxy("aiohttp", floor_argv, port, SERVER_CPU, logdir)
            pair["aiohttp"].start()
        for key in misses:
            conns = 1 if key == "miss1" else 64
            log(f"scenario {key}: every URL new, {conns} connection(s), nginx origin")
            runs = scripted_runs(
                args,
                pair,
                static_port,
                lambda: edgescale.miss_script(workdir),
                "misses",
                connections=conns,
                served=served,
            )
            ours = pick(args.pick, runs.get("ours", []))
            nginx = pick(args.pick, runs.get("nginx", []))
            title = f"10 KiB misses, {conns} connection{'s' if conns > 1 else ''}"
            rows.append(result_row(title, ours, nginx, edgescale.GOALS[key]))
            floor = pick(args.pick, runs.get("aiohttp", []))
            if floor is not None:
                rows.append(result_row(f"{title}: bare aiohttp proxy", floor, nginx, None))
        for proxy in pair.values():
            proxy.stop()
        origin.stop()
    return rows


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = arg_parser(
        __doc__, what="proxy", warmup=2.0, warmup_help="unmeasured wrk seconds per proxy"
    )
    every = (
        "1k,100k,text,1k-log,1k-new,1k-tls,1k-tls-new,1k-rules,disk10k,disk100k,disk1m,disk1m-range,disk10k-304,"
        "miss,miss1,mix,workers"
    )
    p.add_argument("--scenarios", default=every, help=f"subset of {every}")
    p.add_argument("--servers", default="ours,nginx", help="ours,nginx or one of them")
    p.add_argument("--connections", type=int, default=50, help="wrk -c")
    p.add_argument("--threads", type=int, default=1, help="wrk -t")
    edgescale.add_arguments(p)
    known = {*OBJECTS, "text", "1k-log", *CONNECTION_SCENARIOS, "1k-rules", "workers"}
    known |= set(edgescale.GOALS)
    return parse_lists(p, argv, known, {"ours", "nginx"})


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    tools = ["wrk", "taskset", *(["nginx"] if "nginx" in args.servers else [])]
    workdir, logdir = start_harness("edge", tools, "bench/edge.sh")

    origin_port = free_port()
    origin = Proc(
        "origin",
        [str(PYTHON), str(REPO / "bench" / "origin.py"), str(origin_port)],
        LOADGEN_CPU,
        logdir / "origin.log",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            origin_count(origin_port)
            break
        except OSError:
            if not origin.alive or time.monotonic() > deadline:
                raise BenchError(f"origin did not start:\n{origin.tail()}") from None
            time.sleep(0.1)

    print(f"# GeoEdge edge benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# machine: {machine_summary()}")
    print(
        f"# proxies on core {SERVER_CPU}, wrk (-t{args.threads} -c{args.connections} --latency) "
        f"and the origin on core {LOADGEN_CPU}; {args.duration:g}s x {args.rounds} rounds per "
        f"proxy, {args.pick} of the rounds"
    )

    proxies: dict[str, Proxy] = {}
    plain = any(s in OBJECTS or s == "text" for s in args.scenarios)
    if "ours" in args.servers and plain:
        proxies["ours"] = our_proxy(
            "ours", workdir, free_port(), origin_port, 1, SERVER_CPU, logdir
        )
    if "nginx" in args.servers and plain:
        proxies["nginx"] = nginx_proxy(workdir, free_port(), origin_port, logdir)
    for proxy in proxies.values():
        proxy.start()
        log(proxy.check_hits(origin_port))

    rows: list[list[str]] = []
    for key in (s for s in args.scenarios if s in OBJECTS):
        path = f"/{key}"
        log(f"scenario {key}: cache hits of a {OBJECTS[key]} B object")
        for proxy in proxies.values():
            if args.warmup > 0:
                wrk(args, proxy.port, path, args.warmup, LOADGEN_CPU)
        runs = alternate(
            args.rounds,
            proxies,
            partial(measure, args, path=path, origin_port=origin_port, cpus=LOADGEN_CPU),
        )
        ours, nginx = pick(args.pick, runs.get("ours", [])), pick(args.pick, runs.get("nginx", []))
        rows.append(result_row(f"{OBJECTS[key] // 1024} KiB hit", ours, nginx, GOALS[key]))
    if "text" in args.scenarios and proxies:
        rows.append(text_row(args, proxies, origin_port, workdir))
    for proxy in proxies.values():
        proxy.stop()
    if "1k-log" in args.scenarios:
        rows += logged_rows(args, workdir, logdir, origin_port)
    rows += connection_rows(args, workdir, logdir, origin_port)
    rows += scale_rows(args, workdir, logdir, origin_port)
    rule_rows = (
        rules_rows(args, workdir, logdir, origin_port)
        if "1k-rules" in args.scenarios and "ours" in args.servers
        else []
    )

    worker_rows: list[list[str]] = []
    cpu_rows: list[list[str]] = []
    if "workers" in args.scenarios and "ours" in args.servers:
        # Twice: as served (fresh hits take edge.fasthit), and with fast_hits off so every
        # hit goes through aiohttp and the full handler. With the fast path the edge may
        # need less CPU per request than wrk, which shares the two cores: then wrk, not the
        # edge, bounds the 2-worker figure.
        for fast, what in ((True, "as served"), (False, "fast_hits off")):
            log(f"scenario workers ({what}): our edge with 2 workers vs 1, 1 KiB hits, unpinned")
            pair = {
                n: our_proxy(f"ours-w{n}", workdir, free_port(), origin_port, n, None, logdir, fast)
                for n in (1, 2)
            }
            wruns = hit_runs(args, pair, origin_port, None)
            two, one = pick(args.pick, wruns[2]), pick(args.pick, wruns[1])
            worker_rows.append(result_row(f"1 KiB hit, {what}", two, one, None))
            if one is not None and two is not None:
                cpu_rows.append(cpu_row(what, one, two))
    origin.stop()

    print()
    tail = ["goal", "verdict"]
    if rows:
        heads = ["object", "ours req/s", "nginx req/s", "ours/nginx", *tail]
        print(table([*heads, "ours p99 ms", "nginx p99 ms"], rows))
        print()
    if rule_rows:
        print("our edge with 20 screening rules vs none (pinned like the nginx runs):")
        heads = ["object", "rules req/s", "no rules req/s", "rules/none", *tail]
        print(table([*heads, "rules p99 ms", "none p99 ms"], rule_rows))
        print()
    if worker_rows:
        print("our edge, 2 workers vs 1 (edge and wrk unpinned):")
        heads = ["object", "2 workers req/s", "1 worker req/s", "2/1", *tail]
        print(table([*heads, "2w p99 ms", "1w p99 ms"], worker_rows))
        print()
        print(
            "CPU per request (user + system) of the edge and of wrk, which share the two cores:\n"
            "with 1 worker the edge's core is the limit (1/E requests per second); with 2, all\n"
            "2 cores are shared by edge and wrk (at most 2/(E+W)), so 2 workers can reach at\n"
            "most 2E/(E+W) times 1 worker, the ceiling below (from the 1-worker run's E and W)."
        )
        heads = ["object", "edge us (1w)", "wrk us (1w)", "edge us (2w)", "wrk us (2w)"]
        heads += ["ceiling 2E/(E+W)", "measured 2/1", "req/CPU-s 1w", "req/CPU-s 2w"]
        print(table([*heads, "2w/1w per CPU-s", "goal", "verdict"], cpu_rows))
        print()
    print(f"logs: {logdir.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    run_main(main, "bench/edgebench.py")
