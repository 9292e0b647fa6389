"""geoedge.lifetime in real processes: a child asked to die with its launcher does so even
when the launcher was gone before the child could ask the kernel, and passes nothing on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from geoedge.lifetime import PARENT_PID_ENV
from tests.integration.gslb_helpers import ROOT

ASK = (
    "import os; from geoedge.lifetime import PARENT_PID_ENV, die_with_launcher; "
    "print(die_with_launcher(), PARENT_PID_ENV in os.environ)"
)


def _run(parent: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != PARENT_PID_ENV}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if parent is not None:
        env[PARENT_PID_ENV] = parent
    return subprocess.run(
        [sys.executable, "-c", ASK],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_child_of_a_live_launcher_runs_and_passes_no_request_on() -> None:
    done = _run(str(os.getpid()))  # we are its parent: alive
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_a_child_whose_launcher_is_already_gone_stops_at_once() -> None:
    # The pid named is not the child's parent: as if the launcher died between starting the
    # child and the child's prctl, when no death signal would ever come.
    done = _run("1")
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""


def test_a_process_started_otherwise_is_left_alone() -> None:
    done = _run(None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
