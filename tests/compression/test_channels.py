"""Channel pruning: filters that contribute nothing go without changing an answer, filters that
contribute change them, parameters fall as planned, bad ratios and architectures are refused,
and a pruned run composes with a second pruning and with QAT."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness import folder_digest

from vgg_mobile.compression import channels
from vgg_mobile.core.errors import BadInputError

SIZE = 32
CLASSES = 4


def _model(architecture: str):
    import tf_keras as keras
    from vgg_mobile.models.architectures import ModelOptions, build_classifier

    keras.utils.set_random_seed(0)
    return build_classifier(ModelOptions(architecture=architecture, image_size=SIZE,
                                         weights="none", dropout=0.0), CLASSES)


def _images(n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _silence(model, ratio: float, constant: float) -> dict[str, set[int]]:
    """Zeroes the kernels of the `ratio` share of each convolution's filters (the lowest L1
    norms then), and sets what they add after it (bias, or batch-norm shift) to `constant`.
    With `constant == 0` those filters contribute nothing downstream."""
    layers = channels.chain(model)
    silenced = {}
    for layer, after in zip(layers, layers[1:]):
        if type(layer).__name__ != "Conv2D":
            continue
        n = layer.filters
        chosen = np.random.default_rng(n).choice(n, int(round(n * ratio)), replace=False)
        weights = layer.get_weights()
        weights[0][..., chosen] = 0.0
        if layer.use_bias:
            weights[1][chosen] = constant
        layer.set_weights(weights)
        if type(after).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = after.get_weights()
            beta[chosen], mean[chosen] = constant, 0.0
            after.set_weights([gamma, beta, mean, variance])
        silenced[layer.name] = set(chosen.tolist())
    return silenced


@pytest.mark.parametrize("architecture", ["vgg16", "vgg16_bn_0.5"])
def test_filters_that_contribute_nothing_go_without_changing_an_answer(architecture):
    ratio = 0.25
    model = _model(architecture)
    silenced = _silence(model, ratio, constant=0.0)
    images = _images()
    before = model.predict(images, verbose=0)
    # Evidence only if the model's answers vary with the image.
    assert before.std(axis=0).max() > 1e-3

    plan = channels.plan_channels(model, ratio)
    for name, kept in plan.keep.items():
        assert not silenced[name] & set(kept.tolist()), name
    narrow = channels.rebuild(model, plan)
    after = narrow.predict(images, verbose=0)
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert narrow.count_params() < 0.6 * model.count_params()


@pytest.mark.parametrize("architecture", ["vgg16", "vgg16_bn_0.5"])
def test_filters_that_contribute_change_the_answers_when_removed(architecture):
    ratio = 0.25
    model = _model(architecture)
    _silence(model, ratio, constant=0.5)  # zero kernels, but a constant added after them
    images = _images()
    before = model.predict(images, verbose=0)
    after = channels.rebuild(model, channels.plan_channels(model, ratio)).predict(images, verbose=0)
    assert np.abs(after - before).max() > 1e-3


def test_parameters_fall_as_planned_and_the_original_is_untouched():
    model = _model("vgg16_bn_0.5")
    weights = [w.copy() for w in model.get_weights()]
    ratio = 0.5
    plan = channels.plan_channels(model, ratio)
    narrow = channels.rebuild(model, plan)
    assert narrow.count_params() == channels.predicted_parameters(model, plan)
    layers = {layer.name: layer for layer in narrow.layers}
    for name, before in plan.filters.items():
        assert layers[name].filters == before - round(before * ratio)
    # A convolution between two pruned ones keeps (1 - ratio)^2 of its kernel.
    inner = model.get_layer("block3_conv2").kernel.shape.num_elements()
    assert layers["block3_conv2"].kernel.shape.num_elements() == pytest.approx(
        inner * (1 - ratio) ** 2, rel=0.02)
    # The head's dense layer lost the rows of the last convolution's removed filters.
    assert layers["head_dense"].kernel.shape[0] == layers["block5_conv3"].filters
    assert [layer.name for layer in narrow.layers] == [layer.name for layer in model.layers]
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    record = channels.prune_channels(model, ratio)[1]
    json.dumps(record)
    assert record["parameters"] == [model.count_params(), narrow.count_params()]


def test_global_scope_ranks_filters_across_layers_and_keeps_a_floor():
    model = _model("vgg16_bn_0.5")
    conv = model.get_layer("block4_conv1")
    weights = conv.get_weights()
    weights[0][..., :200] *= 1e-3  # most of this layer's filters are weak against its peers
    conv.set_weights(weights)
    plan = channels.plan_channels(model, 0.3, scope="global")
    total = sum(plan.filters.values())
    removed = sum(plan.filters[n] - len(k) for n, k in plan.keep.items())
    assert removed == round(total * 0.3)
    kept = len(plan.keep["block4_conv1"])
    assert math.ceil(256 * channels.GLOBAL_FLOOR) <= kept <= 256 - 200
    # The weak layer paid for most of the ratio: the others lost less than their share.
    others = [n for n in plan.filters if n != "block4_conv1"]
    lost = sum(plan.filters[n] - len(plan.keep[n]) for n in others)
    assert lost < 0.25 * sum(plan.filters[n] for n in others)


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, float("nan"), float("inf"), "0.3", True])
def test_a_ratio_outside_the_open_interval_is_refused_naming_it(ratio):
    with pytest.raises(BadInputError, match="ratio"):
        channels.check_ratio(ratio)


def test_a_ratio_that_empties_a_layer_is_refused_naming_the_ratio_and_the_layer():
    model = _model("vgg16_bn_0.5")
    with pytest.raises(BadInputError, match=r"ratio=0\.99 would leave convolution 'block1_conv1'"):
        channels.plan_channels(model, 0.99)


def test_a_model_that_is_not_a_chain_is_refused():
    import tf_keras as keras

    inputs = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.Conv2D(4, 3, name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, name="b")(inputs)
    model = keras.Model(inputs, keras.layers.Add(name="sum")([a, b]))
    with pytest.raises(BadInputError, match="chain of layers"):
        channels.plan_channels(model, 0.5)
    x = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(4, 3)(inputs))
    flat = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(BadInputError, match="'flat' \\(Flatten\\)"):
        channels.plan_channels(flat, 0.5)
    with pytest.raises(BadInputError, match="a Functional model"):
        channels.plan_channels(keras.Sequential([inputs, keras.layers.Conv2D(4, 3)]), 0.5)


@pytest.mark.slow
def test_a_channel_pruned_run_composes_and_takes_qat(teacher_run, sample_dir, tmp_path):
    from vgg_mobile.compression.prune import PruneConfig, prune_run
    from vgg_mobile.compression.qat import QATConfig, qat_run
    from vgg_mobile.core.run_dir import load_run

    before = folder_digest(teacher_run.run_dir)
    first = prune_run(teacher_run.run_dir, sample_dir, tmp_path / "p1",
                      PruneConfig(ratio=0.3, epochs=1, batch_size=16))
    second = prune_run(first.run_dir, sample_dir, tmp_path / "p2",
                       PruneConfig(ratio=0.5, scope="global", epochs=1, batch_size=16))
    assert folder_digest(teacher_run.run_dir) == before, "the input run was modified"
    teacher = load_run(teacher_run.run_dir).load_model().count_params()
    record = load_run(second.run_dir).manifest.section("compression")
    assert [(s["method"], s["ratio"], s["scope"]) for s in record["steps"]] == [
        ("channels", 0.3, "layer"), ("channels", 0.5, "global")]
    first_params = record["steps"][0]["parameters"]
    assert first_params[0] == teacher and first_params[1] == record["parameters"][0]
    assert record["parameters"][1] < 0.7 * record["parameters"][0]
    run = load_run(second.run_dir)
    assert run.manifest.architecture == "vgg16"
    model = run.load_model()
    assert model.count_params() == record["parameters"][1]
    assert {type(layer).__module__.split(".")[0] for layer in model.layers} == {"tf_keras"}
    assert record["sizes"]["model_bytes_after"] < 0.5 * record["sizes"]["model_bytes_before"]
    qat = qat_run(second.run_dir, sample_dir, tmp_path / "q", QATConfig(epochs=1, batch_size=16))
    assert load_run(qat.run_dir).manifest.quantization_aware


@pytest.mark.slow
def test_prune_refuses_another_architecture_and_bad_ratios_writing_nothing(student_run, cli,
                                                                           tmp_path):
    out = tmp_path / "out"
    result = cli("prune", student_run.run_dir, "--data", tmp_path, "--out", out)
    assert result.returncode == 2
    assert "architecture is 'mobilenet_v2_0.35'" in result.stderr
    assert "Supported: vgg16, vgg16_bn" in result.stderr and "--method magnitude" in result.stderr
    for ratio in ("0", "1", "nan", "-0.5"):
        result = cli("prune", student_run.run_dir, "--data", tmp_path, "--out", out,
                     "--ratio", ratio)
        assert result.returncode == 2 and f"ratio={ratio}" in result.stderr, result.stderr
    assert not out.exists()


def test_batch_norm_recalibration_takes_the_statistics_the_narrow_model_computes():
    import tf_keras as keras

    model = _model("vgg16_bn_0.5")
    narrow = channels.rebuild(model, channels.plan_channels(model, 0.3))
    images = _images(16)
    stale = narrow(images, training=False).numpy()
    assert channels.recalibrate_batch_norm(narrow, [images[:8], images[8:]]) == 16
    first = narrow.get_layer("block1_bn1")
    conv = keras.Model(narrow.input, narrow.get_layer("block1_conv1").output)
    np.testing.assert_allclose(first.moving_mean.numpy(),
                               conv(images).numpy().mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    assert first.momentum == model.get_layer("block1_bn1").momentum
    # With the statistics of this very batch, inference answers (nearly: the moving variance
    # is the unbiased one) as training mode does, the stale statistics far from it.
    channels.recalibrate_batch_norm(narrow, [images])
    inference = narrow(images, training=False).numpy()
    batch = narrow(images, training=True).numpy()
    assert np.abs(inference - batch).max() < 0.1 * np.abs(stale - batch).max()
    assert channels.recalibrate_batch_norm(_model("vgg16"), [images]) == 0
