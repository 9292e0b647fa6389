"""DNS COOKIE, NSID and CHAOS identity on a real `gslb serve` process, with `dig` and
dnspython: server cookies (RFC 9018, checked with the configured secret), FORMERR for
malformed cookie options, BADCOOKIE when required (UDP only), NSID and CH TXT id.server,
a valid server cookie exempt from RRL, and one random secret per start, shared by every
worker and passed to them explicitly."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from gslb.cookies import hash_matches
from tests.integration.gslb_helpers import GslbProcess, dig, write_config
from tests.integration.proc_helpers import children

SECRET = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
OLD_SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
LOCAL = ipaddress.ip_address("127.0.0.1")
CC = bytes.fromhex("0123456789abcdef")


def _config(directory: Path, geo_db: Path, tables: str) -> Path:
    path = write_config(directory / "gslb.toml", geo_db)
    path.write_text(path.read_text() + "\n" + tables + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gslb(tmp_path_factory: pytest.TempPathFactory, geo_db: Path) -> Iterator[GslbProcess]:
    directory = tmp_path_factory.mktemp("cookies")
    (directory / "cookie.secret").write_text(f"{SECRET.hex()}\n{OLD_SECRET.hex()}\n")
    tables = '[cookies]\nsecret_file = "cookie.secret"\n\n[identity]\nname = "dns-test-7"\n'
    proc = GslbProcess(_config(directory, geo_db, tables))
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


def _ask(
    gslb: GslbProcess, options: list[dns.edns.Option], *, tcp: bool = False
) -> dns.message.Message:
    q = dns.message.make_query("static.example.test.", "A", use_edns=0, options=options)
    if tcp:
        return dns.query.tcp(q, gslb.host, port=gslb.port, timeout=5)
    return dns.query.udp(q, gslb.host, port=gslb.port, timeout=5, ignore_errors=False)


def _cookie(m: dns.message.Message) -> bytes | None:
    found = [o.to_wire() for o in m.options if o.otype == dns.edns.OptionType.COOKIE]
    return found[0] if found else None


def test_dig_learns_a_server_cookie_and_it_is_good(gslb: GslbProcess) -> None:
    port = str(gslb.port)
    out = dig(f"@{gslb.host}", "-p", port, "static.example.test", f"+cookie={CC.hex()}")
    m = re.search(r"; COOKIE: ([0-9a-f]{48}) \(good\)", out)
    assert m, out
    option = bytes.fromhex(m.group(1))
    assert option[:8] == CC and option[8] == 1
    assert hash_matches(SECRET, option, LOCAL)  # made with the first secret in the file
    again = dig(f"@{gslb.host}", "-p", port, "static.example.test", f"+cookie={m.group(1)}")
    assert f"; COOKIE: {m.group(1)} (good)" in again, again  # fresh: echoed as it came
    assert "status: NOERROR" in again and "127.0.0.30" in again


@pytest.mark.parametrize("size", [5, 7, 49])
def test_malformed_cookie_is_formerr(gslb: GslbProcess, size: int) -> None:
    reply = _ask(gslb, [dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(size))])
    assert reply.rcode() == dns.rcode.FORMERR and _cookie(reply) is None
    out = dig(
        f"@{gslb.host}", "-p", str(gslb.port), "static.example.test", f"+ednsopt=10:{'ab' * size}"
    )
    assert "status: FORMERR" in out, out


def test_cookie_made_with_the_old_secret_is_accepted_and_renewed(gslb: GslbProcess) -> None:
    import time

    from gslb.cookies import server_cookie

    old = server_cookie(OLD_SECRET, CC, LOCAL, int(time.time()))
    reply = _ask(gslb, [dns.edns.CookieOption(CC, old)])
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    renewed = _cookie(reply)
    assert renewed is not None and renewed[8:] != old and hash_matches(SECRET, renewed, LOCAL)


def test_cookie_over_tcp(gslb: GslbProcess) -> None:
    reply = _ask(gslb, [dns.edns.CookieOption(CC, b"")], tcp=True)
    cookie = _cookie(reply)
    assert cookie is not None and hash_matches(SECRET, cookie, LOCAL)


def test_nsid_and_chaos_identity_with_dig(gslb: GslbProcess) -> None:
    port = str(gslb.port)
    out = dig(f"@{gslb.host}", "-p", port, "static.example.test", "+nsid")
    assert re.search(r'NSID: .*\("dns-test-7"\)', out), out
    for name in ("id.server", "hostname.bind"):
        out = dig(f"@{gslb.host}", "-p", port, "CH", "TXT", name, "+short")
        assert out.strip() == '"dns-test-7"', out
    out = dig(f"@{gslb.host}", "-p", port, "CH", "TXT", "version.bind")
    assert "status: REFUSED" in out, out


def test_nsid_with_dnspython(gslb: GslbProcess) -> None:
    reply = _ask(gslb, [dns.edns.NSIDOption(b"")])
    assert [o.to_wire() for o in reply.options] == [b"dns-test-7"]
    reply = _ask(gslb, [])
    assert not reply.options


def test_required_cookie(tmp_path: Path, geo_db: Path) -> None:
    proc = GslbProcess(_config(tmp_path, geo_db, "[cookies]\nrequire = true\n"))
    try:
        udp = _ask(proc, [dns.edns.CookieOption(CC, b"")])
        assert udp.rcode() == dns.rcode.BADCOOKIE and not udp.answer
        fresh = _cookie(udp)
        assert fresh is not None and len(fresh) == 24
        tcp = _ask(proc, [dns.edns.CookieOption(CC, b"")], tcp=True)
        assert tcp.rcode() == dns.rcode.NOERROR and tcp.answer
        retried = _ask(proc, [dns.edns.CookieOption(CC, fresh[8:])])
        assert retried.rcode() == dns.rcode.NOERROR and retried.answer
        out = dig(
            f"@{proc.host}", "-p", str(proc.port), "static.example.test", "+cookie", "+badcookie"
        )
        assert "status: NOERROR" in out and "127.0.0.30" in out, out
    finally:
        assert proc.stop() == 0, proc.log_text()


def _accepted_everywhere(proc: GslbProcess, cookie: bytes) -> bool:
    """Whether every UDP query carrying `cookie` is answered (cookies required): new sockets,
    new source ports, so the kernel spreads them over every worker."""
    rcodes = set()
    for _ in range(24):
        rcodes.add(_ask(proc, [dns.edns.CookieOption(CC, cookie[8:])]).rcode())
    return rcodes == {dns.rcode.NOERROR}


def test_one_random_secret_for_every_worker(tmp_path: Path, geo_db: Path) -> None:
    # No secret file: each start makes one, which the parent hands to its workers, restarted
    # ones included; with cookies required, a query carrying a cookie one worker made is
    # answered by whichever worker the kernel hands it to.
    proc = GslbProcess(_config(tmp_path, geo_db, "[cookies]\nrequire = true\n"), "--workers", "2")
    try:
        cookie = _cookie(_ask(proc, [dns.edns.CookieOption(CC, b"")], tcp=True))
        assert cookie is not None
        assert _accepted_everywhere(proc, cookie)
        workers = []
        for pid in children(proc.proc.pid):  # the secret is an argument, in no environment
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            for name, _, value in (v.partition("=") for v in environ.split("\0")):
                assert "COOKIE" not in name and "SECRET" not in name, name
                assert not re.fullmatch("[0-9a-fA-F]{32}", value), name
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                workers.append(pid)
        assert len(workers) == 2
        seen = len(proc.lines)
        os.kill(workers[0], signal.SIGKILL)
        proc.wait_for(r"worker \d ready", start=seen)  # its replacement
        assert _accepted_everywhere(proc, cookie)
    finally:
        assert proc.stop() == 0, proc.log_text()


def test_each_single_process_start_makes_its_own_secret(tmp_path: Path, geo_db: Path) -> None:
    config = _config(tmp_path, geo_db, "[cookies]\nrequire = true\n")
    first, second = GslbProcess(config), GslbProcess(config)
    try:
        hello = [dns.edns.CookieOption(CC, b"")]
        cookies = [_cookie(_ask(p, hello, tcp=True)) for p in (first, second)]
        assert None not in cookies
        for proc, mine, theirs in ((first, *cookies), (second, *reversed(cookies))):
            assert mine is not None and theirs is not None
            assert _accepted_everywhere(proc, mine)
            rejected = _ask(proc, [dns.edns.CookieOption(CC, theirs[8:])])
            assert rejected.rcode() == dns.rcode.BADCOOKIE
        seen = len(first.lines)
        first.signal(signal.SIGHUP)  # a reload keeps the secret of the start
        first.wait_for(r"reloaded config", start=seen)
        assert cookies[0] is not None and _accepted_everywhere(first, cookies[0])
    finally:
        assert first.stop() == 0, first.log_text()
        assert second.stop() == 0, second.log_text()


def _burst(proc: GslbProcess, options: list[dns.edns.Option], count: int) -> int:
    """Send `count` queries from one socket; the number of full (untruncated) answers."""
    q = dns.message.make_query("static.example.test.", "A", use_edns=0, options=options)
    full = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            q.id = i
            s.sendto(q.to_wire(), (proc.host, proc.port))
        s.settimeout(1.0)
        for _ in range(count):
            try:
                reply = dns.message.from_wire(s.recv(65535))
            except TimeoutError:
                break
            if not reply.flags & dns.flags.TC:
                full += 1
    return full


def test_valid_server_cookie_is_not_rate_limited(tmp_path: Path, geo_db: Path) -> None:
    proc = GslbProcess(_config(tmp_path, geo_db, "[rrl]\nenabled = true\nrate = 2\nslip = 2\n"))
    try:
        cookie = _cookie(_ask(proc, [dns.edns.CookieOption(CC, b"")], tcp=True))
        assert cookie is not None
        assert _burst(proc, [dns.edns.CookieOption(CC, cookie[8:])], 40) == 40
        assert _burst(proc, [dns.edns.CookieOption(CC, b"")], 40) < 40  # client cookie only
        assert _burst(proc, [], 40) < 40
    finally:
        assert proc.stop() == 0, proc.log_text()
