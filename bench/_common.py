"""Shared plumbing of the benchmark harnesses: processes pinned with taskset, free loopback
ports, bounded waits, the common command line, alternating measured rounds, the pick of a
run, and plain-text result tables.

Every process a harness starts runs in its own session, so cleanup can stop the whole group
it spawned (a server and its workers) by id and nothing else. Cleanup runs on normal exit,
on an exception and on SIGINT/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
PYTHON = REPO / ".venv" / "bin" / "python"
LOOPBACK = "127.0.0.1"
# Servers under test are pinned to core 0, load generators to core 1.
SERVER_CPU = "0"
LOADGEN_CPU = "1"


class BenchError(Exception):
    """A benchmark could not be set up or its output could not be read."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Proc:
    """A process (and everything it forks) started in its own session, output to a log file."""

    _live: list[Proc] = []

    def __init__(self, name: str, argv: Sequence[str], cpus: str | None, logfile: Path) -> None:
        self.name = name
        self.logfile = logfile
        cmd = [*(["taskset", "-c", cpus] if cpus is not None else []), *argv]
        self.cmd = cmd
        self._log = open(logfile, "wb")  # closed in stop()
        self.popen = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )
        Proc._live.append(self)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def _group_stats(self) -> Iterator[list[str]]:
        """The /proc/PID/stat fields after the command name of each process in our group."""
        pgid = self.popen.pid  # start_new_session: the group id is the child's pid
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                yield fields

    def group_size(self) -> int:
        """How many live processes are in the group we started (a server and its workers)."""
        return sum(1 for fields in self._group_stats() if fields[0] != "Z")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the live processes of our group have used so far."""
        ticks = sum(int(f[11]) + int(f[12]) for f in self._group_stats())  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group we started, SIGKILL it if it is still there after timeout."""
        if self in Proc._live:
            Proc._live.remove(self)
        pgid = self.popen.pid  # start_new_session: the group id is the child's pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # Whatever the leader left behind (workers, or the leader itself on a timeout).
        _signal_group(pgid, signal.SIGKILL)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} (pid {pgid}) did not exit after SIGKILL")
        self._log.close()

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(cls._live):
            proc.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    atexit.register(Proc.stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def free_port(udp_too: bool = False, host: str = LOOPBACK) -> int:
    """A port that is free on `host` (IPv4) for TCP (and UDP when asked), found by binding
    port 0. The tests use it too."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise BenchError(f"no free port on {host} after 50 tries")


def wait_until(what: str, check: Callable[[], bool], timeout: float, proc: Proc | None) -> None:
    """Poll check() every 0.1 s until it is true; fail after timeout or when proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise BenchError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    tail = f"\n{proc.tail()}" if proc is not None else ""
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def children_cpu_seconds() -> float:
    """CPU time (user + system) of this process's finished children (load generator runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tool(argv: Sequence[str], cpus: str | None, timeout: float) -> str:
    """Run a load generator to completion (pinned when cpus is given); return its stdout."""
    cmd = [*(["taskset", "-c", cpus] if cpus is not None else []), *argv]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{argv[0]} did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


class Measured(Protocol):
    """One measured run, as the result tables show it."""

    @property
    def rate(self) -> float: ...  # requests or queries per second

    @property
    def latency(self) -> str: ...  # the latency cell of a table row


K = TypeVar("K")
S = TypeVar("S")
M = TypeVar("M", bound=Measured)
R = TypeVar("R")


def alternate(rounds: int, subjects: Mapping[K, S], measure: Callable[[S], R]) -> dict[K, list[R]]:
    """Measure every subject ``rounds`` times, taking turns and reversing the order every
    other round (a, b, b, a, ...) so that no side always runs first; runs by label."""
    runs: dict[K, list[R]] = {label: [] for label in subjects}
    order = list(subjects)
    for rnd in range(rounds):
        for label in order if rnd % 2 == 0 else order[::-1]:
            runs[label].append(measure(subjects[label]))
    return runs


def pick(mode: str, runs: Sequence[M]) -> M | None:
    """The run a table reports: the fastest ("best") or the one nearest the median rate."""
    if not runs:
        return None
    if mode == "best":
        return max(runs, key=lambda r: r.rate)
    mid = median([r.rate for r in runs])
    return min(runs, key=lambda r: abs(r.rate - mid))


def result_row(title: str, a: Measured | None, b: Measured | None, goal: float | None) -> list[str]:
    """title, both rates, a/b, goal ("none": no goal, reported only), verdict, both
    latencies ("n/a" for a missing run)."""

    def cells(r: Measured | None) -> tuple[str, str]:
        return ("n/a", "n/a") if r is None else (f"{r.rate:,.0f}", r.latency)

    (a_rate, a_lat), (b_rate, b_lat) = cells(a), cells(b)
    ours, theirs = (a.rate if a else None), (b.rate if b else None)
    return [
        title,
        a_rate,
        b_rate,
        ratio(ours, theirs),
        f">= {goal}x" if goal is not None else "none",
        verdict(ours, theirs, goal),
        a_lat,
        b_lat,
    ]


def arg_parser(
    doc: str | None, *, what: str, warmup: float, warmup_help: str
) -> argparse.ArgumentParser:
    """The options both harnesses share; ``what`` names the things measured per scenario."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--rounds", type=int, default=2, help=f"measured runs per {what} and scenario")
    p.add_argument("--warmup", type=float, default=warmup, help=warmup_help)
    p.add_argument(
        "--pick",
        choices=("best", "median"),
        default="best",
        help="which run of the rounds (median: use 3+ rounds)",
    )
    return p


def parse_lists(
    p: argparse.ArgumentParser,
    argv: list[str],
    scenarios: Collection[str],
    servers: Collection[str],
) -> argparse.Namespace:
    """Parse ``argv``; split --scenarios and --servers into lists and check them."""
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(scenarios) or set(args.servers) - set(servers)
    if unknown:
        p.error(f"unknown: {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    return args


def require_tools(tools: Sequence[str], installer: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: run {installer}, which installs it")


def run_main(main: Callable[[list[str]], int], script: str) -> NoReturn:
    """Run a harness's main with sys.argv; a BenchError becomes a one-line error, exit 1."""
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"{script}: error: {exc}", file=sys.stderr)
        sys.exit(1)


def unpack_packages(commit: str, packages: Sequence[str], into: Path) -> None:
    """The directories `packages` of `commit`, as files under `into` (git archive)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, *packages], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {commit}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def verdict(ours: float | None, theirs: float | None, goal: float | None) -> str:
    if not ours or not theirs:
        return "n/a"
    if goal is None:
        return "-"
    return "ok" if ours / theirs >= goal else "BELOW GOAL"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def machine_summary() -> str:
    cpu = "unknown CPU"
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    py = sys.version.split()[0]
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {os.uname().release}, Python {py}"


def require_two_cpus() -> None:
    if (os.cpu_count() or 1) < 2:
        raise BenchError("the harness pins server and load generator to cores 0 and 1: need 2 CPUs")


def start_harness(name: str, tools: Sequence[str], installer: str) -> tuple[Path, Path]:
    """What every harness does first: cleanup on exit, two CPUs and its tools checked, and
    its work and log directories (WORK/name, WORK/name/logs) made."""
    install_cleanup()
    require_two_cpus()
    require_tools(tools, installer)
    workdir = WORK / name
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    return workdir, logdir
