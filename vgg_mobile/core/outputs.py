"""Output folders: which folder a command may write or replace, and one writer at a time.

The one rule, for every command that writes a folder:

- The output may not be, contain, or lie inside any of the command's inputs (data folder, run
  directory, export, bundle). This holds with `--force` too.
- A folder that exists is used only if it is empty or is a vgg-mobile output of the kind the
  command writes: it holds a manifest this project wrote (a JSON object with an integer
  `schema_version`, a `stage` and the `versions` that wrote it), or the checkpoint record of
  an interrupted training run, or a pipeline's state file. Any other folder is never deleted,
  even with `--force`; dotfiles count as content.
- Replacing a finished output with `--force` is atomic: the new one is built in a hidden
  folder beside it (`.NAME.replacing`) and renamed into place only when complete, so an
  interrupted replacement leaves the old output as it was.
- One writer at a time: `.NAME.lock` beside the output holds an exclusive lock (and names its
  holder) while a command writes it; a second writer stops at once with `OutputBusyError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterator, Sequence

from vgg_mobile.core.errors import BadInputError, OutputBusyError, RunDirError, WriteError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
# A data folder's own marker is hidden, so that no scan reads it as a stray image.
DATA_MARKER = ".vgg-mobile.json"
CHECKPOINT_STATE = ("checkpoints", "state.json")
PIPELINE_STATE = "pipeline_state.json"
REPLACING = ".replacing"
# The `kind` of the outputs that hold no model and are not an export, and what each is called.
MODEL_LESS_KINDS = {"web_demo": "web_demo", "android_assets": "android",
                    "explanations": "explanations", "monitoring": "monitoring"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _is_own_manifest(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("schema_version"), int)
            and isinstance(data.get("stage"), str)
            and isinstance(data.get("versions"), dict) and "vgg_mobile" in data["versions"])


def marker(stage: str, kind: str, **fields) -> dict:
    """The manifest of an output without a model (a demo folder, a sample dataset): what
    `output_kind` recognises, written without importing TensorFlow."""
    from vgg_mobile.core.version import __version__

    return {"schema_version": SCHEMA_VERSION, "stage": stage, "kind": kind,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **fields, "versions": {"vgg_mobile": __version__}}


def output_kind(path: str | Path) -> str | None:
    """What vgg-mobile output `path` is, or `None` if it is not one.

    Returns:
        `"run"` (a finished run with a model), `"interrupted_run"` (epoch checkpoints, no
        manifest yet), `"export"`, `"web_demo"`, `"android"`, `"explanations"`, `"sample_data"`,
        `"pipeline"`, or `None`.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if isinstance((_read_json(path / PIPELINE_STATE) or {}).get("stages"), dict):
        return "pipeline"
    marker = _read_json(path / DATA_MARKER)
    if _is_own_manifest(marker):
        return "sample_data"
    record = _read_json(path / MANIFEST)
    if _is_own_manifest(record):
        kind = record.get("kind")
        if kind in MODEL_LESS_KINDS:
            return MODEL_LESS_KINDS[kind]
        return "run" if record.get("model_file") else "export"
    state = _read_json(path.joinpath(*CHECKPOINT_STATE))
    if isinstance(state, dict) and "config" in state:
        return "interrupted_run"
    return None


def safe_name(name: str, what: str = "name") -> str:
    """Checks that `name` can be a file name's stem: letters, digits, `.`, `_`, `-`, no path.

    Raises:
        BadInputError: `name` holds a separator, `..`, a control character, or is too long.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise BadInputError(
            f"{what} must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit, without '..' (it becomes a file name inside the output folder). "
            f"Received: {what}={name!r}")
    return name


def inside(folder: str | Path, name: str, what: str, source: str | Path | None = None) -> Path:
    """`folder / name`, checked to stay inside `folder` (symbolic links followed).

    Args:
        folder: The folder the path must stay in.
        name: A relative path read from a file or a flag.
        what: What `name` is, for messages (`model_file`).
        source: The file that named it, for messages. Defaults to `folder`.

    Raises:
        RunDirError: `name` is absolute, climbs out with `..`, leads out through a link, or
            cannot be resolved (a link loop).
    """
    folder = Path(folder)
    where = source or folder
    if not isinstance(name, str) or not name or "\x00" in name or Path(name).is_absolute():
        raise RunDirError(f"{where}: {what} {name!r} is not a path inside {folder}")
    path = folder / name
    try:
        root, resolved = folder.resolve(), path.resolve()
    except (OSError, RuntimeError) as err:  # a symbolic-link loop
        raise RunDirError(f"{where}: {what} {name!r} cannot be resolved ({err})") from None
    if resolved != root and root not in resolved.parents:
        raise RunDirError(f"{where}: {what} {name!r} leads outside the folder {folder} "
                          f"(to {str(resolved)[:200]})")
    return path


def check_no_overlap(out: Path, inputs: Sequence[str | Path | None], what: str = "--out") -> None:
    """Refuses an output that is, contains, or lies inside one of the inputs.

    Raises:
        RunDirError: It overlaps an input.
    """
    resolved = out.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if resolved == source:
            raise RunDirError(f"{out}: {what} is the input {given} itself; it would be "
                                "overwritten. Choose a folder outside every input")
        if source in resolved.parents:
            raise RunDirError(f"{out}: {what} lies inside the input {given}; choose a folder "
                                "outside every input")
        if resolved in source.parents:
            raise RunDirError(f"{out}: {what} contains the input {given}; replacing it would "
                                "delete that input. Choose a folder outside every input")


def _content(path: Path) -> list[str]:
    """The entries of `path` other than vgg-mobile's own leftovers (dotfiles included)."""
    return sorted(p.name for p in path.iterdir()
                  if not (p.name.endswith(".partial") or p.name.startswith(".vgg-tmp.")))


