"""The VGG16 teacher: flat graph, stable names, in-graph preprocessing, local weight loading."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_mobile.models import architectures as models
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.models.architectures import ModelOptions, build_classifier


def test_classifier_is_flat_with_stable_names():
    import tf_keras as keras

    model = build_classifier(ModelOptions(image_size=32), 3)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["pixels", "preprocess", "block1_conv1"]
    assert names[-2:] == ["logits", "probs"]
    assert "block5_pool" in names and "head_pool" in names
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    # 14,714,688 backbone + head 512*256+256 + 256*3+3
    assert model.count_params() == 14_714_688 + 131_328 + 771


def test_outputs_are_probabilities_that_vary_with_the_input():
    model = build_classifier(ModelOptions(image_size=32, dropout=0.0), 4)
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    probs = model(x, training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.ptp(probs, axis=0).max() > 1e-3


def _fake_imagenet_file(directory, image_size=32):
    """A no-top VGG16 weights file with random values, standing in for the Keras download."""
    import tf_keras as keras

    keras.utils.set_random_seed(5)
    base = keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=(image_size, image_size, 3))
    path = directory / models.get_architecture("vgg16").imagenet_file
    base.save_weights(path)
    return base, path


def test_imagenet_weights_load_from_the_keras_cache_and_match_keras_preprocessing(keras_home):
    import tf_keras as keras

    base, _ = _fake_imagenet_file(keras_home / "models")
    model = build_classifier(ModelOptions(image_size=32, weights="imagenet"), 4)
    # Our graph takes raw RGB and folds VGG's BGR flip into block1_conv1; Keras's reference
    # takes `preprocess_input(x)`. The backbone features must be the same.
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    features = keras.Model(model.input, model.get_layer("block5_pool").output)(x).numpy()
    expected = base(keras.applications.vgg16.preprocess_input(x.copy())).numpy()
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(model.get_layer("block4_conv2").get_weights()[0],
                                  base.get_layer("block4_conv2").get_weights()[0])


def test_weights_from_a_path(tmp_path, keras_home):
    base, path = _fake_imagenet_file(tmp_path)
    model = build_classifier(ModelOptions(image_size=32, weights=str(path)), 2)
    np.testing.assert_array_equal(model.get_layer("block3_conv1").get_weights()[0],
                                  base.get_layer("block3_conv1").get_weights()[0])


def test_missing_imagenet_weights_offline_is_a_clear_error_not_a_download(keras_home):
    with pytest.raises(BadInputError, match="not found at .*--offline") as info:
        build_classifier(ModelOptions(image_size=32, weights="imagenet"), 2, offline=True)
    assert str(keras_home / "models") in str(info.value)


def test_bad_weights_files_are_clear_errors(tmp_path, keras_home):
    with pytest.raises(BadInputError, match="weights file not found"):
        build_classifier(ModelOptions(image_size=32, weights=str(tmp_path / "nope.h5")), 2)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5")
    with pytest.raises(BadInputError, match="junk.h5: not a readable HDF5"):
        build_classifier(ModelOptions(image_size=32, weights=str(junk)), 2)


def test_registry_and_options_are_validated():
    with pytest.raises(BadInputError, match="valid: vgg16"):
        ModelOptions(architecture="vgg19")
    with pytest.raises(BadInputError, match="at least 32"):
        ModelOptions(image_size=16)
    with pytest.raises(BadInputError, match="dropout"):
        ModelOptions(dropout=1.0)
    with pytest.raises(BadInputError, match="num_classes"):
        build_classifier(ModelOptions(image_size=32), 1)


@pytest.mark.parametrize("architecture", ["vgg16", "mobilenet_v2_0.35", "mobilenet_v3_small"])
def test_image_size_has_an_upper_bound(architecture):
    with pytest.raises(BadInputError) as err:
        ModelOptions(architecture=architecture, image_size=20000)
    assert str(err.value) == "image_size must be between 32 and 1024. Received: image_size=20000"
    with pytest.raises(BadInputError, match="between 32 and 1024"):
        ModelOptions(architecture=architecture, image_size=1025)
    assert ModelOptions(architecture=architecture, image_size=1024).image_size == 1024
    with pytest.raises(BadInputError, match="at least 32"):
        ModelOptions(architecture=architecture, image_size=31)


@pytest.mark.parametrize("blocks,frozen_prefixes", [
    (0, ("block1", "block2", "block3", "block4", "block5")),
    (2, ("block1", "block2", "block3")),
    (5, ()),
])
def test_set_trainable_blocks(blocks, frozen_prefixes):
    model = build_classifier(ModelOptions(image_size=32), 2)
    models.set_trainable_blocks(model, "vgg16", blocks)
    for layer in model.layers:
        frozen = layer.name.startswith(frozen_prefixes) if frozen_prefixes else False
        assert layer.trainable is not frozen, layer.name
    assert model.get_layer("logits").trainable


def test_vgg16_bn_is_vgg16_with_batch_normalisation_after_each_convolution():
    import tf_keras as keras

    model = build_classifier(ModelOptions(architecture="vgg16_bn", image_size=32), 5)
    plain = build_classifier(ModelOptions(architecture="vgg16", image_size=32), 5)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.name for c in convs] == [
        layer.name for layer in plain.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 13
    for conv in convs:
        following = model.get_layer(conv.name.replace("conv", "bn"))
        assert isinstance(following, keras.layers.BatchNormalization)
        assert following.input is conv.output
        relu = model.get_layer(conv.name.replace("conv", "relu"))
        assert isinstance(relu, keras.layers.ReLU) and relu.input is following.output
        # Same kernels as VGG16's; the bias is the BN's beta, as in torchvision's vgg16_bn.
        assert conv.kernel.shape == plain.get_layer(conv.name).kernel.shape and not conv.use_bias
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert [layer.name for layer in model.layers][-2:] == ["logits", "probs"]
    assert models.block_of("block4_bn2", "vgg16_bn") == 3


def test_half_width_vgg16_bn_has_the_same_layers_with_half_the_filters():
    import tf_keras as keras

    full = build_classifier(ModelOptions(architecture="vgg16_bn", image_size=32), 5)
    half = build_classifier(ModelOptions(architecture="vgg16_bn_0.5", image_size=32), 5)
    assert [layer.name for layer in half.layers] == [layer.name for layer in full.layers]
    convs = [layer.name for layer in full.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [half.get_layer(name).filters for name in convs] == [
        full.get_layer(name).filters // 2 for name in convs]
    assert half.get_layer("block5_conv3").filters == 256
    # About a quarter of the convolution weights.
    assert 0.2 < half.count_params() / full.count_params() < 0.3
    assert models.get_architecture("vgg16_bn_0.5").family == "vgg16"


def test_vgg16_bn_has_no_imagenet_weights_and_auto_trains_it_from_scratch(keras_home):
    assert models.choose_weights("auto", "vgg16_bn") == "none"
    with pytest.raises(BadInputError, match="no ImageNet weights for vgg16_bn"):
        build_classifier(ModelOptions(architecture="vgg16_bn", image_size=32, weights="imagenet"), 3)


def test_vgg16_bn_weights_from_a_path_round_trip(tmp_path):
    import tf_keras as keras

    keras.utils.set_random_seed(3)
    first = build_classifier(ModelOptions(architecture="vgg16_bn", image_size=32), 3)
    first.save_weights(tmp_path / "backbone.h5")
    second = build_classifier(
        ModelOptions(architecture="vgg16_bn", image_size=32, weights=str(tmp_path / "backbone.h5")), 3)
    for name in ("block1_conv1", "block3_bn2", "block5_conv3"):
        for a, b in zip(first.get_layer(name).get_weights(), second.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
