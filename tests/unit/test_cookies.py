"""DNS COOKIE decisions (gslb.cookies) and SipHash-2-4 (gslb.siphash): the reference
implementation's vectors, RFC 9018 Appendix A, the age window, rotation and memoization."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from gslb.config import parse_config
from gslb.cookies import (
    CookieJar,
    Verdict,
    age,
    hash_matches,
    new_secret,
    server_cookie,
    usable,
)
from gslb.errors import ConfigError
from gslb.siphash import siphash24
from tests.unit.answer_support import CONFIG

# SipHash-2-4 of the messages 00, 00 01, ... (length = index) under the key 00 01 .. 0f,
# as 64-bit integers: vectors.h of the reference implementation (Aumasson, Bernstein).
REFERENCE = {
    0: 0x726FDB47DD0E0E31,
    1: 0x74F839C593DC67FD,
    2: 0x0D6C8009D9A94F5A,
    3: 0x85676696D7FB7E2D,
    7: 0xAB0200F58B01D137,
    8: 0x93F5F5799A932462,
    15: 0xA129CA6149BE45E5,
    16: 0x3F2ACC7F57C29BDB,
    31: 0x32D892FAD841C342,
    63: 0x958A324CEB064572,
}


@pytest.mark.parametrize(("length", "expected"), sorted(REFERENCE.items()))
def test_siphash_reference_vectors(length: int, expected: int) -> None:
    assert siphash24(bytes(range(16)), bytes(range(length))) == struct.pack("<Q", expected)


def test_siphash_key_length() -> None:
    with pytest.raises(ValueError):
        siphash24(bytes(15), b"")


SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
V4 = ipaddress.ip_address("198.51.100.100")


# RFC 9018 Appendix A.1 to A.3: (client cookie, client, time, server cookie).
@pytest.mark.parametrize(
    ("client_cookie", "client", "now", "expected"),
    [
        ("2464c4abcf10c957", "198.51.100.100", 1559731985, "010000005cf79f111f8130c3eee29480"),
        ("2464c4abcf10c957", "198.51.100.100", 1559734385, "010000005cf7a871d4a564a1442aca77"),
        ("fc93fc62807ddb86", "203.0.113.203", 1559734700, "010000005cf7a9acf73a7810aca2381e"),
    ],
)
def test_rfc9018_server_cookies(client_cookie: str, client: str, now: int, expected: str) -> None:
    made = server_cookie(SECRET, bytes.fromhex(client_cookie), ipaddress.ip_address(client), now)
    assert made.hex() == expected


def test_rfc9018_reserved_octets_and_old_secret() -> None:
    # A.3: the client's server cookie has reserved octets set; they are part of the hash.
    option = bytes.fromhex("fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5")
    assert hash_matches(SECRET, option, ipaddress.ip_address("203.0.113.203"))
    assert not hash_matches(SECRET, option, ipaddress.ip_address("203.0.113.204"))
    # A.4: an IPv6 client's cookie made with the secret before a rollover.
    v6 = ipaddress.ip_address("2001:db8:220:1:59de:d0f4:8769:82b8")
    option = bytes.fromhex("22681ab97d52c298010000005cf7c57926556bd0934c72f8")
    assert hash_matches(bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715"), option, v6)
    assert not hash_matches(bytes.fromhex("445536bcd2513298075a5d379663c962"), option, v6)


@pytest.mark.parametrize(
    ("stamp", "now", "ok"),
    [
        (1000, 1000, True),
        (1000, 1000 + 3600, True),
        (1000, 1000 + 3601, False),
        (1300, 1000, True),  # five minutes ahead: another node's clock
        (1301, 1000, False),
        (2**32 - 2600, 1000, True),  # an hour old across the 32-bit wrap
    ],
)
def test_age_window(stamp: int, now: int, ok: bool) -> None:
    assert usable(stamp, now) is ok
    assert age(2**32 - 2600, 1000) == 3600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_client_only_gets_a_fresh_cookie_that_is_then_valid() -> None:
    clock = Clock(1559731985)
    jar = CookieJar((SECRET,), clock)
    client_cookie = bytes.fromhex("2464c4abcf10c957")
    first = jar.check(client_cookie, V4)
    assert first.verdict is Verdict.CLIENT_ONLY
    assert first.option.hex() == "2464c4abcf10c957010000005cf79f111f8130c3eee29480"
    clock.now += 600
    again = jar.check(first.option, V4)
    assert again.verdict is Verdict.VALID
    assert again.option == first.option  # younger than half an hour: echoed as it came


def test_a_cookie_older_than_half_an_hour_is_renewed() -> None:
    # RFC 9018 A.2: the cookie from A.1, 40 minutes later, is valid and replaced.
    jar = CookieJar((SECRET,), Clock(1559734385))
    option = bytes.fromhex("2464c4abcf10c957010000005cf79f111f8130c3eee29480")
    result = jar.check(option, V4)
    assert result.verdict is Verdict.VALID
    assert result.option.hex() == "2464c4abcf10c957010000005cf7a871d4a564a1442aca77"


@pytest.mark.parametrize(
    ("option", "now"),
    [
        ("2464c4abcf10c957010000005cf79f111f8130c3eee29480", 1559731985 + 3601),  # expired
        ("2464c4abcf10c957010000005cf79f111f8130c3eee29481", 1559731985),  # wrong hash
        ("2464c4abcf10c957020000005cf79f111f8130c3eee29480", 1559731985),  # version 2
        ("2464c4abcf10c9570102030405060708", 1559731985),  # 8-octet server cookie
    ],
)
def test_invalid_server_cookies_get_a_fresh_one(option: str, now: int) -> None:
    jar = CookieJar((SECRET,), Clock(now))
    result = jar.check(bytes.fromhex(option), V4)
    assert result.verdict is Verdict.INVALID
    assert result.option == bytes.fromhex(option)[:8] + server_cookie(
        SECRET, bytes.fromhex(option)[:8], V4, now
    )


def test_another_address_makes_the_cookie_invalid() -> None:
    jar = CookieJar((SECRET,), Clock(1559731985))
    option = bytes.fromhex("2464c4abcf10c957010000005cf79f111f8130c3eee29480")
    assert jar.check(option, ipaddress.ip_address("198.51.100.101")).verdict is Verdict.INVALID


def test_rotation_accepts_the_old_secret_and_renews_with_the_new() -> None:
    old, new = SECRET, bytes(range(16))
    now = 1559731985
    made_with_old = bytes.fromhex("2464c4abcf10c957") + server_cookie(
        old, bytes.fromhex("2464c4abcf10c957"), V4, now
    )
    rotated = CookieJar((new, old), Clock(now + 10))
    result = rotated.check(made_with_old, V4)
    assert result.verdict is Verdict.VALID
    assert result.option[8:] == server_cookie(new, made_with_old[:8], V4, now + 10)
    assert CookieJar((new,), Clock(now)).check(made_with_old, V4).verdict is Verdict.INVALID


def test_memo_is_bounded_in_time() -> None:
    clock = Clock(1559731985)
    jar = CookieJar((SECRET,), clock)
    first = jar.check(bytes(8), V4)
    clock.now += 30
    assert jar.check(bytes(8), V4) is first  # memoized
    clock.now += 31
    later = jar.check(bytes(8), V4)
    assert later.option != first.option  # a fresh timestamp


def test_new_secrets_are_random() -> None:
    made = {new_secret() for _ in range(8)}
    assert len(made) == 8 and {len(s) for s in made} == {16}


def _config(tmp_path: Path, table: str) -> str:
    return CONFIG + "\n[cookies]\n" + table + "\n"


def test_config_reads_secrets_in_order(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(
        "# active first, then the previous one\n" + "aa" * 16 + "\n\n" + "bb" * 16 + "\n"
    )
    cfg = parse_config(_config(tmp_path, 'secret_file = "secret"'), "t.toml", base=tmp_path)
    assert cfg.cookies.secrets == (bytes([0xAA] * 16), bytes([0xBB] * 16))
    assert cfg.cookies.enabled and not cfg.cookies.require
    assert "aa" * 16 not in repr(cfg)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "holds no secret"),
        ("abcd\n", "line 1: a secret is 32 hex digits"),
        ("# c\n" + "zz" * 16 + "\n", "line 2: a secret is 32 hex digits"),
        ("aa" * 16 + "\n" + "aa" * 16 + "\n", "line 2: the same secret twice"),
    ],
)
def test_config_rejects_bad_secret_files(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "secret").write_text(content)
    with pytest.raises(ConfigError) as info:
        parse_config(_config(tmp_path, 'secret_file = "secret"'), "t.toml", base=tmp_path)
    assert str(info.value).startswith("t.toml: cookies.secret_file: ")
    assert problem in str(info.value)


def test_config_missing_secret_file_and_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"t.toml: cookies.secret_file: cannot read"):
        parse_config(_config(tmp_path, 'secret_file = "nope"'), "t.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"t.toml: cookies.secret: unknown key"):
        parse_config(_config(tmp_path, 'secret = "x"'), "t.toml", base=tmp_path)
