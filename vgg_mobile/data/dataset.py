"""Image-folder datasets: scanning and checking the files, splitting, and the tf.data pipeline.

Layouts accepted:
  DATA/<class>/**/<image>                      one pool, split here (seeded, stratified)
  DATA/train/<class>/..., DATA/val/<class>/... pre-split by the user

Every file is decoded once by `scan_folder` before any training starts, so a corrupt image is
reported with its path up front rather than crashing an epoch half-way through.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vgg_mobile.core.errors import DataError
from vgg_mobile.core.outputs import output_kind
from vgg_mobile.data.images import MAX_PIXELS, DecodeBudget, ImageCheck, check_image, load_rgb

# Files that operating systems and tools leave in folders; never reported as bad images.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "labels.txt", "readme.md", "readme.txt"}

# Decoded pixels, in bytes, that the file check holds at once across its threads; a single
# image larger than this is checked alone.
CHECK_MEMORY = 256 * 2**20

# Unicode categories that no class name may hold: control and format characters, line and
# paragraph separators (a newline in a name would split its line of labels.txt in two).
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}


@dataclasses.dataclass(frozen=True)
class Example:
    path: Path
    label: int


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A checked image folder.

    Attributes:
        root: The data folder.
        classes: Class names, sorted; a label is an index into this tuple.
        train: Usable examples of the training pool (all of them for an unsplit folder).
        val: Usable examples of a user-provided `val/` folder, or `None` if unsplit.
        bad: Files that were skipped, each with the reason.
        converted: Files that needed a conversion to RGB, with what was done.
    """

    root: Path
    classes: tuple[str, ...]
    train: tuple[Example, ...]
    val: tuple[Example, ...] | None
    bad: tuple[ImageCheck, ...]
    converted: tuple[ImageCheck, ...]

    @property
    def presplit(self) -> bool:
        return self.val is not None

    def class_counts(self, examples: tuple[Example, ...] | None = None) -> dict[str, int]:
        examples = self.train if examples is None else examples
        counts = np.bincount([e.label for e in examples], minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def fingerprint(self) -> str:
        """A short hash of the file list and sizes, to tell whether the data changed."""
        digest = hashlib.sha256()
        for example in sorted(self.train + (self.val or ()), key=lambda e: str(e.path)):
            stat = example.path.stat()
            rel = example.path.relative_to(self.root)
            digest.update(f"{rel}|{example.label}|{stat.st_size}\n".encode())
        return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Split:
    train: tuple[Example, ...]
    val: tuple[Example, ...]


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_output(folder: Path) -> bool:
    """Whether `folder` is something vgg-mobile wrote (`core.outputs.output_kind`): a run, an
    export, an interrupted run, a demo, a sample dataset or a pipeline's output."""
    return output_kind(folder) is not None


def _is_utf8(name: str) -> bool:
    """Whether a name read from the disk is valid UTF-8: Python decodes other bytes to lone
    surrogates, which no JSON, log line or `labels.txt` written as UTF-8 can hold."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str | Path) -> str:
    """A path as text that can be printed and written anywhere: the bytes of a name that is
    not valid UTF-8 shown as `\\xNN` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _shown(name: str) -> str:
    """A folder name quoted for a message: `repr()`, or the raw bytes for a non-UTF-8 one."""
    return repr(name) if _is_utf8(name) else repr(os.fsencode(name))


def _name_problem(name: str) -> str | None:
    """Why a folder name cannot be a class name (one line of `labels.txt`), or `None`."""
    if not _is_utf8(name):
        return "is not valid UTF-8 (bytes shown as \\xNN)"
    if any(unicodedata.category(ch) in _UNPRINTABLE for ch in name):
        return "holds a control character (a newline, tab or other unprintable character)"
    if name != name.strip():
        return "starts or ends with whitespace"
    return None


def _check_class_dirs(root: Path, dirs: list[Path]) -> None:
    """Refuses would-be class folders of `root` that are not classes of images.

    Raises:
        DataError: A name that `labels.txt` cannot hold, a vgg-mobile output, or a link to
            the data folder itself or to a folder above it.
    """
    real_root = root.resolve()
    for folder in dirs:
        problem = _name_problem(folder.name)
        if problem:
            raise DataError(f"{printable(root)}: the class folder name {_shown(folder.name)} {problem}, which "
                            "labels.txt and later commands cannot hold; rename the folder")
        real = folder.resolve()
        if real == real_root or real in real_root.parents:
            raise DataError(f"{folder}: a link to {real}, the data folder itself or a folder "
                            "above it, not a class of images; remove the link")
        if _is_output(folder):
            raise DataError(f"{folder}: a vgg-mobile output folder, not a class of images; "
                            "move it out of the data folder")


def _check_distinct(dirs: list[Path]) -> None:
    """Refuses class folders that are (through links) the same folder, or one inside another,
    whose images would be read twice, under two labels.

    Raises:
        DataError: Naming both folders.
    """
    # With a separator appended, a folder lies inside another exactly when the other's key is
    # a prefix of its own; in sorted order such a pair (or a pair of equals) is adjacent.
    keys = sorted((str(d.resolve()).rstrip("/") + "/", str(d)) for d in dirs)
    for (outer, outer_dir), (inner, inner_dir) in zip(keys, keys[1:]):
        if inner.startswith(outer):
            how = (f"are the same folder ({outer[:-1]})" if inner == outer
                   else f"overlap ({inner_dir} lies inside {outer_dir})")
            raise DataError(f"{outer_dir} and {inner_dir} {how} through a link: the same images "
                            "would be read under two class names; remove one of them")


# Why a file whose name is not valid UTF-8 is skipped: the manifest, the logs and every later
# command name the images they read, as UTF-8.
NOT_UTF8 = "file name is not valid UTF-8 (bytes shown as \\xNN); rename the file to use it"


def is_hidden(relative: Path) -> bool:
    """Whether a path, relative to the folder being read, is hidden or inside a hidden folder
    (a part starting with "."): every walk of a folder of images skips it."""
    return any(part.startswith(".") for part in relative.parts)


def candidate_files(folder: Path, holds: str | None = None,
                    within: str = "the data folder") -> tuple[list[Path], list[ImageCheck]]:
    """The files of a folder of images, at any depth, except hidden and ignored ones; and those
    skipped for a name that is not UTF-8 (under a printable form of their path).

    Args:
        folder: A class folder, or a folder of unlabelled images.
        holds: What the folder's files are, for the message refusing an output folder inside it.
            Defaults to "images of the class NAME" (`folder`'s name).
        within: The folder to move such an output out of, for the same message. Defaults to
            `"the data folder"`.

    Raises:
        DataError: A subfolder is a vgg-mobile output, whose files are not the folder's images.
    """
    holds = holds or f"images of the class {folder.name!r}"
    files, skipped = [], []
    for p in sorted(folder.rglob("*")):
        relative = p.relative_to(folder)
        if is_hidden(relative):
            continue
        if p.is_dir() and _is_output(p):
            raise DataError(f"{printable(p)}: a vgg-mobile output folder, not {holds}; "
                            f"move it out of {within}")
        if p.is_file() and p.name.lower() not in _IGNORED_NAMES:
            if _is_utf8(str(relative)):
                files.append(p)
            else:
                skipped.append(ImageCheck(Path(printable(p)), problem=NOT_UTF8))
    return files, skipped


def _check_pools(pools: list[Path]) -> None:
    """Checks the would-be class folders of every pool, before any image is decoded."""
    found = {pool: _class_dirs(pool) for pool in pools}
    for pool, dirs in found.items():
        _check_class_dirs(pool, dirs)
    _check_distinct([d for dirs in found.values() for d in dirs])


def check_files(paths: list[Path], max_pixels: int) -> list[ImageCheck]:
    """Checks files 8 at a time, fewer when their decoded pixels would not fit `CHECK_MEMORY`."""
    budget = DecodeBudget(CHECK_MEMORY)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda p: check_image(p, max_pixels, budget), paths))


