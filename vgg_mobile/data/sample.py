"""A small built-in image-folder dataset, generated on the spot: no download.

Four classes of geometric shapes (circle, cross, square, triangle), drawn so that only the
shape tells the class: every class draws its colours from the same distribution (any hue, and
black, white and greys), filled or outlined, at any rotation, with a radius from 0.22 to 0.48
of the image and anywhere it fits, over grey or coloured backgrounds with a gradient and
noise, the shape always standing out from them. Shapes are drawn at four times the size and
reduced, so their edges are smooth as a drawing's are. Until each class stopped having a hue of
its own, models trained here learnt the colour and called a red square a circle; how models
trained here score on shapes drawn otherwise is measured by `measurements/sample_shapes.py`.
Files alternate between JPEG and PNG, as a real folder might. The same arguments always write
the same files.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.io import write_json
from vgg_mobile.core.outputs import DATA_MARKER, claim_output, marker

SAMPLE_CLASSES = ("circle", "cross", "square", "triangle")
# Radius of a shape as a share of the image side: below about 0.2 a shape is a few pixels of
# the 32 px teacher's input; 0.48 leaves a margin to tell a square from a filled image.
RADIUS_RANGE = (0.22, 0.48)
# Share of outlined (not filled) shapes.
OUTLINE_SHARE = 0.15
# Shares of fills and of backgrounds without a hue (black, white, greys). Every class draws
# from the same colours; with hues everywhere the sample preset's teacher could not learn the
# shapes in its budget (0.32 held-out on 120 images a class), with greys alone it learnt them
# but not in colour (docs/measurements.md#sample-data).
GREY_FILL_SHARE = 0.4
GREY_BACKGROUND_SHARE = 0.7
# A fill is drawn again while it is closer than this (RGB distance) to the background's mean,
# so the shape never disappears into it.
MIN_CONTRAST = 120.0
# Shapes are drawn this many times larger, then reduced: smooth, anti-aliased edges.
_SUPERSAMPLE = 4


def _colour(rng: np.random.Generator, saturation: tuple[float, float],
            value: tuple[float, float]) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return np.array([r, g, b]) * 255


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A plain grey or coloured field, with a gradient in any direction and pixel noise."""
    if rng.uniform() < GREY_BACKGROUND_SHARE:
        base = np.full(3, rng.uniform(0, 255))
    else:
        base = _colour(rng, (0.1, 0.7), (0.15, 1.0))
    ramp = np.linspace(-1, 1, size)
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None])[..., None]
    pixels = base + gradient * rng.uniform(0, 50) + rng.normal(0, rng.uniform(0, 15), (size, size, 3))
    return np.clip(pixels, 0, 255)


def _fill(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    mean = background.mean(axis=(0, 1))
    while True:
        if rng.uniform() < GREY_FILL_SHARE:
            fill = np.full(3, rng.uniform(0, 255))
        else:
            fill = _colour(rng, (0.35, 1.0), (0.3, 1.0))
        if np.linalg.norm(fill - mean) >= MIN_CONTRAST:
            return fill


def _polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> list:
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * k / sides),
         cy + radius * math.sin(angle + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


def _cross(cx: float, cy: float, radius: float, half_width: float, angle: float) -> list:
    """The twelve corners of a plus sign whose arms reach `radius` from the centre."""
    corners = []
    for k in range(4):
        a = angle + k * math.pi / 2
        dx, dy = math.cos(a), math.sin(a)
        px, py = -dy * half_width, dx * half_width
        corners += [(cx + dx * half_width - px, cy + dy * half_width - py),
                    (cx + dx * radius - px, cy + dy * radius - py),
                    (cx + dx * radius + px, cy + dy * radius + py)]
    return corners


def _mask(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage in [0, 1] of the shape at each pixel of a `size` image."""
    big = size * _SUPERSAMPLE
    radius = big * rng.uniform(*RADIUS_RANGE)
    cx = rng.uniform(radius, big - radius)
    cy = rng.uniform(radius, big - radius)
    angle = rng.uniform(0, 2 * math.pi)
    outline = rng.uniform() < OUTLINE_SHARE
    # At least about 1.5 pixels of the image at any radius, so an outline survives resizing.
    stroke = int(round(max(1.5 * _SUPERSAMPLE, radius * rng.uniform(0.12, 0.25))))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    if label == "circle":
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        if outline:
            draw.ellipse(box, outline=255, width=stroke)
        else:
            draw.ellipse(box, fill=255)
    else:
        if label == "cross":
            points = _cross(cx, cy, radius, radius * rng.uniform(0.18, 0.3), angle)
        else:
            points = _polygon(cx, cy, radius, 4 if label == "square" else 3, angle)
        if outline:
            draw.line(points + points[:2], fill=255, width=stroke, joint="curve")
        else:
            draw.polygon(points, fill=255)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=float)[..., None] / 255


def draw_sample(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws one image of a sample class.

    Args:
        label: One of `SAMPLE_CLASSES`.
        size: Width and height in pixels.
        rng: The random generator that decides everything about the picture.

    Returns:
        An RGB PIL image.

    Raises:
        BadInputError: `label` is not a sample class.
    """
    if label not in SAMPLE_CLASSES:
        raise BadInputError(f"unknown sample class {label!r}; valid: {', '.join(SAMPLE_CLASSES)}")
    background = _background(size, rng)
    fill = _fill(rng, background)
    coverage = _mask(label, size, rng)
    # The shape gets a little noise of its own, as a photographed drawing would.
    shape = fill + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
    pixels = background * (1 - coverage) + shape * coverage
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB")


def write_sample_data(
    out: str | Path,
    images_per_class: int = 60,
    image_size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Writes the sample dataset as `OUT/<class>/<class>_NNN.{jpg,png}`.

    The folder is built beside `out` and renamed into place, so an interrupted call never leaves
    a half-written dataset.

    Args:
        out: Folder to create.
        images_per_class: Images in each class. Defaults to `60`.
        image_size: Width and height of each image in pixels. Defaults to `64`.
        seed: Seed of the generator; the same seed writes the same files. Defaults to `0`.
        overwrite: Replace `out` if it is a sample folder written here (never another
            folder). Defaults to `False`.

    Returns:
        The folder written.

    Raises:
        BadInputError: `out` exists and is not a sample folder, or exists and `overwrite` is
            false, or a count or size is too small.
    """
    out = Path(out)
    if images_per_class < 2:
        raise BadInputError(f"images_per_class must be at least 2. Received: {images_per_class}")
    if image_size < 16:
        raise BadInputError(f"image_size must be at least 16. Received: {image_size}")
    with claim_output(out, ("sample_data",), force=overwrite, staged=True) as output:
        staging = output.path
        write_json(staging / DATA_MARKER, marker(
            "sample_data", "sample_data", classes=list(SAMPLE_CLASSES),
            images_per_class=images_per_class, image_size=image_size, seed=seed))
        for class_index, label in enumerate(SAMPLE_CLASSES):
            rng = np.random.default_rng([seed, class_index])
            (staging / label).mkdir()
            for i in range(images_per_class):
                image = draw_sample(label, image_size, rng)
                if i % 2 == 0:
                    image.save(staging / label / f"{label}_{i:03d}.jpg", quality=92)
                else:
                    image.save(staging / label / f"{label}_{i:03d}.png", optimize=False)
    return out
