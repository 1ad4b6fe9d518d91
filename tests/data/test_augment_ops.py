"""TrivialAugment and MixUp / CutMix: real TensorFlow on small generated images."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_mobile.data import dataset
from vgg_mobile.data.augment_ops import TRIVIAL_AUGMENT_OPS, mix_batch, trivial_augment


def _image(seed: int = 0, colour: bool = True) -> np.ndarray:
    """A 32 px image with structure (a gradient and a square) that every operation changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:32, :32].astype(np.float32)
    image = np.stack([x * 6, y * 6, (x + y) * 3], axis=-1) if colour else np.repeat(
        (x * 6)[..., None], 3, axis=-1)
    image[8:20, 10:22] = rng.uniform(0, 255, 3 if colour else 1)
    return np.clip(image + rng.normal(0, 4, image.shape), 20, 235).astype(np.float32)


def test_trivial_augment_keeps_shape_dtype_and_range_and_changes_images():
    import tensorflow as tf

    image = tf.constant(_image())
    outputs = [trivial_augment(image, [7, i]).numpy() for i in range(40)]
    for out in outputs:
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
    changed = [np.abs(out - image.numpy()).mean() > 1.0 for out in outputs]
    # One operation in 13 is the identity (and a few draw a magnitude too small to show).
    assert sum(changed) >= 30, sum(changed)


def test_trivial_augment_is_seeded():
    import tensorflow as tf

    image = tf.constant(_image(1))
    first = trivial_augment(image, [3, 4]).numpy()
    assert np.array_equal(first, trivial_augment(image, [3, 4]).numpy())
    others = [trivial_augment(image, [3, i]).numpy() for i in range(5, 12)]
    assert any(not np.array_equal(first, other) for other in others)


def test_every_operation_is_reachable_and_saturation_only_for_colour(monkeypatch):
    import tensorflow as tf

    from vgg_mobile.data import augment_ops

    chosen = []
    real_switch = tf.switch_case

    def spy(index, branches, **kwargs):
        chosen.append(int(index))
        return real_switch(index, branches, **kwargs)

    monkeypatch.setattr(tf, "switch_case", spy)
    for colour in (True, False):
        chosen.clear()
        for i in range(200):
            augment_ops.trivial_augment(tf.constant(_image(colour=colour)), [1, i], colour=colour)
        names = {TRIVIAL_AUGMENT_OPS[i] for i in chosen}
        expected = set(TRIVIAL_AUGMENT_OPS) - (set() if colour else {"saturation"})
        assert names == expected


def _two_images_batch():
    import tensorflow as tf

    black = np.zeros((4, 16, 16, 3), np.float32)
    white = np.full((4, 16, 16, 3), 255.0, np.float32)
    images = tf.constant(np.concatenate([black, white]))
    labels = tf.one_hot([0] * 4 + [1] * 4, 3)
    return images, labels


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_mixed_labels_sum_to_one_and_match_the_mixed_pixels(mixup, cutmix):
    images, labels = _two_images_batch()
    mixed_any = False
    for seed in range(6):
        x, y = mix_batch(images, labels, [seed, 0], mixup, cutmix)
        x, y = x.numpy(), y.numpy()
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
        assert y[:, 2].max() == 0  # no class appears that was not in the batch
        # Black is class 0, white class 1: each image's share of white is its label's share
        # of class 1, for MixUp (a blend) as for CutMix (a box).
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)) / 255.0, y[:, 1], atol=1e-4)
        mixed_any |= bool(((y[:, 1] > 0.01) & (y[:, 1] < 0.99)).any())
    assert mixed_any


def test_cutmix_pastes_a_box_and_mixup_blends():
    images, labels = _two_images_batch()
    x, _ = mix_batch(images, labels, [0, 5], 0.0, 1.0)
    values = np.unique(x.numpy())
    assert set(values) <= {0.0, 255.0}  # pixels come whole from one image or the other
    x, y = mix_batch(images, labels, [0, 5], 1.0, 0.0)
    inbetween = (x.numpy() > 0) & (x.numpy() < 255)
    assert inbetween.any() or np.allclose(y.numpy().max(axis=1), 1.0)


def test_mixing_is_seeded_and_off_at_zero():
    images, labels = _two_images_batch()
    a = mix_batch(images, labels, [2, 3], 0.5, 0.5)
    b = mix_batch(images, labels, [2, 3], 0.5, 0.5)
    assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a, b))
    x, y = mix_batch(images, labels, [2, 3], 0.0, 0.0)
    assert x is images and y is labels


def test_weights_mix_as_the_labels_do():
    import tensorflow as tf

    images, labels = _two_images_batch()
    weights = tf.constant([1.0] * 4 + [3.0] * 4)
    _, y, w = mix_batch(images, labels, [4, 4], 1.0, 0.0, weights)
    np.testing.assert_allclose(w.numpy(), 1.0 * y.numpy()[:, 0] + 3.0 * y.numpy()[:, 1], rtol=1e-5)


def _folder(tmp_path):
    from vgg_mobile.data.sample import write_sample_data

    return dataset.scan_folder(write_sample_data(tmp_path / "data", images_per_class=4,
                                                 image_size=32, seed=0))


def test_the_training_pipeline_mixes_batches_and_applies_trivialaugment(tmp_path):
    folder = _folder(tmp_path)
    n_classes = len(folder.classes)
    weights = dataset.class_weights(folder.train, n_classes)
    augmentation = dataset.augmentation_for(True, 32, flip=True, policy="trivialaugment")
    ds = dataset.make_dataset(folder.train, 32, 8, n_classes, training=True,
                              augmentation=augmentation, seed=1, mixup_alpha=0.4,
                              cutmix_alpha=1.0, class_weights=weights)
    x, y, w = next(iter(ds))
    assert x.shape == (8, 32, 32, 3) and y.shape == (8, n_classes) and w.shape == (8,)
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-5)
    assert (y.numpy().max(axis=1) < 0.999).any()  # some labels are mixed
    assert 0 <= x.numpy().min() and x.numpy().max() <= 255
    # Without class weights the batches are (pixels, labels), as Keras takes them.
    plain = dataset.make_dataset(folder.train, 32, 8, n_classes, training=True, mixup_alpha=0.4)
    assert len(next(iter(plain))) == 2
    with pytest.raises(dataset.DataError, match="one-hot"):
        dataset.make_dataset(folder.train, 32, 8, n_classes, training=True, mixup_alpha=0.4,
                             one_hot=False)


def test_trivialaugment_policy_leaves_colour_to_its_operations():
    aug = dataset.augmentation_for(True, 224, policy="trivialaugment", colour=False)
    assert (aug.brightness, aug.contrast, aug.saturation) == (0.0, 0.0, 0.0)
    assert aug.flip and aug.crop_scale == dataset.Augmentation().crop_scale
    assert dataset.augmentation_for(True, 32, flip=True).flip
    assert not dataset.augmentation_for(True, 224, flip=False).flip
    with pytest.raises(dataset.DataError, match="policy"):
        dataset.Augmentation(policy="randaugment")
