"""The fence around aiohttp's private state: every use of it in the edge lives here.

aiohttp renamed a flag of its server protocol twice within 3.14.x (`_msg_queue_paused`,
`_buffer_paused`, ...), and an edge that reads a name that is gone fails every connection.
So:

- `PRIVATE` lists each private name this module reads, writes or overrides, by the aiohttp
  class that owns it; `missing()` checks them against the installed aiohttp on real
  instances, `EdgeRuntime.start` refuses to start naming what is gone, and
  tests/unit/test_aiohttp_internals.py has one test per name (plus one that every private
  name this module touches is listed). pyproject.toml admits only the aiohttp releases
  those tests pass on.
- Nothing outside this module touches aiohttp's private state; a test checks that too.

What lives here:
- `EdgeRequestHandler` / `EdgeServer`: aiohttp's server protocol with a deadline for request
  headers, limit statuses (414/431), and the fast hit path that answers a plain GET from the
  segment it arrives in (edge.fasthit, Proxy.answer_plain_get).
- `SerializedResponse`: a cache hit written as prepared bytes through the request's writer.
- `GuardedConnector` / `GuardedResponseHandler`: the origin connection pool, returning a
  connection to the pool only when it is provably clean (aiohttp keeps parsing and queueing
  responses an origin sends on an idle pooled connection and hands them to the next request:
  aio-libs/aiohttp#13656).
- `InterimForwardingResponse`: the client response that passes 1xx interim responses on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import HttpVersion, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_protocol import RequestHandler

from edge.filebody import LastAnswer, Part, write_wire
from edge.headers import head_end
from geoedge.http import name_server

log = logging.getLogger("edge")

# The private names used below, by the aiohttp class that owns them (attributes set in its
# __init__ count: they are checked on instances).
PRIVATE: dict[str, tuple[str, ...]] = {
    "RequestHandler": (
        "_messages",
        "_request_count",
        "_waiter",
        "_force_close",
        "_close",
        "_upgraded",
        "_paused",
        "_buffer_paused",
        "_manager",
        "_loop",
        "_keepalive_timeout",
        "_next_keepalive_close_time",
        "_keepalive_handle",
        "_process_keepalive",
        "_task_handler",
        "_tcp_keepalive",
        "_keepalive",
    ),
    "Server": ("_kwargs", "_loop"),
    "StreamResponse": ("_eof_sent", "_payload_writer", "_req", "_keep_alive", "_body_length"),
    "ResponseHandler": ("_buffer", "_tail"),
    "TCPConnector": ("_factory", "_release"),
    "RawRequestMessage": ("_replace",),
    "SockSite": ("_runner", "_sock", "_ssl_context", "_backlog", "_server"),
    "ServerRunner": ("_reg_site",),
    "BaseRequest": ("_prepare_hook",),
}


class Handover:
    """A plain GET the fast path began and the full handler finishes: its origin request
    is made (edge.cache_layer's plain miss), and its response is one the fast path leaves
    to aiohttp (streamed, compressed, not stored, an error...).

    The protocol gives the request's bytes to aiohttp's parser and the request it makes
    of them carries this (`handover_of`); the handler `take`s the job and runs it with that
    request. Until then it holds an origin connection and a collapsed-miss lead: should
    the request never reach the handler (the client went away), `abandon` lets them go.
    """

    __slots__ = ("_abandon", "_run", "started", "target")

    def __init__(
        self,
        target: str,
        run: Callable[[web.BaseRequest], Awaitable[tuple[web.StreamResponse, str]]],
        abandon: Callable[[], None],
    ) -> None:
        self.target = target
        # Both None once taken or abandoned: what they hold (the origin's response, a
        # body being written) is then the taker's, and not kept here by the protocol.
        self._run: Callable[[web.BaseRequest], Awaitable[tuple[web.StreamResponse, str]]] | None
        self._run = run
        self._abandon: Callable[[], None] | None = abandon
        self.started: float | None = None  # when the fast path took the request (monotonic)

    @property
    def pending(self) -> bool:
        """Neither taken nor abandoned yet."""
        return self._run is not None

    def take(self) -> Callable[[web.BaseRequest], Awaitable[tuple[web.StreamResponse, str]]] | None:
        """The job, once (None when it was taken or abandoned before)."""
        run, self._run, self._abandon = self._run, None, None
        return run

    def abandon(self) -> None:
        abandon, self._run, self._abandon = self._abandon, None, None
        if abandon is not None:
            abandon()


# A plain GET answered by the fast path once its origin answered: None when the answer
# went (the coroutine wrote it through its ClientWriter), or the job for the full handler.
PlainAnswer = Handover | None


class ClientWriter(Protocol):
    """Writes bytes to a fast-path client in order, with one system call when its socket
    takes them all; nothing once its connection is closing."""

    def __call__(self, *data: bytes) -> None: ...


# Answers a received segment holding one plain GET (segment, scheme, client address, the
# client's writer, for 1xx interim responses and a miss's answer) with the response's
# wire parts (a body file among them is sent with sendfile, edge.filebody), or a
# coroutine giving the answer later (a miss), or None when the full handler must answer
# it; an empty list closes the connection without an answer (edge.screening's "close"
# action).
FastHit = Callable[
    [bytes, str, str | None, ClientWriter],
    list[Part] | Coroutine[Any, Any, PlainAnswer] | None,
]
# Bytes a client sends while the fast path answers its plain GET's miss, held for after
# it; reading from the client pauses past this.
HELD_MAX = 64 * 1024
# (origin as scheme://host:port, kind, bytes) for a protocol error of an origin connection.
ProtocolErrorReport = Callable[[str, str, int], None]
RawHeaders = tuple[tuple[bytes, bytes], ...]

# The sender of 1xx interim responses (103 Early Hints...) to the client whose request the
# current task is forwarding; read by InterimForwardingResponse while the origin's response
# head is parsed. None in background jobs, which have no client.
INTERIM: ContextVar[Callable[[int, RawHeaders], Awaitable[None]] | None] = ContextVar(
    "edge_interim", default=None
)


async def missing() -> list[str]:
    """`Class.name` for each name of `PRIVATE` the installed aiohttp lacks."""
    present = _instances()
    connector = present["TCPConnector"]
    assert isinstance(connector, aiohttp.TCPConnector)
    try:
        return [
            f"{owner}.{name}"
            for owner, names in PRIVATE.items()
            for name in names
            if not hasattr(present[owner], name)
        ]
    finally:
        await connector.close()


def _instances() -> dict[str, object]:
    """One real instance of each class in `PRIVATE` (needs a running loop); the caller
    closes the TCPConnector."""
    loop = asyncio.get_running_loop()

    async def nothing(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(nothing)
    connector = aiohttp.TCPConnector()
    instances: dict[str, object] = {
        "RequestHandler": server(),
        "Server": server,
        "StreamResponse": web.StreamResponse(),
        "ResponseHandler": ResponseHandler(loop=loop),
        "TCPConnector": connector,
        "RawRequestMessage": RawRequestMessage,
        # Slots and methods: checked on the classes (a site needs a started runner).
        "SockSite": web.SockSite,
        "ServerRunner": web.ServerRunner,
        "BaseRequest": web.BaseRequest,
    }
    return instances


async def check_version() -> None:
    """Raise RuntimeError naming the private names the installed aiohttp lacks."""
    gone = await missing()
    if gone:
        raise RuntimeError(
            f"aiohttp {aiohttp.__version__} is not supported by this edge: it lacks "
            + ", ".join(gone)
            + " (see the aiohttp pin in pyproject.toml)"
        )


# -- client-facing server protocol -------------------------------------------------------


@dataclass(frozen=True)
class ListenerOptions:
    """What the edge adds to aiohttp's server protocol, per listener.

    ``url_limit`` is the parser's request-line limit (a LineTooLong at it is a 414, at the
    field limit a 431); ``refusal`` builds the response for a refused request (its status
    given) and ``refused_token`` is the Cache-Status such responses carry; ``refused``
    counts them; ``fast`` answers a segment holding a plain GET of a fresh hit, if set.
    """

    header_timeout: float
    url_limit: int
    refused_token: str
    refusal: Callable[[int], web.StreamResponse] = field(compare=False)
    refused: Callable[[int], None] = field(compare=False, default=lambda status: None)
    fast: FastHit | None = field(compare=False, default=None)


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection protocol plus a request-header deadline and limit statuses."""

    def __init__(self, manager: EdgeServer, options: ListenerOptions, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = options.header_timeout
        self._url_limit = options.url_limit
        self._refusal = options.refusal
        self._count_refused = options.refused
        self._refused_token = options.refused_token
        self._header_timer: asyncio.TimerHandle | None = None
        self._fast = options.fast
        # True while every byte given to aiohttp's parser belonged to a complete request:
        # only then may a segment be read as a request of its own (see _answer_fast).
        self._at_boundary = self._fast is not None
        self._scheme = "http"
        self._remote: str | None = None
        # A plain GET's miss the fast path answers: its task, its bytes, and what the client
        # sent meanwhile (see _start_plain); the job it hands to the full handler, if any.
        self._plain_task: asyncio.Task[PlainAnswer] | None = None
        self._plain_data = b""
        self._held = bytearray()
        self._held_paused = False
        self._handover: Handover | None = None
        self._given: Handover | None = None  # the last one given to a request
        self._close_after_plain = False  # close() came while a plain miss was answered
        # Whether aiohttp's request loop (RequestHandler.start) runs: from the first bytes
        # given to its parser (_feed), not from the connection's start.
        self._handler_started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # RequestHandler.connection_made, less what a connection the fast path answers
        # alone never uses: BaseProtocol's tcp_nodelay (the event loop, uvloop's as
        # asyncio's, sets TCP_NODELAY on every TCP connection it accepts: this was a
        # get_extra_info("socket") and a setsockopt more per connection) and the task of
        # aiohttp's request loop, made, started and cancelled for each connection (about
        # 6.5 µs on uvloop); _feed starts it when a request first goes to aiohttp.
        real = cast(asyncio.Transport, transport)
        self.transport = real
        if self._tcp_keepalive:
            tcp_keepalive(real)
        manager = self._manager
        assert manager is not None
        manager.connection_made(self, real)
        self._keep_alive_from_now()  # the deadline of a connection that sends nothing
        self._arm_header_timer()
        if self._fast is not None:
            peer = transport.get_extra_info("peername")
            self._remote = str(peer[0]) if isinstance(peer, list | tuple) else peer
            self._scheme = "https" if transport.get_extra_info("sslcontext") else "http"

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        # Jobs nobody will take now (abandon leaves a taken one alone).
        for handover in (self._handover, self._given):
            if handover is not None:
                handover.abandon()
        self._handover = self._given = None
        super().connection_lost(exc)

    def close(self) -> None:
        if self._plain_task is not None:
            # A plain miss is being answered, its request not aiohttp's: the connection
            # closes (as aiohttp closes an idle one) once it is answered or handed over.
            self._close_after_plain = True
            return
        if not self._handler_started:
            self.force_close()  # idle: no request loop to end it, as it ends an idle one
            return
        super().close()

    def _process_keepalive(self) -> None:
        if self._handler_started:
            super()._process_keepalive()
            return
        # aiohttp's keep-alive deadline, for a connection whose every request (if any) the
        # fast path answered: idle between them, as aiohttp's loop waiting for one is.
        self._keepalive_handle = None
        if self._force_close or not self._keepalive:
            return
        close_time = self._next_keepalive_close_time
        if self._loop.time() < close_time:  # pushed back by an answer since it was set
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
            return
        if self._plain_task is None:
            self.force_close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109
        # A miss the fast path is answering is a request in progress: answered first, and
        # one it hands over is waited for until aiohttp's handler has it (then aiohttp's
        # shutdown waits for the handler).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (15.0 if timeout is None else timeout)
        if self._plain_task is not None:
            await asyncio.wait({self._plain_task}, timeout=timeout)
        given = self._given or self._handover
        while given is not None and given.pending and loop.time() < deadline:
            if self.transport is None or self.transport.is_closing():
                break
            await asyncio.sleep(0.01)
        await super().shutdown(max(deadline - loop.time(), 0.0))

    def take_handover(self) -> Handover | None:
        """The job handed over with the request aiohttp's parser makes next, if any."""
        handover, self._handover = self._handover, None
        if handover is not None:
            self._given = handover
        return handover

    def data_received(self, data: bytes) -> None:
        if self._plain_task is not None:
            # Pipelined behind a miss being answered: parsed once it is.
            self._held += data
            transport = self.transport
            if len(self._held) > HELD_MAX and not self._held_paused and transport is not None:
                transport.pause_reading()
                self._held_paused = True
            return
        if self._at_boundary and self._answer_fast(data):
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """`data` to aiohttp's parser (its request loop started the first time), the
        header deadline kept in step."""
        waiting = self._waiter is not None
        if not self._handler_started:
            if self._close or self._force_close:
                # Closing, with no request loop to end it: aiohttp's parser would drop
                # `data` (a closing connection takes no further request) and nothing
                # would close the connection.
                self.force_close()
                return
            self._handler_started = waiting = True
            self._task_handler = self._loop.create_task(self._requests())
        before = self._request_count
        super().data_received(data)
        if self._fast is not None:
            self._at_boundary = self._parser_drained(data, self._request_count - before)
        if self._request_count != before:
            self._disarm_header_timer()
            if self._head_follows(data):
                # The segment went on into the next request's head: its deadline starts now.
                self._arm_header_timer()
        elif self._header_timer is None and data and waiting:
            # First bytes of a further request on a kept-alive connection: the deadline for
            # its headers starts now (the idle time before is the keep-alive timeout's job).
            self._arm_header_timer()

    async def _requests(self) -> None:
        """aiohttp's request loop (RequestHandler.start), unless close() came after _feed
        made its task and before it ran: close() ends a loop by cancelling the wait for
        the next request, which the loop would only then begin, to wait for ever."""
        if self._close and not self._messages:
            self.force_close()
            return
        await self.start()

    def _answer_fast(self, data: bytes) -> bool:
        """Answer `data` from the cache's memory tier if it is one plain GET of a fresh hit.

        Only while aiohttp's side of the connection is idle (no queued or running request,
        its parser between messages, nothing paused), so responses keep request order and
        aiohttp's state needs no change but the keep-alive deadline. The full handler
        answers everything else, with the same bytes it would have seen.
        """
        waiter = self._waiter
        if (
            self._messages
            or (self._request_count and (waiter is None or waiter.done()))
            or self._force_close
            or self._close
            or self._upgraded
            or self._paused
            or self._buffer_paused
        ):
            return False
        transport = self.transport
        if transport is None or self._fast is None:
            return False
        wire = self._fast(data, self._scheme, self._remote, self._write)
        if wire is None:
            return False
        self._disarm_header_timer()
        if not isinstance(wire, list):
            self._start_plain(wire, data)
            return True
        if not wire:  # a screening rule's "close": no answer, no lingering
            transport.close()
            return True
        rest = write_wire(transport, wire)
        # A closing answer never carries a body sent by sendfile (Proxy.answer_plain_get).
        assert rest is None or not isinstance(wire, LastAnswer)
        if rest is not None:  # a body the socket takes as it drains: answered after
            self._start_plain(rest, data)
            return True
        if isinstance(wire, LastAnswer):
            self._counted()
            self.force_close()  # once what was written went, as aiohttp closes after one
            return True
        self._answered()
        return True

    def _write(self, *data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(data)

    def _start_plain(
        self, answer: Coroutine[Any, Any, PlainAnswer] | asyncio.Future[None], data: bytes
    ) -> None:
        """Answer a plain GET's miss when its origin has answered (or end a hit whose
        body file goes out as the socket drains, edge.filebody); until then the
        connection is busy (what the client sends meanwhile waits in _held), and not idle
        for aiohttp's keep-alive timer."""
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        self._plain_data = data
        task = asyncio.ensure_future(answer)
        self._plain_task = task
        task.add_done_callback(self._plain_done)

    def _plain_done(self, task: asyncio.Task[PlainAnswer]) -> None:
        self._plain_task = None
        data, self._plain_data = self._plain_data, b""
        answer: PlainAnswer = None
        failed = True
        if task.cancelled():
            log.info("a plain GET's miss was cancelled")
        elif (exc := task.exception()) is not None:
            log.error("a plain GET's miss failed", exc_info=exc)
        else:
            answer, failed = task.result(), False
        transport = self.transport
        if transport is None or transport.is_closing() or failed:
            if isinstance(answer, Handover):
                answer.abandon()
            if transport is not None:
                transport.close()  # the client has no answer: it must not wait for one
            return
        if isinstance(answer, Handover):
            self._handover = answer
            self._feed(data)
        else:
            self._answered()
        if self._close_after_plain:
            self._close_after_plain = False
            self.close()  # after the handed-over request was queued: it is answered
        held = bytes(self._held)
        self._held.clear()
        if self._held_paused:
            self._held_paused = False
            transport.resume_reading()
        if held:
            self.data_received(held)

    def _counted(self) -> None:
        manager = self._manager
        if manager is not None:
            manager.requests_count += 1

    def _answered(self) -> None:
        """A request answered by the fast path: counted, and the keep-alive deadline
        restarted as aiohttp restarts it after a response."""
        self._counted()
        self._keep_alive_from_now()

    def _keep_alive_from_now(self) -> None:
        """The keep-alive deadline set to a timeout from now, as aiohttp sets it (its
        timer, when one runs already, finds the later deadline and waits on)."""
        if self._keepalive_timeout > 0:
            loop = self._loop
            close_time = loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)

    def _parser_drained(self, data: bytes, produced: int) -> bool:
        """Whether aiohttp's parser ended `data` between messages (conservatively)."""
        if not produced or not data.endswith(b"\r\n\r\n") or self._buffer_paused:
            return False
        if not self._messages:
            return False
        message, payload = self._messages[-1]
        # A parse error is queued as aiohttp's private _ErrInfo, which has no method.
        return hasattr(message, "method") and payload.is_eof()

    def _head_follows(self, data: bytes) -> bool:
        """Whether bytes of a further, incomplete request head follow the last request
        aiohttp's parser completed from `data` (only decidable when that request has no
        body: its head then ended the parsed part, and `data` goes on past it)."""
        if not self._messages or self._buffer_paused or data.endswith(b"\r\n\r\n"):
            return False
        message, payload = self._messages[-1]
        return hasattr(message, "method") and payload is EMPTY_PAYLOAD

    def _arm_header_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._messages or (self._handler_started and self._waiter is None):
            # A request is still being answered; a 408 now would cut into its response.
            # Its answer comes first, then the late head gets one more period.
            self._arm_header_timer()
            return
        log.debug("request headers not complete within %.1fs: closing", self._header_timeout)
        self._count_refused(408)
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n"
            + head_end(self._refused_token)
        )
        self.force_close()
        transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            status = 414 if limit == self._url_limit else 431
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            status = 431
        if status in (414, 431) or isinstance(exc, BadHttpMessage):
            log.debug("bad request from %s: %s", request.remote, exc)
            self._count_refused(status)
            resp = self._refusal(status)
            resp.force_close()
            return resp
        return super().handle_error(request, status, exc, message)


