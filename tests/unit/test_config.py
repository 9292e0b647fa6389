"""GSLB config loading: the example, every section, and errors that name file, key and
problem."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gslb.config import GslbConfig, example_config, load_config, parse_config
from gslb.errors import ConfigError
from gslb.models import Policy
from gslb.zone import MX, A, name_from_text

MINIMAL = """
[[zone]]
origin = "example.test."
soa = { mname = "ns1", rname = "hostmaster" }
records = ["@ NS ns1", "ns1 A 192.0.2.1"]

[[edge]]
name = "fra"
ipv4 = "127.0.0.11"
latitude = 50.0
longitude = 8.0

[[edge]]
name = "iad"
ipv6 = "2001:db8::12"
latitude = 39.0
longitude = -77.0

[[pool]]
name = "www.example.test."
edges = ["fra", "iad"]
"""


def load(text: str) -> GslbConfig:
    return parse_config(text, "bad.toml", base=Path("/nonexistent"))


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


def test_example_config_loads() -> None:
    cfg = example_config()
    assert cfg.source == "example.toml"
    assert cfg.server.listen == (("127.0.0.1", 5353),)
    assert cfg.server.max_udp_payload == 1232
    assert cfg.api.listen == ("127.0.0.1", 8053)
    assert cfg.log.level == "info" and cfg.log.query_log is False
    assert cfg.geo.database is None and cfg.geo.overrides == ()
    assert [e.name for e in cfg.edges] == ["fra", "iad", "nrt"]
    (pool,) = cfg.pools
    assert pool.name == "www.example.test." and pool.policy is Policy.NEAREST
    assert pool.fallback is None and pool.ttl == 30
    (zone,) = cfg.zones
    assert zone.origin == name_from_text("example.test.")
    assert zone.negative.ttl == 300


def test_defaults() -> None:
    cfg = load(MINIMAL)
    assert cfg.server.workers == 1 and cfg.server.tcp_idle_timeout == 10.0
    assert cfg.server.tcp_max_connections == 512
    pool = cfg.pools[0]
    assert (pool.answers, pool.ttl, pool.load_threshold, pool.hysteresis) == (1, 30, 0.8, 0.1)
    assert cfg.edges[1].ipv4 is None and cfg.edges[1].ipv6 == ipaddress.IPv6Address("2001:db8::12")
    assert cfg.edges[0].weight == 1.0 and cfg.edges[0].capacity == 1000.0


def test_every_section(tmp_path: Path) -> None:
    db = tmp_path / "city.mmdb"
    db.write_bytes(b"placeholder: only its existence is checked at load")
    (tmp_path / "example.test.zone").write_text(
        "$TTL 600\nmail A 192.0.2.25\n@ MX 10 mail\n", encoding="utf-8"
    )
    path = tmp_path / "gslb.toml"
    path.write_text(
        MINIMAL.replace('records = ["@ NS', 'file = "example.test.zone"\nrecords = ["@ NS')
        + """
[server]
listen = ["127.0.0.1:0", "[::1]:5353"]
workers = 2
tcp_idle_timeout = 2.5
tcp_max_connections = 10
max_udp_payload = 1400

[api]
listen = "[::1]:8080"

[log]
level = "DEBUG"
query_log = true

