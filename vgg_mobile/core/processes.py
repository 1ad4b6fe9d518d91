"""Child processes that never outlive the process that started them.

The pipeline runs its benchmark stage in a child process. If the pipeline is killed (SIGKILL
leaves it no time to clean up), the child would go on writing into OUT without the pipeline's
lock while a re-run rebuilds the same folder. A child started with `child_environment()` asks
the kernel to kill it when its parent dies, and stops at once if the parent is already gone.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_ENV = "VGG_MOBILE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_environment() -> dict[str, str]:
    """The environment for a child that must die with this process."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


def follow_parent() -> None:
    """In a child started with `child_environment()`: die when the parent dies.

    Linux only (`prctl(PR_SET_PDEATHSIG)`); elsewhere, and without `PARENT_ENV`, nothing.
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before the request: then this process was re-parented already.
    if os.getppid() != int(parent):
        os._exit(1)


def stop(process, timeout: float = 30) -> None:
    """Terminates a `subprocess.Popen`, then kills it if it has not ended after `timeout` s."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