def _scan_pool(
    root: Path, classes: tuple[str, ...] | None, max_pixels: int
) -> tuple[tuple[str, ...], list[Example], list[ImageCheck], list[ImageCheck]]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    dirs = _class_dirs(root)
    names = tuple(d.name for d in dirs)
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(
                f"{root}: class folders {unknown} are not in the training classes {list(classes)}"
            )
    else:
        classes = names
    stray = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.name.lower() not in _IGNORED_NAMES]
    bad = [ImageCheck(Path(printable(p)), problem="not inside a class folder") for p in stray]
    examples, converted = [], []
    empty = []
    candidates = {class_dir: candidate_files(class_dir) for class_dir in dirs}
    for class_dir in dirs:
        files, skipped = candidates[class_dir]
        checks = check_files(files, max_pixels) + skipped
        good = [c for c in checks if c.ok]
        bad.extend(c for c in checks if not c.ok)
        converted.extend(c for c in good if c.notes)
        if not good:
            n_bad = len(checks) - len(good)
            empty.append(f"{class_dir} (no files)" if not checks
                         else f"{class_dir} (all {n_bad} files unusable)")
        label = classes.index(class_dir.name)
        examples.extend(Example(c.path, label) for c in good)
    if empty:
        raise DataError("class folders without a usable image: " + "; ".join(empty))
    return classes, examples, bad, converted


