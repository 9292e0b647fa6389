"""A miss's own work in process: CPU per miss of the loop's decisions and of its commit, no
sockets, no origin.

What bench/edge.sh's miss scenarios measure end to end, taken apart where wrk, nginx and
the event loop cannot move the figure (bench/missab.sh compares two builds end to end):

- decisions: for nginx's static-file response head (10 KiB, ETag, Last-Modified, no
  Cache-Control), what the plain miss does on the loop once the origin answered:
  `CacheLayer._plan` (compression plan, storability, the writer), the body written and
  hashed, `_entry_for` (the stored entry), the client's fields and head;
- commit: `Store.commit_all` of those fills in groups of --group (what GroupCommit hands
  its thread), CPU per fill, SQL included.

Best of --rounds, CPU time of this process (`time.process_time`). The store is a fresh
directory under --dir each round.

  python bench/misspath.py [--misses 3000] [--group 64] [--rounds 3]
  python bench/misspath.py --profile decisions|commit     # cProfile of one round
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edge import cache_policy as cp
from edge.cache_control import Fields
from edge.cache_layer import CacheLayer, _miss_head
from edge.config import from_mapping
from edge.exchange import raw_pairs
from edge.headers import head_end
from edge.store import BodyWriter, Store

BODY = os.urandom(10 * 1024)
# nginx 1.22 serving a static file, as the miss scenarios' origin answers.
ORIGIN_HEAD = (
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Thu, 03 Dec 2026 05:00:00 GMT"),
    (b"Content-Type", b"application/octet-stream"),
    (b"Content-Length", b"10240"),
    (b"Last-Modified", b"Thu, 03 Dec 2026 04:00:00 GMT"),
    (b"Connection", b"keep-alive"),
    (b"ETag", b'"6756-2800"'),
    (b"Accept-Ranges", b"bytes"),
)
ASKED = Fields((("Host", "127.0.0.1:8080"), ("User-Agent", "wrk")))


class _Upstream:
    """What _entry_for and _miss_head read of an origin's response."""

    status = 200
    reason = "OK"
    raw_headers = ORIGIN_HEAD


def _layer(directory: Path) -> CacheLayer:
    config = from_mapping(
        {
            "server": {"listen": ["127.0.0.1:0"]},
            "cache": {"dir": str(directory)},
            "pool": {"origins": ["http://127.0.0.1:1"]},
        },
        "<bench>",
    )
    return CacheLayer(Store(directory), config)


def _decide(layer: CacheLayer, i: int, now: float) -> tuple[BodyWriter, cp.CacheEntry, bytes]:
    """One miss's decisions, as CacheLayer._plain_fetch and _take_whole make them."""
    up = _Upstream()
    creq = cp.CacheRequest("GET", "http", "127.0.0.1:8080", f"/m/{i}/10k", ASKED)
    plan = layer._plan(creq, up.status, raw_pairs(up.raw_headers), now, now)
    writer = plan.writer
    if writer is None or not writer.write(BODY):
        raise SystemExit("the bench's response was not storable")
    known = plan.storable.freshness
    entry = layer._entry_for(creq, up, plan.out_pairs, now, now, known, writer, plan.shape)  # type: ignore[arg-type]
    fields = layer._client_fields(plan, (1, 1))
    status = cp.cache_status(layer.name, fwd="uri-miss", fwd_status=200, stored=True)
    return writer, entry, _miss_head(up, fields, len(BODY)) + head_end(status)  # type: ignore[arg-type]


def _round(
    directory: Path, misses: int, group: int, profile: str
) -> tuple[float, float, cProfile.Profile | None]:
    """CPU µs per miss of the decisions and of the commit, fresh store in `directory`."""
    layer = _layer(directory)
    profiler = cProfile.Profile() if profile else None
    now = time.time()
    decide = commit = 0.0
    try:
        for start in range(0, misses, group):
            t0 = time.process_time()
            if profiler is not None and profile == "decisions":
                profiler.enable()
            fills = []
            for i in range(start, min(misses, start + group)):
                writer, entry, _ = _decide(layer, i, now)
                fills.append((writer, entry, len(BODY)))
            if profiler is not None:
                profiler.disable()
            t1 = time.process_time()
            if profiler is not None and profile == "commit":
                profiler.enable()
            layer.store.commit_all(fills)
            if profiler is not None:
                profiler.disable()
            decide += t1 - t0
            commit += time.process_time() - t1
    finally:
        layer.store.close()
    return decide / misses * 1e6, commit / misses * 1e6, profiler


def _best(rounds: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [run() for _ in range(rounds)]
    return min(r[0] for r in results), min(r[1] for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--misses", type=int, default=3000, help="misses per round")
    p.add_argument("--group", type=int, default=64, help="fills per commit (GROUP_MAX: 64)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", choices=["decisions", "commit"], default="")
    p.add_argument("--dir", type=Path, default=Path(__file__).parent / ".work")
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    def one() -> tuple[float, float]:
        directory = Path(tempfile.mkdtemp(prefix="misspath-", dir=args.dir))
        try:
            decide, commit, profiler = _round(directory, args.misses, args.group, args.profile)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return decide, commit

    if args.profile:
        one()
        return
    decide, commit = _best(args.rounds, one)
    print(
        f"decisions: {decide:.1f} us CPU per miss; commit: {commit:.1f} us CPU per fill in "
        f"groups of {args.group}; best of {args.rounds} rounds of {args.misses}"
    )


if __name__ == "__main__":
    main()
