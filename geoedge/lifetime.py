"""Tie a process's life to its parent's, so that `kill -9` of a parent leaves no orphan.

Used by the worker processes of `edge serve` and `gslb serve` (tied to the process that
forked or spawned them) and by the processes `gslb run` starts (tied to the launcher, which
asks for it through the environment: see `die_with_launcher`). It lives in this package,
not in gslb/, edge/ or geo/, because both tiers need it and neither should depend on the
other (see geoedge/__init__.py).

Linux's PR_SET_PDEATHSIG makes the kernel send a signal to this process when its parent
exits, however it exits (SIGKILL included). Two things to know about it:
- "The parent" is the *thread* that created the process: fork or spawn children from a
  thread that lives as long as the parent process does (the main thread, as we do).
- It is set by the child, after it started: if the parent died in between, no signal will
  ever come. So right after setting it we compare getppid() with the parent we expect; a
  mismatch means the parent is already gone (we were re-parented to init or to a
  subreaper), and we send ourselves the signal at once.
Elsewhere than on Linux these functions do nothing and return False.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import MutableMapping
from typing import Final

__all__ = ["PARENT_PID_ENV", "die_with_launcher", "die_with_parent", "launcher_env"]

PARENT_PID_ENV: Final = "GEOEDGE_PARENT_PID"
_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def die_with_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> bool:
    """Have the kernel send `sig` to this process when `parent` (its parent) exits.

    With `sig`'s default action (call this before installing a handler for it) a parent
    that died already ends this process here; with a handler installed, the handler runs.
    Returns False where PR_SET_PDEATHSIG does not exist; raises OSError if prctl fails.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)  # the parent left before the kernel knew to tell us
    return True


def die_with_launcher(environ: MutableMapping[str, str] = os.environ) -> bool:
    """`die_with_parent` when a launcher asked for it by setting GEOEDGE_PARENT_PID to its
    own pid (`launcher_env`). The variable is removed, so that this process's own children
    do not inherit the request. A process started any other way (a shell, systemd,
    `nohup`) is left alone: it must outlive whatever started it."""
    raw = environ.pop(PARENT_PID_ENV, None)
    if raw is None or not raw.isdigit():
        return False
    return die_with_parent(int(raw))


def launcher_env(base: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a child that should die with this process (`die_with_launcher`)."""
    return {**base, PARENT_PID_ENV: str(os.getpid())}