def scan_folder(
    root: str | Path,
    strict: bool = False,
    max_pixels: int = MAX_PIXELS,
    classes: tuple[str, ...] | None = None,
) -> ImageFolder:
    """Finds and checks every image of a data folder.

    Args:
        root: The data folder (`<class>/` subfolders, or `train/` and `val/` with them).
        strict: Fail on the first bad file instead of skipping bad files. Defaults to `False`.
        max_pixels: Larger images are refused as possible decompression bombs.
            Defaults to `MAX_PIXELS`.
        classes: Expected class names (e.g. a trained model's); class folders outside this
            list are an error, and labels index this tuple. Defaults to the folder's own.

    Returns:
        An `ImageFolder`.

    Raises:
        DataError: The folder is missing, has fewer than two classes, no images, a class folder
            without a usable image, or (with `strict`) any bad file; a would-be class folder
            that is a vgg-mobile output, has a name `labels.txt` cannot hold, or links to the
            data folder, a folder above it, or another class folder (checked before any image
            is decoded).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    top = _class_dirs(root)
    sub = {d.name for d in top}
    presplit = "train" in sub and sub <= {"train", "val", "test"}
    if presplit:
        _check_class_dirs(root, top)  # train/, val/ and test/ themselves
    _check_pools([root / name for name in ("train", "val") if name in sub] if presplit else [root])
    if presplit:
        classes, train, bad, converted = _scan_pool(root / "train", classes, max_pixels)
        val: list[Example] | None = []
        if (root / "val").is_dir():
            _, val, bad_val, conv_val = _scan_pool(root / "val", classes, max_pixels)
            bad += bad_val
            converted += conv_val
    else:
        classes, train, bad, converted = _scan_pool(root, classes, max_pixels)
        val = None
    if not train and not val:
        raise DataError(f"{root}: no images found (expected <class>/<image> subfolders)")
    if len(classes) < 2:
        raise DataError(
            f"{root}: a classifier needs at least two class folders; found {len(classes)}"
            + (f" ({classes[0]!r})" if classes else "")
        )
    if strict and bad:
        listing = "\n".join(f"  {c.path}: {c.problem}" for c in bad)
        raise DataError(f"{root}: {len(bad)} bad file(s) (strict mode):\n{listing}")
    return ImageFolder(root, tuple(classes), tuple(train), None if val is None else tuple(val),
                       tuple(bad), tuple(converted))


def split(folder: ImageFolder, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Splits a folder into training and validation examples.

    A pre-split folder keeps the user's split. Otherwise (and for a `train/` without images in
    `val/`) each class is shuffled with `seed` and `val_fraction` of it (at least one image
    when the class has two or more) goes to validation, so every class is represented on
    both sides.

    Args:
        folder: A checked folder from `scan_folder`.
        val_fraction: Share of each class held out, in `[0, 1)`. Defaults to `0.2`.
        seed: Seed of the shuffle. Defaults to `0`.

    Returns:
        A `Split`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1). Received: val_fraction={val_fraction}")
    if folder.val:
        return Split(folder.train, folder.val)
    train, val = [], []
    for label in range(len(folder.classes)):
        members = sorted((e for e in folder.train if e.label == label), key=lambda e: str(e.path))
        order = np.random.default_rng([seed, label]).permutation(len(members))
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[i] for i in order[:n_val])
        train.extend(members[i] for i in order[n_val:])
    return Split(tuple(train), tuple(val))


# A class with fewer images than this share of the largest class's is warned about: at 1:5
# and beyond, plain cross-entropy trains a model that mostly misses the small class.
IMBALANCE_RATIO = 0.2


def imbalance_warning(classes: tuple[str, ...], examples: tuple[Example, ...],
                      remedy: str = "") -> str:
    """A warning naming the smallest and the largest class of `examples` when the smallest
    has under `IMBALANCE_RATIO` of the largest's images, and what to do; "" otherwise.

    Args:
        classes: Class names; a label indexes this tuple.
        examples: The training examples.
        remedy: What the training already does about it (e.g. "class weights are on"),
            said instead of the advice. Defaults to none.
    """
    counts = np.bincount([e.label for e in examples], minlength=len(classes))
    if len(counts) < 2 or not counts.max():
        return ""
    small, large = int(counts.argmin()), int(counts.argmax())
    if counts[small] >= IMBALANCE_RATIO * counts[large]:
        return ""
    return (f"warning: unbalanced classes: the smallest, {classes[small]!r}, has "
            f"{counts[small]} training image{'' if counts[small] == 1 else 's'}, under a fifth "
            "of the largest, "
            f"{classes[large]!r}, with {counts[large]}: "
            + (remedy if remedy else
               "a model trained on them will miss the small class more often; weight the loss "
               "by class (`class_weights = true`, --class-weights) or use the focal loss "
               "(`focal_gamma = 2`, --focal-gamma 2), or add images of the small class"))


def class_weights(examples: tuple[Example, ...], num_classes: int) -> dict[int, float]:
    """Balanced class weights `n / (num_classes * n_c)`, for imbalanced folders."""
    counts = np.bincount([e.label for e in examples], minlength=num_classes).astype(float)
    total = counts.sum()
    return {i: float(total / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


# The ready augmentation policies: `standard` is a random resized crop, a flip (when the
# images may be mirrored) and colour jitter; `trivialaugment` is the same crop and flip, then
# one TrivialAugment-wide operation per image (`augment_ops.trivial_augment`) instead of the
# jitter.
POLICIES = ("standard", "trivialaugment")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation; validation and evaluation never augment.

    Attributes:
        crop_scale: Range of the random resized crop's area, as a share of the image.
        flip: Random horizontal flips.
        brightness: Maximum brightness change, as a share of 255.
        contrast: Maximum contrast change factor offset (e.g. 0.2 means 0.8 to 1.2).
        saturation: Maximum saturation change factor offset.
        policy: One of `POLICIES`; `trivialaugment` adds one random operation per image.
        colour: Whether the images have colour: TrivialAugment changes the saturation of
            colour images only.
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    saturation: float = 0.2
    policy: str = "standard"
    colour: bool = True

    def __post_init__(self):
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise DataError(f"crop_scale must satisfy 0 < low <= high <= 1. Received: {self.crop_scale}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise DataError(f"{name} must be in [0, 1). Received: {getattr(self, name)}")
        if self.policy not in POLICIES:
            raise DataError(f"policy must be one of {', '.join(POLICIES)}. "
                            f"Received: policy={self.policy!r}")


NO_AUGMENTATION = Augmentation(crop_scale=(1.0, 1.0), flip=False, brightness=0.0,
                               contrast=0.0, saturation=0.0)

# Inputs up to this side get `SMALL_IMAGE_AUGMENTATION`'s crop and colour, larger ones
# `Augmentation()`'s.
SMALL_IMAGE_MAX = 64
# Small inputs are often digits, letters, icons or thumbnails, where a tight crop cuts the
# object off: they get a mild shift and scale with brightness and contrast. Whether they are
# mirrored is the data's business (`data.mirror`); without that measurement, they are not
# (a mirror image of a digit or a letter can be another class: 2 and 5, b and d).
SMALL_IMAGE_AUGMENTATION = Augmentation(crop_scale=(0.75, 1.0), flip=False, brightness=0.1,
                                        contrast=0.2, saturation=0.0)


def augmentation_for(augment: bool, image_size: int, flip: bool | None = None,
                     policy: str = "standard", colour: bool = True,
                     crop_scale: float | None = None,
                     colour_jitter: float | None = None) -> Augmentation:
    """The training augmentation of a model with input side `image_size`.

    Args:
        augment: Whether to augment at all (the configs' `augment`).
        image_size: The largest input side the augmented images feed.
        flip: Mirror images at random; `None` leaves the size's default (none up to
            `SMALL_IMAGE_MAX` px, flips above). `data.augmentation.choose_augmentation`
            decides it from the data. Defaults to `None`.
        policy: One of `POLICIES`. Defaults to `"standard"`.
        colour: Whether the images have colour (for TrivialAugment). Defaults to `True`.
        crop_scale: The smallest share of the image's area a random crop keeps (1: no crop);
            `None` leaves the size's default. Defaults to `None`.
        colour_jitter: The largest brightness change, as a share of 255, with contrast and
            saturation changed by up to twice it (0: none); `None` leaves the size's default.
            TrivialAugment replaces the jitter with its own operations. Defaults to `None`.

    Returns:
        `NO_AUGMENTATION`, or the crop and colour of `SMALL_IMAGE_AUGMENTATION` (up to
        `SMALL_IMAGE_MAX` px) or of `Augmentation()` (random resized crop from 60% of the area,
        colour jitter), with `flip`, `crop_scale` and `colour_jitter` when given; under
        `trivialaugment` the colour jitter is left to TrivialAugment's operations.
    """
    if not augment:
        return NO_AUGMENTATION
    base = SMALL_IMAGE_AUGMENTATION if image_size <= SMALL_IMAGE_MAX else Augmentation()
    changes = dict(policy=policy, colour=colour)
    if flip is not None:
        changes["flip"] = flip
    if crop_scale is not None:
        changes["crop_scale"] = (float(crop_scale), 1.0)
    if colour_jitter is not None:
        changes.update(brightness=float(colour_jitter), contrast=2 * float(colour_jitter),
                       saturation=2 * float(colour_jitter))
    if policy == "trivialaugment":
        changes.update(brightness=0.0, contrast=0.0, saturation=0.0)
    return dataclasses.replace(base, **changes)


def resize_pixels(image, size: int | tuple[int, int]):
    """Resizes RGB pixels like every exported model expects: the one resize of training,
    evaluation, conversion and serving.

    Bilinear with half-pixel centres and no antialiasing, the same operation as TensorFlow.js's
    `resizeBilinear(..., halfPixelCenters=true)`, so browser and Python agree; the result is
    rounded and clipped to `uint8`, as a decoded image file would be.

    Args:
        image: `uint8` pixels `(height, width, 3)`: a tensor, or a NumPy array (run eagerly).
        size: The side of the square output, or its `(height, width)`.

    Returns:
        A `uint8` tensor `(height, width, 3)` of the new size.
    """
    import tensorflow as tf

    height, width = (size, size) if isinstance(size, int) else size
    image = tf.image.resize(image, [height, width], method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _bilinear_taps(in_size: int, out_size: int):
    """For each output row (or column): the two input rows it reads and the weight of the
    second, as TensorFlow's CPU kernel computes them (half-pixel centres, float32)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - floor).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _bilinear_plan(source: tuple[int, int], size: tuple[int, int]):
    """The four input pixels of each output pixel, as indices into the flattened input
    `(4, height, width)`, and the weights across `(1, width, 1)` and down `(height, 1, 1)`."""
    top, bottom, y_lerp = _bilinear_taps(source[0], size[0])
    left, right, x_lerp = _bilinear_taps(source[1], size[1])
    rows = np.stack([top, top, bottom, bottom])[:, :, None] * source[1]
    columns = np.stack([left, right, left, right])[:, None, :]
    return rows + columns, x_lerp[None, :, None], y_lerp[:, None, None]


