"""A cached body sent from its file by the raw fast path, with sendfile(2).

A hit whose body lies in a file of its own (diskcache's, from 32 KiB) used to be read into
memory on the loop and written back out through the transport: two copies of every byte
through user space. A `FileBody` is the body's file, opened and its length checked where
the hit is decided (Store.open_known_file), and `write_wire` hands it to the kernel with
sendfile straight to the client's socket, when nothing waits in the transport's buffer
(so the bytes keep their order). What the socket does not take at once is read from the
file and written through the transport as before, so the memory a hit holds is bounded as
it was (the fast path takes bodies up to hits.INLINE_READ_MAX). Plain TCP only: a TLS
connection's socket carries records, not the body.

A body file is written once under a name its row carries with the body's digest and never
rewritten in place, and an unlinked file stays readable through a descriptor opened
before: what can happen between the length check and the send is a file cut short by
something else, which the send sees. Then the connection is aborted: the client sees a
cut response, never a short one taken as whole.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence


class FileBody:
    """An open body file of ``length`` bytes, to be sent from its start and closed."""

    __slots__ = ("fd", "length")

    def __init__(self, fd: int, length: int) -> None:
        self.fd = fd
        self.length = length

    def __len__(self) -> int:
        return self.length

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


Part = bytes | FileBody


def write_wire(transport: asyncio.WriteTransport, parts: Sequence[Part]) -> None:
    """Write a response's ``parts`` in order; every FileBody among them is closed."""
    try:
        pending: list[bytes] = []
        for part in parts:
            if not isinstance(part, FileBody):
                pending.append(part)
                continue
            if pending:
                transport.writelines(pending)
                pending = []
            if not _send_file(transport, part):
                transport.abort()
                return
        if pending:
            transport.writelines(pending)
    finally:
        for part in parts:
            if isinstance(part, FileBody):
                part.close()


def _send_file(transport: asyncio.WriteTransport, body: FileBody) -> bool:
    """The whole of ``body`` sent or queued behind what the transport holds; False when
    its file proved short or the connection failed (the caller aborts it)."""
    if transport.is_closing():
        return False
    sent = 0
    # Straight to the socket only when the transport holds nothing (uvloop's and
    # asyncio's write what they can at once, so after a head that went out whole).
    sock = transport.get_extra_info("socket")
    if sock is not None and transport.get_write_buffer_size() == 0:
        out = sock.fileno()
        try:
            while sent < body.length:
                n = os.sendfile(out, body.fd, sent, body.length - sent)
                if n == 0:
                    return False  # the file ends before its length
                sent += n
        except BlockingIOError:
            pass  # the socket's buffer is full: the rest goes through the transport
        except OSError:
            return False
    if sent < body.length:
        try:
            rest = os.pread(body.fd, body.length - sent, sent)
        except OSError:
            return False
        if len(rest) != body.length - sent:
            return False
        transport.write(rest)
    return True
