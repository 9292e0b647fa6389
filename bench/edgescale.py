"""The edge at scale (bench/edgebench.py's scenarios beyond one hot object):

  disk100k  random hits over --objects-100k distinct 100 KiB objects (10,240: 1 GiB), our
            memory tier at its default (64 MiB)                          goal >= 0.5x nginx
  disk10k   random hits over --objects distinct 10 KiB objects (16,000: 160 MiB), our
            memory tier 16 MiB, so most hits come from the disk tier     goal >= 0.5x nginx
  disk1m    random hits over --objects-1m distinct 1 MiB objects (1,024: 1 GiB), bodies
            past what the fast path reads on the loop (downloads, video segments), our
            memory tier at its default                                   goal >= 0.5x nginx
  disk1m-range  the same objects, each request a random 256 KiB range of one (video
            players, resumed downloads)                                  goal >= 0.5x nginx
  disk10k-304  the disk10k objects, each request a revalidation (If-Modified-Since with the
            objects' Last-Modified, as a browser's conditional GET): every answer a 304
                                                                         goal >= 0.5x nginx
  miss      misses, every URL new, wrk -c64, origin nginx serving a static 10 KiB file
                                                                         goal >= 0.4x nginx
  miss1     the same on one connection (a cache being warmed)            goal >= 0.3x nginx
  mix       what an edge in front of a web site is asked, all at once: --objects-mix
            objects (16,000: 352 MiB) ranked by popularity (Zipf, s = 0.8), six in ten
            10 KiB binaries, three 20 KiB HTML pages asked with a browser's
            Accept-Encoding, one 100 KiB binary; 2% of requests for a URL never asked
            before (the long tail: misses), 2% with Connection: close (one-shot
            clients); our memory tier at its default (64 MiB)         goal >= 0.5x nginx

For disk10k both proxies are warmed with every object first (through themselves, so each
stores them its own way), then checked: the origin's request counter must not move during a
measured run. For the mix both proxies are
warmed with every object (the pages twice, each time with a browser's Accept-Encoding, so
that each holds what it answers them with), and a run's origin requests are its new URLs.
For the misses the origin is nginx (a Python origin would be the bottleneck),
wrk asks for URLs no run asked before (a per-run prefix), and nginx's stub_status counts the
requests that reached it: every measured request must have.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
from _common import LOADGEN_CPU, LOOPBACK, BenchError, Proc, free_port, log, run_tool, wait_until
from origin import LAST_MODIFIED

# scenario: (object size in KiB, our memory tier or None for the default, the size of the
# byte range each request asks for in KiB or 0 for whole objects, whether each request is
# a revalidation)
DISK = {
    "disk10k": (10, "16MiB", 0, False),
    "disk100k": (100, None, 0, False),
    "disk1m": (1024, None, 0, False),
    "disk1m-range": (1024, None, 256, False),
    "disk10k-304": (10, "16MiB", 0, True),
}
GOALS = {
    "disk10k": 0.5,
    "disk100k": 0.5,
    "disk1m": 0.5,
    "disk1m-range": 0.5,
    "disk10k-304": 0.5,
    "miss": 0.4,
    "miss1": 0.3,
    "mix": 0.5,
}
# The mix: popularity's Zipf exponent (web caches' traces give 0.6-1.0), and the shares
# of requests for a new URL and with Connection: close.
MIX_ZIPF = 0.8
MIX_NEW = 0.02
MIX_CLOSE = 0.02
BROWSER_ENCODINGS = "gzip, deflate, br"

RANDOM_LUA = """
local n = {objects}
math.randomseed({seed})
request = function()
  return wrk.format("GET", "/o/" .. math.random(0, n - 1) .. "/{kib}k")
end
"""

RANGE_LUA = """
local n = {objects}
math.randomseed({seed})
request = function()
  local first = math.random(0, {kib} * 1024 - {span})
  local range = "bytes=" .. first .. "-" .. (first + {span} - 1)
  return wrk.format("GET", "/o/" .. math.random(0, n - 1) .. "/{kib}k", {{["Range"] = range}})
end
"""

# bench/origin.py's Last-Modified, the same for every object.
REVALIDATE_LUA = """
local n = {objects}
math.randomseed({seed})
local since = {{["If-Modified-Since"] = "{since}"}}
request = function()
  return wrk.format("GET", "/o/" .. math.random(0, n - 1) .. "/{kib}k", since)
