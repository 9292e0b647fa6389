"""The health quorum across DNS nodes (gslb.quorum): verdicts from several vantage points,
the fallback to this node's view, reading a peer's /v1/edges, and the [[peers]] config."""

from __future__ import annotations

from pathlib import Path

import pytest

from gslb.config import parse_config
from gslb.errors import ConfigError
from gslb.quorum import Verdict, decide, peer_views
from tests.unit.answer_support import CONFIG


@pytest.mark.parametrize(
    ("own", "peers", "quorum", "expected"),
    [
        (False, [True, True], 0, Verdict(True, 3, 1, False)),  # one node cut off: still up
        (True, [False, False], 0, Verdict(False, 3, 2, False)),  # a majority sees it down
        (False, [False, True], 0, Verdict(False, 3, 2, False)),
        (False, [True], 0, Verdict(True, 2, 1, False)),  # 1 of 2 is no majority
        (False, [False], 0, Verdict(False, 2, 2, False)),
        (False, [True, True], 1, Verdict(False, 3, 1, False)),  # quorum 1: any vantage point
        (False, [True, None], 3, Verdict(True, 2, 1, False)),  # quorum above the views: all
        (False, [False, None], 3, Verdict(False, 2, 2, False)),
        (None, [False, False], 0, Verdict(False, 2, 2, False)),  # no view here yet
        (None, [None], 0, Verdict(None, 0, 0, False)),
    ],
)
def test_decide(own: bool | None, peers: list[bool | None], quorum: int, expected: Verdict) -> None:
    assert decide(own, peers, quorum, peers_answered=True) == expected


def test_no_peer_answered_falls_back_to_our_view() -> None:
    assert decide(False, [], 0, peers_answered=False) == Verdict(False, 1, 1, True)
    assert decide(True, [], 2, peers_answered=False) == Verdict(True, 1, 0, True)
    assert decide(None, [], 0, peers_answered=False) == Verdict(None, 0, 0, True)


def test_peer_views_reads_probed_up_only() -> None:
    body = {
        "version": 3,
        "edges": {
            "fra": {"up": True, "probe": {"probed_up": False, "quorum": {"up": True}}},
            "iad": {"up": True, "probe": {"probed_up": None}},
            "nrt": {"up": False},  # not probed there
            "bad": {"probe": {"probed_up": "yes"}},
            "odd": "not a table",
        },
    }
    assert peer_views(body) == {"fra": False, "iad": None}
    assert peer_views([]) == {} and peer_views({"edges": 1}) == {}


def test_peers_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t" * 20 + "\n")
    text = (
        CONFIG
        + '\n[health]\nquorum = 2\n\n[[peers]]\napi = "http://192.0.2.2:8053/"\n'
        + '\n[[peers]]\nname = "ns3"\napi = "https://192.0.2.3:8053"\ntoken_file = "token"\n'
    )
    cfg = parse_config(text, "t.toml", base=tmp_path)
    assert cfg.health.quorum == 2
    assert [(p.name, p.api, p.token) for p in cfg.peers] == [
        ("192.0.2.2:8053", "http://192.0.2.2:8053", None),
        ("ns3", "https://192.0.2.3:8053", "t" * 20),
    ]
    assert "t" * 20 not in repr(cfg)


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ('[[peers]]\nname = "x"\n', "t.toml: peers[0].api: is required"),
        ('[[peers]]\napi = "ftp://x"\n', "t.toml: peers[0].api: 'ftp://x' is not an http(s) URL"),
        (
            '[[peers]]\napi = "http://a:1"\n[[peers]]\napi = "http://a:1/"\n',
            "t.toml: peers[1].api: 'http://a:1' is already peers[0]",
        ),
        ('[[peers]]\napi = "http://a:1"\nurl = "x"\n', "t.toml: peers[0].url: unknown key"),
    ],
)
def test_bad_peers_config(peers: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG + "\n" + peers, "t.toml", base=Path("."))
    assert str(info.value).startswith(message)