[geo]
database = "city.mmdb"
table_dir = "tables"
[[geo.override]]
network = "10.0.0.0/8"
latitude = 50.11
longitude = 8.68
country = "de"
continent = "EU"
""",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert cfg.server.listen == (("127.0.0.1", 0), ("::1", 5353))
    assert cfg.server.workers == 2 and cfg.server.max_udp_payload == 1400
    assert cfg.api.listen == ("::1", 8080)
    assert cfg.log.level == "debug" and cfg.log.query_log
    assert cfg.geo.database == db
    assert cfg.geo.table and cfg.geo.table_dir == tmp_path / "tables"
    (override,) = cfg.geo.overrides
    assert override.network == ipaddress.ip_network("10.0.0.0/8")
    assert (override.country, override.continent) == ("DE", "EU")
    zone = cfg.zones[0]
    records = {(r.name, r.rtype): r for r in zone.records}
    assert records[(name_from_text("mail.example.test."), A)].ttl == 600
    assert (name_from_text("example.test."), MX) in records


def test_pool_options() -> None:
    cfg = load(
        MINIMAL.replace(
            'edges = ["fra", "iad"]',
            'edges = ["fra", "iad"]\npolicy = "failover"\nanswers = 2\nttl = 5\n'
            'load_threshold = 0.5\nhysteresis = 0.2\nfallback = ["iad"]',
        )
    )
    pool = cfg.pools[0]
    assert pool.policy is Policy.FAILOVER and pool.answers == 2 and pool.ttl == 5
    assert pool.fallback is not None and [e.name for e in pool.fallback] == ["iad"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra", "iad", "xyz"]',
            "bad.toml: pool[0].edges[2]: unknown edge 'xyz'",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra", "fra"]',
            "bad.toml: pool[0].edges[1]: edge 'fra' is listed twice",
        ),
        (
            'edges = ["fra", "iad"]',
            "edges = []",
            "bad.toml: pool[0].edges: needs at least one edge",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra"]\npolicy = "random"',
            "bad.toml: pool[0].policy: 'random' is not one of nearest | weighted | failover | all",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra"]\nanswers = 0',
            "bad.toml: pool[0].answers: 0 is out of range [1, 64]",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra"]\nttl = "30"',
            "bad.toml: pool[0].ttl: must be an integer, not a string",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra"]\nhysteresis = 0.9',
            "bad.toml: pool[0].hysteresis: must be below load_threshold (0.8), got 0.9",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra"]\nfallback = "none"',
            "bad.toml: pool[0].fallback: must be \"all\" or a list of edge names, not 'none'",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra"]\nfallback = ["nope"]',
            "bad.toml: pool[0].fallback[0]: unknown edge 'nope'",
        ),
        (
            'edges = ["fra", "iad"]',
            'edges = ["fra"]\ncolour = "red"',
            "bad.toml: pool[0].colour: unknown key",
        ),
        (
            'name = "www.example.test."',
            'name = "www.other.test."',
            "bad.toml: pool[0].name: 'www.other.test.' is not inside any configured zone",
        ),
        (
            'name = "www.example.test."',
            'name = "ns1.example.test."',
            "bad.toml: pool[0].name: pool ns1.example.test. clashes with the static A record "
            "at zone[0].records[1]",
        ),
        (
            'name = "iad"',
            'name = "fra"',
            "bad.toml: edge[1].name: duplicate edge name 'fra' (also edge[0])",
        ),
        (
            "latitude = 50.0",
            "latitude = 91.0",
            "bad.toml: edge[0].latitude: 91.0 is out of range [-90.0, 90.0]",
        ),
        (
            "longitude = 8.0",
            "longitude = -180.5",
            "bad.toml: edge[0].longitude: -180.5 is out of range [-180.0, 180.0]",
        ),
        (
            'ipv4 = "127.0.0.11"',
            'ipv4 = "::1"',
            "bad.toml: edge[0].ipv4: '::1' is not an ipv4 address",
        ),
        ('ipv4 = "127.0.0.11"', "", "bad.toml: edge[0]: needs ipv4 or ipv6 (or both)"),
        ("latitude = 50.0", "", "bad.toml: edge[0].latitude: is required"),
        (
            '"ns1 A 192.0.2.1"',
            '"ns1 A 192.0.2.300"',
            "bad.toml: zone[0].records[1]: invalid IPv4 address '192.0.2.300'",
        ),
        (
            '"ns1 A 192.0.2.1"',
            '"ns1 A 192.0.2.1", "x CNAME y", "x TXT hi"',
            "bad.toml: zone[0].records[2]: CNAME at x.example.test. beside other data (TXT)",
        ),
        (
            '"ns1 A 192.0.2.1"',
            '"ns1 A 192.0.2.1", 5',
            "bad.toml: zone[0].records[2]: must be a string, not an integer",
        ),
        (
            '"ns1 A 192.0.2.1"',
            '"ns1 A 192.0.2.1", "sub NS ns.sub"',
            "bad.toml: zone[0].records[2]: NS target ns.sub.example.test. is inside the zone "
            "but has no A/AAAA (glue) record",
        ),
        ('soa = { mname = "ns1", rname = "hostmaster" }', "", "bad.toml: zone[0]: no SOA record"),
        (
            'soa = { mname = "ns1", rname = "hostmaster" }',
            'soa = { mname = "ns1" }',
            "bad.toml: zone[0].soa.rname: is required",
        ),
        (
            'soa = { mname = "ns1", rname = "hostmaster" }',
            'soa = { mname = "ns1", rname = "h", minimum = -1 }',
            "bad.toml: zone[0].soa.minimum: -1 is out of range",
        ),
        (
            'origin = "example.test."',
            'origin = "bad..name"',
            "bad.toml: zone[0].origin: empty label",
        ),
        (
            'origin = "example.test."',
            'origin = "example.test."\nfile = "missing.zone"',
            "bad.toml: zone[0].file: cannot read '/nonexistent/missing.zone'",
        ),
        (
            'origin = "example.test."',
            'origin = "example.test."\nttl = -5',
            "bad.toml: zone[0].ttl: -5 is out of range",
        ),
        ("[[zone]]", "[[zone]]\nextra = 1", "bad.toml: zone[0].extra: unknown key"),
    ],
)
def test_errors_name_file_key_and_problem(old: str, new: str, message: str) -> None:
    assert old in MINIMAL
    assert error(MINIMAL.replace(old, new, 1)).startswith(message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[server]\nlisten = []", "bad.toml: server.listen: needs at least one address"),
        (
            '[server]\nlisten = ["localhost:53"]',
            "bad.toml: server.listen[0]: 'localhost' is not an IP address",
        ),
        (
            '[server]\nlisten = ["::1:53"]',
            "bad.toml: server.listen[0]: '::1:53' is not \"host:port\"",
        ),
        (
            '[server]\nlisten = ["127.0.0.1:70000"]',
            "bad.toml: server.listen[0]: port 70000 is out of range",
        ),
        ("[server]\nworkers = 0", "bad.toml: server.workers: 0 is out of range [1, 256]"),
        ("[server]\nworkers = true", "bad.toml: server.workers: must be an integer, not a boolean"),
        (
            "[server]\nmax_udp_payload = 100",
            "bad.toml: server.max_udp_payload: 100 is out of range [512, 4096]",
        ),
        ("[server]\nport = 53", "bad.toml: server.port: unknown key"),
        ('[api]\nlisten = "nope"', "bad.toml: api.listen: 'nope' is not \"host:port\""),
        (
            '[log]\nlevel = "loud"',
            "bad.toml: log.level: 'loud' is not one of debug, info, warning, error, critical",
        ),
        (
            '[geo]\ndatabase = "missing.mmdb"',
            "bad.toml: geo.database: file '/nonexistent/missing.mmdb' does not exist",
        ),
        (
            '[[geo.override]]\nnetwork = "10.0.0.1/8"\nlatitude = 1\nlongitude = 2',
            "bad.toml: geo.override[0].network: '10.0.0.1/8' is not a network",
        ),
        (
            '[[geo.override]]\nnetwork = "10.0.0.0/8"\nlatitude = 1',
            "bad.toml: geo.override[0].longitude: is required",
        ),
        (
            '[[geo.override]]\nnetwork = "10.0.0.0/8"\nlatitude = 1\nlongitude = 2\n'
            'country = "DEU"',
            "bad.toml: geo.override[0].country: 'DEU' is not a two-letter code",
        ),
        ('[geo]\ntable = "yes"', "bad.toml: geo.table: must be a boolean"),
        (
            '[geo]\ntable_dir = "/dev/null"',
            "bad.toml: geo.table_dir: '/dev/null' is not a directory",
        ),
        ("[tuning]\nx = 1", "bad.toml: tuning: unknown key"),
        ("server = 5", "bad.toml: server: must be a table, not an integer"),
    ],
)
def test_section_errors(extra: str, message: str) -> None:
    assert error(extra + "\n" + MINIMAL).startswith(message)


def test_zone_file_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "z.zone").write_text("; comment\nwww A 192.0.2.1\nbad MX x\n", encoding="utf-8")
    path = tmp_path / "gslb.toml"
    path.write_text(MINIMAL.replace('records = ["@ NS', 'file = "z.zone"\nrecords = ["@ NS'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: zone[0].file (z.zone line 3): MX needs 2 rdata field(s), got 1: 'x'"
    )


def test_zone_file_include_from_disk(tmp_path: Path) -> None:
    """$INCLUDE on real files: relative to the including file's directory, which is not the
    config file's; an error inside the included file names that file and its line."""
    (tmp_path / "zones" / "parts").mkdir(parents=True)
    (tmp_path / "zones" / "main.zone").write_text(
        "$TTL 600\nmail A 192.0.2.25\n$INCLUDE parts/hosts.zone hosts\n@ MX 10 mail\n",
        encoding="utf-8",
    )
    hosts = tmp_path / "zones" / "parts" / "hosts.zone"
    hosts.write_text("$TTL 60\nweb A 192.0.2.80\n", encoding="utf-8")
    path = tmp_path / "gslb.toml"
    path.write_text(
        MINIMAL.replace('records = ["@ NS', 'file = "zones/main.zone"\nrecords = ["@ NS')
    )
    records = {(r.name, r.rtype): r for r in load_config(path).zones[0].records}
    web = records[(name_from_text("web.hosts.example.test."), A)]
    assert web.ttl == 60 and web.key == "zone[0].file (zones/parts/hosts.zone line 2)"
    assert records[(name_from_text("example.test."), MX)].ttl == 600  # $TTL 60 did not leak
    hosts.write_text("web A 192.0.2.80\nbad MX x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: zone[0].file (zones/parts/hosts.zone line 2): MX needs 2 rdata field(s), "
        "got 1: 'x'"
    )


