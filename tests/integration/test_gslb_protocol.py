"""DNS protocol behaviour of the real `gslb serve` process over UDP and TCP.

One server per module (127.0.0.1, port 0), queried with dnspython, raw sockets and `dig`.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from tests.integration.gslb_helpers import LONDON, GslbProcess, dig, tcp_open, write_config


@pytest.fixture(scope="module")
def gslb(tmp_path_factory: pytest.TempPathFactory, geo_db: Path) -> Iterator[GslbProcess]:
    config = write_config(
        tmp_path_factory.mktemp("gslb") / "gslb.toml", geo_db, idle=2.0, max_conn=6
    )
    proc = GslbProcess(config)
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


def raw_query(name: str, qtype: int = 1, *, qid: int = 0x1234, flags: int = 0x0100) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def udp_exchange(gslb: GslbProcess, packets: list[bytes], expect: int) -> list[bytes]:
    """Send packets from one socket and collect `expect` replies (in arrival order).

    The replies wait in the socket's receive buffer until every packet is sent; at the
    default size (about 200 small datagrams, as the kernel counts them) the client itself
    could drop some of a burst's replies, so it asks for 4 MiB (capped at rmem_max)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.settimeout(5)
        for p in packets:
            s.sendto(p, (gslb.host, gslb.port))
        return [s.recv(65535) for _ in range(expect)]


def rcode_of(reply: bytes) -> int:
    return struct.unpack("!H", reply[2:4])[0] & 0xF


def test_authoritative_answer_sets_aa(gslb: GslbProcess) -> None:
    for tcp in (False, True):
        r = gslb.query("static.example.test", tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR
        assert r.flags & dns.flags.AA
        assert [rr.to_text() for rr in r.answer[0]] == ["127.0.0.30"]
        assert r.answer[0].ttl == 300


def test_nxdomain_with_soa(gslb: GslbProcess) -> None:
    r = gslb.query("nope.example.test")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    assert r.authority[0].ttl == 300  # min(SOA TTL 3600, MINIMUM 300)


def test_nodata_with_soa(gslb: GslbProcess) -> None:
    r = gslb.query("static.example.test", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_refused_outside_our_zones(gslb: GslbProcess) -> None:
    r = gslb.query("www.example.org")
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA


def test_unknown_opcode_is_notimp(gslb: GslbProcess) -> None:
    packet = raw_query("static.example.test", flags=(2 << 11))  # opcode STATUS
    (reply,) = udp_exchange(gslb, [packet], 1)
    assert rcode_of(reply) == dns.rcode.NOTIMP


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0),  # QDCOUNT 0
        struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0) + raw_query("a.example.test")[12:] * 2,
        struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\0\0\1\0\1",
        struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
        + (b"\x3f" + b"a" * 63) * 4
        + b"\x05" * 1
        + b"bbbbb\0\0\1\0\1",  # a name over 255 bytes
        # two OPT records
        raw_query("static.example.test", qid=7)[:10]
        + b"\0\2"
        + raw_query("static.example.test", qid=7)[12:]
        + (b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)) * 2,
    ],
    ids=["qdcount0", "qdcount2", "label64", "name256", "two-opt"],
)
def test_malformed_queries_get_formerr(gslb: GslbProcess, packet: bytes) -> None:
    (reply,) = udp_exchange(gslb, [packet], 1)
    assert reply[:2] == b"\0\7"
    assert reply[2] & 0x80  # QR
    assert rcode_of(reply) == dns.rcode.FORMERR


def test_responses_and_short_packets_are_dropped(gslb: GslbProcess) -> None:
    response = raw_query("static.example.test", qid=1, flags=0x8100)  # QR=1
    short = b"\0\2\1\0\0"
    good = raw_query("static.example.test", qid=3)
    # Replies come back in order from one socket; the first must be the valid query's.
    (reply,) = udp_exchange(gslb, [response, short, good], 1)
    assert reply[:2] == b"\0\3"


def test_question_case_is_echoed(gslb: GslbProcess) -> None:
    for _ in range(2):  # second time from the response cache
        (reply,) = udp_exchange(gslb, [raw_query("StAtIc.ExAmPlE.tEsT")], 1)
        assert b"\x06StAtIc\x07ExAmPlE\x04tEsT\x00" in reply[12:40]


