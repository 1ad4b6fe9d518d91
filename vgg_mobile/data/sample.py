"""A small built-in image-folder dataset, generated on the spot: no download.

Four classes of geometric shapes (circle, cross, square, triangle), filled or outlined, of
any colour, size (radius 0.15 to 0.48 of the image), position and rotation, over plain, noisy or
shaded backgrounds of any colour. Colour says nothing about the class: every class draws from
the same colours, and a shape always differs in brightness from its background, so what tells
the classes apart is the shape, as in a picture a person draws. Files alternate between JPEG
and PNG, as a real folder might. The same arguments always write the same files.

`colour_cue=True` writes the older, easier set instead: each class has a typical hue, so a
tiny model learns it in seconds (the tests use it), but what it learns is the colours.
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
# With `colour_cue`: the typical hue of each class, in degrees; a sample's hue falls within
# +-60 of it.
_CLASS_HUES = {"circle": 0.0, "cross": 90.0, "square": 180.0, "triangle": 270.0}


# Radius of a shape as a share of the image side; shapes smaller than 0.15 are a few pixels
# wide at the 32 px the sample preset's teacher sees.
RADIUS_RANGE = (0.15, 0.48)
# Least difference in brightness (0-255) between a shape and its background: a shape that
# differs only in hue leaves no edge in a brightness-like feature, and is not what people draw.
MIN_BRIGHTNESS_CONTRAST = 90.0
# Shares of greys among backgrounds and fills, and of outlined shapes.
GREY_BACKGROUNDS, GREY_FILLS, OUTLINES = 0.5, 0.3, 0.3


def _brightness(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _any_colour(rng: np.random.Generator, grey_share: float) -> tuple:
    import colorsys

    if rng.uniform() < grey_share:
        grey = rng.uniform(0, 255)
        return grey, grey, grey
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
    return r * 255, g * 255, b * 255


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


def _draw_shape(draw: ImageDraw.ImageDraw, label: str, cx: float, cy: float, radius: float,
                angle: float, colour: tuple, stroke: int | None = None,
                cross_width: float | None = None) -> None:
    """Draws one shape, filled, or outlined `stroke` pixels wide."""
    if label == "circle":
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        draw.ellipse(box, **({"fill": colour} if stroke is None else
                             {"outline": colour, "width": stroke}))
        return
    if label in ("square", "triangle"):
        points = _polygon(cx, cy, radius, 4 if label == "square" else 3, angle)
    elif cross_width is None:
        raise BadInputError(f"unknown sample class {label!r}; valid: {', '.join(SAMPLE_CLASSES)}")
    else:
        # The cross's outline: twelve corners, three per arm.
        half = cross_width / 2
        points = []
        for k in range(4):
            dx, dy = math.cos(angle + k * math.pi / 2), math.sin(angle + k * math.pi / 2)
            px, py = -dy * half, dx * half
            points += [(cx + dx * half - px, cy + dy * half - py),
                       (cx + dx * radius - px, cy + dy * radius - py),
                       (cx + dx * radius + px, cy + dy * radius + py)]
    if stroke is None:
        draw.polygon(points, fill=colour)
    else:
        draw.line(points + points[:2], fill=colour, width=stroke, joint="curve")


def draw_sample(label: str, size: int, rng: np.random.Generator,
                colour_cue: bool = False) -> Image.Image:
    """Draws one image of a sample class.

    Args:
        label: One of `SAMPLE_CLASSES`.
        size: Width and height in pixels.
        rng: The random generator that decides everything about the picture.
        colour_cue: Draw the class's typical hue (see the module's docstring). Defaults to
            `False`.

    Returns:
        An RGB PIL image.
    """
    if label not in SAMPLE_CLASSES:
        raise BadInputError(f"unknown sample class {label!r}; valid: {', '.join(SAMPLE_CLASSES)}")
    if colour_cue:
        return _draw_with_colour_cue(label, size, rng)
    for _ in range(100):
        background = np.array(_any_colour(rng, GREY_BACKGROUNDS))
        fill = _any_colour(rng, GREY_FILLS)
        if abs(_brightness(fill) - _brightness(background)) >= MIN_BRIGHTNESS_CONTRAST:
            break
    pixels = np.broadcast_to(background, (size, size, 3)).astype(float)
    pixels = pixels + rng.normal(0, rng.uniform(0, 6), size=(size, size, 3))
    ramp = np.linspace(-1, 1, size) * rng.uniform(0, 20) * rng.choice([-1, 1])
    pixels = pixels + (ramp[None, :, None] if rng.integers(2) else ramp[:, None, None])
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    radius = size * rng.uniform(*RADIUS_RANGE)
    margin = min(radius + 1, size / 2)
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    angle = rng.uniform(0, 2 * math.pi)
    stroke = max(2, int(round(size * rng.uniform(0.04, 0.08))))
    _draw_shape(ImageDraw.Draw(image), label, cx, cy, radius, angle,
                tuple(int(v) for v in fill), stroke if rng.uniform() < OUTLINES else None,
                cross_width=2 * radius * rng.uniform(0.15, 0.3))
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.5)))


def _draw_with_colour_cue(label: str, size: int, rng: np.random.Generator) -> Image.Image:
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
    if label == "cross":
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
    else:
        _draw_shape(draw, label, cx, cy, radius, angle, colour)
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.8)))


def write_sample_data(
    out: str | Path,
    images_per_class: int = 300,
    image_size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    colour_cue: bool = False,
) -> Path:
    """Writes the sample dataset as `OUT/<class>/<class>_NNN.{jpg,png}`.

    The folder is built beside `out` and renamed into place, so an interrupted call never leaves
    a half-written dataset.

    Args:
        out: Folder to create.
        images_per_class: Images in each class. Defaults to `300`.
        image_size: Width and height of each image in pixels. Defaults to `64`.
        seed: Seed of the generator; the same seed writes the same files. Defaults to `0`.
        overwrite: Replace `out` if it is a sample folder written here (never another
            folder). Defaults to `False`.
        colour_cue: Write the easier set whose classes have typical hues (see the module's
            docstring). Defaults to `False`.

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
            images_per_class=images_per_class, image_size=image_size, seed=seed,
            colour_cue=colour_cue))
        for class_index, label in enumerate(SAMPLE_CLASSES):
            rng = np.random.default_rng([seed, class_index])
            (staging / label).mkdir()
            for i in range(images_per_class):
                image = draw_sample(label, image_size, rng, colour_cue)
                if i % 2 == 0:
                    image.save(staging / label / f"{label}_{i:03d}.jpg", quality=92)
                else:
                    image.save(staging / label / f"{label}_{i:03d}.png", optimize=False)
    return out