def test_zone_is_required_and_duplicates_rejected() -> None:
    assert error("") == "bad.toml: zone: at least one [[zone]] is required"
    zone = MINIMAL[: MINIMAL.index("[[edge]]")]
    assert error(MINIMAL + zone).startswith(
        "bad.toml: zone[1].origin: zone 'example.test.' is already zone[0]"
    )


def test_invalid_toml_and_unreadable_file(tmp_path: Path) -> None:
    assert error("[[zone]\n").startswith("bad.toml: invalid TOML:")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_health_section_and_status_urls() -> None:
    cfg = load(MINIMAL)
    assert (cfg.health.interval, cfg.health.timeout, cfg.health.rise, cfg.health.fall) == (
        5.0,
        2.0,
        2,
        3,
    )
    assert cfg.health.jitter == 0.5
    assert all(e.status_url is None for e in cfg.edges)
    text = MINIMAL.replace(
        'name = "fra"', 'name = "fra"\nstatus_url = "http://127.0.0.1:9090/__edge/status"'
    )
    cfg = load("[health]\ninterval = 0.2\nrise = 1\nfall = 4\n" + text)
    assert cfg.edges[0].status_url == "http://127.0.0.1:9090/__edge/status"
    assert cfg.edges[1].status_url is None
    # timeout and jitter defaults shrink with a short interval
    assert (cfg.health.interval, cfg.health.timeout, cfg.health.jitter) == (0.2, 0.2, 0.02)
    assert (cfg.health.rise, cfg.health.fall) == (1, 4)


