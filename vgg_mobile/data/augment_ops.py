"""Augmentation operations in plain TensorFlow ops, for the tf.data training pipeline:
TrivialAugment (one random operation per image) and MixUp / CutMix (per batch).

Every function here is stateless: it draws its randomness from a `seed` tensor of two
integers (`tf.random.stateless_*`), so the same seed gives the same output.
"""

from __future__ import annotations

import math

# TrivialAugment "wide" (Müller and Hutter, 2021): one operation per image, at a magnitude drawn
# uniformly from the operation's whole range. Names in the order of `_BRANCHES`.
TRIVIAL_AUGMENT_OPS = ("identity", "brightness", "contrast", "saturation", "sharpness", "rotate",
                       "shear_x", "shear_y", "translate_x", "translate_y", "solarize",
                       "posterize", "autocontrast")
# The wide ranges: enhancement factors 1 +- 0.99, rotations up to 135 degrees, shears up to
# 0.99, shifts up to 32/224 of the side (TrivialAugment's 32 px at 224 px), posterize to 2 bits.
MAX_FACTOR = 0.99
MAX_DEGREES = 135.0
MAX_SHEAR = 0.99
MAX_SHIFT = 32 / 224
# The grey that geometric operations fill the uncovered corners with.
FILL = 128.0


def _blend(tf, degenerate, image, factor):
    """PIL's ImageEnhance: `degenerate + factor * (image - degenerate)`."""
    return degenerate + factor * (image - degenerate)


def _gray(tf, image):
    return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def _affine(tf, image, transform):
    """Warps `image` with the output-to-input map `[a0, a1, a2, b0, b1, b2]` (pixels)."""
    shape = tf.shape(image)
    transforms = tf.concat([tf.reshape(tf.cast(transform, tf.float32), [6]), tf.zeros([2])], 0)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transforms[None], output_shape=shape[:2],
        fill_value=FILL, interpolation="BILINEAR", fill_mode="CONSTANT")[0]


def _sharpness(tf, image, factor):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")[0]
    # As PIL, the border keeps its pixels: only the inside is smoothed.
    inside = tf.pad(tf.ones(tf.shape(image)[:2] - 2), [[1, 1], [1, 1]])[:, :, None]
    blurred = inside * blurred + (1 - inside) * image
    return _blend(tf, blurred, image, factor)


