"""A folder of unlabelled images: photos without classes, which a teacher labels for its student.

A developer often has a few hundred labelled photos and many more without labels. In
distillation the teacher's answers on the unlabelled ones are what the student learns from
(`distillation.distill`, `DistillConfig.unlabeled`). `scan_unlabeled` checks such a folder the
way `dataset.scan_folder` checks a labelled one (the same file walk, the same image check, bad
files listed and skipped), and keeps the labelled folder's held-out images out of training: a
file whose bytes equal those of any image of the data folder (training, validation or test
alike) is left out and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vgg_mobile.core.errors import DataError
from vgg_mobile.core.outputs import output_kind
from vgg_mobile.data.dataset import ImageFolder, candidate_files, check_files, is_hidden, printable
from vgg_mobile.data.images import IMAGE_SUFFIXES, MAX_PIXELS, ImageCheck

# Class-named folders shown in a refusal, at most.
_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class UnlabeledFolder:
    """A checked folder of unlabelled images.

    Attributes:
        root: The folder.
        images: The usable images, sorted by path.
        bad: Files that were skipped, each with the reason.
        duplicates: Files left out because their bytes equal those of an image of the data
            folder.
        fingerprint: A short hash of the usable images' relative paths and contents, to tell
            whether they changed.
    """

    root: Path
    images: tuple[Path, ...]
    bad: tuple[ImageCheck, ...]
    duplicates: int
    fingerprint: str

    def record(self) -> dict:
        """The manifest's `data.unlabeled` entry."""
        return {"folder": str(self.root.resolve()), "images": len(self.images),
                "duplicates": self.duplicates, "unreadable": len(self.bad),
                "fingerprint": self.fingerprint}


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hashes(paths: list[Path]) -> list[str | None]:
    """SHA-256 of each file's bytes, `None` for a file that cannot be read (the image check
    then says why)."""
    def one(path: Path) -> str | None:
        try:
            return file_sha256(path)
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, paths))


def _labelled_files(folder: ImageFolder) -> list[Path]:
    """Every image of the data folder: its training and validation examples, and any other
    image file under it (a `test/` folder, which the scan does not read)."""
    found = {e.path.resolve(): e.path for e in folder.train + (folder.val or ())}
    for path in folder.root.rglob("*"):
        relative = path.relative_to(folder.root)
        if (path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                and not is_hidden(relative)):
            found.setdefault(path.resolve(), path)
    return sorted(found.values())


def _check_place(root: Path, data_folder: ImageFolder) -> None:
    """Refuses an unlabelled folder that overlaps the data folder or holds its classes.

    Raises:
        DataError: Naming the folder, and the class folders found in it.
    """
    real, data = root.resolve(), data_folder.root.resolve()
    if real == data:
        raise DataError(f"{root}: the unlabelled folder is the data folder itself; give a folder "
                        "of images without labels, outside the data folder")
    if data in real.parents:
        raise DataError(f"{root}: the unlabelled folder lies inside the data folder "
                        f"{data_folder.root}, whose images are labelled; move the unlabelled "
                        "images out of it")
    if real in data.parents:
        raise DataError(f"{root}: the unlabelled folder contains the data folder "
                        f"{data_folder.root}, whose labelled images it would read again without "
                        "their labels; give a folder that holds unlabelled images only")
    kind = output_kind(root)
    if kind is not None:
        raise DataError(f"{root}: a vgg-mobile output folder ({kind}), not a folder of "
                        "unlabelled images")
    classes = set(data_folder.classes)
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (path.name in classes and path.is_dir()
                and not is_hidden(relative)):
            found.append(printable(relative))
    if found:
        shown = ", ".join(found[:_SHOWN]) + (f" and {len(found) - _SHOWN} more"
                                               if len(found) > _SHOWN else "")
        raise DataError(f"{root}: holds folders named like the data folder's classes ({shown}), "
                        "as a copy of a labelled folder does; unlabelled images go in a folder "
                        "without class folders (rename or move those)")


def scan_unlabeled(
    root: str | Path,
    data_folder: ImageFolder,
    max_pixels: int = MAX_PIXELS,
    strict: bool = False,
) -> UnlabeledFolder:
    """Finds and checks the images of a folder of unlabelled images.

    Every file at any depth counts except hidden ones and the names a data folder ignores
    (`dataset.candidate_files`). Each is checked as a labelled image is (`images.check_image`);
    a bad file is listed and skipped. A file whose SHA-256 equals that of any image of
    `data_folder` is left out and counted, so a copy of a validation image never trains the
    student.

    Args:
        root: The folder of unlabelled images (any layout without class folders).
        data_folder: The checked labelled folder (`dataset.scan_folder`) it goes with.
        max_pixels: Larger images are refused as possible decompression bombs.
            Defaults to `MAX_PIXELS`.
        strict: Fail on any bad file instead of skipping it. Defaults to `False`.

    Returns:
        An `UnlabeledFolder`.

    Raises:
        DataError: The folder is missing, not a folder, the data folder, inside it or holding
            it; it is a vgg-mobile output or holds one, or folders named like the data folder's
            classes;
            it is empty or has no usable image that is not a copy of a labelled one; or (with
            `strict`) any bad file.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder (the unlabelled images)")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (the unlabelled images)")
    _check_place(root, data_folder)
    files, skipped = candidate_files(root, "unlabelled images", f"the unlabelled folder {root}")
    if not files and not skipped:
        raise DataError(f"{root}: the unlabelled folder is empty (hidden files aside)")
    labelled = {h for h in _hashes(_labelled_files(data_folder)) if h is not None}
    hashes = _hashes(files)
    kept = [(path, digest) for path, digest in zip(files, hashes) if digest not in labelled]
    duplicates = len(files) - len(kept)
    checks = check_files([path for path, _ in kept], max_pixels)
    bad = [c for c in checks if not c.ok] + skipped
    if strict and bad:
        listing = "\n".join(f"  {c.path}: {c.problem}" for c in bad)
        raise DataError(f"{root}: {len(bad)} bad file(s) (strict mode):\n{listing}")
    usable = [(path, digest) for (path, digest), check in zip(kept, checks) if check.ok]
    if not usable:
        raise DataError(f"{root}: no usable unlabelled image: of {len(files) + len(skipped)} "
                        f"files, {len(bad)} unreadable and {duplicates} copies of images of the "
                        f"data folder {data_folder.root}")
    fingerprint = hashlib.sha256()
    for path, digest in usable:
        fingerprint.update(f"{path.relative_to(root)}|{digest}\n".encode())
    return UnlabeledFolder(root, tuple(path for path, _ in usable), tuple(bad), duplicates,
                           fingerprint.hexdigest()[:16])
