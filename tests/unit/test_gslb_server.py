"""The UDP adapter's batched replies: every reply of a batch goes out, in order, whatever
happens to one of them."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from gslb.metrics import QueryMetrics
from gslb.server import DnsServer, _UdpProtocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Echo:
    """A Responds that answers every datagram with itself, and drops b"drop"."""

    def respond(self, wire: bytes, client: IPAddress, *, tcp: bool) -> bytes | None:
        return None if wire == b"drop" else wire


class PickyTransport(asyncio.DatagramTransport):
    """A datagram transport that records what it sends and refuses one address, as a real
    transport does for an address it cannot convert."""

    def __init__(self, refuse: Any) -> None:
        super().__init__()
        self.refuse = refuse
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        if addr == self.refuse:
            raise ValueError(f"{addr!r}: cannot send there")
        self.sent.append((bytes(data), addr))

    def is_closing(self) -> bool:
        return False


def test_one_refused_reply_does_not_lose_the_rest_of_the_batch() -> None:
    bad = ("192.0.2.66", 53)
    batch = [
        (b"one", ("192.0.2.1", 1000)),
        (b"two", bad),
        (b"drop", ("192.0.2.3", 1002)),
        (b"three", ("192.0.2.1", 1000)),
        (b"four", ("198.51.100.7", 1003)),
    ]

    async def run() -> list[tuple[bytes, Any]]:
        metrics = QueryMetrics()
        protocol = _UdpProtocol(DnsServer(Echo(), metrics))
        transport = PickyTransport(bad)
        protocol.connection_made(transport)
        for data, addr in batch:
            protocol.datagram_received(data, addr)
        for _ in range(3):
            await asyncio.sleep(0)
        assert metrics.dropped == 1
        # the next batch is not affected either
        protocol.datagram_received(b"five", ("192.0.2.1", 1000))
        for _ in range(3):
            await asyncio.sleep(0)
        return transport.sent

    sent = asyncio.run(run())
    assert sent == [
        (b"one", ("192.0.2.1", 1000)),
        (b"three", ("192.0.2.1", 1000)),
        (b"four", ("198.51.100.7", 1003)),
        (b"five", ("192.0.2.1", 1000)),
    ]
