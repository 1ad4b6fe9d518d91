"""What a model's inputs and answers look like, as histograms, and how far two sets of them are
apart: the statistics an export records and a service watches for drift.

`vgg-mobile convert` records the histograms of its held-out images in the export manifest
(`drift_reference`: the input statistics, over the whole export; each artifact's
`drift_reference`: its own answers). `vgg-mobile serve-model` keeps the same histograms over
a rolling window of the images it answers (`vgg_mobile.serving.drift`) and reports, for each
statistic, the population stability index between the two (`psi`).

The statistics (each a histogram in which every image counts once):

- `red`, `green`, `blue`: the model-input pixel values of one channel (after the resize to
  the model's input size), 16 bins of 16 levels each. Darker, brighter, tinted or washed-out
  images move them.
- `sharpness`: the mean absolute difference between neighbouring pixels of the gray model
  input, in octave bins. Blur, a lower camera resolution or heavy compression lower it.
- `size`: the decoded image's side, `sqrt(width * height)` in pixels, in half-octave bins.
- `aspect`: `log2(width / height)` of the decoded image (portrait below 0, landscape above).
- `predicted_class`: the top-1 class, one bin per class.
- `confidence`: the top-1 probability.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vgg_mobile.core.errors import BadInputError, clip

SCHEMA = 1
INPUT_STATISTICS = ("red", "green", "blue", "sharpness", "size", "aspect")
OUTPUT_STATISTICS = ("predicted_class", "confidence")
STATISTICS = INPUT_STATISTICS + OUTPUT_STATISTICS
CHANNELS = ("red", "green", "blue")
# Inner bin edges; a value on an edge falls in the bin above it. `predicted_class` has one bin
# per class instead.
PIXEL_LEVELS = 16
EDGES: dict[str, tuple[float, ...]] = {
    **{channel: tuple(float(edge) for edge in range(PIXEL_LEVELS, 256, PIXEL_LEVELS))
       for channel in CHANNELS},
    # Octaves: blur that halves the differences moves an image by a whole bin, while the
    # spread of ordinary images over few bins keeps the index of a fresh sample low.
    "sharpness": tuple(float(2 ** k) for k in range(-1, 8)),  # 0.5 .. 128
    "size": tuple(round(2 ** (k / 2), 2) for k in range(8, 27)),  # 16 .. 8192 pixels
    "aspect": (-2.0, -1.0, -0.5, -0.15, 0.15, 0.5, 1.0, 2.0),
    "confidence": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
}
# Pixels are counted on a grid of at most this many rows and columns of each image (a stride):
# 1,024 values a channel tell its histogram well enough, at a quarter of a 64-pixel input's cost.
PIXEL_GRID = 32
# The least share a bin is given when two histograms are compared: an empty bin would
# otherwise make the index infinite. (Adding a count to every bin instead gives two samples
# of one distribution an index that depends on their sizes.)
FLOOR = 1e-4
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def bins(statistic: str, classes: int) -> int:
    """How many bins `statistic` has, for a model of `classes` classes."""
    return classes if statistic == "predicted_class" else len(EDGES[statistic]) + 1


def _one_hot(index: np.ndarray, count: int) -> np.ndarray:
    rows = np.zeros((len(index), count), np.float32)
    rows[np.arange(len(index)), index] = 1
    return rows


def _binned(values: np.ndarray, statistic: str) -> np.ndarray:
    edges = EDGES[statistic]
    return _one_hot(np.searchsorted(edges, values, side="right"), len(edges) + 1)


def input_rows(pixels: np.ndarray, sizes) -> dict[str, np.ndarray]:
    """Each image's share of every input statistic's histogram.

    Args:
        pixels: `(n, height, width, 3)` model-input pixels in [0, 255].
        sizes: `(n, 2)`: each image's `(height, width)` as decoded, before the resize.

    Returns:
        `{statistic: (n, bins) float32}`, each row summing to 1.
    """
    pixels = np.asarray(pixels, np.float32)
    n, height, width = pixels.shape[:3]
    grid = pixels[:, ::max(1, math.ceil(height / PIXEL_GRID)), ::max(1, math.ceil(width / PIXEL_GRID))]
    # Each value's bin (its top 4 bits), offset by its channel's and its image's place: one
    # `bincount` counts every histogram of the batch.
    levels = (np.clip(grid, 0, 255).astype(np.uint8) >> 4).astype(np.intp)
    levels += (np.arange(n)[:, None, None, None] * 3 + np.arange(3)) * PIXEL_LEVELS
    counts = np.bincount(levels.ravel(), minlength=n * 3 * PIXEL_LEVELS)
    shares = (counts.reshape(n, 3, PIXEL_LEVELS) / (grid.shape[1] * grid.shape[2])).astype(np.float32)
    gray = pixels @ _GRAY
    across = np.abs(gray[:, :, 1:] - gray[:, :, :-1]).reshape(n, -1)
    down = np.abs(gray[:, 1:] - gray[:, :-1]).reshape(n, -1)
    sharpness = (across.mean(axis=1) if across.size else 0) / 2 + (
        down.mean(axis=1) if down.size else 0) / 2
    sizes = np.asarray(sizes, np.float64).reshape(n, 2)
    return {**{channel: shares[:, i] for i, channel in enumerate(CHANNELS)},
            "sharpness": _binned(sharpness, "sharpness"),
            "size": _binned(np.sqrt(sizes[:, 0] * sizes[:, 1]), "size"),
            "aspect": _binned(np.log2(sizes[:, 1] / sizes[:, 0]), "aspect")}


def output_rows(probs: np.ndarray, order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each answer's share of the output statistics' histograms.

    Args:
        probs: `(n, classes)` probabilities.
        order: The reference's class index of each model output (`None`: the same order).

    Returns:
        `{"predicted_class": (n, classes), "confidence": (n, bins)}` float32 rows.
    """
    probs = np.asarray(probs, np.float32)
    top = probs.argmax(axis=1)
    return {"predicted_class": _one_hot(top if order is None else order[top], probs.shape[1]),
            "confidence": _binned(probs.max(axis=1), "confidence")}


