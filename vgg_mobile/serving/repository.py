"""A model repository: numbered version folders, each an export folder, as TensorFlow Serving
lays out the versions of a model.

    models/colours/
      1/            an export folder written by `vgg-mobile convert`
      2/            a newer one: the service moves to it without a restart
      .3.partial/   not a version (hidden, not all digits): ignored, as are files

A version folder is only looked at once it is complete (`incomplete_reason`): a deployer who
copies the folder straight into the repository shows a half-copied folder for a while, and
loading it would refuse a good model. Which versions serve, which were refused and why, and the
thread that looks for new ones are here; loading and swapping a model is `app.ModelService`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from pathlib import Path
from typing import Callable

from vgg_mobile.core.errors import VggMobileError
from vgg_mobile.core.export_dir import Artifact, find_export, load_export
from vgg_mobile.core.outputs import inside
from vgg_mobile.core.run_dir import MANIFEST
from vgg_mobile.serving.models import portable

log = logging.getLogger("vgg_mobile.serving")

# A version folder's name: decimal digits only (TF Serving's layout), at most 18 of them, so
# that every version fits the 64-bit integer TF Serving reads it into.
VERSION_NAME = re.compile(r"[0-9]{1,18}")

# Each file of a folder: its path inside the folder, its size and its modification time.
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclasses.dataclass(frozen=True)
class VersionFolder:
    """One numbered folder of a repository, as one look at the disk found it.

    Attributes:
        number: The version: the folder's name read as a number.
        path: The folder.
        fingerprint: Its files' names, sizes and modification times: a refused version is
            tried again only once this changes.
        problem: Why it is not a complete export folder yet (`incomplete_reason`), or `None`.
    """

    number: int
    path: Path
    fingerprint: Fingerprint
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return self.problem is None


def _is_folder(entry: os.DirEntry) -> bool:
    """A folder, or a symbolic link (to a folder or not): a link is listed to be refused
    (`version_folders`), not followed."""
    try:
        return entry.is_symlink() or entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _link_problem(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError as err:
        target = f"unreadable: {err.strerror or err}"
    return (f"{path.name}/ is a symbolic link (to {target}), not a folder: a version is read "
            "only from inside the repository; copy the export folder in, then rename it")


def _numbered(repository: Path) -> dict[int, list[Path]]:
    """The folders of `repository` named by a version number, by number. A folder that cannot
    be listed has none: the version serving keeps serving from memory."""
    try:
        entries = sorted(os.scandir(repository), key=lambda entry: entry.name)
    except OSError:
        return {}
    numbered: dict[int, list[Path]] = {}
    for entry in entries:
        if VERSION_NAME.fullmatch(entry.name) and _is_folder(entry):
            numbered.setdefault(int(entry.name), []).append(Path(entry.path))
    return numbered


def is_repository(path: str | Path) -> bool:
    """`path` is a folder of numbered version folders, and nothing `resolve_artifact` serves
    itself: not an export folder, a pipeline output or a training run (whose messages stay).

    Raises:
        RunDirError: A damaged export manifest on the way (as `resolve_artifact` raises it).
    """
    path = Path(path)
    if not path.is_dir() or (path / MANIFEST).is_file() or find_export(path) is not None:
        return False
    return bool(_numbered(path))


def fingerprint(folder: Path) -> Fingerprint:
    """The names, sizes and modification times of every file under `folder`: what changes
    when anything in it is copied, rewritten or removed."""
    items = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed while we looked: the next look sees the change
                continue
            items.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return tuple(items)


def _bundle_files(path: Path, artifact: Artifact) -> list[Path]:
    """The files of an artifact that is a folder (`tfjs/`): those its record lists under
    `files`, else every file in it."""
    listed = artifact.get("files")
    if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
        return [inside(path, name, "listed file") for name in listed]
    return sorted(p for p in path.iterdir() if p.is_file())


def _artifact_problem(path: Path, artifact: Artifact) -> str | None:
    """Why an artifact is not there whole yet: missing, or not the recorded size."""
    if path.is_dir():
        files = _bundle_files(path, artifact)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            return f"{len(missing)} of its {len(files)} files missing ({', '.join(missing[:3])})"
        size = sum(f.stat().st_size for f in files)
    elif path.is_file():
        size = path.stat().st_size
    else:
        return "missing"
    if artifact.size_bytes is not None and size != artifact.size_bytes:
        return f"{size:,} bytes, not the {artifact.size_bytes:,} its manifest records"
    return None


def incomplete_reason(folder: Path) -> str | None:
    """Why `folder` is not a whole export folder yet, or `None` once it is.

    Whole means: its manifest loads (`load_export`), and every artifact the manifest lists is
    there at its recorded `size_bytes` (a folder artifact such as `tfjs/`: its listed files,
    adding up to it). A copy in progress fails one of these until its last byte is written.
    """
    if not (folder / MANIFEST).is_file():
        return f"{folder / MANIFEST}: missing"
    try:
        export = load_export(folder)
        for artifact in export.artifacts:
            path = export.file(artifact)
            problem = _artifact_problem(path, artifact)
            if problem:
                return f"{path}: {problem} (listed in {export.manifest_path})"
    except VggMobileError as err:
        return str(err)
    except OSError as err:  # a file removed or replaced while it was looked at
        return f"{err.filename or folder}: {err.strerror or err}"
    return None


def version_folders(repository: Path) -> list[VersionFolder]:
    """The numbered folders of `repository`, oldest first, each checked for completeness.

    Files, hidden folders and folders whose name is not all digits are not versions. Two
    folders naming one version (`1/` and `01/`) are a problem of that version: neither loads;
    so is a numbered symbolic link, which is never followed (it may lead anywhere).
    """
    folders = []
    for number, paths in sorted(_numbered(repository).items()):
        links = [path for path in paths if path.is_symlink()]
        prints = tuple(item for path in paths for item in
                       (((os.path.basename(path), -1, -1),) if path in links
                        else fingerprint(path)))
        if len(paths) > 1:
            names = ", ".join(f"{path.name}/" for path in paths)
            problem = f"{names} name the same version {number}; keep one"
        elif links:
            problem = _link_problem(links[0])
        else:
            problem = incomplete_reason(paths[0])
        folders.append(VersionFolder(number, paths[0], prints, problem))
    return folders


@dataclasses.dataclass(frozen=True)
class Refused:
    """A version that failed to load or to pass its check, and its folder as it was then."""

    fingerprint: Fingerprint
    reason: str


class Repository:
    """What the service knows of its repository: the newest version it loaded, the versions
    it refused (not tried again until their folder changes), and what it has logged.

    Only versions newer than the newest loaded are candidates. So a rollback to an older
    version holds until a version newer than any loaded arrives, and an older folder added
    later never replaces a newer model.

    The state is changed by one thread at a time (the service's reload lock); readers see
    whole dicts, since each change assigns a new one.

    Attributes:
        path: The repository folder, absolute.
        newest: The highest version loaded so far, or `None`.
        refused: Refused versions by number.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).absolute()
        self.newest: int | None = None
        self.refused: dict[int, Refused] = {}
        self._reported: dict[int, Fingerprint] = {}
        self._gone: int | None = None

    def scan(self) -> list[VersionFolder]:
        return version_folders(self.path)

    def is_refused(self, folder: VersionFolder) -> bool:
        """Refused before, and its folder unchanged since."""
        record = self.refused.get(folder.number)
        return record is not None and record.fingerprint == folder.fingerprint

    def candidates(self, folders: list[VersionFolder]) -> list[VersionFolder]:
        """The versions worth loading, newest first: complete, newer than the newest loaded,
        and not refused as they are."""
        return [folder for folder in reversed(folders)
                if folder.complete and (self.newest is None or folder.number > self.newest)
                and not self.is_refused(folder)]

    def refuse(self, folder: VersionFolder, reason: str) -> None:
        """Records and logs a version that failed; it is not tried again as it is."""
        self.refused = {**self.refused, folder.number: Refused(folder.fingerprint, reason)}
        log.warning("version %d of %s refused: %s", folder.number, self.path, reason)

    def loaded(self, folder: VersionFolder) -> None:
        self.newest = folder.number if self.newest is None else max(self.newest, folder.number)
        self.refused = {n: r for n, r in self.refused.items() if n != folder.number}

    def newest_refusal(self) -> tuple[int, Refused] | None:
        """The newest refused version newer than the newest loaded: what a reload that found
        nothing to serve reports."""
        newer = [n for n in self.refused if self.newest is None or n > self.newest]
        return (max(newer), self.refused[max(newer)]) if newer else None

    def note(self, folders: list[VersionFolder], serving: int | None) -> None:
        """Logs what an operator should know of the disk: an incomplete version (once for each
        state of its folder), and the serving version's folder gone (once). Forgets the
        refusals of folders that are gone."""
        numbers = {folder.number for folder in folders}
        for folder in folders:
            if folder.problem and self._reported.get(folder.number) != folder.fingerprint:
                log.info("version %d of %s is incomplete, not loaded until it is whole: %s",
                         folder.number, self.path, folder.problem)
        self._reported = {f.number: f.fingerprint for f in folders if f.problem}
        self.refused = {n: r for n, r in self.refused.items() if n in numbers}
        if serving is not None and serving not in numbers:
            if self._gone != serving:
                log.warning("the folder of version %d, serving now, is gone from %s: it keeps "
                            "serving from memory", serving, self.path)
                self._gone = serving
        else:
            self._gone = None

    def states(self, folders: list[VersionFolder], serving: int,
               previous: int | None) -> list[dict]:
        """Each known version, oldest first, with its state: `serving`, `loaded` (the one a
        rollback returns to), `refused` or `incomplete` (with the reason), or `available`
        (complete, not loaded). A loaded version whose folder is gone says so.

        Reasons hold no absolute path (`portable`): `GET /model` is public.
        """
        on_disk = {folder.number: folder for folder in folders}
        loaded = {serving: "serving", previous: "loaded"}
        answer = []
        for number in sorted(set(on_disk) | {n for n in loaded if n is not None}):
            folder = on_disk.get(number)
            entry: dict = {"version": str(number)}
            if number in loaded:
                entry["state"] = loaded[number]
                if folder is None:
                    entry["folder"] = "gone: served from memory"
            elif self.is_refused(folder):
                entry.update(state="refused", reason=self.refused[number].reason)
            elif not folder.complete:
                entry.update(state="incomplete", reason=folder.problem)
            else:
                entry["state"] = "available"
            if "reason" in entry:
                entry["reason"] = portable(entry["reason"], self.path)
            answer.append(entry)
        return answer


class Watcher:
    """Calls `poll` every `seconds` on a daemon thread until `stop`. A poll that raises is
    logged and the next one runs: the watcher must outlive a bad day on the disk."""

    def __init__(self, poll: Callable[[], None], seconds: float):
        self.seconds = seconds
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repository-watcher",
                                        daemon=True)

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops polling; waits up to `timeout` seconds for a poll loading a model."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - logged; the next poll runs
                log.exception("looking for new model versions failed; looking again in %g s",
                              self.seconds)