def test_edns_version_1_is_badvers(gslb: GslbProcess) -> None:
    q = dns.message.make_query("static.example.test", "A", use_edns=1)
    r = dns.query.udp(q, gslb.host, port=gslb.port, timeout=5)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0


def test_edns_payload_is_capped_and_unknown_options_not_echoed(gslb: GslbProcess) -> None:
    q = dns.message.make_query(
        "static.example.test",
        "A",
        use_edns=0,
        payload=4096,
        options=[dns.edns.GenericOption(65001, b"xy")],
    )
    r = dns.query.udp(q, gslb.host, port=gslb.port, timeout=5)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.payload == 1232
    assert not r.options


def test_truncation_over_udp_and_full_answer_over_tcp(gslb: GslbProcess) -> None:
    udp = gslb.query("big.example.test", "TXT", edns=False)
    assert udp.flags & dns.flags.TC
    tcp = gslb.query("big.example.test", "TXT", edns=False, tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 6
    # With EDNS and a 1232-byte buffer the ~1.3 kB answer still does not fit.
    assert gslb.query("big.example.test", "TXT").flags & dns.flags.TC


def _tcp_connect(gslb: GslbProcess) -> socket.socket:
    s = socket.create_connection((gslb.host, gslb.port), timeout=10)
    return s


def _read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_reply(s: socket.socket) -> bytes:
    (size,) = struct.unpack("!H", _read_exact(s, 2))
    return _read_exact(s, size)


def test_tcp_pipelining_answers_in_order(gslb: GslbProcess) -> None:
    names = ["static.example.test", "nope.example.test", "mail.example.test", "www.example.test"]
    blob = b"".join(
        struct.pack("!H", len(p)) + p
        for p in (raw_query(n, qid=100 + i) for i, n in enumerate(names))
    )
    with _tcp_connect(gslb) as s:
        s.sendall(blob[:7])  # split mid-message too
        s.sendall(blob[7:])
        replies = [_read_reply(s) for _ in names]
    assert [struct.unpack("!H", r[:2])[0] for r in replies] == [100, 101, 102, 103]
    assert rcode_of(replies[1]) == dns.rcode.NXDOMAIN


def test_tcp_idle_connection_is_closed(gslb: GslbProcess) -> None:
    with _tcp_connect(gslb) as s:
        s.settimeout(30)  # the server's idle timeout is 2 s
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass


def _wait_tcp_open(gslb: GslbProcess, expected: int) -> None:
    for _ in range(200):  # the server notices closes asynchronously: bounded polling
        if tcp_open(gslb) == expected:
            return
        time.sleep(0.05)
    pytest.fail(f"gslb_tcp_connections never reached {expected}")


def test_tcp_connection_cap(gslb: GslbProcess) -> None:
    _wait_tcp_open(gslb, 0)  # connections of earlier tests are gone
    held: list[socket.socket] = []
    try:
        for i in range(6):  # max_conn = 6: fill every slot, proving each is served
            s = _tcp_connect(gslb)
            held.append(s)
            q = raw_query("static.example.test", qid=i)
            s.sendall(struct.pack("!H", len(q)) + q)
            assert _read_reply(s)[:2] == struct.pack("!H", i)
        assert tcp_open(gslb) == 6
        # At the cap a new connection is served and the least recently active one closed
        # (RFC 7766 section 6.2.3; gslb.tcpadmit).
        with _tcp_connect(gslb) as extra:
            q = raw_query("static.example.test", qid=66)
            extra.sendall(struct.pack("!H", len(q)) + q)
            assert _read_reply(extra)[:2] == b"\0\x42"
            held[0].settimeout(10)
            try:
                assert held[0].recv(1) == b""
            except ConnectionResetError:
                pass
            assert tcp_open(gslb) == 6
    finally:
        for s in held:
            s.close()
    _wait_tcp_open(gslb, 0)
    with _tcp_connect(gslb) as s:  # slots are free again
        q = raw_query("static.example.test", qid=77)
        s.sendall(struct.pack("!H", len(q)) + q)
        assert _read_reply(s)[:2] == b"\0\x4d"


def test_tcp_oversized_length_closes(gslb: GslbProcess) -> None:
    with _tcp_connect(gslb) as s:
        s.sendall(b"\xff\xff" + b"\0" * 100)
        try:
            assert s.recv(2) == b""
        except ConnectionResetError:
            pass


def test_any_is_minimal(gslb: GslbProcess) -> None:
    r = gslb.query("example.test", "ANY")
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.answer) == 1  # RFC 8482: one RRset (or a synthesized HINFO)


