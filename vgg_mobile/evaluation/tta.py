"""Test-time augmentation (TTA): a Keras model's probabilities averaged over views of each image.

The views are the image itself, its left-right mirror (only for a model trained with flips:
for digits and letters a mirror can be another class) and shifted crops: the four corners and
the centre of a crop `crop` of the side, resized back with `dataset.resize_pixels`, the one
resize of training and serving. Every view is made from the pixels `metrics.predict` feeds the
model (decoded and resized to its input), so the model sees nothing it was not trained on.

TTA is for measuring: it costs one forward pass per view. Exported files stay single-pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.core.run_dir import Manifest
from vgg_mobile.data import dataset
# The choices of the training flip (`auto` there is decided from the data, here from the run).
from vgg_mobile.data.augmentation import FLIP_CHOICES


@dataclasses.dataclass(frozen=True)
class TTA:
    """Which views test-time augmentation averages.

    Attributes:
        flip: `on` adds the left-right mirror, `off` leaves it out, `auto` adds it when the
            run's training augmentation flipped (see `training_flip`; off when unknown).
        crop: Side of the shifted crops (four corners and the centre) as a share of the
            image's side, in (0, 1]; `1.0` adds no crops.
    """

    flip: str = "auto"
    crop: float = 0.9

    def __post_init__(self):
        if self.flip not in FLIP_CHOICES:
            raise BadInputError(f"flip must be one of {', '.join(FLIP_CHOICES)}. "
                                f"Received: flip={self.flip!r}")
        if not 0 < self.crop <= 1:
            raise BadInputError(f"crop must be in (0, 1]. Received: crop={self.crop}")


# Just the image: TTA that must equal a single pass.
IDENTITY = TTA(flip="off", crop=1.0)


def training_flip(manifest: Manifest) -> bool | None:
    """Whether a run's training augmentation flipped images left-right.

    Read from the augmentation the manifest records (`<section>.augmentation.flip`) when it
    does, else worked out from the config it ran with (`augment`, and the input side that
    `dataset.augmentation_for` decides by: for a distilled student the larger of its own and
    its teacher's). `None` when neither says.
    """
    for section in manifest.sections.values():
        recorded = section.get("augmentation") if isinstance(section, dict) else None
        if isinstance(recorded, dict) and isinstance(recorded.get("flip"), bool):
            return recorded["flip"]
    for name, settings in manifest.config.items():
        if not isinstance(settings, dict) or not isinstance(settings.get("augment"), bool):
            continue
        size = manifest.image_size
        if name == "distill":
            size = max(size, int(manifest.section("teacher").get("image_size") or 0))
        return dataset.augmentation_for(settings["augment"], size).flip
    return None


def resolve_flip(tta: TTA, manifest: Manifest | None) -> tuple[bool, str]:
    """`(flip, why)`: `tta.flip` decided for a run, and where the decision came from."""
    if tta.flip != "auto":
        return tta.flip == "on", "asked"
    trained = training_flip(manifest) if manifest is not None else None
    if trained is None:
        return False, "unknown training augmentation: no mirror"
    return trained, "training augmentation"


def view_names(flip: bool, crop: float) -> list[str]:
    """The names of the views `views` makes, in its order."""
    names = ["image"] + (["mirror"] if flip else [])
    if crop < 1:
        names += ["top-left", "top-right", "bottom-left", "bottom-right", "centre"]
    return names


def views(images, flip: bool, crop: float):
    """The TTA views of a batch of pixels.

    Args:
        images: `(batch, height, width, 3)` pixels in [0, 255] (whole numbers, as
            `dataset.make_dataset` yields them).
        flip: Add the left-right mirror.
        crop: Side of the shifted crops as a share of the side; `1.0` for none.

    Returns:
        A float32 tensor `(views, batch, height, width, 3)`, in `view_names` order.
    """
    import tensorflow as tf

    pixels = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    out = [pixels]
    if flip:
        out.append(tf.reverse(pixels, axis=[2]))
    if crop < 1:
        h, w = max(1, round(crop * height)), max(1, round(crop * width))
        corners = [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w),
                   ((height - h) // 2, (width - w) // 2)]
        out += [dataset.resize_pixels(pixels[:, top:top + h, left:left + w], (height, width))
                for top, left in corners]
    return tf.cast(tf.stack(out), tf.float32)


def predict_views(model, examples, image_size: int, num_classes: int, flip: bool,
                  crop: float, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Runs a Keras model on every view of every example, one call per batch of images.

    Args:
        model: A Keras model taking raw pixels.
        examples: The examples to read.
        image_size: The model's input side.
        num_classes: Number of classes.
        flip: Add the mirror view.
        crop: Side of the shifted crops; `1.0` for none.
        batch_size: Images per batch (each call runs `batch_size` x views inputs).
            Defaults to `32`.

    Returns:
        `(probs, labels)`: probabilities `(views, n, num_classes)` in `view_names` order
        (`probs[0]` is the single pass, `probs.mean(0)` the TTA answer) and labels `(n,)`.
    """
    import tensorflow as tf

    ds = dataset.make_dataset(examples, image_size, batch_size, num_classes, one_hot=False)
    probs, labels = [], []
    for x, y in ds:
        stacked = views(x, flip, crop)
        n_views, batch = int(stacked.shape[0]), int(stacked.shape[1])
        flat = np.asarray(model(tf.reshape(stacked, (n_views * batch, *stacked.shape[2:])),
                                training=False))
        probs.append(flat.reshape(n_views, batch, -1))
        labels.append(y.numpy())
    return np.concatenate(probs, axis=1), np.concatenate(labels)
