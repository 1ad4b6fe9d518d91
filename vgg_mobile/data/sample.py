"""A small built-in image-folder dataset, generated on the spot: no download.

Four classes of geometric shapes (circle, cross, square, triangle) at random sizes, positions
and rotations over noisy greyish backgrounds. Each class has a typical hue whose range overlaps
its neighbours' (as bananas tend to be yellow), so colour is a strong but incomplete cue and a
model must also use shape to score well. Files alternate between JPEG and PNG, as a real
folder might. The same arguments always write the same files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.io import write_json
from vgg_mobile.core.outputs import DATA_MARKER, claim_output, marker

SAMPLE_CLASSES = ("circle", "cross", "square", "triangle")
# Typical hue of each class, in degrees; a sample's hue falls within +-60 of it.
_CLASS_HUES = {"circle": 0.0, "cross": 90.0, "square": 180.0, "triangle": 270.0}


def _class_colour(label: str, rng: np.random.Generator) -> tuple:
    import colorsys

    hue = ((_CLASS_HUES[label] + rng.uniform(-60, 60)) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> list:
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * k / sides),
         cy + radius * math.sin(angle + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


def draw_sample(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws one image of a sample class.

    Args:
        label: One of `SAMPLE_CLASSES`.
        size: Width and height in pixels.
        rng: The random generator that decides everything about the picture.

    Returns:
        An RGB PIL image.
    """
    if label not in _CLASS_HUES:
        raise BadInputError(f"unknown sample class {label!r}; valid: {', '.join(SAMPLE_CLASSES)}")
    grey = rng.uniform(40, 215)
    background = np.clip(grey + rng.normal(0, 15, size=3), 0, 255)
    noise = rng.normal(0, 10, size=(size, size, 3))
    gradient = np.linspace(-25, 25, size)[None, :, None] * rng.choice([-1, 1])
    pixels = np.clip(background[None, None, :] + noise + gradient, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(image)
    colour = _class_colour(label, rng)
    radius = size * rng.uniform(0.28, 0.42)
    margin = radius + 1
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    angle = rng.uniform(0, 2 * math.pi)
    if label == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif label == "square":
        draw.polygon(_polygon(cx, cy, radius, 4, angle), fill=colour)
    elif label == "triangle":
        draw.polygon(_polygon(cx, cy, radius, 3, angle), fill=colour)
    elif label == "cross":
        width = max(2.0, radius * 0.45)
        for bar_angle in (angle, angle + math.pi / 2):
            dx, dy = math.cos(bar_angle), math.sin(bar_angle)
            px, py = -dy * width / 2, dx * width / 2
            draw.polygon(
                [(cx - dx * radius + px, cy - dy * radius + py),
                 (cx + dx * radius + px, cy + dy * radius + py),
                 (cx + dx * radius - px, cy + dy * radius - py),
                 (cx - dx * radius - px, cy - dy * radius - py)],
                fill=colour,
            )
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.8)))


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
