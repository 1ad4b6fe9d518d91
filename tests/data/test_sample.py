from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.data.sample import SAMPLE_CLASSES, draw_sample, write_sample_data


# The sample preset's teacher on the default 60 images a class scored 0.35 to 0.52 on its 48
# held-out images from run to run, and 0.41 on 200 drawn shapes; the demo's models from before
# scored 0.27 to 0.30 on such shapes (docs/measurements.md#sample-data). The test trains on
# twice the images for two thirds of the epochs (the walkthrough's budget; one run: 0.48 of 96
# held-out, 0.365 of 200 drawn). By chance (0.25), 0.35 of 96 images has a probability of
# about 1%, 0.31 of 200 about 3%: the drawn bar is low because the teacher learns the shapes
# only partly in this budget, not because chance is close.
MIN_DRAWN_ACCURACY = 0.31
MIN_HELD_OUT_ACCURACY = 0.35


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = write_sample_data(tmp_path / "a", images_per_class=4, image_size=32, seed=3)
    b = write_sample_data(tmp_path / "b", images_per_class=4, image_size=32, seed=3)
    c = write_sample_data(tmp_path / "c", images_per_class=4, image_size=32, seed=4)
    # The marker records when the folder was written; every image file is the same.
    images = {name: digest for name, digest in _digest(a).items() if name != ".vgg-mobile.json"}
    assert images == {n: d for n, d in _digest(b).items() if n != ".vgg-mobile.json"}
    assert images != {n: d for n, d in _digest(c).items() if n != ".vgg-mobile.json"}
    # The classes, and the hidden marker that lets --force replace this folder (and no other).
    assert sorted(p.name for p in a.iterdir()) == [".vgg-mobile.json", *SAMPLE_CLASSES]
    assert len(_digest(a)) == 17
    assert {name.rsplit(".", 1)[1] for name in _digest(a)} == {"jpg", "png", "json"}


def test_images_differ_within_a_class(tmp_path):
    out = write_sample_data(tmp_path / "s", images_per_class=6, image_size=32)
    pixels = [np.asarray(Image.open(p).convert("RGB"), float) for p in sorted((out / "cross").iterdir())]
    assert all(np.abs(pixels[0] - other).mean() > 5 for other in pixels[1:])


def test_refuses_to_overwrite_and_validates(tmp_path):
    write_sample_data(tmp_path / "s", images_per_class=2, image_size=32)
    with pytest.raises(BadInputError, match="already holds a finished vgg-mobile sample data"):
        write_sample_data(tmp_path / "s", images_per_class=2, image_size=32)
    write_sample_data(tmp_path / "s", images_per_class=3, image_size=32, overwrite=True)
    assert len(list((tmp_path / "s" / "circle").iterdir())) == 3
    # A folder it did not write is never replaced, even with overwrite.
    (tmp_path / "mine" / "cat").mkdir(parents=True)
    (tmp_path / "mine" / "cat" / "1.jpg").write_bytes(b"x")
    with pytest.raises(BadInputError, match="never replaced"):
        write_sample_data(tmp_path / "mine", images_per_class=2, image_size=32, overwrite=True)
    assert (tmp_path / "mine" / "cat" / "1.jpg").exists()
    with pytest.raises(BadInputError, match="images_per_class"):
        write_sample_data(tmp_path / "t", images_per_class=1)
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _shape_and_background_colour(image) -> np.ndarray:
    """The median colour of the pixels far from the border's, beside the border's median."""
    pixels = np.asarray(image, float)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    flat = pixels.reshape(-1, 3)
    shape = flat[np.linalg.norm(flat - background, axis=1) > 60]
    return np.concatenate([np.median(shape, axis=0) if len(shape) else background, background])


def _colours(seed: int, per_class: int):
    features, labels = [], []
    for index, label in enumerate(SAMPLE_CLASSES):
        rng = np.random.default_rng([seed, index])
        for _ in range(per_class):
            features.append(_shape_and_background_colour(draw_sample(label, 32, rng)))
            labels.append(index)
    return np.array(features), np.array(labels)


def test_colour_does_not_tell_the_class():
    # A 7-nearest-neighbour vote on the shape's and the background's colour, fitted on one
    # seed and scored on another. When each class had its own hue (+-60 degrees) this scored
    # 0.74, and models trained on the sample data learnt the colour, not the shape: they
    # called a red square a circle. Chance is 0.25; 400 scored images put 0.35 about 4.6
    # standard deviations above it.
    fit_x, fit_y = _colours(seed=0, per_class=100)
    test_x, test_y = _colours(seed=1, per_class=100)
    distances = ((test_x[:, None, :] - fit_x[None, :, :]) ** 2).sum(-1)
    nearest = fit_y[np.argsort(distances, axis=1)[:, :7]]
    votes = np.array([np.bincount(row, minlength=len(SAMPLE_CLASSES)).argmax() for row in nearest])
    assert (votes == test_y).mean() < 0.35


def test_unknown_class_is_refused():
    with pytest.raises(BadInputError, match="unknown sample class 'star'"):
        draw_sample("star", 32, np.random.default_rng(0))


def _drawn_shapes():
    """`measurements/sample_shapes.py`: shapes drawn unlike the sample data."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "measurements" / "sample_shapes.py"
    spec = importlib.util.spec_from_file_location("sample_shapes", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_teacher_trained_on_it_recognises_shapes_drawn_otherwise(tmp_path):
    # The sample preset's teacher recipe on the sample data, scored on 200 shapes it never
    # saw: other sizes (to 0.5 of the image), colours (red, black, white, any hue), outlines,
    # positions up to the edges, plain or coloured backgrounds, files up to 600 px resized as
    # the pipeline resizes. Before the classes shared their colours the demo's models scored
    # 0.27 to 0.30 there, chance on 4 classes.
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.training.train import train

    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.training.train import train

    shapes = _drawn_shapes()
    data = write_sample_data(tmp_path / "data", images_per_class=120, seed=0)
    run = train(data, tmp_path / "teacher",
                ModelOptions(architecture="vgg16_bn_0.5", image_size=32, weights="none"),
                TrainConfig(epochs=16, batch_size=32, learning_rate=1e-3, label_smoothing=0.0))
    model = load_run(run.run_dir).load_model()
    images, labels, factors = shapes.drawn_set(per_class=50, seed=1)
    predicted = model.predict(shapes.resized(images, 32), verbose=0).argmax(-1)
    scores = shapes.accuracy_by_factor(predicted, labels, factors)
    assert run.metrics["accuracy"] >= MIN_HELD_OUT_ACCURACY, run.metrics
    assert scores["all"] >= MIN_DRAWN_ACCURACY, scores
