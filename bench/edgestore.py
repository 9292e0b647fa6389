"""The edge with a big cache: start-up time and memory with --entries stored objects.

Builds a cache directory of --entries objects of 1 KiB (default 1,000,000): the metadata
of each is what the edge itself stores (edge.cache_policy.make_entry, as JSON), written in
bulk into diskcache's table, with the object's body beside it. Then it starts `edge serve`
on that directory (memory tier --memory, default 16 MiB) and reports:

- start-up: from the process start to `edge: ready`, and to the first hit answered from
  the disk tier (goal: <= 10 s);
- memory: the edge's RSS at start and after wrk's random hits over every object (goal:
  memory_bytes plus a bounded overhead, reported beside it);
- disk: the cache directory's size against the entries' bytes;
- purges through the admin port (what a fleet purge asks of each edge), while it serves:
  by prefix, of one object and of 1.1% of them (`/o/12`: 11,111 objects of 1,000,000),
  and by surrogate key, of one tag's objects (every object carries one of --tags tags, `g0`
  to `g99` by default: 1% each, as an origin's `Surrogate-Key` header would give them): the
  seconds until the edge answers and its CPU seconds meanwhile.

No peer runs here: nginx's start-up does not read its cache either (its cache loader walks
the directory in the background), so the figures are ours, with their goals.

  python bench/edgestore.py [--entries 1000000] [--memory 16MiB] [--duration 10] [--tags 100]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from _common import (
    LOADGEN_CPU,
    LOOPBACK,
    PYTHON,
    REPO,
    SERVER_CPU,
    BenchError,
    Proc,
    free_port,
    log,
    run_main,
    run_tool,
    start_harness,
)

from edge.cache_policy import CacheRequest, entries_json, make_entry
from edge.store import Store

START_GOAL_S = 10.0
BODY = 1024


def build(directory: Path, port: int, entries: int, tags: int = 100) -> int:
    """Write `entries` objects into a fresh cache directory, object i tagged g<i % tags>;
    the bytes they hold."""
    Store(directory).close()  # diskcache's schema and settings, as the edge makes them
    now = time.time()
    template = make_entry(
        CacheRequest("GET", "http", f"{LOOPBACK}:{port}", "/o/0/1k"),
        200,
        "OK",
        [("Cache-Control", "public, max-age=86400"), ("Content-Type", "text/plain")],
        request_time=now,
        response_time=now,
        body_length=BODY,
        sha256="0" * 64,
        now=now,
    )
    total = 0
    db = sqlite3.connect(directory / "cache.db", isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        batch: list[tuple[str, float, float, int, int, str | None, bytes]] = []
        tagged: list[tuple[str, str]] = []
        for i in range(entries):
            body = hashlib.sha256(str(i).encode()).digest() * (BODY // 32)
            digest = hashlib.sha256(body).hexdigest()
            key = f"http://{LOOPBACK}:{port}/o/{i}/1k"
            tag = f"g{i % tags}"
            entry = replace(template, key=key, sha256=digest, surrogate_keys=(tag,))
            meta = entries_json([entry])
            bkey = f"b:{key}\x1f\x1f{digest}"
            batch.append((bkey, now, now, 0, 1, None, body))
            batch.append((f"m:{key}", now, now, 0, 1, None, meta))
            tagged.append((tag, key))
            total += len(body) + len(meta)
            if len(batch) >= 100_000 or i == entries - 1:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO Cache (key, raw, store_time, access_time, size, mode,"
                    " filename, value) VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
                db.executemany("INSERT INTO Tags (tag, key) VALUES (?, ?)", tagged)
                db.execute("COMMIT")
                batch.clear()
                tagged.clear()
    finally:
        db.close()
    return total


def rss_kib(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident KiB: the heap, and the database pages SQLite maps
    (page cache, shared and reclaimable, which VmRSS counts too)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields.get("RssAnon", 0), fields.get("RssFile", 0)


# What is purged after the hits: by prefix one object, 1.1% of a million, one object
# again; by surrogate key 1% (with --tags 100).
PURGED = (
    ("prefix", "/o/123457/"),
    ("prefix", "/o/12"),
    ("prefix", "/o/654321/"),
    ("surrogate_key", "g7"),
)


def purge(edge: Proc, admin_port: int, kind: str, value: str) -> tuple[int, float, float]:
    """Purge by `kind` ("prefix" or "surrogate_key") through the admin port: the objects
    removed, the seconds until the answer, and the edge's CPU seconds meanwhile."""
    cpu = edge.cpu_seconds()
    start = time.monotonic()
    conn = http.client.HTTPConnection(LOOPBACK, admin_port, timeout=600)
    try:
        conn.request("POST", "/__edge/purge", json.dumps({kind: value}))
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    finally:
        conn.close()
    wall = time.monotonic() - start
    if resp.status != 200:
        raise BenchError(f"purge of {kind} {value}: {resp.status} {doc}")
    return int(doc["purged"]), wall, edge.cpu_seconds() - cpu


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--memory", default="16MiB", help="the edge's cache.memory_bytes")
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk random hits")
    p.add_argument("--tags", type=int, default=100, help="surrogate keys over the objects")
    args = p.parse_args(argv)
    workdir, logdir = start_harness("edgestore", ["wrk", "taskset"], "bench/edge.sh")
    cache = workdir / "cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    port, admin_port = free_port(), free_port()
    log(f"building a cache of {args.entries:,} objects of {BODY} B")
    t0 = time.monotonic()
    stored = build(cache, port, args.entries, args.tags)
    log(f"  built in {time.monotonic() - t0:.0f}s: {stored / 2**20:,.0f} MiB of entries")
    conf = workdir / "edge.toml"
    conf.write_text(
        f'[server]\nlisten = ["{LOOPBACK}:{port}"]\n'
        f'[pool]\norigins = [{{ url = "http://{LOOPBACK}:9" }}]\n'
        "[pool.probe]\nenabled = false\n"
        f'[cache]\ndir = {json.dumps(str(cache))}\nmemory_bytes = "{args.memory}"\n'
        f'[admin]\nlisten = "{LOOPBACK}:{admin_port}"\n'
        '[log]\nlevel = "warning"\naccess_log = ""\n'
    )
    start = time.monotonic()
    edge = Proc(
        "edge",
        [str(PYTHON), "-m", "edge", "serve", "-c", str(conf)],
        SERVER_CPU,
        logdir / "edge.log",
    )
    ready = first_hit = None
    deadline = start + 120
    while time.monotonic() < deadline and first_hit is None:
        if not edge.alive:
            raise BenchError(f"edge exited:\n{edge.tail()}")
        if ready is None and "edge: ready" in edge.tail(50):
            ready = time.monotonic() - start
        if ready is not None:
            try:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
                conn.request("GET", f"/o/{random.randrange(args.entries)}/1k")
                resp = conn.getresponse()
                resp.read()
                if "hit" in resp.getheader("Cache-Status", ""):
                    first_hit = time.monotonic() - start
                conn.close()
            except OSError:
                pass
        time.sleep(0.02)
    if ready is None or first_hit is None:
        raise BenchError(f"no hit from the edge within 120 s:\n{edge.tail()}")
    rss_start = rss_kib(edge.popen.pid)
    script = workdir / "random.lua"
    script.write_text(
        f"local n = {args.entries}\nmath.randomseed(7)\n"
        'request = function()\n  return wrk.format("GET", "/o/" .. math.random(0, n - 1)'
        ' .. "/1k")\nend\n'
    )
    out = run_tool(
        [
            "wrk",
            "-t1",
            "-c64",
            f"-d{args.duration}s",
            "-s",
            str(script),
            f"http://{LOOPBACK}:{port}",
        ],
        LOADGEN_CPU,
        timeout=args.duration + 60,
    )
    rps = next((line.split()[1] for line in out.splitlines() if "Requests/sec" in line), "?")
    rss_after = rss_kib(edge.popen.pid)
    origin = f"http://{LOOPBACK}:{port}"
    purges = [
        purge(edge, admin_port, kind, origin + value if kind == "prefix" else value)
        for kind, value in PURGED
    ]
    edge.stop()
    disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    verdict = "ok" if first_hit <= START_GOAL_S else "BELOW GOAL"
    print(f"# GeoEdge edge store benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"entries                      {args.entries:,} ({stored / 2**20:,.0f} MiB of entries)")
    print(f"start to `edge: ready`       {ready:.2f} s")
    print(f"start to first disk hit      {first_hit:.2f} s (goal <= {START_GOAL_S:g} s: {verdict})")
    print(f"random hits over all         {rps} req/s (wrk -c64, {args.duration} s)")
    print(
        f"RSS anonymous, start / after  {rss_start[0] / 1024:.0f} / {rss_after[0] / 1024:.0f} MiB"
        f" (memory_bytes {args.memory}); file-backed (mapped database pages)"
        f" {rss_start[1] / 1024:.0f} / {rss_after[1] / 1024:.0f} MiB"
    )
    print(f"cache directory              {disk / 2**20:,.0f} MiB on disk")
    for (kind, value), (removed, wall, cpu) in zip(PURGED, purges, strict=True):
        print(
            f"purge of {kind} {value:<{27 - len(kind)}}"
            f"{removed:,} objects in {wall:.2f} s ({cpu:.2f} s of edge CPU)"
        )
    print(f"logs: {logdir.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    run_main(main, "bench/edgestore.py")