@contextlib.contextmanager
def lock(target: str | Path) -> Iterator[Path]:
    """Holds `.NAME.lock` beside `target` exclusively; names the holder to a second writer.

    Raises:
        OutputBusyError: Another process holds the lock.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise OutputBusyError(
                f"{target}: in use by another vgg-mobile process ({_describe(holder)}); wait "
                f"for it to finish or stop it (lock file {path})") from None
        # The file may have been unlinked by its previous holder between open and lock.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(["vgg-mobile", *sys.argv[1:]])[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _describe(holder: str) -> str:
    try:
        record = json.loads(holder)
        return (f"pid {record['pid']} on {record['host']} since {record['since']}: "
                f"{record['command']}")
    except (json.JSONDecodeError, KeyError, TypeError):
        return "holder unknown"


@dataclasses.dataclass
class Output:
    """An output folder claimed by `claim_output`.

    Attributes:
        target: Where the finished output lives.
        path: Where to write it now: `target`, or the hidden `.NAME.replacing` beside it while
            a finished output is being replaced.
        resume: The claim continues an interrupted run in `path`.
        created: `path` was made by this claim (so a failure before any checkpoint removes it).
    """

    target: Path
    path: Path
    resume: bool = False
    created: bool = False
    existed: bool = False

    @property
    def replacing(self) -> bool:
        return self.path != self.target


def replacing_path(target: str | Path) -> Path:
    """The hidden folder beside `target` in which its replacement is built."""
    target = Path(target)
    return target.parent / f".{target.name}{REPLACING}"


@contextlib.contextmanager
def _unclaimed(output: Output) -> Iterator[Output]:
    yield output


def worker_output(target: str | Path, resume: bool = False, force: bool = False):
    """The output as a multi-worker non-chief sees it: it writes nothing of the run, but reads
    the chief's checkpoints, which are in the replacement folder while a run is replaced."""
    target = Path(target)
    staging = replacing_path(target)
    replacing = output_kind(target) == "run" and (_resumable(staging) if resume else force)
    return _unclaimed(Output(target, staging if replacing else target, resume=resume))


def _resumable(path: Path) -> bool:
    state = _read_json(path.joinpath(*CHECKPOINT_STATE))
    return isinstance(state, dict) and bool(state.get("checkpoint") or state.get("history"))


