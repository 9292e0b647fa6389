"""Active health probes of the `[[stream]]` pools (edge.probes' schedule, L4 checks).

TCP: a connect, and with `send` the bytes sent (after a LOCAL PROXY header when the stream
sends PROXY headers, as the spec asks of health checks) and, with `expect`, those bytes
looked for in what the origin answers within the timeout. UDP: `send` as one datagram
and a reply (containing `expect`, when set) within the timeout; ICMP port unreachable
fails at once.
"""

from __future__ import annotations

import asyncio
import socket
import time

from edge import proxyproto
from edge.config import Address, StreamConfig
from edge.origins import Origin
from edge.probes import ScheduledProbes
from edge.stream_pool import StreamPool

_MAX_ANSWER = 65536  # bytes read looking for `expect`
_MAX_REPLIES = 16  # datagrams read looking for `expect`


class StreamProber(ScheduledProbes):
    def __init__(self, stream_pool: StreamPool) -> None:
        super().__init__(stream_pool.pool, self._count)
        self.stream_pool = stream_pool

    def _count(self, url: str, ok: bool, status: int | None, elapsed: float) -> None:
        self.stream_pool.stats.origin(url).probes["ok" if ok else "fail"] += 1

    async def _check(self, origin: Origin) -> tuple[bool, int | None, float]:
        config = self.stream_pool.stream
        address = self.stream_pool.address(origin)
        start = time.monotonic()
        check = _tcp if config.protocol == "tcp" else _udp
        try:
            async with asyncio.timeout(config.probe.timeout):
                ok = await check(address, config)
        except (OSError, TimeoutError):
            ok = False
        return ok, None, time.monotonic() - start


async def _tcp(address: Address, config: StreamConfig) -> bool:
    probe = config.probe
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        if probe.send:
            if config.proxy_protocol:
                writer.write(proxyproto.encode(config.proxy_protocol, None, None))
            writer.write(probe.send)
            await writer.drain()
        if not probe.expect:
            return True
        seen = b""
        while len(seen) < _MAX_ANSWER:
            chunk = await reader.read(4096)
            if not chunk:
                break
            seen += chunk
            if probe.expect in seen:
                return True
        return False
    finally:
        writer.close()


async def _udp(address: Address, config: StreamConfig) -> bool:
    probe = config.probe
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((address.host, address.port))
        await loop.sock_sendall(sock, probe.send)
        for _ in range(_MAX_REPLIES):
            reply = await loop.sock_recv(sock, 65535)
            if probe.expect in reply:
                return True
    return False
