"""Do the sample-data models know shapes? Accuracy on drawn shapes unlike the training images.

    uv run python benchmarks/sample_shapes.py PIPELINE_OUT [--data DATA] [--per-class 100]
        [--seed 1] [--save-images DIR]

Draws a seeded, stratified test set of the four sample classes (circle, cross, square,
triangle) the way a person would draw them in a paint program, on purpose outside what
`vgg_mobile/data/sample.py` draws: radius 0.15 to 0.5 of the image, any hue and also black,
white and grey, filled or outlined, anywhere in the image (up to the edges), on plain white,
black, grey or coloured backgrounds, noisy or with a gradient, as files of 64, 160 or 600
pixels a side. Each image is resized the way every stage and export resizes
(`dataset.resize_pixels`: bilinear, no antialiasing) and classified by every Keras run of
the pipeline folder (teacher, pruned, pruned_qat, student, student_qat) and every `.tflite`
of its `export/` folder; prints one Markdown table of accuracies: held-out split of the
data folder (`--data`, the images the run never trained on) and the drawn set, overall and
by factor. Chance is 0.25.
"""

from __future__ import annotations

import argparse
import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import vgg_mobile  # noqa: F401  (selects tf_keras before TensorFlow loads)
from vgg_mobile.data.sample import SAMPLE_CLASSES

SIDES = (64, 160, 600)
BACKGROUNDS = ("white", "black", "grey", "colour", "noise", "gradient")
STYLES = ("filled", "outline")
# Named fills beside the random hues: the colours a person picks first.
NAMED_FILLS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
               "yellow": (240, 220, 30), "black": (0, 0, 0), "white": (255, 255, 255),
               "grey": (128, 128, 128)}
# A fill closer than this to the background (RGB distance) is redrawn: a person draws a shape
# that can be seen.
MIN_CONTRAST = 120.0
RADIUS_RANGE = (0.15, 0.5)


def _background(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        base = np.full(3, 255.0)
    elif kind == "black":
        base = np.zeros(3)
    elif kind == "grey":
        base = np.full(3, rng.uniform(60, 200))
    else:
        r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0))
        base = np.array([r, g, b]) * 255
    pixels = np.broadcast_to(base, (side, side, 3)).astype(float)
    if kind == "noise":
        pixels = pixels + rng.normal(0, 25, size=(side, side, 3))
    elif kind == "gradient":
        ramp = np.linspace(-60, 60, side)
        axis = rng.integers(2)
        pixels = pixels + (ramp[None, :, None] if axis else ramp[:, None, None])
    return np.clip(pixels, 0, 255)


def _fill(rng: np.random.Generator) -> tuple[str, tuple[int, int, int]]:
    if rng.uniform() < 0.5:
        name = list(NAMED_FILLS)[rng.integers(len(NAMED_FILLS))]
        return name, NAMED_FILLS[name]
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0))
    return "any hue", (int(r * 255), int(g * 255), int(b * 255))


def _polygon(cx, cy, radius, sides, angle):
    return [(cx + radius * math.cos(angle + 2 * math.pi * k / sides),
             cy + radius * math.sin(angle + 2 * math.pi * k / sides)) for k in range(sides)]