class EdgeServer(web.Server):
    """aiohttp's low-level server making EdgeRequestHandler protocols."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        options: ListenerOptions,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=self._request, **kwargs)
        self._options = options

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, self._options, loop=self._loop, **self._kwargs)

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """aiohttp's request, but for a request line of another major version than 1 (its
        parser takes `HTTP/2.0`): that is refused with 505 (Proxy.check), and the refusal
        must go out as HTTP/1.1, the version aiohttp writes being the request's."""
        version = message.version
        if version.major != 1:
            message = message._replace(version=HttpVersion11, should_close=True)
        request = _EdgeRequest(message, payload, protocol, writer, task, self._loop)
        if version.major != 1:
            request[_REQUESTED_VERSION] = version
        handover = protocol.take_handover() if isinstance(protocol, EdgeRequestHandler) else None
        if handover is not None:
            # The bytes handed to the parser were this one request; anything else would
            # be a parse the fast path's grammar did not foresee: it starts over.
            if message.method == "GET" and message.path == handover.target:
                request[_HANDOVER] = handover
            else:
                handover.abandon()
        return request


class _EdgeRequest(web.BaseRequest):
    """aiohttp's low-level request, whose responses name GeoEdge as their Server, not
    aiohttp (geoedge.http)."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        name_server(response)


_REQUESTED_VERSION = web.RequestKey("edge_requested_version", HttpVersion)
_HANDOVER = web.RequestKey("edge_handover", Handover)


def handover_of(request: web.BaseRequest) -> Handover | None:
    """The fast path's job that `request` finishes (see Handover), if any."""
    return request.get(_HANDOVER)