def _clean_leftovers(target: Path) -> None:
    """Removes hidden staging folders of `target` left by a killed process (lock held)."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)
    old = sorted(target.parent.glob(f".{glob.escape(target.name)}.replaced-*"))
    if old and not target.exists():
        os.replace(old[-1], target)  # killed between the two renames of a replacement
        old = old[:-1]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def claim_output(
    target: str | Path,
    kinds: Sequence[str],
    inputs: Sequence[str | Path | None] = (),
    force: bool = False,
    resume: bool = False,
    staged: bool = False,
    what: str = "--out",
) -> Iterator[Output]:
    """Claims `target` for writing under the rule above; commits a replacement on success.

    Args:
        target: The output folder.
        kinds: The `output_kind`s this command may replace with `force` (e.g. `("run",)`).
        inputs: Folders the command reads; `target` may not overlap any of them.
        force: Replace a finished output of one of `kinds`.
        resume: Continue an interrupted run (`"interrupted_run"`, or an interrupted
            replacement of a finished run).
        staged: Build even a new output in the hidden folder and rename it into place at the
            end, for outputs with no checkpoint to resume from: a killed process then leaves
            only a hidden leftover, which the next claim removes.
        what: How the user named the folder, for messages.

    Yields:
        An `Output`: write into `output.path`. If the block raises, a folder this claim made
        is removed unless it holds an epoch checkpoint to resume from; a finished output
        being replaced is left as it was.

    Raises:
        BadInputError, RunDirError: The folder may not be used (see the rule).
        OutputBusyError: Another process is writing it.
    """
    # Absolute, so that `.` or `runs/..` have a name and a parent to stage and lock beside.
    target = Path(os.path.abspath(target))
    if not target.name:
        raise RunDirError(f"{target}: {what} cannot be the root folder; choose another")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RunDirError(f"{target}: {what} exists and is not a folder (or is a link); "
                          "choose another")
    check_no_overlap(target, inputs, what)
    with lock(target):
        _clean_leftovers(target)
        output = _plan(target, tuple(kinds), force, resume, staged, what)
        try:
            yield output
        except BaseException as err:
            full = _full_disk(err)
            unfinished = _newest_file(output.path) if full else None
            if output.created and output.path.exists() and not _resumable(output.path):
                shutil.rmtree(output.path, ignore_errors=True)
                if output.existed and not output.replacing:
                    target.mkdir(exist_ok=True)  # the empty folder the user had made
                # Read by the CLI instead of its "resume with ..." hint: there is nothing to resume.
                err.add_note(f"{target} was left as it was: nothing had been finished to resume from"
                             if output.replacing else
                             f"nothing was kept in {target}: nothing had been finished to resume from")
            if full:
                # Named here, where the folder being written is known: a failed write() carries
                # no file name, and TensorFlow and h5py report a full disk as errors of their own.
                where = target / unfinished.relative_to(output.path) if unfinished else target
                failure = WriteError(f"{where}: could not write ({full}); the disk is full or a "
                                     "file size limit was reached. Finished outputs were kept")
                for note in getattr(err, "__notes__", ()):
                    failure.add_note(note)
                raise failure from None
            raise
        if output.replacing:
            _commit(output.path, target)


# What a full disk (or a file size limit, or a quota) says, in Python's words and in the
# messages of TensorFlow and h5py, which raise their own error types for it.
_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_FULL_DISK_WORDS = ("No space left on device", "File too large", "Disk quota exceeded")


def _full_disk(err: BaseException) -> str | None:
    """The reason, when `err` says that a write failed for lack of space; else `None`."""
    if isinstance(err, WriteError):
        return None  # already named by `core.io.write_guard`
    if isinstance(err, OSError) and err.errno in _FULL_DISK_ERRNOS:
        return os.strerror(err.errno)
    text = str(err)
    return next((words for words in _FULL_DISK_WORDS if words in text), None)


def _newest_file(folder: Path) -> Path | None:
    """The file of `folder` written last: the one a failed write was filling."""
    newest, when = None, -1.0
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            try:
                modified = path.stat().st_mtime_ns
            except OSError:
                continue
            if modified > when:
                newest, when = path, modified
    return newest


def _plan(target: Path, kinds: tuple[str, ...], force: bool, resume: bool, staged: bool,
          what: str) -> Output:
    staging = replacing_path(target)
    kind = output_kind(target) if target.exists() else None
    label = "/".join(k.replace("_", " ") for k in kinds)
    if kind is None and target.exists() and _content(target):
        entries = _content(target)
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunDirError(
            f"{target}: {what} holds files that are not a vgg-mobile output ({shown}); "
            "it is never replaced, even with --force. Choose another folder")
    if kind is not None and kind not in kinds and not (kind == "interrupted_run" and "run" in kinds):
        raise RunDirError(f"{target}: {what} holds a vgg-mobile {kind.replace('_', ' ')} output, "
                          f"not a {label}; --force replaces only a {label}. Choose another folder")
    if resume:
        if kind == "interrupted_run":
            return Output(target, target, resume=True)
        if kind == "run" and _resumable(staging):
            return Output(target, staging, resume=True)
        if kind == "run":
            raise RunDirError(f"{target}: holds a finished run; nothing to resume")
        raise RunDirError(f"{target}: no interrupted run to resume (no checkpoints/ folder)")
    if kind == "interrupted_run" and not force:
        raise RunDirError(f"{target}: holds an interrupted run; pass --resume to continue it or "
                          "--force to restart")
    if kind is not None and kind != "interrupted_run" and not force:
        raise RunDirError(f"{target}: already holds a finished vgg-mobile {kind.replace('_', ' ')} "
                          "(pass --force to replace it)")
    if staging.exists():
        shutil.rmtree(staging)
    if kind == "interrupted_run":
        shutil.rmtree(target)
    if staged or kind not in (None, "interrupted_run"):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        return Output(target, staging, created=True)
    existed = target.exists()
    target.mkdir(parents=True, exist_ok=True)
    return Output(target, target, created=True, existed=existed)


def _commit(staging: Path, target: Path) -> None:
    """Puts the finished `staging` in place of `target` (if any), then deletes the old one."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.parent / f".{target.name}.replaced-{os.getpid()}"
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