end
"""

# Every request a URL of its own: a prefix per run, then a counter per wrk thread.
MISS_LUA = """
local counter = 0
local prefix = "/m/{run}/"
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. counter .. "/10k")
end
"""

# Object i of the mix by i % 10: 0-5 /o/i/10k, 6-8 /t/i/20k (asked as a browser asks for a
# page), 9 /o/i/100k; new URLs are 10 KiB binaries numbered past every ranked object.
MIX_LUA = """
local n = {objects}
math.randomseed({seed})
local cdf, total = {{}}, 0
for r = 1, n do
  total = total + 1 / r ^ {zipf}
  cdf[r] = total
end
local browser = {{["Accept-Encoding"] = "{encodings}"}}
local browser_close = {{["Accept-Encoding"] = "{encodings}", ["Connection"] = "close"}}
local close = {{["Connection"] = "close"}}
local counter = 0
local function ranked()
  local u = math.random() * total
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end
request = function()
  local closing = math.random() < {close_share}
  if math.random() < {new_share} then
    counter = counter + 1
    return wrk.format("GET", "/o/{run}" .. counter .. "/10k", closing and close or nil)
  end
  local i = ranked()
  local kind = i % 10
  if kind < 6 then
    return wrk.format("GET", "/o/" .. i .. "/10k", closing and close or nil)
  elseif kind < 9 then
    return wrk.format("GET", "/t/" .. i .. "/20k", closing and browser_close or browser)
  end
  return wrk.format("GET", "/o/" .. i .. "/100k", closing and close or nil)
end
"""

_run_ids = itertools.count(int(time.time()))


def write_lua(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.lua"
    path.write_text(text)
    return path


# A warm-up request: its path, its headers, and the body's length (None: not checked).
Asked = tuple[str, dict[str, str], int | None]


async def _warm(port: int, asked: list[Asked], concurrency: int = 32) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        queue = iter(asked)

        async def worker() -> None:
            for path, headers, size in queue:
                url = f"http://{LOOPBACK}:{port}{path}"
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200 or size not in (None, len(body)):
                        raise BenchError(f"warm-up GET {path}: {resp.status}, {len(body)} bytes")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def warm(label: str, port: int, objects: int, kib: int) -> None:
    """Request every object once through the proxy (the misses that fill its cache)."""
    start = time.monotonic()
    asyncio.run(_warm(port, [(f"/o/{i}/{kib}k", {}, kib * 1024) for i in range(objects)]))
    log(f"  {label}: {objects} objects stored in {time.monotonic() - start:.1f}s")


def mix_objects(objects: int) -> Iterator[Asked]:
    """The mix's ranked objects as the mix asks for them (MIX_LUA)."""
    browser = {"Accept-Encoding": BROWSER_ENCODINGS}
    for i in range(objects):
        kind = i % 10
        if kind < 6:
            yield f"/o/{i}/10k", {}, 10 * 1024
        elif kind < 9:
            yield f"/t/{i}/20k", browser, None
        else:
            yield f"/o/{i}/100k", {}, 100 * 1024


def warm_mix(label: str, port: int, objects: int) -> None:
    """Request every object of the mix through the proxy, the pages twice (the first
    request of a page stores it; a compressed copy may be made from it then)."""
    start = time.monotonic()
    everything = list(mix_objects(objects))
    asyncio.run(_warm(port, everything))
    asyncio.run(_warm(port, [item for item in everything if item[2] is None]))
    log(f"  {label}: {objects} objects of the mix stored in {time.monotonic() - start:.1f}s")


def check_range(label: str, port: int, kib: int, span_kib: int) -> None:
    """The proxy answers a range of a stored object with a 206 of that range, not the whole
    object (nginx does when the origin says Accept-Ranges or with proxy_force_ranges)."""
    asked = {"Range": f"bytes=0-{span_kib * 1024 - 1}"}
    _check(label, port, f"/o/0/{kib}k", asked, "a range", 206, span_kib * 1024)


def check_revalidate(label: str, port: int, kib: int) -> None:
    """The proxy answers a revalidation of a stored object with a 304 from its cache (nginx
    does when the If-Modified-Since is the cached Last-Modified: `if_modified_since
    exact`, its default)."""
    asked = {"If-Modified-Since": LAST_MODIFIED}
    _check(label, port, f"/o/0/{kib}k", asked, "a revalidation", 304, 0)