def test_cname_chase_inside_the_zone(gslb: GslbProcess) -> None:
    r = gslb.query("alias2.example.test")
    types = [(rrset.name.to_text(), rrset.rdtype) for rrset in r.answer]
    assert types == [
        ("alias2.example.test.", dns.rdatatype.CNAME),
        ("static.example.test.", dns.rdatatype.A),
    ]
    r = gslb.query("alias.example.test", subnet=LONDON)
    assert r.answer[0].rdtype == dns.rdatatype.CNAME
    assert [rr.to_text() for rr in r.answer[1]] == ["127.0.0.11"]  # the pool, nearest to London


def test_wildcard(gslb: GslbProcess) -> None:
    r = gslb.query("anything.wild.example.test")
    assert r.answer[0].name.to_text() == "anything.wild.example.test."
    assert [rr.to_text() for rr in r.answer[0]] == ["127.0.0.40"]


def test_referral_with_glue(gslb: GslbProcess) -> None:
    r = gslb.query("host.sub.example.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert not r.flags & dns.flags.AA
    assert not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.NS
    assert [rr.to_text() for rr in r.authority[0]] == ["ns.sub.example.test."]
    glue = {(rrset.name.to_text(), rr.to_text()) for rrset in r.additional for rr in rrset}
    assert ("ns.sub.example.test.", "127.0.0.53") in glue


def test_apex_ns_has_glue(gslb: GslbProcess) -> None:
    r = gslb.query("example.test", "NS")
    assert sorted(rr.to_text() for rr in r.answer[0]) == ["ns1.example.test.", "ns2.example.test."]
    glue = {rrset.name.to_text() for rrset in r.additional}
    assert {"ns1.example.test.", "ns2.example.test."} <= glue


def test_dig_udp_tcp_and_subnet(gslb: GslbProcess) -> None:
    port = str(gslb.port)
    out = dig(f"@{gslb.host}", "-p", port, "static.example.test", "+norec")
    assert "status: NOERROR" in out and "flags: qr aa;" in out
    assert "127.0.0.30" in out
    out = dig(f"@{gslb.host}", "-p", port, "static.example.test", "+tcp", "+short")
    assert out.strip() == "127.0.0.30"
    out = dig(f"@{gslb.host}", "-p", port, "www.example.test", f"+subnet={LONDON}")
    assert "CLIENT-SUBNET: 192.0.2.0/24/24" in out
    assert "127.0.0.11" in out
    out = dig(f"@{gslb.host}", "-p", port, "nope.example.test")
    assert "status: NXDOMAIN" in out
    out = dig(f"@{gslb.host}", "-p", port, "example.org")
    assert "status: REFUSED" in out
    # dig retries a truncated answer over TCP by itself
    out = dig(f"@{gslb.host}", "-p", port, "big.example.test", "TXT", "+noedns")
    assert "Truncated, retrying in TCP mode" in out and "ANSWER: 6" in out


def test_garbage_never_kills_the_server(gslb: GslbProcess) -> None:
    rng = random.Random(20261127)
    valid = raw_query("static.example.test", qid=0x4242)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(300):
            if rng.random() < 0.5:
                packet = rng.randbytes(rng.randrange(0, 80))
            else:  # a valid query with a few bytes flipped
                data = bytearray(valid)
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(2, len(data))] = rng.randrange(256)
                packet = bytes(data)
            s.sendto(packet, (gslb.host, gslb.port))
    with _tcp_connect(gslb) as t:
        t.sendall(struct.pack("!H", 30) + rng.randbytes(30) + struct.pack("!H", len(valid)) + valid)
        # the garbage gets FORMERR or nothing; the valid query is still answered in order
        for _ in range(2):
            reply = _read_reply(t)
            if reply[:2] == b"\x42\x42":
                break
        else:
            pytest.fail("no answer to the valid query after garbage")
    r = gslb.query("static.example.test")
    assert [rr.to_text() for rr in r.answer[0]] == ["127.0.0.30"]
    assert gslb.proc.poll() is None