def requested_version(request: web.BaseRequest) -> HttpVersion:
    """The HTTP version the client's request line named."""
    version: HttpVersion = request.get(_REQUESTED_VERSION, request.version)
    return version


def count_written(response: web.StreamResponse, size: int) -> None:
    """``size`` bytes of the prepared ``response``'s body went out past aiohttp's writer
    (edge.filebody's sendfile): counted as the writer counts what it writes, so that its
    body_length (the access log's bytes) has them, whether or not the response ends."""
    writer = response._payload_writer
    if writer is not None:
        writer.output_size += size
        # What body_length reports, also when write_eof never runs (a send cut short).
        response._body_length = writer.output_size


class SerializedResponse(web.StreamResponse):
    """A cache hit written as prepared bytes: status line and stored fields come from a
    per-entry cache, Age and Cache-Status are appended, and head and body leave in one
    write. This skips aiohttp's per-response header building, the largest cost of a hit.

    It drives aiohttp's payload writer the way StreamResponse.prepare/write_eof do.
    """

    def __init__(
        self, status: int, head: bytes, body: bytes, age: int | None, cache_status: str
    ) -> None:
        super().__init__(status=status)
        self._head = head
        self.payload = body
        self._age = age
        # Read by the access log and metrics; the bytes on the wire come from `_head`.
        self.headers["Cache-Status"] = cache_status

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self._eof_sent:
            return None
        if self._payload_writer is not None:
            return self._payload_writer
        self._req = request
        self._keep_alive = request.keep_alive
        self._payload_writer = request.writer
        return self._payload_writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        writer = self._payload_writer
        assert writer is not None
        # Age None: not from a cache.
        end = head_end(self.headers["Cache-Status"], self._age, close=not self._keep_alive)
        head = self._head + end
        body = self.payload
        if len(body) <= 16384:
            await writer.write_eof(head + body)
        else:
            await writer.write(head)
            await writer.write_eof(body)
        self._eof_sent = True
        self._req = None
        self._body_length = len(body)
        self._payload_writer = None


