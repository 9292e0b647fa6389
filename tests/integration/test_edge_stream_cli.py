"""The real `edge` process with streams: the `edge stream` quick start, a config file with
[[stream]] tables on two workers reloaded by SIGHUP, and check-config."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.integration.edge_helpers import running
from tests.integration.stream_helpers import TcpOrigin, roundtrip
from tests.integration.test_edge_cli import ROOT, _env, edge_process


async def _roundtrip(address: str, payload: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    return await roundtrip(host, int(port), payload)


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edge", "check-config", str(path)]
    env = _env()
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)


async def test_stream_quick_start() -> None:
    async with running([TcpOrigin("a"), TcpOrigin("b")]) as (a, b):
        args = ("--listen", "tcp://127.0.0.1:0", "--origin", a.address, "--origin", b.address)
        async with edge_process(*args, "--admin", "127.0.0.1:0", command="stream") as edge:
            for i in range(4):
                assert await _roundtrip(edge.addresses["tcp"], b"q%d" % i) == b"q%d" % i
            assert (a.echoed, b.echoed) == (2, 2)
            async with aiohttp.ClientSession() as s:
                async with s.get(edge.url("admin") + "/__edge/status") as r:
                    doc = await r.json()
            assert doc["healthy"] is True and "http" not in edge.addresses
            assert doc["streams"][0]["listen"] == [f"tcp://{edge.addresses['tcp']}"]


def _write(path: Path, origin: TcpOrigin) -> None:
    path.write_text(
        f"""
[server]
workers = 2

[admin]
listen = "127.0.0.1:0"

[log]
access_log = ""

[[stream]]
name = "echo"
listen = "tcp://127.0.0.1:0"
origins = ["{origin.address}"]
probe = {{ interval = 0.2, rise = 1, fall = 1 }}
"""
    )


async def test_streams_on_two_workers_follow_sighup(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    async with running([TcpOrigin("a"), TcpOrigin("b")]) as (a, b):
        _write(config, a)
        async with edge_process("-c", str(config)) as edge:
            address = edge.addresses["tcp"]
            for i in range(6):  # both workers accept on the one resolved port
                assert await _roundtrip(address, b"%d" % i) == b"%d" % i
            assert a.echoed == 6
            _write(config, b)
            edge.proc.send_signal(signal.SIGHUP)

            async def moved() -> bool:
                before = b.echoed
                for _ in range(4):
                    assert await _roundtrip(address, b"x") == b"x"
                return b.echoed == before + 4

            for _ in range(100):  # each worker reloads when its signal arrives
                if await moved():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the workers kept the old origin")


def test_check_config_covers_streams(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[[stream]]\nname = "s"\nlisten = "udp://127.0.0.1:5300"\norigins = ["127.0.0.1:53"]\n'
    )
    done = _check_config(good)
    assert done.returncode == 0 and "ok (0 origins, 1 streams)" in done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("udp://", "sctp://"))
    done = _check_config(bad)
    assert done.returncode == 1
    assert f"{bad}: stream[0].listen: expected" in done.stderr
