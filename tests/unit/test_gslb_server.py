"""The UDP reader's batched replies, on a real socket on loopback: every reply of a batch
goes out, in order, whatever happens to one of them."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

import pytest
import uvloop

from gslb.metrics import QueryMetrics
from gslb.server import DnsServer, _UdpReader

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Echo:
    """A Responds that answers every datagram with itself, drops b"drop", and answers
    b"huge" with more than a datagram can hold (so its sendto fails, EMSGSIZE)."""

    def respond(self, wire: bytes, client: IPAddress, *, tcp: bool) -> bytes | None:
        if wire == b"drop":
            return None
        if wire == b"huge":
            return bytes(70_000)
        return wire


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_one_failed_reply_does_not_lose_the_rest_of_the_batch(
    run: Callable[..., list[bytes]],
) -> None:
    batch = [b"one", b"huge", b"drop", b"three", b"four"]

    async def serve() -> list[bytes]:
        metrics = QueryMetrics()
        server = DnsServer(Echo(), metrics)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        reader = _UdpReader(server, sock, asyncio.get_running_loop())
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        got: list[bytes] = []
        try:
            for wire in [*batch, b"five"]:
                client.sendto(wire, sock.getsockname())
            for _ in range(500):  # bounded: the replies come within a few loop turns
                await asyncio.sleep(0.01)
                while True:
                    try:
                        got.append(client.recv(65535))
                    except BlockingIOError:
                        break
                if len(got) >= 4:
                    break
            assert metrics.dropped == 1  # b"drop"; the failed send is logged, not dropped
            assert sum(metrics.buckets) == 5  # every answered query timed
        finally:
            reader.close()
            client.close()
        return got

    assert run(serve()) == [b"one", b"three", b"four", b"five"]
