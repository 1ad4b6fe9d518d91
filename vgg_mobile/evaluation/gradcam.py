"""Grad-CAM: where in an image a classifier looks for the class it answers.

Selvaraju et al. 2017: the gradient of a class's score (its logit, before the softmax) with
respect to a convolution layer's output, averaged over the layer's positions, weighs the
layer's channels; the weighted sum, through a ReLU, is a coarse map of the evidence for the
class. It is computed at the layer's resolution and resized to the image.

`vgg-mobile explain RUN IMAGE... --out OUT` writes, for each image, the image and the heatmap
over it as a PNG, and `OUT/manifest.json` with the class each map explains and the layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vgg_mobile.core.errors import BadInputError, DataError
from vgg_mobile.core.io import atomic_path, write_json
from vgg_mobile.core.outputs import MANIFEST, claim_output, marker, safe_name
from vgg_mobile.core.run_dir import load_run

KIND = "explanations"
# How much of the overlay is the heatmap (the rest is the image).
OVERLAY_ALPHA = 0.45


def conv_layers(model) -> list[str]:
    """Names of the layers whose output is a feature map `(batch, h, w, channels)`, in order,
    from the first after the input to the last before the head's pooling."""
    names = []
    for layer in model.layers[1:]:
        shape = getattr(layer, "output_shape", None)
        if isinstance(shape, tuple) and len(shape) == 4 and "preprocess" not in layer.name:
            names.append(layer.name)
    return names


def _is_pooling(layer) -> bool:
    inner = getattr(layer, "layer", layer)  # a quantization-aware wrapper holds the layer
    return "Pooling" in type(inner).__name__


def default_layer(model) -> str:
    """The last feature map of the backbone, before pooling, that is more than 1x1: the last
    convolution block's output (VGG16's `block5_conv3`, vgg16_bn's `block5_relu3`,
    MobileNetV2's `out_relu`)."""
    maps = [name for name in conv_layers(model)
            if min(model.get_layer(name).output_shape[1:3]) > 1
            and not _is_pooling(model.get_layer(name))]
    if not maps:
        raise BadInputError(f"{model.name}: no feature map larger than 1x1 to explain")
    return maps[-1]


def _logits(model):
    """The tensor before the softmax: the score Grad-CAM differentiates."""
    for layer in reversed(model.layers):
        if layer.name == "logits" or layer.name.endswith("_logits") or layer.name == "quant_logits":
            return layer.output
    # A model without a named logits layer: the softmax's input, or the output itself.
    last = model.layers[-1]
    return last.input if last.name in ("probs", "quant_probs") else model.output


def gradcam(model, images: np.ndarray, layer: str | None = None,
            class_index: int | Sequence[int] | None = None) -> dict:
    """Grad-CAM heatmaps of a tf_keras classifier.

    Args:
        model: A classifier taking float32 pixels `(n, h, w, 3)` in [0, 255].
        images: The pixels.
        layer: The feature-map layer to explain at. Defaults to `default_layer(model)`.
        class_index: The class each map explains: one for all, one per image, or `None` for
            each image's own top-1 answer. Defaults to `None`.

    Returns:
        `{"layer": str, "heatmaps": float32 (n, h, w) in [0, 1] at the image's size,
        "maps": float32 (n, layer h, layer w) in [0, 1], "classes": int (n,), "probs":
        float32 (n, classes)}`. A map with no positive evidence is all zeros.

    Raises:
        BadInputError: `layer` is not a feature-map layer of the model (the error lists them),
            or a class index is out of range.
    """
    import tensorflow as tf
    import tf_keras as keras

    layer = layer or default_layer(model)
    valid = conv_layers(model)
    if layer not in valid:
        raise BadInputError(f"no feature-map layer {layer!r} in {model.name}; valid: "
                            f"{', '.join(valid)}. Received: layer={layer!r}")
    images = np.asarray(images, np.float32)
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, _logits(model), model.output])
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        features, logits, probs = probe(x, training=False)
        n_classes = int(logits.shape[-1])
        if class_index is None:
            chosen = tf.argmax(probs, axis=1, output_type=tf.int32)
        else:
            chosen = np.broadcast_to(np.asarray(class_index, np.int32), (len(images),))
            if chosen.min() < 0 or chosen.max() >= n_classes:
                raise BadInputError(f"class index out of range 0..{n_classes - 1}. "
                                    f"Received: {class_index}")
            chosen = tf.constant(chosen)
        score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    maps = np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0).astype(np.float32)
    height, width = images.shape[1:3]
    heatmaps = tf.image.resize(maps[..., None], [height, width], method="bilinear").numpy()[..., 0]
    return {"layer": layer, "heatmaps": np.clip(heatmaps, 0, 1).astype(np.float32),
            "maps": maps, "classes": np.asarray(chosen, np.int64), "probs": probs.numpy()}


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The heatmap in matplotlib's `jet` colours over the image, as `uint8` RGB."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * np.asarray(image, np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def write_png(pixels: np.ndarray, path: str | Path, scale: int = 1) -> None:
    """Writes RGB pixels as a PNG atomically, enlarged `scale` times (nearest neighbour)."""
    from PIL import Image

    picture = Image.fromarray(np.asarray(pixels, np.uint8))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