@pytest.mark.parametrize(
    ("health", "url", "message"),
    [
        ("interval = 0", None, "bad.toml: health.interval: 0 is out of range [0.05, 3600.0]"),
        ("rise = 0", None, "bad.toml: health.rise: 0 is out of range [1, 100]"),
        ("fall = 1.5", None, "bad.toml: health.fall: must be an integer, not a number"),
        (
            "interval = 1\ntimeout = 3",
            None,
            "bad.toml: health.timeout: must not exceed health.interval (1.0), got 3.0",
        ),
        ("jitter = 5", None, "bad.toml: health.jitter: must be below health.interval (5.0)"),
        ("retries = 2", None, "bad.toml: health.retries: unknown key"),
        (
            "",
            "ftp://127.0.0.1/status",
            "bad.toml: edge[0].status_url: 'ftp://127.0.0.1/status' is not an http(s) URL",
        ),
        ("", "http:///x", "bad.toml: edge[0].status_url: 'http:///x' is not an http(s) URL"),
        ("", "http://h:99999/", "bad.toml: edge[0].status_url: 'http://h:99999/' is not a URL"),
        ("", "42", "bad.toml: edge[0].status_url: must be a string, not an integer"),
    ],
)
def test_health_errors(health: str, url: str | None, message: str) -> None:
    text = MINIMAL
    if url is not None:
        value = url if url == "42" else f'"{url}"'
        text = text.replace('name = "fra"', f'name = "fra"\nstatus_url = {value}')
    assert error(f"[health]\n{health}\n" + text).startswith(message)


