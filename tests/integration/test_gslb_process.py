"""The `gslb` command as a process: check-config, SIGHUP reloads, --workers 2, IPv6."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.integration.gslb_helpers import (
    EDGE_IPS,
    LONDON,
    GslbProcess,
    gslb_cmd,
    write_config,
)
from tests.integration.proc_helpers import gone

FRA, IAD = EDGE_IPS["fra"], EDGE_IPS["iad"]


# -- check-config ---------------------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path, geo_db: Path) -> None:
    path = write_config(tmp_path / "ok.toml", geo_db)
    out = gslb_cmd("check-config", str(path))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "6 pool(s)" in out.stdout and "3 edge(s)" in out.stdout


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (
            lambda t: t.replace(
                'edges = ["fra", "iad"]\npolicy = "weighted"',
                'edges = ["fra", "ams"]\npolicy = "weighted"',
            ),
            ["pool", "ams"],
        ),
        (lambda t: t.replace('policy = "failover"', 'policy = "random"'), ["policy", "random"]),
        (
            lambda t: t.replace("tcp_idle_timeout = 2.0", 'tcp_idle_timeout = "soon"'),
            ["tcp_idle_timeout"],
        ),
        (lambda t: t + "\n[[edge]\nname = broken\n", ["TOML"]),
    ],
    ids=["unknown-edge", "bad-policy", "bad-type", "bad-toml"],
)
def test_check_config_errors_name_file_key_problem(
    tmp_path: Path, geo_db: Path, mutate: object, needles: list[str]
) -> None:
    path = write_config(tmp_path / "bad.toml", geo_db)
    text = path.read_text()
    new = mutate(text)  # type: ignore[operator]
    assert new != text
    path.write_text(new)
    out = gslb_cmd("check-config", str(path))
    assert out.returncode == 1
    assert out.stdout == ""
    assert str(path) in out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    out = gslb_cmd("check-config", str(tmp_path / "absent.toml"))
    assert out.returncode == 1 and "absent.toml" in out.stderr


def test_an_unknown_log_level_option_is_refused() -> None:
    out = gslb_cmd("serve", "--example", "--log-level", "loud")
    assert out.returncode == 2 and "--log-level" in out.stderr and "'loud'" in out.stderr


def test_serve_with_bad_config_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nlisten = 5\n")
    out = gslb_cmd("serve", "-c", str(path))
    assert out.returncode == 1 and str(path) in out.stderr


# -- SIGHUP ---------------------------------------------------------------------------------------


def txt(proc: GslbProcess, name: str) -> list[str]:
    reply = proc.query(name, "TXT")
    return [rr.to_text() for rrset in reply.answer for rr in rrset]


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sighup_reload_good_and_bad(tmp_path: Path, geo_db: Path, workers: int) -> None:
    path = write_config(tmp_path / "gslb.toml", geo_db, extra_records=['"version TXT \\"one\\""'])
    proc = GslbProcess(path, "--workers", str(workers))
    try:
        assert txt(proc, "version.example.test") == ['"one"']
        assert proc.http("POST", "/v1/edges/fra/drain")[0] == 200
        assert proc.addresses("www.example.test", subnet=LONDON) == [IAD]

        write_config(path, geo_db, extra_records=['"version TXT \\"two\\""'])
        start = len(proc.lines)
        proc.signal(signal.SIGHUP)
        proc.wait_for(r"gslb: reloaded config", start=start)
        # every worker reloads; query until each answer is new (bounded)
        for _ in range(200):
            if all(txt(proc, "version.example.test") == ['"two"'] for _ in range(10)):
                break
        else:
            pytest.fail("the reloaded record never appeared\n" + proc.log_text())
        assert proc.addresses("www.example.test", subnet=LONDON) == [IAD]  # drain kept

        path.write_text(path.read_text().replace('policy = "failover"', 'policy = "nope"'))
        start = len(proc.lines)
        proc.signal(signal.SIGHUP)
        m = proc.wait_for(r"reload failed, keeping the old config: (.*)", start=start)
        assert str(path) in m.group(1) and "policy" in m.group(1)
        assert txt(proc, "version.example.test") == ['"two"']
        assert proc.addresses("www.example.test", subnet=LONDON) == [IAD]
        assert proc.proc.poll() is None
    finally:
        assert proc.stop() == 0, proc.log_text()


def _probed_config(path: Path, geo_db: Path, level: str) -> Path:
    """The test config at log level `level`, with edge nrt probed at a closed port every
    0.2 s: each failed probe logs a DEBUG line in the process that runs the probes."""
    write_config(path, geo_db)
    text = path.read_text()
    text = text.replace('level = "info"', f'level = "{level}"')
    text = text.replace(
        'name = "nrt"\n', 'name = "nrt"\nstatus_url = "http://127.0.0.1:9/__edge/status"\n'
    )
    path.write_text(text + "\n[health]\ninterval = 0.2\ntimeout = 0.2\n")
    return path


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sighup_applies_log_level(tmp_path: Path, geo_db: Path, workers: int) -> None:
    path = _probed_config(tmp_path / "gslb.toml", geo_db, "info")
    proc = GslbProcess(path, "--workers", str(workers))
    try:
        # A round of failed probes ran (nrt is down): at info it logged no DEBUG line.
        proc.wait_for(r"edge nrt is down")
        assert " DEBUG " not in proc.log_text()
        _probed_config(path, geo_db, "debug")
        start = len(proc.lines)
        proc.signal(signal.SIGHUP)
        proc.wait_for(r"gslb: reloaded config", start=start)
        # the process that probes (the only one, or the parent) logs at debug now ...
        proc.wait_for(r"DEBUG gslb\.probes: probe nrt \(.*\) failed", start=start)
        # ... and so does every process that answers queries
        prefixes = [f"\\[worker {i}\\] " for i in range(workers)] if workers > 1 else [""]
        for prefix in prefixes:
            proc.wait_for(rf"DEBUG {prefix}gslb: serving 1 zone\(s\), 6 pool\(s\)", start=start)
    finally:
        assert proc.stop() == 0, proc.log_text()


def test_log_level_option_outlasts_reloads(tmp_path: Path, geo_db: Path) -> None:
    path = _probed_config(tmp_path / "gslb.toml", geo_db, "debug")
    proc = GslbProcess(path, "--workers", "2", "--log-level", "info")
    try:
        # Each worker logs its "serving ..." DEBUG line right after its "reloaded config",
        # so the second reload's lines come after any the first reload logged.
        for _ in range(2):
            start = len(proc.lines)
            proc.signal(signal.SIGHUP)
            for slot in range(2):
                proc.wait_for(rf"\[worker {slot}\] gslb: reloaded config", start=start)
    finally:
        assert proc.stop() == 0, proc.log_text()
    assert " DEBUG " not in proc.log_text()


# -- workers --------------------------------------------------------------------------------------


def _fresh_socket_queries(proc: GslbProcess, count: int) -> list[str]:
    """`count` queries, each from a new UDP socket (new source port), so SO_REUSEPORT spreads
    them over the workers."""
    answers = []
    for _ in range(count):
        q = dns.message.make_query("www.example.test", "A", use_edns=0)
        q.use_edns(0, options=[dns.edns.ECSOption("192.0.2.0", 24)])
        reply = dns.query.udp(q, proc.host, port=proc.port, timeout=5)
        answers.extend(rr.to_text() for rr in reply.answer[0])
    return answers


def _worker_queries(proc: GslbProcess, minimum: int) -> list[dict[str, int]]:
    """Per-worker query counts once the workers reported at least `minimum` in total."""
    workers: list[dict[str, int]] = []
    for _ in range(100):  # workers report about once a second
        status, body = proc.http("GET", "/healthz")
        assert status == 200
        workers = body["workers"]
        if sum(w["queries"] for w in workers) >= minimum:
            return workers
        time.sleep(0.1)
    pytest.fail(f"workers never reported {minimum} queries: {workers}")


def test_every_worker_sees_a_drain(two_workers: GslbProcess) -> None:
    proc = two_workers
    before = sum(w["queries"] for w in _worker_queries(proc, 0))
    try:
        assert set(_fresh_socket_queries(proc, 10)) == {FRA}
        assert proc.http("POST", "/v1/edges/fra/drain")[0] == 200
        assert set(_fresh_socket_queries(proc, 40)) == {IAD}
    finally:
        assert proc.http("POST", "/v1/edges/fra/undrain")[0] == 200
    workers = _worker_queries(proc, before + 50)
    assert len(workers) == 2
    assert all(w["queries"] > 0 for w in workers), workers  # both answered, both drained


def test_metrics_are_summed_over_workers(two_workers: GslbProcess) -> None:
    _fresh_socket_queries(proc := two_workers, 20)
    for _ in range(100):
        _, text = proc.http("GET", "/metrics")
        m = re.search(
            r'gslb_queries_total\{pool="www.example.test.",qtype="A",rcode="NOERROR"\} (\d+)', text
        )
        if m and int(m.group(1)) >= 20:
            break
        time.sleep(0.1)
    else:
        pytest.fail("metrics never showed the queries")


def test_dead_worker_is_restarted(two_workers: GslbProcess) -> None:
    proc = two_workers
    _, body = proc.http("GET", "/healthz")
    victim = body["workers"][0]
    assert proc.http("POST", "/v1/edges/fra/drain")[0] == 200
    try:
        start = len(proc.lines)
        os.kill(victim["pid"], signal.SIGKILL)
        proc.wait_for(rf"worker {victim['slot']} exited", start=start)
        proc.wait_for(rf"worker {victim['slot']} ready", start=start)
        _, body = proc.http("GET", "/healthz")
        assert len(body["workers"]) == 2 and all(w["ready"] for w in body["workers"])
        assert victim["pid"] not in {w["pid"] for w in body["workers"]}
        # the new worker started from the parent's state: fra is still drained everywhere
        assert set(_fresh_socket_queries(proc, 30)) == {IAD}
    finally:
        assert proc.http("POST", "/v1/edges/fra/undrain")[0] == 200
    assert set(_fresh_socket_queries(proc, 10)) == {FRA}


# -- IPv6 -----------------------------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="::1 is not available")
def test_ipv6_listener(tmp_path: Path, geo_db: Path) -> None:
    path = write_config(tmp_path / "gslb.toml", geo_db, listen=("127.0.0.1:0", "[::1]:0"))
    proc = GslbProcess(path)
    try:
        v6 = [(h, p) for h, p in proc.udp if ":" in h]
        assert v6 and v6[0][0] == "::1"
        host, port = v6[0]
        q = dns.message.make_query("static.example.test", "A")
        assert [rr.to_text() for rr in dns.query.udp(q, host, port=port, timeout=5).answer[0]] == [
            "127.0.0.30"
        ]
        assert [rr.to_text() for rr in dns.query.tcp(q, host, port=port, timeout=5).answer[0]] == [
            "127.0.0.30"
        ]
        # a client on ::1 has no location: the answer is not tailored but still answered
        r = dns.query.udp(
            dns.message.make_query("www.example.test", "AAAA"), host, port=port, timeout=5
        )
        assert r.answer
    finally:
        assert proc.stop() == 0, proc.log_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_missing_geoip_database_exits_1(tmp_path: Path, workers: str) -> None:
    path = write_config(tmp_path / "gslb.toml", tmp_path / "absent.mmdb")
    out = gslb_cmd("serve", "-c", str(path), "--workers", workers)
    assert out.returncode == 1
    assert "absent.mmdb" in out.stderr


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.mark.skipif(
    not (_port_free(5353) and _port_free(8053)), reason="127.0.0.1:5353/8053 in use"
)
def test_example_prints_dig_commands_that_work() -> None:
    proc = GslbProcess(None, "--example")
    try:
        commands = [
            m.group(0)
            for line in proc.lines
            if (m := re.search(r"dig @\S+ -p \d+ \S+ \+subnet=\S+", line))
        ]
        assert len(commands) == 3, proc.log_text()
        answers = []
        for command in commands:
            out = subprocess.run(
                [*command.split(), "+short"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            answers.append(out.stdout.split())
        # London -> Frankfurt, New York -> Ashburn, Tokyo -> Tokyo with the bundled GeoLite2 data
        assert answers == [["127.0.0.11"], ["127.0.0.12"], ["127.0.0.13"]]
    finally:
        assert proc.stop() == 0, proc.log_text()


def test_workers_stop_when_the_parent_dies(tmp_path: Path, geo_db: Path) -> None:
    proc = GslbProcess(write_config(tmp_path / "gslb.toml", geo_db), "--workers", "2")
    try:
        _, body = proc.http("GET", "/healthz")
        pids = [w["pid"] for w in body["workers"]]
        assert len(pids) == 2
        proc.proc.kill()  # SIGKILL: no chance to stop the workers
        proc.proc.wait(timeout=10)
        left = gone(pids)  # bounded: the kernel (PR_SET_PDEATHSIG) or the closed pipe ends them
        assert not left, f"workers {left} outlived the parent"
    finally:
        proc.stop()


def _post(proc: GslbProcess, path: str, token: str | None) -> int:
    req = urllib.request.Request(proc.api + path, data=b"", method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize("workers", [1, 2])
def test_api_token_from_file_and_reloaded(tmp_path: Path, geo_db: Path, workers: int) -> None:
    path = write_config(tmp_path / "gslb.toml", geo_db)
    listen = '[api]\nlisten = "127.0.0.1:0"'
    path.write_text(path.read_text().replace(listen, listen + '\ntoken_file = "api.token"'))
    token_file = tmp_path / "api.token"
    token_file.write_text("first-token-0123456789\n")
    proc = GslbProcess(path, "--workers", str(workers))
    try:
        assert _post(proc, "/v1/edges/fra/drain", None) == 401
        assert _post(proc, "/v1/edges/fra/drain", "wrong-token-0123456789") == 401
        assert proc.addresses("www.example.test", subnet=LONDON) == [FRA]  # not drained
        assert _post(proc, "/v1/edges/fra/drain", "first-token-0123456789") == 200
        assert proc.addresses("www.example.test", subnet=LONDON) == [IAD]
        token_file.write_text("second-token-0123456789\n")
        start = len(proc.lines)
        proc.signal(signal.SIGHUP)
        proc.wait_for(r"gslb: reloaded config", start=start)
        assert _post(proc, "/v1/edges/fra/undrain", "first-token-0123456789") == 401
        assert _post(proc, "/v1/edges/fra/undrain", "second-token-0123456789") == 200
        assert proc.addresses("www.example.test", subnet=LONDON) == [FRA]
    finally:
        assert proc.stop() == 0, proc.log_text()