def resize_array(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """`resize_pixels` in NumPy, for one image outside a TensorFlow graph (the service).

    The same arithmetic as TensorFlow's bilinear kernel, in float32 and in its order, so the
    pixels are those of `resize_pixels` (tests compare them); without TensorFlow's per-op
    overhead, which costs more than the resize itself on a small image, and reading only the
    input pixels that the output needs.

    Args:
        image: `uint8` pixels `(height, width, 3)`.
        size: The side of the square output, or its `(height, width)`.

    Returns:
        `uint8` pixels `(height, width, 3)` of the new size.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    index, x_lerp, y_lerp = _bilinear_plan(image.shape[:2], size)
    top_left, top_right, bottom_left, bottom_right = (
        np.take(image.reshape(-1, image.shape[2]), index, axis=0).astype(np.float32))
    top_right -= top_left
    top_right *= x_lerp
    top_left += top_right  # the top row: top_left + (top_right - top_left) * x_lerp
    bottom_right -= bottom_left
    bottom_right *= x_lerp
    bottom_left += bottom_right
    bottom_left -= top_left
    bottom_left *= y_lerp
    top_left += bottom_left  # top + (bottom - top) * y_lerp
    return np.clip(np.round(top_left, out=top_left), 0, 255, out=top_left).astype(np.uint8)


def decode_and_resize(path, image_size: int):
    """Graph op: reads a file with `load_rgb` and resizes it with `resize_pixels`."""
    import tensorflow as tf

    def _load(p):
        if isinstance(p, np.ndarray):
            p = p.item()
        return load_rgb(p.decode() if isinstance(p, bytes) else str(p))

    image = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return resize_pixels(image, image_size)


def _augment(image, image_size: int, aug: Augmentation):
    import tensorflow as tf

    if aug.crop_scale != (1.0, 1.0):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([0, 0, 4], tf.float32),
            area_range=aug.crop_scale, aspect_ratio_range=(3 / 4, 4 / 3),
            min_object_covered=0.0, use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
    image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bilinear")
    if aug.flip:
        image = tf.image.random_flip_left_right(image)
    if aug.brightness:
        image = image + tf.random.uniform([], -aug.brightness, aug.brightness) * 255.0
    if aug.contrast:
        image = tf.image.random_contrast(image, 1 - aug.contrast, 1 + aug.contrast)
    if aug.saturation:
        image = tf.image.random_saturation(image, 1 - aug.saturation, 1 + aug.saturation)
    if aug.policy == "trivialaugment":
        from vgg_mobile.data.augment_ops import trivial_augment

        image = trivial_augment(tf.clip_by_value(image, 0.0, 255.0),
                                tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32),
                                colour=aug.colour)
    return tf.clip_by_value(image, 0.0, 255.0)


def make_dataset(
    examples: tuple[Example, ...],
    image_size: int,
    batch_size: int,
    num_classes: int,
    training: bool = False,
    augmentation: Augmentation = NO_AUGMENTATION,
    seed: int = 0,
    one_hot: bool = True,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    class_weights: dict[int, float] | None = None,
):
    """Builds the tf.data pipeline: parallel decode, resize, cache, shuffle, augment, batch,
    mix (MixUp / CutMix), prefetch.

    Args:
        examples: The examples to read.
        image_size: Side of the square model input.
        batch_size: Images per batch.
        num_classes: Number of classes (for one-hot labels).
        training: Shuffle every epoch and augment. Defaults to `False`.
        augmentation: Used when `training`. Defaults to no augmentation.
        seed: Seed of the shuffle and augmentation. Defaults to `0`.
        one_hot: Yield one-hot labels (needed for label smoothing). Defaults to `True`.
        mixup_alpha: With `training`, MixUp's Beta parameter (`augment_ops.mix_batch`): each
            batch mixed with a shuffled copy of itself, labels alike; 0 turns it off. Defaults
            to `0.0`.
        cutmix_alpha: The same for CutMix; with both above 0 each batch gets one of the two,
            at even odds. Defaults to `0.0`.
        class_weights: With mixing, each image's loss weight by its class (`class_weights()`),
            mixed as its label is, yielded as a third element (Keras's `class_weight` would
            weigh a mixed image by its larger share alone). Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(float32 pixels in [0, 255], label)` batches; of `(pixels,
        label, weight)` batches when mixing with `class_weights`.
    """
    import tensorflow as tf

    if not examples:
        raise DataError("no examples to build a dataset from")
    mixing = training and (mixup_alpha > 0 or cutmix_alpha > 0)
    if mixing and not one_hot:
        raise DataError("MixUp and CutMix mix the labels, which needs one-hot labels "
                        "(one_hot=True)")
    paths = [str(e.path) for e in examples]
    labels = [e.label for e in examples]
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(lambda p, y: (decode_and_resize(p, image_size), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.cache()
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        tf.random.set_seed(seed)
        ds = ds.map(lambda x, y: (_augment(x, image_size, augmentation), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if one_hot:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    ds = ds.batch(batch_size)
    if mixing:
        from vgg_mobile.data.augment_ops import mix_batch

        table = (None if class_weights is None else
                 tf.constant([class_weights.get(i, 0.0) for i in range(num_classes)], tf.float32))
        # One seed per batch from a seeded stream that changes every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def mix(batch, seed_pair):
            x, y = batch
            weights = None if table is None else tf.gather(table, tf.argmax(y, axis=-1))
            return mix_batch(x, y, seed_pair, mixup_alpha, cutmix_alpha, weights)

        ds = tf.data.Dataset.zip((ds, seeds)).map(mix)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_images(examples, image_size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decodes examples through the training pipeline: `(float32 pixels, int labels)` arrays."""
    x, y = [], []
    for images, labels in make_dataset(examples, image_size, 32, num_classes, one_hot=False):
        x.append(images.numpy())
        y.append(labels.numpy())
    return np.concatenate(x), np.concatenate(y)


def make_multi_view_dataset(
    examples: tuple[Example, ...],
    image_sizes: tuple[int, ...],
    batch_size: int,
    num_classes: int,
    training: bool = False,
    augmentation: Augmentation = NO_AUGMENTATION,
    seed: int = 0,
    unlabeled: tuple[Path, ...] = (),
    unlabeled_per_epoch: int | None = None,
):
    """Like `make_dataset`, but yields one view of each image per size in `image_sizes`.

    For "consistent teaching" in distillation: each image is augmented once, at the largest
    of the sizes, and every view is resized from that one augmented image, so models with
    different input sizes see the same crop, flip and colours. Without augmentation each view
    is decoded and resized straight from the file, exactly as `make_dataset` (and evaluation)
    would at that size.

    Args:
        examples: The examples to read.
        image_sizes: Side of each view, in the order the views are yielded.
        batch_size: Images per batch.
        num_classes: Number of classes (for one-hot labels).
        training: Shuffle every epoch and augment. Defaults to `False`.
        augmentation: Used when `training`. Defaults to no augmentation.
        seed: Seed of the shuffle and augmentation. Defaults to `0`.
        unlabeled: Images without a label, read, augmented and shuffled together with
            `examples`; their label vector is all zeros. They are decoded every epoch, not
            cached: a folder of them may not fit in memory. Defaults to none.
        unlabeled_per_epoch: How many of `unlabeled` an epoch reads (with every example):
            a fresh seeded draw without replacement each epoch. Defaults to all of them.

    Returns:
        A `tf.data.Dataset` of `((view_0, view_1, ...), one_hot_labels)` batches, each view
        float32 pixels in [0, 255]; with `unlabeled`, of `(views, one_hot_labels, labelled)`
        batches, where `labelled` is 1.0 for a labelled image and 0.0 for an unlabelled one
        (Keras passes it as the sample weight).
    """
    import tensorflow as tf

    if not examples:
        raise DataError("no examples to build a dataset from")
    if not image_sizes or min(image_sizes) < 1:
        raise DataError(f"image_sizes must be positive sizes. Received: image_sizes={image_sizes}")
    sizes = tuple(int(s) for s in image_sizes)
    largest = max(sizes)
    augmenting = training and augmentation != NO_AUGMENTATION
    per_epoch = len(unlabeled) if unlabeled_per_epoch is None else min(
        len(unlabeled), int(unlabeled_per_epoch))
    if per_epoch < 0:
        raise DataError(f"unlabeled_per_epoch must be >= 0. Received: {unlabeled_per_epoch}")

    def decode(ds):
        if augmenting:
            return ds.map(lambda p, y: (decode_and_resize(p, largest), y),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.map(lambda p, y: (tuple(decode_and_resize(p, s) for s in sizes), y),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    ds = decode(tf.data.Dataset.from_tensor_slices(
        ([str(e.path) for e in examples], [e.label for e in examples]))).cache()
    if per_epoch:
        # -1 marks an image without a label: `tf.one_hot` turns it into a vector of zeros.
        pool = tf.data.Dataset.from_tensor_slices(([str(p) for p in unlabeled], [-1] * len(unlabeled)))
        pool = pool.shuffle(len(unlabeled), seed=seed + 1, reshuffle_each_iteration=True)
        ds = ds.concatenate(decode(pool.take(per_epoch)))
    if training:
        ds = ds.shuffle(len(examples) + per_epoch, seed=seed, reshuffle_each_iteration=True)
    if augmenting:
        tf.random.set_seed(seed)

        def views(image, y):
            image = _augment(image, largest, augmentation)
            return tuple(image if s == largest else tf.image.resize(image, [s, s], method="bilinear")
                         for s in sizes), y

        ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (tuple(tf.cast(v, tf.float32) for v in x), y))
    if unlabeled:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes), tf.cast(y >= 0, tf.float32)))
    else:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
