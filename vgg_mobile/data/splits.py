"""Which images a stage trains, validates, calibrates and verifies on, and how it says so.

One rule for every stage that starts from a parent run (compression, distillation,
evaluation, conversion): on the very folder the parent was trained on, reuse the parent's
seeded split, so that no image the parent learned from is counted as held out. A pre-split
folder keeps its own `val/`; any other folder (and a `train/` without images in `val/`) gets a
fresh seeded, stratified split.
The manifest's `data` record is written by `data_record`, the same way by every stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vgg_mobile.core.errors import DataError
from vgg_mobile.data.dataset import Example, ImageFolder, Split, split

DEFAULT_VAL_FRACTION = 0.2
EVALUATION_SPLITS = ("auto", "val", "train", "all")


@dataclasses.dataclass(frozen=True)
class SplitChoice:
    """A folder's split into training and validation images, and where it came from.

    Attributes:
        parts: The training and validation examples.
        val_fraction: Share of each class held out (unused by a pre-split folder).
        seed: Seed of the per-class shuffle.
        source: `presplit` (the folder's own `val/`), `parent` (the parent run's split of
            the folder it was trained on) or `own` (a new split of another folder).
        note: A warning for the log when a requested setting could not be honoured, or when
            a `train/` without images in `val/` was split, else "".
    """

    parts: Split
    val_fraction: float
    seed: int
    source: str
    note: str = ""


def trained_on(parent_data: dict | None, folder: ImageFolder) -> bool:
    """Whether `folder` is the very folder the parent run was trained on (`parent_data`: its
    manifest's `data` record)."""
    recorded = parent_data or {}
    return bool(recorded.get("path")) and Path(recorded["path"]).resolve() == folder.root.resolve()


def choose_split(folder: ImageFolder, parent_data: dict | None = None,
                 val_fraction: float | None = None, seed: int = 0,
                 require_val: bool = True) -> SplitChoice:
    """Splits `folder` for a stage, reusing the parent's split on the parent's own folder.

    A folder with `train/` but no images in `val/` is split like an unsplit folder: its
    `train/` gives the validation images, and the `note` says so.

    Args:
        folder: A checked folder from `dataset.scan_folder`.
        parent_data: The parent run's `data` record (`Manifest.data`), or `None` for a first
            stage.
        val_fraction: Share held out on a new split. Defaults to the parent's, else `0.2`.
        seed: Seed of a new split. Defaults to `0`.
        require_val: Refuse a split without validation images (a stage that trains and
            validates); `False` for one that only draws from the training part.
            Defaults to `True`.

    Returns:
        A `SplitChoice`. On the parent's folder its `note` says when a different
        `val_fraction` or `seed` was asked for and ignored (honouring it would validate on
        images the parent trained on); it also warns of classes left without a validation
        image (`unmeasured_note`).

    Raises:
        DataError: A `train/` without images in `val/`, and a `val_fraction` of 0; a split
            that holds out no image (every class has a single image).
    """
    recorded = parent_data or {}
    if folder.val:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        parts = split(folder, fraction, seed)
        return SplitChoice(parts, fraction, seed, "presplit", unmeasured_note(folder, parts))
    if parent_data is not None and trained_on(parent_data, folder):
        fraction = float(recorded.get("val_fraction", DEFAULT_VAL_FRACTION))
        source, chosen_seed, note = "parent", int(recorded.get("seed", 0)), ""
        if val_fraction is not None and val_fraction != fraction:
            note = (f"val_fraction={val_fraction} ignored: on the folder the parent run was trained "
                    f"on, its split (val_fraction={fraction}, seed={chosen_seed}) is reused so that "
                    "no image it learned from is validated on")
    else:
        fraction = float(recorded.get("val_fraction", DEFAULT_VAL_FRACTION)) if val_fraction is None \
            else val_fraction
        source, chosen_seed, note = "own", seed, ""
    if folder.presplit:
        if fraction <= 0:
            raise DataError(f"{folder.root / 'val'}: missing or without images, and val_fraction "
                            f"is {fraction}: a validation set is needed; add val/<class>/ images "
                            "or give a val_fraction above 0 to hold out part of train/")
        note = "; ".join(filter(None, (note, (
            f"{folder.root / 'val'} is missing or without images: validating on a seeded, "
            f"stratified split of train/ (val_fraction={fraction}, seed={chosen_seed})"))))
    parts = split(folder, fraction, chosen_seed)
    if require_val:
        _check_held_out(folder, parts)
    return SplitChoice(parts, fraction, chosen_seed, source,
                       "; ".join(filter(None, (note, unmeasured_note(folder, parts)))))


def read_split(data_dir, log, parent_data: dict | None = None, val_fraction: float | None = None,
               seed: int = 0, strict: bool = False, remedy: str = "",
               check=None) -> tuple[ImageFolder, SplitChoice]:
    """Scans a labelled folder for a training stage and splits it (`choose_split`), logging
    each skipped or converted image, the split's note and the unbalanced-classes warning.

    Args:
        data_dir: The image folder.
        log: Receives the lines.
        parent_data: The parent run's `data` record, for `choose_split`. Defaults to none.
        val_fraction: As `choose_split`'s. Defaults to `None`.
        seed: As `choose_split`'s. Defaults to `0`.
        strict: Fail on any bad image (`scan_folder`). Defaults to `False`.
        remedy: What the training does about unbalanced classes, for the warning.
        check: Called with the scanned folder before it is split (e.g. to compare its
            classes with a parent's); raises to refuse it. Defaults to none.

    Returns:
        `(folder, choice)`.
    """
    from vgg_mobile.data.dataset import imbalance_warning, scan_folder

    folder = scan_folder(data_dir, strict=strict)
    if check is not None:
        check(folder)
    for bad in folder.bad:
        log(f"skipped {bad.path}: {bad.problem}")
    if folder.converted:
        log(f"{len(folder.converted)} image(s) converted to RGB on reading (e.g. "
            f"{folder.converted[0].path.name}: {'; '.join(folder.converted[0].notes)})")
    choice = choose_split(folder, parent_data, val_fraction, seed)
    if choice.note:
        log(f"warning: {choice.note}")
    unbalanced = imbalance_warning(folder.classes, choice.parts.train, remedy=remedy)
    if unbalanced:
        log(unbalanced)
    return folder, choice


def _check_held_out(folder: ImageFolder, parts: Split) -> None:
    """Refuses a split that holds out no image: validation metrics would be NaN, and every
    later stage (evaluate, convert, distill) would refuse the run after training it.

    Raises:
        DataError: Naming the folder, its classes and images, and what to add.
    """
    if parts.val:
        return
    raise DataError(
        f"{folder.root}: no image can be held out for validation: {len(folder.classes)} classes "
        f"and {len(folder.train)} images, and a class needs at least 2 images to give one to "
        "validation and keep one for training; add images to the classes, or a val/ folder")


def unmeasured_classes(folder: ImageFolder, parts: Split) -> tuple[str, ...]:
    """Classes without a validation image (a class of one image, or missing from `val/`)."""
    held = {example.label for example in parts.val}
    return tuple(name for label, name in enumerate(folder.classes) if label not in held)


def unmeasured_note(folder: ImageFolder, parts: Split) -> str:
    """A warning naming the classes without a validation image, or "" when there are none."""
    missing = unmeasured_classes(folder, parts)
    if not missing:
        return ""
    shown = ", ".join(repr(name) for name in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return (f"warning: {len(missing)} of {len(folder.classes)} classes have no validation image "
            f"({shown}{more}; a class needs 2 images to hold one out): their precision, recall "
            "and F1 are not measured, and the macro F1 averages the other classes only")


def data_record(folder: ImageFolder, choice: SplitChoice) -> dict:
    """The manifest's `data` entry: which folder, which split, how many images, what was skipped."""
    return {"path": str(folder.root.resolve()), "fingerprint": folder.fingerprint(),
            "presplit": folder.presplit, "split_from": choice.source,
            "val_fraction": choice.val_fraction, "seed": choice.seed,
            "val_from_train": folder.presplit and not folder.val,
            "train_images": len(choice.parts.train), "val_images": len(choice.parts.val),
            "class_counts": folder.class_counts(choice.parts.train),
            "skipped_files": [{"path": str(c.path), "problem": c.problem} for c in folder.bad]}


def held_out(run_data: dict, folder: ImageFolder, which: str = "auto") -> tuple[tuple[Example, ...], str]:
    """The images to evaluate (or verify) a run on, and the name of that split (`run_data`: the
    run manifest's `data` record).

    `auto` picks the held-out images: a pre-split folder's `val/`; on the folder the run was
    trained on, its validation split (of `train/`, for a folder without images in `val/`);
    on any other folder, every image.

    Raises:
        DataError: An unknown split name, or an empty split.
    """
    if which not in EVALUATION_SPLITS:
        raise DataError(f"split must be one of {', '.join(EVALUATION_SPLITS)}. Received: split={which!r}")
    if which == "auto":
        which = "val" if folder.val or trained_on(run_data, folder) else "all"
    if which == "all":
        return folder.train + (folder.val or ()), "all"
    recorded_seed = int((run_data or {}).get("seed", 0))
    parts = choose_split(folder, run_data or {}, seed=recorded_seed).parts
    chosen = parts.val if which == "val" else parts.train
    if not chosen:
        raise DataError(f"{folder.root}: the {which!r} split is empty")
    return chosen, which


def stratified_sample(examples: tuple[Example, ...] | list[Example], limit: int | None,
                      seed: int = 0) -> tuple[Example, ...]:
    """At most `limit` examples, drawn in turn from every class, seeded.

    Each class is shuffled with `seed`, then classes take turns, so a sample of n images of a
    k-class folder holds about n/k of each (all of a class smaller than that). The order of
    the result is by round, not by class: any prefix of it is stratified too.

    Args:
        examples: The examples to draw from.
        limit: How many to keep; `None` keeps them all (still in stratified order).
        seed: Seed of the per-class shuffle. Defaults to `0`.
    """
    import numpy as np

    by_class: dict[int, list[Example]] = {}
    for example in sorted(examples, key=lambda e: (e.label, str(e.path))):
        by_class.setdefault(example.label, []).append(example)
    queues = []
    for label, members in sorted(by_class.items()):
        order = np.random.default_rng([seed, label]).permutation(len(members))
        queues.append([members[i] for i in order])
    total = sum(len(q) for q in queues)
    limit = total if limit is None else min(limit, total)
    chosen: list[Example] = []
    for round_index in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if round_index < len(queue):
                chosen.append(queue[round_index])
        if len(chosen) >= limit:
            break
    return tuple(chosen[:limit])
