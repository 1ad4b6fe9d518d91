"""Child processes that never outlive the process that started them.

The pipeline runs its benchmark stage in a child process (`call_in_child`). If the pipeline is
killed (SIGKILL leaves it no time to clean up), the child would go on writing into OUT without
the pipeline's lock while a re-run rebuilds the same folder. A child started here (or with
`child_environment()`) asks the kernel to kill it when its parent dies, and stops at once if
the parent is already gone.
"""

from __future__ import annotations

import os
import signal
import sys
from vgg_mobile.core.errors import VggMobileError

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
    if parent.isdigit():
        _die_with(int(parent))


def _die_with(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before the request: then this process was re-parented already.
    if os.getppid() != parent:
        os._exit(1)


def call_in_child(function: str, *args, what: str, **kwargs) -> None:
    """Calls `function(*args, **kwargs)` in a fresh interpreter that dies with this one.

    A fresh interpreter, not a fork: TensorFlow fixes its thread pools when it starts, so a
    child that measures speed must not inherit the pools (or the memory) of a process that has
    been training. The child imports `function`; its result is dropped.

    Args:
        function: What to call, as `"package.module:name"`.
        what: What the call is, for the error message (`"the benchmark stage"`).

    Raises:
        VggMobileError: The call raised (with its message: the child's `VggMobileError`
            keeps its words, anything else is an internal error) or the child died.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(os.getpid(), sender, function, args, kwargs),
                            name=what)
    child.start()
    sender.close()  # this end is the child's now: its exit is the end of the pipe
    outcome = None
    try:
        while outcome is None:
            try:
                outcome = receiver.recv()
            except EOFError:
                break
    finally:
        if outcome is None:
            child.terminate()
        child.join()
        receiver.close()
    if outcome is None:
        raise VggMobileError(f"{what} failed: its process ended with exit code {child.exitcode} "
                             "before it finished")
    if outcome != ("done", ""):
        raise VggMobileError(f"{what} failed: {outcome[1]}")


def _child(parent: int, sender, function: str, args: tuple, kwargs: dict) -> None:
    """The child's side of `call_in_child`: one message, `("done", "")` or `("error", why)`."""
    import importlib

    _die_with(parent)
    try:
        module, name = function.split(":")
        getattr(importlib.import_module(module), name)(*args, **kwargs)
    except VggMobileError as err:
        sender.send(("error", f"error: {err}"))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        sender.send(("error", f"internal error: {type(err).__name__}: {err}"))
    else:
        sender.send(("done", ""))
    sender.close()


def stop(process, timeout: float = 30) -> None:
    """Terminates a `subprocess.Popen`, then kills it if it has not ended after `timeout` s."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
