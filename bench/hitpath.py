"""The edge's disk-hit path in process: CPU per hit of `Hits.hit_wire` (the raw fast path's
lookup, freshness, body read and head) over random keys, no sockets.

What bench/edge.sh's disk10k scenario measures end to end, without wrk, the event loop and
the network beside it: steady enough (a few per cent between runs) to compare two builds of
the hit path on a machine other work shares, where the wrk figures move by 20% and more.
The store (--objects entries of --kib KiB, memory tier --memory-mib) is built once in --dir and
reused; the index is warmed with the first half of the keys drawn, then every key drawn is
timed, best of --rounds. The file reads are in the figure (page-cached after the warm-up).

  python bench/hitpath.py [--objects 16000] [--kib 10] [--memory-mib 16] [--hits 200000]
  python bench/hitpath.py --revalidate date --profile   # 304s, and where their time goes
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import time
from pathlib import Path

from edge.cache_policy import CacheRequest, make_entry
from edge.hits import Hits
from edge.store import Store


def build(directory: Path, objects: int, size: int, memory: int) -> None:
    now = time.time()
    with Store(directory, memory_bytes=memory) as store:
        for i in range(objects):
            req = CacheRequest("GET", "http", "bench.test", f"/o/{i}", ())
            fields = [
                ("Cache-Control", "max-age=86400"),
                ("Server", "bench"),  # with Content-Type, what the fast path's 304 needs
                ("Content-Type", "application/octet-stream"),
                ("ETag", f'"{i}"'),
            ]
            entry = make_entry(
                req, 200, "OK", fields, request_time=now, response_time=now,
                body_length=0, sha256="0" * 64, now=now,
            )  # fmt: skip
            writer = store.writer()
            if writer is None or not writer.write(os.urandom(size)):
                raise SystemExit("cannot write the bench store")
            if writer.commit(entry, size) is None:
                raise SystemExit("cannot commit to the bench store")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--objects", type=int, default=16000)
    p.add_argument("--kib", type=int, default=10)
    p.add_argument("--memory-mib", type=int, default=16, help="the memory tier (memory_bytes)")
    p.add_argument("--hits", type=int, default=200_000, help="timed hits per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", type=Path, default=Path(__file__).parent / ".work" / "hitpath")
    p.add_argument(
        "--revalidate",
        choices=("date", "etag"),
        help="each request a revalidation, every answer a 304: an If-Modified-Since later than"
        " the object (as the disk10k-304 row asks) or an If-None-Match of its own ETag",
    )
    p.add_argument("--profile", action="store_true", help="print a cProfile of the last round")
    args = p.parse_args()
    memory = args.memory_mib << 20
    directory = args.dir / f"{args.objects}x{args.kib}k-2"  # -2: with a Server field
    if not (directory / "cache.db").exists():
        print(f"building {args.objects} objects of {args.kib} KiB in {directory} ...")
        build(directory, args.objects, args.kib * 1024, memory)
    with Store(directory, memory_bytes=memory) as store:
        hits = Hits(store, time.time)
        rnd = random.Random(1)
        drawn = [rnd.randrange(args.objects) for _ in range(args.hits)]
        later = "Fri, 01 Jan 2100 00:00:00 GMT"
        asked = [
            (
                f"http://bench.test/o/{i}",
                {
                    None: (),
                    "date": (("if-modified-since", later),),
                    "etag": (("if-none-match", f'"{i}"'),),
                }[args.revalidate],
            )
            for i in drawn
        ]
        for key, conditions in asked[: args.hits // 2]:
            if hits.hit_wire(key, False, None, conditions) is None:
                raise SystemExit(f"not a hit: {key} (remove {directory} and run again)")
        best = float("inf")
        profiler = cProfile.Profile() if args.profile else None
        for round_ in range(args.rounds):
            if profiler is not None and round_ == args.rounds - 1:
                profiler.enable()
            start = time.process_time()
            for key, conditions in asked:
                hits.hit_wire(key, False, None, conditions)
            best = min(best, (time.process_time() - start) / len(asked) * 1e6)
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    what = "304" if args.revalidate else "hit"
    print(f"hit_wire: {best:.2f} us CPU per {what}, best of {args.rounds} rounds of {args.hits}")


if __name__ == "__main__":
    main()
