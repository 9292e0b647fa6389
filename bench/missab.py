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

The other commit's packages are unpacked from git into a temporary directory and run from
there with this tree's venv.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import edgebench
import edgescale
from _common import (
    LOADGEN_CPU,
    PYTHON,
    SERVER_CPU,
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("base", help="the commit to compare the working tree with")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (64)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each build (3)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir, logdir = start_harness("missab", ["wrk", "taskset", "nginx"], "bench/missab.sh")
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

            runs = alternate(args.rounds, builds, run)
        finally:
            origin.stop()
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