def test_tcp_client_that_reads_slowly_gets_every_reply_in_order(gslb: GslbProcess) -> None:
    """Thousands of pipelined queries for a 1.3 kB answer, read only later: the server stops
    reading while its replies are not consumed, then carries on; nothing is lost or reordered."""
    count = 3000
    blob = b"".join(
        struct.pack("!H", len(q)) + q
        for q in (raw_query("big.example.test", qtype=16, qid=i) for i in range(count))
    )
    with _tcp_connect(gslb) as s:
        sender = threading.Thread(target=s.sendall, args=(blob,), daemon=True)
        sender.start()
        sender.join(timeout=2)  # may still be blocked: the server paused reading
        ids = [struct.unpack("!H", _read_reply(s)[:2])[0] for _ in range(count)]
        sender.join(timeout=30)
        assert not sender.is_alive()
    assert ids == list(range(count))


def test_formerr_after_a_parsed_opt_carries_opt(gslb: GslbProcess) -> None:
    """A malformed ECS option (here two of them) is FORMERR with an OPT record (RFC 6891
    section 7, RFC 7871 section 7.1.1): our payload size, the DO bit, no ECS echoed."""
    ecs = dns.edns.GenericOption(8, b"\x00\x01\x18\x00\xc0\x00\x02")
    q = dns.message.make_query(
        "static.example.test", "A", use_edns=0, want_dnssec=True, options=[ecs, ecs]
    )
    (reply,) = udp_exchange(gslb, [q.to_wire()], 1)
    r = dns.message.from_wire(reply)
    assert r.rcode() == dns.rcode.FORMERR and r.id == q.id
    assert r.edns == 0 and r.payload == 1232 and r.options == ()
    assert r.ednsflags & dns.flags.DO


def test_notify_and_update_get_notimp(gslb: GslbProcess) -> None:
    port = str(gslb.port)
    out = dig(f"@{gslb.host}", "-p", port, "+opcode=notify", "example.test", "SOA", "+norec")
    assert "opcode: NOTIFY, status: NOTIMP" in out, out
    assert "QUERY: 1" in out and "OPT PSEUDOSECTION" in out, out
    update = dns.update.UpdateMessage("example.test.")
    update.add("new", 300, "A", "192.0.2.1")
    r = dns.query.udp(update, gslb.host, port=gslb.port, timeout=5)
    assert r.rcode() == dns.rcode.NOTIMP and r.opcode() == dns.opcode.UPDATE
    # no question at all: NOTIMP too (not FORMERR), from the header alone
    empty = struct.pack("!HHHHHH", 9, dns.opcode.NOTIFY << 11, 0, 0, 0, 0)
    (reply,) = udp_exchange(gslb, [empty], 1)
    assert reply == struct.pack("!HHHHHH", 9, 0x8000 | dns.opcode.NOTIFY << 11 | 4, 0, 0, 0, 0)


def test_a_burst_of_udp_queries_is_answered_whole_and_in_full(gslb: GslbProcess) -> None:
    # More queries at once than one wakeup reads (gslb.server.UDP_BATCH), an empty datagram
    # among them, and a query of 6 kB (EDNS padding): each one read whole, each answered.
    padded = dns.message.make_query(
        "static.example.test.", "A", use_edns=0, payload=1232, id=0x0BAD
    )
    padded.use_edns(0, payload=1232, options=[dns.edns.GenericOption(12, bytes(6000))])
    big = padded.to_wire(max_size=65535)
    assert len(big) > 6000
    packets = [raw_query("static.example.test", qid=i) for i in range(300)]
    packets[150:150] = [b"", big]
    replies = udp_exchange(gslb, packets, expect=301)
    ids = sorted(struct.unpack("!H", r[:2])[0] for r in replies)
    assert ids == sorted([*range(300), 0x0BAD])
    assert all(rcode_of(r) == 0 for r in replies)
    answer = dns.message.from_wire(next(r for r in replies if r[:2] == b"\x0b\xad"))
    assert [rr.to_text() for rr in answer.answer[0]] == ["127.0.0.30"]