@dataclasses.dataclass(frozen=True)
class ExplainOptions:
    """What `explain_images` explains.

    Attributes:
        layer: The feature-map layer. `None`: the last convolution block (`default_layer`).
        label: Explain this class for every image instead of each image's top-1 answer.
        scale: Enlarge the written PNGs this many times (small inputs are hard to see).
    """

    layer: str | None = None
    label: str | None = None
    scale: int = 4

    def __post_init__(self):
        if not 1 <= self.scale <= 16:
            raise BadInputError(f"scale must be 1 to 16. Received: scale={self.scale}")


def explain_images(run_dir: str | Path, images: Sequence[str | Path], out_dir: str | Path,
                   options: ExplainOptions | None = None, force: bool = False,
                   command: list[str] | None = None,
                   log: Callable[[str], None] = lambda message: None) -> dict:
    """Writes Grad-CAM heatmaps of a run's model over image files.

    Each image is read and resized exactly as in training. For image `i` named `NAME.ext`,
    `OUT/{i:03d}_{NAME}.png` is the image with the heatmap over it, beside the image alone
    (both at the model's input size, enlarged `options.scale` times).

    Args:
        run_dir: A run directory with a Keras model (a teacher, a student, a QAT run).
        images: Image files.
        out_dir: Folder to create; replaced only with `force` and only if `explain` wrote it.
        options: Layer, class and scale. Defaults to `ExplainOptions()`.
        force: Replace an earlier `explain` output. Defaults to `False`.
        command: The command line, recorded in the manifest.
        log: Receives one line per image.

    Returns:
        What `OUT/manifest.json` holds: the run, the layer, and per image its file, the class
        explained, the top-1 answer and its probability, and the heatmap's peak `(row, col)`.

    Raises:
        BadInputError: Bad run, layer or label; no images.
        DataError: An image cannot be read (the message names it); nothing is written.
    """
    from vgg_mobile.data.dataset import resize_pixels
    from vgg_mobile.data.images import load_rgb

    options = options or ExplainOptions()
    paths = [Path(p) for p in images]
    if not paths:
        raise BadInputError("explain needs at least one image")
    run = load_run(run_dir)
    class_index = None
    if options.label is not None:
        if options.label not in run.classes:
            raise BadInputError(f"no class {options.label!r} in {run.path}; valid: "
                                f"{', '.join(run.classes)}. Received: label={options.label!r}")
        class_index = run.classes.index(options.label)
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such image file")
    # Every image is read before anything is written: a bad one stops the command cleanly.
    pixels = np.stack([resize_pixels(load_rgb(p), run.image_size).numpy() for p in paths])
    model = run.load_model()
    result = gradcam(model, pixels.astype(np.float32), options.layer, class_index)
    with claim_output(out_dir, (KIND,), inputs=(run.path, *{p.parent for p in paths}),
                      force=force, staged=True) as output:
        entries = []
        for i, path in enumerate(paths):
            stem = safe_name(_clean(path.stem), "image name")
            file_name = f"{i:03d}_{stem}.png"
            side_by_side = np.concatenate(
                [pixels[i], overlay(pixels[i], result["heatmaps"][i])], axis=1)
            write_png(side_by_side, output.path / file_name, options.scale)
            top = int(result["probs"][i].argmax())
            peak = np.unravel_index(int(result["heatmaps"][i].argmax()), result["heatmaps"][i].shape)
            entries.append({
                "image": str(path), "file": file_name,
                "explained": run.classes[int(result["classes"][i])],
                "top1": run.classes[top], "probability": round(float(result["probs"][i][top]), 4),
                "peak": [int(peak[0]), int(peak[1])],
                "evidence": bool(result["maps"][i].max() > 0)})
            log(f"{file_name}: {run.classes[top]} ({result['probs'][i][top]:.3f}), heatmap of "
                f"{entries[-1]['explained']}")
        report = marker("explain", KIND, run=str(run.path.resolve()), layer=result["layer"],
                        layer_size=list(result["maps"].shape[1:]), input_size=run.image_size,
                        command=command, images=entries)
        write_json(output.path / MANIFEST, report)
    return report


def _clean(stem: str) -> str:
    """A file stem reduced to the characters `safe_name` allows (an image may be called anything)."""
    kept = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_"
                   for c in stem).lstrip("._-")
    return (kept or "image")[:80]