class TLSSite(web.SockSite):
    """aiohttp's SockSite with a deadline for the TLS handshake.

    asyncio gives a handshake 60 s by default, and aiohttp offers no way to change it; a
    client that connects and says nothing held its connection that long, whatever
    limits.header_timeout said (the request-header deadline starts only once the protocol
    sees the connection, after the handshake).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        self.handshake_timeout = handshake_timeout

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self.handshake_timeout,
        )


# -- origin connections ------------------------------------------------------------------


class GuardedResponseHandler(ResponseHandler):
    """aiohttp's client connection protocol, closed on any byte received while pooled.

    While the connection sits idle in the pool, `idle_report` is set (by GuardedConnector):
    a response cannot be due, so bytes arriving then are an origin speaking unasked, and the
    connection is closed before anything can parse them as the next request's response.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.idle_report: Callable[[int], None] | None = None

    def data_received(self, data: bytes) -> None:
        report = self.idle_report
        if report is not None and data:
            self.idle_report = None
            transport = self.transport
            if transport is not None:
                transport.close()
            report(len(data))
            return
        super().data_received(data)

    def unread_bytes(self) -> int:
        """Parsed responses and bytes queued past the last response handed out."""
        return len(self._buffer) + len(self._tail)


class GuardedConnector(aiohttp.TCPConnector):
    """A TCP connector whose pool holds only connections proven clean.

    A connection is closed instead of pooled when anything was queued past the response
    just read (bytes beyond its framing), and closed as soon as any byte arrives while it
    is pooled. Each is reported with the origin and counted by the caller.
    """

    def __init__(self, *, on_protocol_error: ProtocolErrorReport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = functools.partial(  # type: ignore[assignment]
            GuardedResponseHandler, loop=asyncio.get_running_loop()
        )
        self._on_protocol_error = on_protocol_error

    def _release(self, key: Any, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        guarded = protocol if isinstance(protocol, GuardedResponseHandler) else None
        if guarded is not None:
            extra = guarded.unread_bytes()
            if extra:
                self._report(key, "excess_bytes", extra)
                should_close = True
        super()._release(key, protocol, should_close=should_close)
        if guarded is not None and guarded.is_connected():
            guarded.idle_report = functools.partial(self._report, key, "unsolicited_bytes")

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        if isinstance(protocol, GuardedResponseHandler):
            protocol.idle_report = None  # a response is due from now on
        return connection

    def _report(self, key: Any, kind: str, size: int) -> None:
        scheme = "https" if key.is_ssl else "http"
        host = f"[{key.host}]" if ":" in key.host else key.host
        self._on_protocol_error(f"{scheme}://{host}:{key.port}", kind, size)


def final_status_ok(status: int) -> bool:
    """Whether an origin may answer a request of the edge's with `status` as final.

    RFC 9110 §15.2: 101 answers only a requested upgrade, and the edge never asks for one
    (after it the connection speaks another protocol); statuses end at 599.
    """
    return status != 101 and 100 <= status <= 599


class InterimForwardingResponse(aiohttp.ClientResponse):
    """aiohttp's client response, passing the 1xx responses it skips to `INTERIM`.

    It also closes the connection of a response whose status `final_status_ok` refuses:
    aiohttp releases a bodyless response's connection to the pool before `start` returns,
    so closing the response afterwards would leave the switched connection pooled.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        send = INTERIM.get()
        if send is None or protocol is None:
            response = await super().start(connection)
        else:
            original = protocol.read

            async def read() -> Any:
                message, payload = await original()
                if 102 <= message.code < 200:
                    await send(message.code, message.raw_headers)
                return message, payload

            protocol.read = read  # the pooled connection gets its own method back below
            try:
                response = await super().start(connection)
            finally:
                del protocol.read
        if protocol is not None and not final_status_ok(self.status):
            protocol.close()
        return response
