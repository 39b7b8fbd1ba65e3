"""Child processes that die with their stage: env workers and demo-collection pool workers.

A `kill -9` of a stage gives its children no chance to be told. On Linux each child asks
the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`); everywhere, a
daemon thread also watches the parent's pid and ends the child when it changes (the
fallback, and the cover for a parent that died before the prctl). Once the workers are
gone, multiprocessing's resource tracker reads EOF on its pipe and exits too.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, poll_s: float = 0.5) -> None:
    """Call first thing in a child process: it exits when `parent_pid` (its parent) dies."""
    parent_pid = parent_pid or os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread below still ends this process
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), name="die-with-parent", daemon=True).start()


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)
