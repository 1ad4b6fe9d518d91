"""Child processes die with their parent (`core.processes`)."""

from __future__ import annotations

from pathlib import Path


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
