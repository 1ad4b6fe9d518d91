"""Child processes die with their parent (`core.processes`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgg_mobile.core.errors import VggMobileError
from vgg_mobile.core.processes import call_in_child


def test_a_call_in_a_child_returns_or_raises_with_the_childs_words(tmp_path):
    (tmp_path / "a").write_text("x")
    call_in_child("shutil:copyfile", tmp_path / "a", tmp_path / "b", what="a copy")
    assert (tmp_path / "b").read_text() == "x"  # the child did the work
    with pytest.raises(VggMobileError, match=r"^a name check failed: error: name must be 1-100"):
        call_in_child("vgg_mobile.core.outputs:safe_name", "../x", what="a name check")
    with pytest.raises(VggMobileError, match=r"a copy failed: internal error: FileNotFoundError"):
        call_in_child("shutil:copyfile", tmp_path / "missing", tmp_path / "c", what="a copy")
    with pytest.raises(VggMobileError, match=r"an exit failed: its process ended with exit code 3"):
        call_in_child("os:_exit", 3, what="an exit")


def test_a_call_in_a_child_dies_with_its_caller(tmp_path):
    """The pipeline's benchmark child: SIGKILL of the pipeline leaves no orphan behind."""
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", (
        "from vgg_mobile.core.processes import call_in_child; "
        "call_in_child('time:sleep', 120, what='a sleep')")])
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.monotonic() + 60
    while not _spawned(children):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    pid, = _spawned(children)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.1)


def _spawned(children: Path) -> list[int]:
    """The multiprocessing children (not its resource tracker) of the process `children` is of."""
    try:
        pids = [int(p) for p in children.read_text().split()]
    except OSError:
        return []
    return [pid for pid in pids if b"spawn_main" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_child_dies_with_its_parent(tmp_path):
    """The pipeline's benchmark child: SIGKILL of the pipeline leaves no orphan behind."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    child = (f"import os, time; from vgg_mobile.core.processes import follow_parent; "
             f"follow_parent(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
             f"time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys; from vgg_mobile.core.processes import child_environment; "
        f"subprocess.run([sys.executable, '-c', {child!r}], env=child_environment())")])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