def draw_shape(label: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Draws one test image of class `label`; returns it and the factors that made it.

    Raises:
        ValueError: `label` is not a sample class.
    """
    if label not in SAMPLE_CLASSES:
        raise ValueError(f"unknown class {label!r}; valid: {', '.join(SAMPLE_CLASSES)}")
    side = int(SIDES[rng.integers(len(SIDES))])
    background_kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    pixels = _background(background_kind, side, rng)
    mean = pixels.mean(axis=(0, 1))
    for _ in range(100):
        fill_name, fill = _fill(rng)
        if np.linalg.norm(np.array(fill, float) - mean) >= MIN_CONTRAST:
            break
    style = STYLES[rng.integers(len(STYLES))]
    radius_share = rng.uniform(*RADIUS_RANGE)
    radius = side * radius_share
    cx = rng.uniform(radius, side - radius)
    cy = rng.uniform(radius, side - radius)
    # A person draws upright squares and crosses as often as turned ones.
    angle = rng.uniform(0, 2 * math.pi) if rng.uniform() < 0.5 else (
        -math.pi / 2 if label == "triangle" else math.pi / 4 if label == "square" else 0.0)
    stroke = max(2, int(round(side * rng.uniform(0.04, 0.08))))
    image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    paint = {"fill": fill} if style == "filled" else {"outline": fill, "width": stroke}
    if label == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], **paint)
    elif label in ("square", "triangle"):
        points = _polygon(cx, cy, radius, 4 if label == "square" else 3, angle)
        if style == "filled":
            draw.polygon(points, fill=fill)
        else:
            draw.line(points + points[:2], fill=fill, width=stroke, joint="curve")
    else:
        half_width = radius * rng.uniform(0.15, 0.3)
        outline = []
        for k in range(4):
            a = angle + k * math.pi / 2
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * half_width, dx * half_width
            outline += [(cx + dx * half_width - px, cy + dy * half_width - py),
                        (cx + dx * radius - px, cy + dy * radius - py),
                        (cx + dx * radius + px, cy + dy * radius + py)]
        if style == "filled":
            draw.polygon(outline, fill=fill)
        else:
            draw.line(outline + outline[:2], fill=fill, width=stroke, joint="curve")
    size = "radius < 0.3" if radius_share < 0.3 else "radius 0.3-0.42" if radius_share <= 0.42 \
        else "radius > 0.42"
    factors = {"style": style, "background": background_kind, "fill": fill_name,
               "size": size, "side": f"{side} px"}
    return image, factors


def drawn_set(per_class: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, list[dict]]:
    """`per_class` drawn images of every class: `(pixels, labels, factors)`, seeded."""
    images, labels, factors = [], [], []
    for index, label in enumerate(SAMPLE_CLASSES):
        rng = np.random.default_rng([seed, index])
        for _ in range(per_class):
            image, made = draw_shape(label, rng)
            images.append(np.asarray(image))
            labels.append(index)
            factors.append(made)
    return images, np.array(labels), factors


def resized(images, size: int) -> np.ndarray:
    """Float32 pixels `(n, size, size, 3)`, resized as every stage and export resizes."""
    from vgg_mobile.data.dataset import resize_pixels

    return np.stack([resize_pixels(image, size).numpy() for image in images]).astype(np.float32)


def accuracy_by_factor(predicted: np.ndarray, labels: np.ndarray, factors: list[dict]) -> dict:
    """`{"all": acc, "style: outline": acc, ...}`: accuracy overall and for each factor value."""
    right = predicted == labels
    result = {"all": float(right.mean())}
    for name in factors[0]:
        for value in sorted({f[name] for f in factors}):
            mask = np.array([f[name] == value for f in factors])
            result[f"{name}: {value}"] = float(right[mask].mean())
    return result


def _models(pipeline_out: Path):
    """`(name, image_size, classes, predict)` for each Keras run and each `.tflite` export."""
    from vgg_mobile import runtimes
    from vgg_mobile.core.run_dir import load_run

    for name in ("teacher", "pruned", "pruned_qat", "student", "student_qat"):
        if not (pipeline_out / name / "manifest.json").is_file():
            continue
        run = load_run(pipeline_out / name)
        yield (name, run.image_size, run.classes, runtimes.load(pipeline_out / name, "keras").predict)
    classes = load_run(pipeline_out / "teacher").classes
    for path in sorted((pipeline_out / "export").glob("*.tflite")):
        runtime = runtimes.load(path)
        yield f"export/{path.name}", runtime.image_size, classes, runtime.predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline_out", type=Path, help="A `vgg-mobile pipeline` output folder.")
    parser.add_argument("--data", type=Path, help="The data folder it trained on (held-out column).")
    parser.add_argument("--per-class", type=int, default=100, help="Drawn images per class.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save-images", type=Path, help="Also write the drawn images here.")
    args = parser.parse_args()

    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.data import dataset, splits
    from vgg_mobile.data.images import load_rgb

    images, labels, factors = drawn_set(args.per_class, args.seed)
    if args.save_images:
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = args.save_images / SAMPLE_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    held_out = None
    if args.data:
        folder = dataset.scan_folder(args.data)
        examples, _ = splits.held_out(load_run(args.pipeline_out / "teacher").manifest.data, folder)
        held_out = ([load_rgb(e.path) for e in examples], np.array([e.label for e in examples]))
    rows = []
    for name, size, classes, predict in _models(args.pipeline_out):
        if tuple(classes) != SAMPLE_CLASSES:
            raise SystemExit(f"{args.pipeline_out / name}: classes {classes} are not the sample's")
        drawn = accuracy_by_factor(predict(resized(images, size)).argmax(-1), labels, factors)
        row = {"model": name, "drawn": drawn}
        if held_out:
            row["held-out"] = float((predict(resized(held_out[0], size)).argmax(-1)
                                     == held_out[1]).mean())
        rows.append(row)
    n_held = f" ({len(held_out[1])} images)" if held_out else ""
    print(f"| model | held-out{n_held} | drawn ({len(labels)} images) |")
    print("|---|---:|---:|")
    for row in rows:
        held = f"{row['held-out']:.3f}" if "held-out" in row else "-"
        print(f"| {row['model']} | {held} | {row['drawn']['all']:.3f} |")
    print()
    counts = {key: sum(f"{name}: {value}" == key for f in factors for name, value in f.items())
              for key in rows[0]["drawn"] if key != "all"}
    print("| drawn images | n | " + " | ".join(row["model"] for row in rows) + " |")
    print("|---|---:|" + "---:|" * len(rows))
    for key, n in counts.items():
        print(f"| {key} | {n} | " + " | ".join(f"{row['drawn'][key]:.3f}" for row in rows) + " |")

if __name__ == "__main__":
    main()
