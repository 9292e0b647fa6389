"""edge.filebody's write_wire over real loopback connections: a body sent from its file
comes after its head and whole, also when the socket's buffer fills (a small rest queued on
the transport, a big one sent as the socket drains); a file shorter than its length, or a
client that takes nothing for the send timeout, cuts the connection; every descriptor is
closed after."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
import uvloop

from edge import filebody
from edge.filebody import FileBody, write_wire

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


class _Sender(asyncio.Protocol):
    """Sends one response when connected: a head and the file at `path` as a FileBody of
    `length` bytes (the socket's send buffer made small first, if asked)."""

    def __init__(
        self, path: Path, length: int, small_buffer: bool, timeout: float, failing: bool
    ) -> None:
        self.path, self.length, self.small_buffer = path, length, small_buffer
        self.timeout = timeout
        self.sent: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.went: list[int] = []  # what FileBody.close reported having sent
        self.failing = failing  # the report raises once noted (a log that cannot be written)

    def _report(self, sent: int) -> None:
        self.went.append(sent)
        if self.failing:
            raise OSError(28, "No space left on device")

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.WriteTransport, base)  # uvloop's is not a subclass
        if self.small_buffer:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        fd = os.open(self.path, os.O_RDONLY)
        body = FileBody(fd, self.length, on_close=self._report)
        rest = write_wire(transport, [HEAD % self.length, body], self.timeout)
        if rest is None:
            self.sent.set_result(body.fd)
        else:
            task = asyncio.ensure_future(rest)
            task.add_done_callback(lambda _: self.sent.set_result(body.fd))


async def _receive(
    path: Path,
    length: int,
    *,
    small_buffer: bool = False,
    pause: float = 0.0,
    send_timeout: float = 10.0,
    failing_report: bool = False,
) -> tuple[bytes, int, int]:
    """What a client gets (until the sender closes or the length is in), the FileBody's
    descriptor once write_wire and what it left to run ended (-1: closed), and the count
    of its bytes sent that its close reported (-1: none reported, or more than once)."""
    loop = asyncio.get_running_loop()
    senders: list[_Sender] = []

    def factory() -> _Sender:
        senders.append(_Sender(path, length, small_buffer, send_timeout, failing_report))
        return senders[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    try:
        await loop.sock_connect(client, ("127.0.0.1", port))
        await asyncio.sleep(pause)  # not reading: the sender's socket fills
        want = len(HEAD % length) + length
        got = bytearray()
        while len(got) < want:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), 10)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        fd_after = await asyncio.wait_for(senders[0].sent, 10)
        went = senders[0].went
        return bytes(got), fd_after, went[0] if len(went) == 1 else -1
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_file_body_follows_its_head_whole(tmp_path: Path) -> None:
    data = os.urandom(100 * 1024)
    (tmp_path / "body").write_bytes(data)
    got, fd_after, went = await _receive(tmp_path / "body", len(data))
    assert got == HEAD % len(data) + data
    assert fd_after == -1  # closed once sent
    assert went == len(data)


@pytest.mark.parametrize("size", [200 * 1024, 4 << 20])  # a rest queued, one sent later
async def test_what_a_full_socket_does_not_take_follows_as_it_drains(
    tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)  # far past both small buffers
    (tmp_path / "body").write_bytes(data)
    got, fd_after, went = await _receive(tmp_path / "body", size, small_buffer=True, pause=0.2)
    assert got == HEAD % size + data
    assert fd_after == -1
    assert went == size


@pytest.mark.parametrize("size", [100 * 1024, 4 << 20])  # sent at once, and by a task
async def test_a_report_that_fails_still_ends_the_send_cleanly(tmp_path: Path, size: int) -> None:
    """The access log line written when a body's send ended may fail (a full disk): the
    body and our descriptor of the socket are closed all the same."""
    data = os.urandom(size)
    (tmp_path / "body").write_bytes(data)
    fds = len(os.listdir("/proc/self/fd"))
    got, fd_after, went = await _receive(
        tmp_path / "body", size, small_buffer=True, pause=0.2, failing_report=True
    )
    assert got == HEAD % size + data
    assert fd_after == -1 and went == size
    await asyncio.sleep(0.05)  # the server's side of the connection closed meanwhile
    assert len(os.listdir("/proc/self/fd")) == fds


