"""A cached body sent from its file with sendfile(2), by the raw fast path and the full
handler (edge.hits).

A hit whose body lies in a file of its own (diskcache's, from 32 KiB) used to be read into
memory and written back out through the transport: two copies of every byte through user
space, and for a body past what the loop reads at once, a thread hop per 64 KiB. A
`FileBody` is the body's file, opened and its length checked where the hit is decided
(Store.open_known_file), and `write_wire` hands it to the kernel with sendfile straight
to the client's socket, once nothing waits in the transport's buffer (so the bytes keep
their order). What a full socket does not take at once is sent as it drains, through a
descriptor of our own on the socket (so the transport closing its own cannot hand the
number to another connection meanwhile); the connection takes its next request after
(EdgeRequestHandler holds what the client sends meanwhile, as during a miss). A client
that takes nothing for SEND_TIMEOUT is dropped, and one turn of the loop sends at most
BURST of a body. Plain TCP only: a TLS connection's socket carries records, not the body.

A body file is written once under a name its row carries with the body's digest and never
rewritten in place, and an unlinked file stays readable through a descriptor opened
before: what can happen between the length check and the send is a file cut short by
something else, which the send sees. Then the connection is aborted: the client sees a
cut response, never a short one taken as whole.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Sequence


class FileBody:
    """``length`` bytes of an open body file from ``offset``, to be sent and closed.

    ``sent`` counts the bytes of it the socket took (or the transport queued); `close`
    calls ``on_close`` with that count once, however the send ended (the fast path's
    access log line, written when the body went or was cut, with what went)."""

    __slots__ = ("fd", "length", "offset", "on_close", "sent")

    def __init__(
        self,
        fd: int,
        length: int,
        offset: int = 0,
        on_close: Callable[[int], None] | None = None,
    ) -> None:
        self.fd = fd
        self.length = length
        self.offset = offset
        self.sent = 0
        self.on_close = on_close

    def __len__(self) -> int:
        return self.length

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                try:
                    on_close(self.sent)
                except Exception:  # an access log that cannot be written: not the send's
                    log.exception("reporting a body sent from its file failed")


Part = bytes | FileBody
# A client that takes no byte of a body for this long is dropped (nginx's send_timeout).
SEND_TIMEOUT = 60.0

log = logging.getLogger("edge")


class LastAnswer(list[Part]):
    """The wire parts of a connection's last response (its request said `Connection:
    close`): the connection closes once they are written."""


def write_wire(
    transport: asyncio.WriteTransport, parts: Sequence[Part], send_timeout: float = SEND_TIMEOUT
) -> asyncio.Task[None] | None:
    """Write a response's ``parts`` in order. None when they are all written or queued
    (every FileBody among them closed); else the task sending the rest of the one file
    body the socket did not take, which, however it ends (cancelled before
    it started too), closes that body and its descriptor of the socket."""
    pending: list[bytes] = []
    for i, part in enumerate(parts):
        if not isinstance(part, FileBody):
            pending.append(part)
            continue
        if pending:
            transport.writelines(pending)
            pending = []
        try:
            whole = _send_file(transport, part)
        except BaseException:
            _close_files(parts[i:])
            raise
        if not whole:
            _close_files(parts[i:])
            transport.abort()
            return None
        if part.sent < part.length:
            # What follows a body sent later cannot be written now: the fast path's
            # answers end with their body.
            assert i == len(parts) - 1, "a file body ends its response"
            try:
                # Ours now, while the transport's descriptor is surely this connection's.
                out = os.dup(transport.get_extra_info("socket").fileno())
            except OSError:
                part.close()
                transport.abort()
                return None
            task = asyncio.ensure_future(_send_rest(transport, part, out, send_timeout))
            task.add_done_callback(functools.partial(_sent, part, out))
            return task
        part.close()
    if pending:
        transport.writelines(pending)
    return None


async def send_file(
    transport: asyncio.WriteTransport, body: FileBody, send_timeout: float = SEND_TIMEOUT
) -> bool:
    """Send ``body`` after what the transport holds (a response's head), and close it:
    whether it all went (else the connection was aborted)."""
    rest = write_wire(transport, [body], send_timeout)
    if rest is not None:
        await rest
    return not transport.is_closing()


def _close_files(parts: Sequence[Part]) -> None:
    for part in parts:
        if isinstance(part, FileBody):
            part.close()


def _send_file(transport: asyncio.WriteTransport, body: FileBody) -> bool:
    """Send ``body`` with sendfile until the socket takes no more (``body.sent`` says how
    far it went), or all of it once a rest up to QUEUE_MAX was read and queued on the
    transport; False when its file proved short or the connection failed (the caller
    aborts it)."""
    if transport.is_closing():
        return False
    # Straight to the socket only when the transport holds nothing (uvloop's and
    # asyncio's write what they can at once, so after a head that went out whole).
    sock = transport.get_extra_info("socket")
    if sock is not None and transport.get_write_buffer_size() == 0:
        try:
            _sendfile(sock.fileno(), body)
        except OSError:
            return False
    sent = body.sent
    if sent == body.length or (sock is not None and body.length - sent > QUEUE_MAX):
        return True  # done, or the rest as the socket drains (_send_rest)
    try:
        rest = os.pread(body.fd, body.length - sent, body.offset + sent)
    except OSError:
        return False
    if len(rest) != body.length - sent:
        return False
    transport.write(rest)
    body.sent = body.length
    return True


# A rest of a body up to this much is read and queued on the transport at once (as the
# fast path queued a body it read whole): no later sends to keep track of.
QUEUE_MAX = 256 * 1024


# The most one turn of the loop sends of a body (nginx's sendfile_max_chunk): a client
# that reads as fast as the loopback carries must not hold the loop for a whole big body.
BURST = 2 << 20


def _sendfile(out: int, body: FileBody) -> None:
    """sendfile from ``body.sent`` (kept in step) until the body is sent, BURST bytes
    went or the socket takes no more. OSError when the connection failed or the file
    proved short."""
    stop = min(body.length, body.sent + BURST)
    try:
        while body.sent < stop:
            n = os.sendfile(out, body.fd, body.offset + body.sent, stop - body.sent)
            if n == 0:
                raise OSError(f"body file ends at {body.sent} of {body.length} bytes")
            body.sent += n
    except BlockingIOError:
        pass  # the socket's buffer is full


async def _send_rest(
    transport: asyncio.WriteTransport, body: FileBody, out: int, send_timeout: float
) -> None:
    """Send the rest of ``body`` (from ``body.sent``) to the socket ``out`` (a descriptor
    of our own on the transport's) as it drains; see the module's text."""
    loop = asyncio.get_running_loop()
    try:
        while body.sent < body.length:
            writable = loop.create_future()
            loop.add_writer(out, _wake, writable)
            try:
                await asyncio.wait_for(writable, send_timeout)
            finally:
                loop.remove_writer(out)
            if transport.is_closing():
                raise ConnectionError("the connection closed")
            if transport.get_write_buffer_size() == 0:
                _sendfile(out, body)
    except (OSError, TimeoutError) as exc:
        cut = body.sent
        log.info("a body sent from its file was cut at %d of %d bytes: %r", cut, body.length, exc)
        transport.abort()


def _sent(body: FileBody, out: int, task: asyncio.Future[None]) -> None:
    try:
        body.close()
    finally:
        os.close(out)


def _wake(writable: asyncio.Future[None]) -> None:
    if not writable.done():
        writable.set_result(None)