def trivial_augment(image, seed, colour: bool = True):
    """Applies one TrivialAugment-wide operation, chosen at random, at a random magnitude.

    Args:
        image: float32 pixels `(height, width, 3)` in [0, 255].
        seed: Two integers (`tf.random.stateless_*` seed): the same seed, the same output.
        colour: Whether the images have colour; without it `saturation` (which does nothing
            to a grey image) is never chosen. Defaults to `True`.

    Returns:
        float32 pixels of the same shape, in [0, 255].
    """
    import tensorflow as tf

    image = tf.cast(image, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    ops = [i for i, name in enumerate(TRIVIAL_AUGMENT_OPS) if colour or name != "saturation"]
    op = tf.gather(tf.constant(ops), tf.random.stateless_uniform([], seeds[0], 0, len(ops),
                                                                 dtype=tf.int32))
    magnitude = tf.random.stateless_uniform([], seeds[1])
    sign = tf.where(tf.random.stateless_uniform([], seeds[2]) < 0.5, -1.0, 1.0)
    signed = sign * magnitude
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2

    def rotate():
        angle = signed * MAX_DEGREES * math.pi / 180
        cos, sin = tf.cos(angle), tf.sin(angle)
        return _affine(tf, image, [cos, -sin, cx - cos * cx + sin * cy,
                                   sin, cos, cy - sin * cx - cos * cy])

    def shear_x():
        shear = signed * MAX_SHEAR
        return _affine(tf, image, [1.0, shear, -shear * cy, 0.0, 1.0, 0.0])

    def shear_y():
        shear = signed * MAX_SHEAR
        return _affine(tf, image, [1.0, 0.0, 0.0, shear, 1.0, -shear * cx])

    def translate_x():
        return _affine(tf, image, [1.0, 0.0, signed * MAX_SHIFT * width, 0.0, 1.0, 0.0])

    def translate_y():
        return _affine(tf, image, [1.0, 0.0, 0.0, 0.0, 1.0, signed * MAX_SHIFT * height])

    def solarize():
        # Pixels above the threshold are inverted; magnitude 1 inverts everything.
        threshold = 255.0 * (1 - magnitude)
        return tf.where(image >= threshold, 255.0 - image, image)

    def posterize():
        bits = 8 - tf.round(magnitude * 6)  # 8 down to 2 bits
        step = tf.pow(2.0, 8 - bits)
        return tf.floor(image / step) * step

    def autocontrast():
        low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
        high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
        scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
        return tf.where(high > low, (image - low) * scale, image)

    factor = 1 + signed * MAX_FACTOR
    branches = {
        "identity": lambda: image,
        "brightness": lambda: image * factor,
        "contrast": lambda: _blend(tf, tf.reduce_mean(_gray(tf, image)), image, factor),
        "saturation": lambda: _blend(tf, _gray(tf, image), image, factor),
        "sharpness": lambda: _sharpness(tf, image, factor),
        "rotate": rotate, "shear_x": shear_x, "shear_y": shear_y,
        "translate_x": translate_x, "translate_y": translate_y,
        "solarize": solarize, "posterize": posterize, "autocontrast": autocontrast,
    }
    out = tf.switch_case(op, [branches[name] for name in TRIVIAL_AUGMENT_OPS])
    out = tf.ensure_shape(out, image.shape)
    return tf.clip_by_value(out, 0.0, 255.0)


def _beta(tf, alpha: float, seed):
    """One draw from Beta(alpha, alpha), as two gamma draws."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha)
    return tf.math.divide_no_nan(a, a + b)


def mix_batch(images, labels, seed, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              weights=None):
    """MixUp or CutMix of a batch with a shuffled copy of itself.

    MixUp (Zhang et al., 2018) blends every image with its partner, `w * x + (1 - w) * x'`;
    CutMix (Yun et al., 2019) pastes a box of the partner covering `1 - w` of the image. The
    labels (and `weights`) mix by the same share; `w` is drawn once per batch from
    Beta(alpha, alpha). With both alphas above 0 the batch gets one of the two, at even odds.

    Args:
        images: float32 `(batch, height, width, channels)`.
        labels: One-hot or soft labels `(batch, classes)`.
        seed: Two integers (`tf.random.stateless_*` seed).
        mixup_alpha: MixUp's Beta parameter; 0 turns it off. Defaults to `0.0`.
        cutmix_alpha: CutMix's Beta parameter; 0 turns it off. Defaults to `0.0`.
        weights: Per-image loss weights `(batch,)` to mix alike, or `None`. Defaults to `None`.

    Returns:
        `(images, labels)`, or `(images, labels, weights)` with `weights`; unchanged when both
        alphas are 0.
    """
    import tensorflow as tf

    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return (images, labels) if weights is None else (images, labels, weights)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    images = tf.cast(images, tf.float32)
    labels = tf.cast(labels, tf.float32)
    batch = tf.shape(images)[0]
    order = tf.argsort(tf.random.stateless_uniform([batch], seeds[0]))
    partners = tf.gather(images, order)

    def mixup():
        share = _beta(tf, mixup_alpha, seeds[1])
        return share * images + (1 - share) * partners, share

    def cutmix():
        share = _beta(tf, cutmix_alpha, seeds[2])
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        side = tf.sqrt(1.0 - share)
        box_h = tf.cast(tf.round(side * tf.cast(height, tf.float32)), tf.int32)
        box_w = tf.cast(tf.round(side * tf.cast(width, tf.float32)), tf.int32)
        centre = tf.random.stateless_uniform([2], seeds[3])
        cy = tf.cast(centre[0] * tf.cast(height, tf.float32), tf.int32)
        cx = tf.cast(centre[1] * tf.cast(width, tf.float32), tf.int32)
        top, bottom = tf.maximum(cy - box_h // 2, 0), tf.minimum(cy + box_h - box_h // 2, height)
        left, right = tf.maximum(cx - box_w // 2, 0), tf.minimum(cx + box_w - box_w // 2, width)
        rows = tf.range(height)[:, None]
        cols = tf.range(width)[None, :]
        inside = tf.cast((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right),
                         tf.float32)[None, :, :, None]
        # The label share is the area actually kept, after the box is clipped to the image.
        kept = 1.0 - tf.reduce_mean(inside)
        return images * (1 - inside) + partners * inside, kept

    if mixup_alpha > 0 and cutmix_alpha > 0:
        coin = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(
            seeds[0], 1)) < 0.5
        mixed, share = tf.cond(coin, cutmix, mixup)
    else:
        mixed, share = mixup() if mixup_alpha > 0 else cutmix()
    labels = share * labels + (1 - share) * tf.gather(labels, order)
    if weights is None:
        return mixed, labels
    weights = tf.cast(weights, tf.float32)
    return mixed, labels, share * weights + (1 - share) * tf.gather(weights, order)
