"""Scanning, checking and splitting image folders; the tf.data pipeline."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from harness import image_folder
from vgg_mobile.data import dataset
from vgg_mobile.core.errors import DataError


def test_scan_finds_classes_sorted_and_labels_every_file(tmp_path):
    root = image_folder(tmp_path / "d", {"b": 3, "a": 4, "c": 2})
    folder = dataset.scan_folder(root)
    assert folder.classes == ("a", "b", "c")
    assert folder.class_counts() == {"a": 4, "b": 3, "c": 2}
    assert all(e.path.parent.name == folder.classes[e.label] for e in folder.train)
    assert not folder.presplit and not folder.bad


def test_bad_files_are_listed_and_skipped_or_fail_in_strict_mode(tmp_path):
    root = image_folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "b" / "readme.pdf").write_bytes(b"%PDF-1.4")
    (root / "stray.jpg").write_bytes(b"")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")
    folder = dataset.scan_folder(root)
    problems = {c.path.name: c.problem for c in folder.bad}
    assert set(problems) == {"broken.jpg", "readme.pdf", "stray.jpg"}
    assert "not inside a class folder" in problems["stray.jpg"]
    assert folder.class_counts() == {"a": 3, "b": 3}
    with pytest.raises(DataError, match=r"(?s)3 bad file\(s\).*broken\.jpg"):
        dataset.scan_folder(root, strict=True)


def test_class_folder_without_usable_images_is_an_error(tmp_path):
    root = image_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty \(no files\)"):
        dataset.scan_folder(root)
    shutil.rmtree(root / "empty")
    (root / "junk").mkdir()
    (root / "junk" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk \(all 1 files unusable\)"):
        dataset.scan_folder(root)


def test_fewer_than_two_classes_or_no_images_is_an_error(tmp_path):
    with pytest.raises(DataError, match="at least two class folders; found 1"):
        dataset.scan_folder(image_folder(tmp_path / "one", {"only": 3}))
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no images found"):
        dataset.scan_folder(tmp_path / "none")
    with pytest.raises(DataError, match="no such folder"):
        dataset.scan_folder(tmp_path / "absent")


def test_presplit_folder_keeps_the_users_split(tmp_path):
    image_folder(tmp_path / "d" / "train", {"a": 4, "b": 4})
    image_folder(tmp_path / "d" / "val", {"a": 1, "b": 2})
    folder = dataset.scan_folder(tmp_path / "d")
    assert folder.presplit
    parts = dataset.split(folder, 0.5, seed=3)
    assert len(parts.train) == 8 and len(parts.val) == 3


def test_val_folder_with_an_unknown_class_is_an_error(tmp_path):
    image_folder(tmp_path / "d" / "train", {"a": 2, "b": 2})
    image_folder(tmp_path / "d" / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        dataset.scan_folder(tmp_path / "d")


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    folder = dataset.scan_folder(image_folder(tmp_path / "d", {"a": 10, "b": 5, "c": 2}))
    parts = dataset.split(folder, 0.2, seed=7)
    val_counts = np.bincount([e.label for e in parts.val], minlength=3)
    assert list(val_counts) == [2, 1, 1]  # every class held out, at least one image
    assert not {e.path for e in parts.val} & {e.path for e in parts.train}
    assert len(parts.val) + len(parts.train) == 17
    assert dataset.split(folder, 0.2, seed=7) == parts
    assert dataset.split(folder, 0.2, seed=8) != parts


def test_class_weights_balance_an_imbalanced_folder(tmp_path):
    folder = dataset.scan_folder(image_folder(tmp_path / "d", {"a": 6, "b": 2}))
    weights = dataset.class_weights(folder.train, 2)
    assert weights[0] == pytest.approx(8 / 12) and weights[1] == pytest.approx(2.0)
    assert weights[0] * 6 == pytest.approx(weights[1] * 2)


def test_pipeline_resizes_batches_and_augments_only_training(tmp_path):
    folder = dataset.scan_folder(image_folder(tmp_path / "d", {"a": 5, "b": 5}, size=50))
    val = dataset.make_dataset(folder.train, 32, 4, 2)
    first = np.concatenate([x.numpy() for x, _ in val])
    again = np.concatenate([x.numpy() for x, _ in val])
    assert first.shape == (10, 32, 32, 3) and first.dtype == np.float32
    assert 0 <= first.min() and first.max() <= 255
    np.testing.assert_array_equal(first, again)  # evaluation is deterministic
    labels = np.concatenate([y.numpy() for _, y in val])
    assert labels.shape == (10, 2) and labels.sum() == 10
    train = dataset.make_dataset(folder.train, 32, 10, 2, training=True,
                                 augmentation=dataset.Augmentation())
    epoch1 = next(iter(train))[0].numpy()
    epoch2 = next(iter(train))[0].numpy()
    assert epoch1.shape == (10, 32, 32, 3)
    assert not np.allclose(np.sort(epoch1.ravel()), np.sort(first.ravel()))
    assert not np.allclose(epoch1, epoch2)


def test_pipeline_resize_matches_bilinear_half_pixel_centres(tmp_path):
    import tensorflow as tf

    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    ours = dataset.decode_and_resize(tf.constant(str(tmp_path / "x.png")), 32).numpy()
    expected = tf.compat.v1.image.resize_bilinear(pixels[None].astype(np.float32), [32, 32],
                                                  half_pixel_centers=True)[0].numpy()
    assert np.abs(ours.astype(float) - np.round(expected)).max() <= 1


def test_augmentation_options_are_validated():
    with pytest.raises(DataError, match="crop_scale"):
        dataset.Augmentation(crop_scale=(0.0, 1.0))
    with pytest.raises(DataError, match="brightness"):
        dataset.Augmentation(brightness=1.5)


def test_small_inputs_are_never_mirrored_photos_are():
    from vgg_mobile.data.dataset import (NO_AUGMENTATION, SMALL_IMAGE_MAX, Augmentation,
                                         augmentation_for)

    assert augmentation_for(False, 32) == augmentation_for(False, 224) == NO_AUGMENTATION
    small = augmentation_for(True, SMALL_IMAGE_MAX)
    assert not small.flip and small.crop_scale[0] >= 0.75
    assert augmentation_for(True, SMALL_IMAGE_MAX + 1) == Augmentation()
    assert Augmentation().flip


def test_crop_scale_and_colour_jitter_replace_the_size_defaults():
    import tensorflow as tf

    from vgg_mobile.data.dataset import _augment, augmentation_for

    for size in (32, 224):
        chosen = augmentation_for(True, size, crop_scale=0.3, colour_jitter=0.2)
        assert chosen.crop_scale == (0.3, 1.0)
        assert (chosen.brightness, chosen.contrast, chosen.saturation) == (0.2, 0.4, 0.4)
    assert augmentation_for(True, 32, policy="trivialaugment", colour_jitter=0.2).brightness == 0
    # No crop, no jitter, no flip: the training image is the image; a deep crop changes it.
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    still = augmentation_for(True, 32, flip=False, crop_scale=1.0, colour_jitter=0.0)
    cropped = augmentation_for(True, 32, flip=False, crop_scale=0.3, colour_jitter=0.0)
    tf.random.set_seed(0)
    for _ in range(5):
        np.testing.assert_allclose(_augment(tf.constant(image), 32, still).numpy(), image,
                                   atol=1e-3)
    changed = [np.abs(_augment(tf.constant(image), 32, cropped).numpy() - image).mean()
               for _ in range(10)]
    assert sum(c > 10 for c in changed) >= 8


def test_small_image_augmentation_keeps_left_and_right():
    import tensorflow as tf

    from vgg_mobile.data.dataset import SMALL_IMAGE_AUGMENTATION, _augment

    # A bright left half: a mirror would put it on the right.
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = 255
    tf.random.set_seed(0)
    for _ in range(40):
        out = _augment(tf.constant(image), 32, SMALL_IMAGE_AUGMENTATION).numpy()
        assert out[:, :8].mean() > out[:, -8:].mean()


def test_unbalanced_classes_are_warned_about_at_one_to_six_not_one_to_four(tmp_path):
    six = dataset.scan_folder(image_folder(tmp_path / "six", {"big": 12, "mid": 6, "small": 2}))
    warning = dataset.imbalance_warning(six.classes, six.train)
    assert warning.startswith("warning: unbalanced classes")
    assert "'small', has 2 training images" in warning and "'big', with 12" in warning
    assert "class_weights = true" in warning and "focal" in warning
    # Once the training does something about it, the warning says so instead of advising.
    handled = dataset.imbalance_warning(six.classes, six.train, remedy="class weights are on")
    assert handled.endswith("class weights are on") and "class_weights = true" not in handled
    four = dataset.scan_folder(image_folder(tmp_path / "four", {"big": 12, "small": 3}))
    assert dataset.imbalance_warning(four.classes, four.train) == ""


@pytest.mark.parametrize("source", [(1, 1), (2, 3), (7, 5), (64, 64), (65, 97), (300, 200),
                                    (31, 500), (1000, 17)])
def test_the_numpy_resize_gives_the_pixels_of_the_tensorflow_one(source):
    # The service resizes in NumPy (no TensorFlow in its process): every pixel must be the
    # one training saw, downscaling and upscaling, square and not.
    rng = np.random.default_rng(sum(source))
    image = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
    for size in (64, (32, 48), (224, 224), 1, (100, 3)):
        expected = dataset.resize_pixels(image, size).numpy()
        got = dataset.resize_array(image, size)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