def test_api_token_file(tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("  tok-0123456789abcdef  \n")
    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "spaced").write_text("tok 0123456789abcdef\n")

    def parse(name: str) -> GslbConfig:
        return parse_config(f'[api]\ntoken_file = "{name}"\n' + MINIMAL, "g.toml", base=tmp_path)

    assert parse("ok").api.token == "tok-0123456789abcdef"
    assert "tok-0123456789abcdef" not in repr(parse("ok"))  # kept out of logs and tracebacks
    assert load(MINIMAL).api.token is None
    for name, problem in (("missing", "cannot read"), ("short", "16+"), ("spaced", "16+")):
        with pytest.raises(ConfigError, match=rf"^g\.toml: api\.token_file: .*{problem}"):
            parse(name)


def test_purge_section_and_edge_admin_urls(tmp_path: Path) -> None:
    (tmp_path / "fleet.token").write_text("fleet-0123456789abcdef\n")
    (tmp_path / "iad.token").write_text("iad-0123456789abcdef\n")
    cfg = load(MINIMAL)
    assert (cfg.purge.timeout, cfg.purge.attempts, cfg.purge.backoff) == (5.0, 3, 0.5)
    assert all(e.admin_url is None and e.admin_token is None for e in cfg.edges)
    text = (
        '[purge]\ntoken_file = "fleet.token"\nattempts = 5\nbackoff = 0.2\ntimeout = 1\n'
        + MINIMAL.replace(
            'name = "fra"', 'name = "fra"\nstatus_url = "https://10.0.0.1:9090/__edge/status"'
        ).replace(
            'name = "iad"',
            'name = "iad"\nadmin_url = "http://10.0.0.2:9091/"\nadmin_token_file = "iad.token"',
        )
    )
    cfg = parse_config(text, "g.toml", base=tmp_path)
    fra, iad = cfg.edges
    assert fra.admin_url == "https://10.0.0.1:9090"  # derived from its status_url
    assert iad.admin_url == "http://10.0.0.2:9091"  # as configured, no trailing slash
    assert (fra.admin_token, iad.admin_token) == ("fleet-0123456789abcdef", "iad-0123456789abcdef")
    assert "0123456789abcdef" not in repr(cfg)
    assert (cfg.purge.attempts, cfg.purge.backoff, cfg.purge.timeout) == (5, 0.2, 1.0)


@pytest.mark.parametrize(
    ("purge", "edge", "message"),
    [
        ("attempts = 0", "", "bad.toml: purge.attempts: 0 is out of range [1, 10]"),
        ("timeout = 0", "", "bad.toml: purge.timeout: 0 is out of range [0.05, 300.0]"),
        (
            "backoff = 2\nbackoff_max = 1",
            "",
            "bad.toml: purge.backoff_max: must not be below purge.backoff (2.0)",
        ),
        ('token_file = "nope"', "", "bad.toml: purge.token_file: cannot read"),
        ("retries = 1", "", "bad.toml: purge.retries: unknown key"),
        ("", 'admin_url = "ftp://h/"', "bad.toml: edge[0].admin_url: 'ftp://h/' is not an"),
        ("", 'admin_url = "http://h/?a=1"', "bad.toml: edge[0].admin_url: 'http://h/?a=1' must"),
        ("", 'admin_token_file = "nope"', "bad.toml: edge[0].admin_token_file: cannot read"),
    ],
)
def test_purge_errors(purge: str, edge: str, message: str) -> None:
    text = f"[purge]\n{purge}\n" + MINIMAL.replace('name = "fra"', f'name = "fra"\n{edge}')
    assert error(text).startswith(message)