def psi(reference: np.ndarray, reference_images: float, counts: np.ndarray,
        images: float) -> float:
    """The population stability index of two histograms: `sum((q - p) * ln(q / p))` over their
    shares, the sum of the two Kullback-Leibler divergences, each share at least `FLOOR`.

    Args:
        reference: The reference's counts per bin (in images).
        reference_images: How many images the reference counted.
        counts: The compared counts per bin.
        images: How many images those are.

    Returns:
        0 for identical shares; about 0.1 is a small shift, above 0.25 a large one.
    """
    p = np.maximum(np.asarray(reference, np.float64) / reference_images, FLOOR)
    q = np.maximum(np.asarray(counts, np.float64) / images, FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def _section(rows: dict[str, np.ndarray], classes=None) -> dict:
    out = {}
    for statistic, values in rows.items():
        entry = ({"classes": list(classes)} if statistic == "predicted_class"
                 else {"edges": list(EDGES[statistic])})
        out[statistic] = {**entry, "counts": [round(float(c), 4) for c in values.sum(axis=0)]}
    return out


def input_reference(pixels: np.ndarray, sizes, split: str) -> dict:
    """The export manifest's `drift_reference`: the input statistics of held-out images."""
    return {"schema": SCHEMA, "images": int(len(pixels)), "split": split,
            "statistics": _section(input_rows(pixels, sizes))}


def output_reference(probs: np.ndarray, classes) -> dict:
    """An artifact's `drift_reference`: its answers' statistics on the same images."""
    return {"images": int(len(probs)), "statistics": _section(output_rows(probs), classes)}


class IncompatibleReference(BadInputError):
    """A reference written by another version of vgg-mobile (another schema or other bins):
    sound, but not comparable with what this version counts."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """The reference histograms a served model is compared with.

    Attributes:
        images: How many held-out images each input statistic counted.
        split: Which images: the split's name (`val`, `all`, ...).
        counts: `{statistic: counts per bin}`; the output statistics are absent when the
            artifact recorded none.
        output_images: How many images the output statistics counted (0 without them).
        classes: The class of each `predicted_class` bin.
    """

    images: int
    split: str
    counts: dict[str, np.ndarray]
    output_images: int
    classes: tuple[str, ...]

    def images_of(self, statistic: str) -> int:
        return self.output_images if statistic in OUTPUT_STATISTICS else self.images


def _counts(entry, statistic: str, images: int, classes, where: str) -> np.ndarray:
    def fail(why: str) -> BadInputError:
        return BadInputError(f"{where}: drift_reference statistic {statistic!r}: {why}")

    if not isinstance(entry, dict):
        raise fail(f"not an object ({clip(repr(entry), 80)})")
    if statistic == "predicted_class":
        if entry.get("classes") != list(classes):
            raise fail(f"classes {clip(repr(entry.get('classes')), 200)} are not the model's "
                       f"{list(classes)}")
    elif entry.get("edges") != list(EDGES[statistic]):
        raise IncompatibleReference(
            f"{where}: drift_reference statistic {statistic!r}: bin edges "
            f"{clip(repr(entry.get('edges')), 200)} are not this version's "
            f"{list(EDGES[statistic])}: export the model again")
    counts = entry.get("counts")
    expected = bins(statistic, len(classes))
    if (not isinstance(counts, list) or len(counts) != expected or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
            and c >= 0 for c in counts)):
        raise fail(f"counts {clip(repr(counts), 200)} are not {expected} numbers >= 0")
    if abs(sum(counts) - images) > 0.01 * images + 0.01:
        raise fail(f"counts add up to {sum(counts):g}, not its {images} images")
    return np.asarray(counts, np.float64)


def _images(section, where: str) -> int:
    images = section.get("images")
    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        raise BadInputError(f"{where}: drift_reference images = {clip(repr(images), 80)}: "
                            "a whole number >= 1")
    return images


def read_reference(section, artifact_section, classes, where: str) -> Reference | None:
    """The `Reference` of an export's manifest section and its artifact's, checked.

    Args:
        section: The manifest's `drift_reference`, or `None` (an export made before drift was
            recorded: nothing to compare with).
        artifact_section: The served artifact's `drift_reference`, or `None`.
        classes: The model's classes, in output order.
        where: What to name in messages (the manifest's path).

    Returns:
        The `Reference`, or `None` without a section.

    Raises:
        IncompatibleReference: A section of another schema, or with other bins (another
            version of vgg-mobile wrote it).
        BadInputError: A damaged section: counts or classes that do not fit the model; the
            message names the statistic and the value.
    """
    if section is None:
        return None
    if not isinstance(section, dict):
        raise BadInputError(f"{where}: drift_reference is not an object "
                            f"({clip(repr(section), 80)})")
    if section.get("schema") != SCHEMA:
        raise IncompatibleReference(f"{where}: drift_reference schema "
                                    f"{clip(repr(section.get('schema')), 80)} is not {SCHEMA}: "
                                    "export the model again")
    images = _images(section, where)
    statistics = section.get("statistics") or {}
    counts = {name: _counts(statistics.get(name), name, images, classes, where)
              for name in INPUT_STATISTICS}
    output_images = 0
    if artifact_section is not None:
        if not isinstance(artifact_section, dict):
            raise BadInputError(f"{where}: the artifact's drift_reference is not an object")
        output_images = _images(artifact_section, where)
        outputs = artifact_section.get("statistics") or {}
        counts.update({name: _counts(outputs.get(name), name, output_images, classes, where)
                       for name in OUTPUT_STATISTICS})
    return Reference(images, str(section.get("split", "")), counts, output_images,
                     tuple(classes))
