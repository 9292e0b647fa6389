"""`[[stream]]` tables in the edge config: values, defaults, a stream-only edge, and errors
that name file, key and problem."""

from __future__ import annotations

from typing import Any

import pytest

from edge.config import Address, StreamOrigin, from_mapping, stream_quick_start
from edge.errors import ConfigError
from edge.stream_pool import pool_config

POOL = {"origins": ["http://127.0.0.1:9001"]}


def _load(*streams: dict[str, Any], **sections: Any) -> Any:
    data: dict[str, Any] = {"stream": list(streams), **sections}
    return from_mapping(data, "edge.toml")


def _error(*streams: dict[str, Any], **sections: Any) -> str:
    with pytest.raises(ConfigError) as info:
        _load(*streams, **sections)
    return str(info.value)


def test_full_tcp_stream() -> None:
    config = _load(
        {
            "name": "db",
            "listen": "tcp://127.0.0.1:7000",
            "origins": ["127.0.0.1:7001", {"address": "[::1]:7002", "weight": 3}],
            "algorithm": "hash",
            "connect_timeout": 1,
            "idle_timeout": 60,
            "max_connections": 50,
            "proxy_protocol": "v2",
            "probe": {"interval": 2, "send": "PING\r\n", "expect": "+PONG", "rise": 1},
        },
        pool=POOL,
    )
    (s,) = config.streams
    assert (s.name, s.protocol, s.listen) == ("db", "tcp", Address("127.0.0.1", 7000))
    assert s.origins == (
        StreamOrigin(Address("127.0.0.1", 7001)),
        StreamOrigin(Address("::1", 7002), 3),
    )
    assert (s.algorithm, s.connect_timeout, s.idle_timeout, s.max_connections) == (
        "hash",
        1.0,
        60.0,
        50,
    )
    assert s.proxy_protocol == "v2" and s.url == "tcp://127.0.0.1:7000"
    assert s.probe.send == b"PING\r\n" and s.probe.expect == b"+PONG" and s.probe.rise == 1
    assert config.has_http and config.server.listen  # the HTTP side is untouched
    pool = pool_config(s)
    assert pool.algorithm == "consistent_hash"
    assert [(o.url, o.weight) for o in pool.origins] == [
        ("tcp://127.0.0.1:7001", 1),
        ("tcp://[::1]:7002", 3),
    ]


def test_udp_defaults_and_probe_off_without_send() -> None:
    config = _load({"name": "dns", "listen": "udp://127.0.0.1:5300", "origins": ["127.0.0.1:53"]})
    (s,) = config.streams
    assert s.protocol == "udp" and s.idle_timeout == 30.0 and not s.probe.enabled
    assert pool_config(s).algorithm == "weighted"


def test_stream_only_edge_has_no_http_listener_and_no_cache() -> None:
    config = _load({"name": "a", "listen": "tcp://127.0.0.1:0", "origins": ["127.0.0.1:1"]})
    assert not config.has_http and config.server.listen == () and not config.cache.enabled
    assert config.pool.origins == ()


def test_quick_start() -> None:
    config = stream_quick_start(
        "tcp://127.0.0.1:7000", ["127.0.0.1:7001", "127.0.0.1:7002"], algorithm="least_connections"
    )
    (s,) = config.streams
    assert s.name == "stream" and len(s.origins) == 2 and s.algorithm == "least_connections"
    assert pool_config(s).algorithm == "least_conn"


TCP = {"name": "s", "listen": "tcp://127.0.0.1:7000", "origins": ["127.0.0.1:7001"]}


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        ({"name": "a b"}, "stream[0].name", "expected a name"),
        ({"listen": "127.0.0.1:7000"}, "stream[0].listen", "tcp://HOST:PORT"),
        ({"listen": "sctp://127.0.0.1:1"}, "stream[0].listen", "tcp://HOST:PORT"),
        ({"listen": "tcp://127.0.0.1"}, "stream[0].listen", "missing port"),
        ({"origins": []}, "stream[0].origins", "at least one origin"),
        ({"origins": ["x:99999"]}, "stream[0].origins[0].address", "bad port"),
        ({"origins": [{"address": "127.0.0.1:1", "weight": 0}]}, "stream[0].origins", "weight"),
        ({"origins": ["127.0.0.1:1", "127.0.0.1:1"]}, "stream[0].origins", "twice"),
        ({"origins": [{"address": "127.0.0.1:1", "port": 2}]}, "stream[0].origins[0].port", ""),
        ({"algorithm": "random"}, "stream[0].algorithm", "round_robin, least_connections"),
        ({"connect_timeout": 0}, "stream[0].connect_timeout", "positive"),
        ({"idle_timeout": -1}, "stream[0].idle_timeout", "positive"),
        ({"max_connections": 0}, "stream[0].max_connections", "at least 1"),
        ({"proxy_protocol": "v3"}, "stream[0].proxy_protocol", "must be one of"),
        ({"probe": {"expect": "x"}}, "stream[0].probe.expect", "needs send"),
        ({"probe": {"rise": 0}}, "stream[0].probe.rise", "at least 1"),
        ({"probe": {"path": "/"}}, "stream[0].probe.path", "unknown key"),
        ({"extra": 1}, "stream[0].extra", "unknown key"),
    ],
)
def test_errors_name_file_key_and_problem(change: dict[str, Any], key: str, problem: str) -> None:
    message = _error({**TCP, **change}, pool=POOL)
    assert message.startswith(f"edge.toml: {key}: ") and problem in message


@pytest.mark.parametrize(
    ("stream", "key", "problem"),
    [
        ({"origins": ["localhost:53"]}, "stream[0].origins[0].address", "IP addresses"),
        ({"proxy_protocol": "v2"}, "stream[0].proxy_protocol", "TCP streams only"),
        ({"probe": {"enabled": True}}, "stream[0].probe.send", "UDP probes need"),
    ],
)
def test_udp_errors(stream: dict[str, Any], key: str, problem: str) -> None:
    udp = {"name": "u", "listen": "udp://127.0.0.1:5300", "origins": ["127.0.0.1:53"]}
    message = _error({**udp, **stream})
    assert message.startswith(f"edge.toml: {key}: ") and problem in message


def test_names_and_listeners_are_unique() -> None:
    assert "stream[1].name: 's' is used twice" in _error(TCP, TCP)
    other = {**TCP, "name": "t"}
    assert "stream[1].listen: tcp://127.0.0.1:7000 is used twice" in _error(TCP, other)
    # the same port for TCP and UDP is two listeners
    assert len(_load(TCP, {**other, "listen": "udp://127.0.0.1:7000"}).streams) == 2


def test_http_listener_without_pool_is_an_error() -> None:
    message = _error(TCP, server={"listen": ["127.0.0.1:8080"]})
    assert message == "edge.toml: server.listen: HTTP listeners need a [pool] of HTTP origins"
    with pytest.raises(ConfigError) as info:
        from_mapping({}, "edge.toml")
    assert str(info.value).startswith("edge.toml: pool: missing")