async def test_a_file_cut_short_is_found_by_a_later_send_too(tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    (tmp_path / "body").write_bytes(data)
    length = len(data) + 1000
    got, fd_after, went = await _receive(tmp_path / "body", length, small_buffer=True, pause=0.2)
    assert got.startswith(HEAD % length)
    assert len(got) < len(HEAD % length) + length
    assert fd_after == -1
    assert 0 < went <= len(data)  # what went before the send found the file short


async def test_a_client_that_takes_nothing_is_dropped_after_the_send_timeout(
    tmp_path: Path,
) -> None:
    data = os.urandom(4 << 20)
    (tmp_path / "body").write_bytes(data)
    # The client reads nothing for 2 s; the sender gives up after 0.3 s without progress.
    got, fd_after, went = await _receive(
        tmp_path / "body", len(data), small_buffer=True, pause=2.0, send_timeout=0.3
    )
    assert len(got) < len(HEAD % len(data)) + len(data)
    assert fd_after == -1
    assert 0 < went < len(data)  # what the socket took before the client was dropped


async def test_a_file_shorter_than_its_length_cuts_the_connection(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    (tmp_path / "body").write_bytes(data)
    length = len(data) + 1000  # checked at 51,000 bytes, cut since
    got, fd_after, went = await _receive(tmp_path / "body", length)
    assert got.startswith(HEAD % length)
    assert len(got) < len(HEAD % length) + length  # the client sees a cut response
    assert fd_after == -1
    assert went <= len(data)


async def test_bytes_only_go_out_as_they_are() -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Future[bytes] = loop.create_future()
    got = bytearray()

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.extend(data)
            if len(got) >= 4 and not received.done():
                received.set_result(bytes(got))

    class Source(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            write_wire(cast(asyncio.WriteTransport, transport), [b"ab", b"cd"])

    server = await loop.create_server(Source, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(Sink, "127.0.0.1", port)
    try:
        assert await asyncio.wait_for(received, 10) == b"abcd"
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def test_one_turn_of_the_loop_sends_at_most_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filebody, "BURST", 64 * 1024)
    data = os.urandom(1 << 20)  # fits the socket buffers below: only the burst stops it
    (tmp_path / "body").write_bytes(data)
    loop = asyncio.get_running_loop()
    left: list[bool] = []
    done: asyncio.Future[None] = loop.create_future()

    class Sender(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20
            )
            body = FileBody(os.open(tmp_path / "body", os.O_RDONLY), len(data))
            rest = write_wire(cast(asyncio.WriteTransport, transport), [body])
            left.append(rest is not None)
            if rest is None:
                done.set_result(None)
            else:
                asyncio.ensure_future(rest).add_done_callback(lambda _: done.set_result(None))

    server = await loop.create_server(Sender, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    client.setblocking(False)
    try:
        await loop.sock_connect(client, ("127.0.0.1", server.sockets[0].getsockname()[1]))
        got = bytearray()
        while len(got) < len(data):
            got += await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 10)
        await asyncio.wait_for(done, 10)
        assert left == [True]  # the rest went in later turns
        assert bytes(got) == data
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_rest_cancelled_before_it_ran_closes_its_descriptors(tmp_path: Path) -> None:
    data = os.urandom(4 << 20)
    (tmp_path / "body").write_bytes(data)
    loop = asyncio.get_running_loop()
    opened: list[int] = []
    before: list[int] = []
    stopped: asyncio.Future[None] = loop.create_future()

    class Sender(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            before.append(len(os.listdir("/proc/self/fd")))
            body = FileBody(os.open(tmp_path / "body", os.O_RDONLY), len(data))
            rest = write_wire(cast(asyncio.WriteTransport, transport), [b"head", body])
            assert rest is not None  # 4 MiB do not fit a 4 KiB buffer
            opened.append(len(os.listdir("/proc/self/fd")))
            rest.cancel()
            rest.add_done_callback(lambda _: stopped.set_result(None))
            transport.close()

    server = await loop.create_server(Sender, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", server.sockets[0].getsockname()[1]))
        await asyncio.wait_for(stopped, 10)
        await asyncio.sleep(0)
        assert opened[0] == before[0] + 2  # the body's file and our descriptor of the socket
        # Both closed, though the task never ran (the socket's own goes with the transport).
        assert len(os.listdir("/proc/self/fd")) <= before[0]
    finally:
        client.close()
        server.close()
        await server.wait_closed()


Case = Callable[[Path, pytest.MonkeyPatch], Coroutine[Any, Any, None]]


@pytest.mark.parametrize(
    "case",
    [
        lambda p, m: test_a_file_body_follows_its_head_whole(p),
        lambda p, m: test_what_a_full_socket_does_not_take_follows_as_it_drains(p, 200 * 1024),
        lambda p, m: test_what_a_full_socket_does_not_take_follows_as_it_drains(p, 4 << 20),
        lambda p, m: test_a_file_shorter_than_its_length_cuts_the_connection(p),
        lambda p, m: test_a_file_cut_short_is_found_by_a_later_send_too(p),
        lambda p, m: test_a_client_that_takes_nothing_is_dropped_after_the_send_timeout(p),
        lambda p, m: test_one_turn_of_the_loop_sends_at_most_a_burst(p, m),
        lambda p, m: test_a_rest_cancelled_before_it_ran_closes_its_descriptors(p),
    ],
    ids=["whole", "queued", "drained", "short", "short-later", "timeout", "burst", "cancel"],
)
def test_on_uvloop(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on uvloop, which `edge` runs on (its transports differ from asyncio's in
    when they write and what they report)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case(tmp_path, monkeypatch))
