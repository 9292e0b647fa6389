"""TCP admission under pressure on a real `gslb serve` process (RFC 7766 section 6.2.3):
600 idle connections from several networks do not close TCP to a new client (the least
recently active connection makes room), and one network beyond its share is refused while
another network still gets in. Client sockets bind to addresses of 127.0.0.0/8 to come
from distinct /24 networks."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from tests.integration.gslb_helpers import GslbProcess, dig, tcp_open, write_config

IDLE_CONNECTIONS = 600
NETWORKS = 10  # 60 connections each, under the default share of 64


def _config(path: Path, geo_db: Path, *, max_conn: int, extra: str = "") -> Path:
    write_config(path, geo_db, idle=60.0, max_conn=max_conn)
    text = path.read_text().replace(
        f"tcp_max_connections = {max_conn}\n", f"tcp_max_connections = {max_conn}\n{extra}\n"
    )
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def _gslb(path: Path) -> Iterator[GslbProcess]:
    proc = GslbProcess(path)
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


def _connect(proc: GslbProcess, source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((source, 0))
        s.settimeout(20)
        s.connect((proc.host, proc.port))
    except OSError:
        s.close()
        raise
    return s


def _query(s: socket.socket, qid: int) -> bytes:
    """Send one query and read the reply; b"" when the server closed the connection."""
    q = dns.message.make_query("static.example.test.", "A", id=qid).to_wire()
    try:
        s.sendall(struct.pack("!H", len(q)) + q)
        head = s.recv(2)
        if len(head) < 2:
            return b""
        size = struct.unpack("!H", head)[0]
        data = b""
        for _ in range(size):  # bounded: at least one octet per read
            if len(data) >= size:
                break
            chunk = s.recv(size - len(data))
            if not chunk:
                return b""
            data += chunk
        return data
    except (ConnectionResetError, BrokenPipeError):
        return b""


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_600_idle_connections_do_not_close_tcp(tmp_path: Path, geo_db: Path) -> None:
    with _gslb(_config(tmp_path / "gslb.toml", geo_db, max_conn=512)) as proc:
        held: list[socket.socket] = []
        try:
            for i in range(IDLE_CONNECTIONS):
                held.append(_connect(proc, f"127.0.{1 + i % NETWORKS}.1"))
            # A new client still gets its answer, with dnspython and with dig.
            q = dns.message.make_query("static.example.test.", "A")
            reply = dns.query.tcp(q, proc.host, port=proc.port, timeout=20)
            assert reply.rcode() == dns.rcode.NOERROR
            assert [rr.to_text() for rrset in reply.answer for rr in rrset] == ["127.0.0.30"]
            out = dig(f"@{proc.host}", "-p", str(proc.port), "static.example.test", "+tcp")
            assert "status: NOERROR" in out and "127.0.0.30" in out, out
            # The oldest idle connection made room; the server never holds more than its max.
            assert _closed_by_server(held[0])
            assert tcp_open(proc) <= 512
        finally:
            for s in held:
                s.close()


def test_a_network_beyond_its_share_is_refused(tmp_path: Path, geo_db: Path) -> None:
    path = _config(tmp_path / "gslb.toml", geo_db, max_conn=64, extra="tcp_max_per_network = 4")
    with _gslb(path) as proc:
        held: list[socket.socket] = []
        try:
            for i in range(4):
                s = _connect(proc, f"127.0.50.{1 + i}")
                held.append(s)
                assert _query(s, i)[:2] == struct.pack("!H", i)
            with _connect(proc, "127.0.50.9") as extra:  # the same /24: its fifth
                assert _query(extra, 9) == b""
            with _connect(proc, "127.0.51.1") as other:  # another network
                assert _query(other, 10)[:2] == struct.pack("!H", 10)
            for i, s in enumerate(held):  # the network's own connections are untouched
                assert _query(s, 20 + i)[:2] == struct.pack("!H", 20 + i)
        finally:
            for s in held:
                s.close()


def test_the_least_recently_active_connection_makes_room(tmp_path: Path, geo_db: Path) -> None:
    max_conn = 3
    # The busy idle timeout as long as the normal one: no connection is swept for idling.
    extra = "tcp_busy_idle_timeout = 60.0"
    with _gslb(_config(tmp_path / "gslb.toml", geo_db, max_conn=max_conn, extra=extra)) as proc:
        held = [_connect(proc, f"127.0.{60 + i}.1") for i in range(max_conn)]
        try:
            for i, s in enumerate(held):
                assert _query(s, i)[:2] == struct.pack("!H", i)
            assert _query(held[0], 7)[:2] == b"\0\x07"  # held[1] is now the least recent
            with _connect(proc, "127.0.70.1") as new:
                assert _query(new, 8)[:2] == b"\0\x08"
            assert _closed_by_server(held[1])
            assert _query(held[0], 9)[:2] == b"\0\x09"
            assert _query(held[2], 10)[:2] == b"\0\x0a"
        finally:
            for s in held:
                s.close()
