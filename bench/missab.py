"""Two builds of the edge taking turns on misses: edge CPU time per miss of the working tree
against another commit's, under the same load.

The `miss` row of bench/edge.sh compares us with nginx, whose own rate moves by 2x between
runs on a shared machine; a 10% change of ours hides in that. Here both builds run the
`miss` scenario's setup in turns (which one goes first alternates each round): nginx serving
one static 10 KiB file under every path as the origin (on core 1 with wrk), the edge alone
on core 0 with a fresh cache directory, `wrk -c CONNS` asking for URLs no run asked before.
Read the CPU time per miss (user + system, all the edge's threads, from /proc): whatever
slows the machine slows both builds alike, and the ratio is the figure.

    bench/missab.sh 5440423                       # 64 connections, 10 s, 3 rounds each
    bench/missab.sh HEAD~3 --connections 1 --rounds 4
    bench/missab.sh HEAD --instructions 1000      # instructions per miss, under callgrind

Even so, the same build against itself reads 0.80-1.20x on this host. `--instructions N`
counts instead: each build runs under valgrind's callgrind, and after 5,000 misses to warm it
up, N misses (new URLs, over the same number of connections) are counted in instructions
executed in user space, by every thread of the edge. Two runs of one build agree within
about 1%, so a change of 2% shows. What it leaves out: the kernel's work (the system
calls, the copies through loopback sockets: about a quarter of a miss's CPU time), cache
misses and stalls, and SHA-256 (valgrind hides the CPU's SHA instructions from OpenSSL,
whose fallback would count 290,000 instructions a 10 KiB body; libcrypto is left out).
Under callgrind a miss takes about 50 times as long, so batches (the group commit's)
differ from a real run's: read it beside the CPU times, not instead of them.

The other commit's packages are unpacked from git into a temporary directory and run from
there with this tree's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import edgebench
import edgescale
from _common import (
    LOADGEN_CPU,
    LOOPBACK,
    PYTHON,
    SERVER_CPU,
    BenchError,
    alternate,
    free_port,
    log,
    machine_summary,
    median,
    run_main,
    start_harness,
    table,
    unpack_packages,
)

PACKAGES = ("edge", "geo", "gslb", "geoedge")


def edge_from(
    label: str, tree: Path | None, workdir: Path, origin_port: int, logdir: Path
) -> edgebench.Proxy:
    """The bench's edge (edgebench.our_proxy), run from `tree`'s packages when given."""
    proxy = edgebench.our_proxy(label, workdir, free_port(), origin_port, 1, SERVER_CPU, logdir)
    if tree is not None:
        # `python -m edge` would import the edge of the working directory (this tree).
        boot = (
            f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
            "runpy.run_module('edge', run_name='__main__')"
        )
        proxy.argv = [str(PYTHON), "-c", boot, *proxy.argv[3:]]
    return proxy


# Past the store's tables of 4,096 keys (absent keys, recent changes), which a sustained
# miss load keeps full: each miss then also evicts from them, as in bench/edge.sh's rows.
WARM_MISSES = 5000


async def _misses(port: int, count: int, connections: int) -> None:
    """`count` GETs of URLs never asked before, over `connections` kept-alive connections;
    BenchError unless each is answered 200 with its whole body."""
    tag = uuid.uuid4().hex[:12]

    async def one(numbers: range) -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            for n in numbers:
                writer.write(f"GET /m/{tag}/{n}/10k HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if not head.startswith(b"HTTP/1.1 200 ") or length is None:
                    raise BenchError(f"miss {n}: {head[:200]!r}")
                await reader.readexactly(int(length.group(1)))
        finally:
            writer.close()

    async with asyncio.timeout(600):
        await asyncio.gather(*(one(range(k, count, connections)) for k in range(connections)))


def _instructions(dump: Path) -> int:
    """User-space instructions in a callgrind dump, libcrypto's (SHA-256) left out."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = crypto = 0
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \(", line)
        if match is None or "PROGRAM TOTALS" in line:
            continue
        n = int(match.group(1).replace(",", ""))
        total += n
        if "libcrypto" in line:
            crypto += n
    return total - crypto


def counted(args: argparse.Namespace, workdir: Path) -> Callable[[edgebench.Proxy], float]:
    """A measure of a build: instructions per miss under callgrind (see the docstring)."""

    misses: int = args.instructions

    def run(proxy: edgebench.Proxy) -> float:
        out = workdir / f"callgrind-{proxy.label}-{uuid.uuid4().hex[:8]}.out"
        argv = proxy.argv
        proxy.argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *argv,
        ]
        proxy.start()
        try:
            assert proxy.proc is not None
            pid = str(proxy.proc.popen.pid)
            asyncio.run(_misses(proxy.port, WARM_MISSES, args.connections))
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            asyncio.run(_misses(proxy.port, misses, args.connections))
            time.sleep(3)  # the last fills' commits
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            dump = Path(f"{out}.1")
            for _ in range(100):  # written by the process itself, a moment later
                if dump.exists() and "totals:" in dump.read_text(errors="replace")[-4096:]:
                    break
                time.sleep(0.1)
            return _instructions(dump) / misses
        finally:
            proxy.stop()
            proxy.argv = argv
            for path in workdir.glob(f"{out.name}*"):
                path.unlink()

    return run


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("base", help="the commit to compare the working tree with")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (64)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each build (3)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="count instructions per miss over N misses under callgrind, not CPU time",
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir, logdir = start_harness(
        "missab", ["wrk", "taskset", "nginx", "valgrind", "callgrind_control"], "bench/missab.sh"
    )
    log(f"# edge misses, {args.base} vs the working tree, {machine_summary()}")
    with tempfile.TemporaryDirectory(prefix="missab-") as tmp:
        unpack_packages(args.base, PACKAGES, Path(tmp))
        origin, origin_port, served = edgescale.static_origin(workdir, logdir)
        try:
            builds = {
                "base": edge_from("base", Path(tmp), workdir, origin_port, logdir),
                "tree": edge_from("tree", None, workdir, origin_port, logdir),
            }

            def run(proxy: edgebench.Proxy) -> edgebench.WrkResult:
                proxy.start()
                try:
                    return edgebench.measure(
                        args,
                        proxy,
                        "",
                        origin_port,
                        LOADGEN_CPU,
                        lambda: edgescale.miss_script(workdir),
                        args.connections,
                        served,
                        expect="misses",
                    )
                finally:
                    proxy.stop()

            if args.instructions:
                counts = alternate(args.rounds, builds, counted(args, workdir))
            else:
                runs = alternate(args.rounds, builds, run)
        finally:
            origin.stop()
    if args.instructions:
        rows = [
            [
                f"{label} ({args.base})" if label == "base" else "working tree",
                ", ".join(f"{c:,.0f}" for c in got),
                f"{median(got):,.0f}",
            ]
            for label, got in counts.items()
        ]
        print(table(["build", "instructions per miss, by run", "median"], rows))
        ratio = median(counts["tree"]) / median(counts["base"])
        print(f"working tree / base, instructions per miss (medians): {ratio:.3f}x")
        return 0
    rows = []
    for label, results in runs.items():
        cpu = [r.server_us for r in results]
        rates = [r.rps for r in results]
        rows.append(
            [
                f"{label} ({args.base})" if label == "base" else "working tree",
                ", ".join(f"{c:.0f}" for c in cpu),
                f"{median(cpu):.0f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}",
            ]
        )
    ratio = median([r.server_us for r in runs["tree"]]) / median(
        [r.server_us for r in runs["base"]]
    )
    print(table(["build", "edge µs per miss, by run", "median", "misses/s"], rows))
    print(f"working tree / base, edge CPU per miss (medians): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    run_main(main, "bench/missab.py")