def _check(
    label: str, port: int, path: str, headers: dict[str, str], what: str, status: int, size: int
) -> None:
    """The proxy answers GET `path` with `headers` with `status` and `size` body bytes."""
    import http.client

    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        got = len(resp.read())
    finally:
        conn.close()
    if resp.status != status or got != size:
        raise BenchError(f"{label} answered {what} with {resp.status} and {got} bytes")


def nginx_main(d: Path) -> str:
    """The top of an nginx.conf for one worker in the foreground, everything under `d`."""
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}"""


def nginx_temp_paths(d: Path) -> str:
    return "\n".join(
        f"    {kind}_temp_path {d}/tmp/{kind.split('_')[-1]};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def static_origin(workdir: Path, logdir: Path) -> tuple[Proc, int, Callable[[], int]]:
    """nginx serving one static 10 KiB file under every path, cacheable for an hour, on the
    load generator's core; and a function counting the requests it served."""
    d = workdir / "nginx-origin"
    shutil.rmtree(d, ignore_errors=True)
    (d / "www").mkdir(parents=True)
    (d / "tmp").mkdir()
    (d / "www" / "10k").write_bytes(bytes(range(256)) * 40)
    port = free_port()
    conf = f"""# Generated by bench/edgescale.py: the origin of the miss scenarios.
{nginx_main(d)}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
{nginx_temp_paths(d)}
    server {{
        listen {LOOPBACK}:{port};
        root {d}/www;
        location = /__stats {{ stub_status; }}
        location / {{
            default_type application/octet-stream;
            add_header Cache-Control "public, max-age=3600";
            try_files /10k =404;
        }}
    }}
}}
"""
    (d / "nginx.conf").write_text(conf)
    argv = ["nginx", "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
    run_tool([*argv, "-t", "-q"], None, timeout=30)
    proc = Proc("nginx-origin", argv, LOADGEN_CPU, logdir / "nginx-origin.log")

    def served() -> int:
        import http.client

        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        try:
            conn.request("GET", "/__stats")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        m = re.search(r"^\s*\d+\s+\d+\s+(\d+)\s*$", text, re.M)
        if m is None:
            raise BenchError(f"unexpected stub_status output: {text!r}")
        return int(m.group(1)) - 1  # not this request itself

    wait_until("the nginx origin", lambda: served() >= 0, 30, proc)
    return proc, port, served


def miss_script(workdir: Path) -> Path:
    return write_lua(workdir, "miss", MISS_LUA.format(run=next(_run_ids)))


def random_script(
    workdir: Path,
    objects: int,
    kib: int,
    seeds: Iterator[int],
    span_kib: int = 0,
    revalidate: bool = False,
) -> Path:
    """A wrk script asking for random objects (random ranges of `span_kib` KiB of them,
    if not 0; revalidating them, if `revalidate`), with the next of `seeds` (a new
    sequence each run)."""
    seed = next(seeds)
    if revalidate:
        text = REVALIDATE_LUA.format(objects=objects, seed=seed, kib=kib, since=LAST_MODIFIED)
    elif span_kib:
        text = RANGE_LUA.format(objects=objects, seed=seed, kib=kib, span=span_kib * 1024)
    else:
        text = RANDOM_LUA.format(objects=objects, seed=seed, kib=kib)
    return write_lua(workdir, f"random-{seed}", text)


def mix_script(workdir: Path, objects: int, seeds: Iterator[int]) -> Path:
    """A wrk script asking for the mix, with the next of `seeds` and new URLs of its own."""
    seed = next(seeds)
    text = MIX_LUA.format(
        objects=objects,
        seed=seed,
        zipf=MIX_ZIPF,
        encodings=BROWSER_ENCODINGS,
        close_share=MIX_CLOSE,
        new_share=MIX_NEW,
        run=next(_run_ids),
    )
    return write_lua(workdir, f"mix-{seed}", text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--objects",
        type=int,
        default=16000,
        help="distinct 10 KiB objects of the disk10k working set (16000: 160 MiB)",
    )
    p.add_argument(
        "--objects-100k",
        type=int,
        default=10240,
        help="distinct 100 KiB objects of the disk100k working set (10240: 1 GiB)",
    )
    p.add_argument(
        "--objects-1m",
        type=int,
        default=1024,
        help="distinct 1 MiB objects of the disk1m working set (1024: 1 GiB)",
    )
    p.add_argument(
        "--objects-mix",
        type=int,
        default=16000,
        help="ranked objects of the mix (16000: 352 MiB)",
    )
