"""Classifier architectures, registered by name, built as flat tf_keras Functional models.

Every model here takes raw RGB pixels in [0, 255] (float32, NHWC) and carries its
preprocessing inside the graph, so Python, Android and the browser feed the same input. The
output layer `probs` is a softmax in float32; the layer before it, `logits`, is what
distillation reads.

Models are flat (no nested Model inside), because tfmot's pruning and QAT only wrap layers of
a flat Sequential or Functional model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from vgg_mobile.core.errors import BadInputError, require
from vgg_mobile.models.weights import fetch_weights, keras_cache_dir

# The mean RGB pixel of ImageNet, subtracted by the VGG ("caffe") preprocessing.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)

# The largest input side. Activations grow with its square: far above this, a model (and a
# batch of its inputs) no longer fits in memory.
MAX_IMAGE_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Architecture knobs of a classifier (training knobs live in `TrainConfig`).

    Attributes:
        architecture: A name from `ARCHITECTURES`.
        image_size: Side of the square input in pixels, from the architecture's `min_size`
            to `MAX_IMAGE_SIZE`.
        weights: `"imagenet"` (from the local Keras cache, downloaded into it from Keras's
            URL when missing, unless offline), `"none"` (random), a path to an `.h5` weights
            file of the backbone, or `"auto"`: ImageNet weights when they are in the local
            cache, else random, never downloaded (see `choose_weights`).
        dropout: Dropout rate before each head layer.
        head_units: Width of the hidden dense layer of the head; 0 for none.
    """

    architecture: str = "vgg16"
    image_size: int = 224
    weights: str = "auto"
    dropout: float = 0.3
    head_units: int = 256

    def __post_init__(self):
        spec = get_architecture(self.architecture)
        if self.image_size < spec.min_size:
            raise BadInputError(
                f"{spec.name} needs an image size of at least {spec.min_size}. "
                f"Received: image_size={self.image_size}"
            )
        require(self.image_size <= MAX_IMAGE_SIZE,
                f"image_size must be between {spec.min_size} and {MAX_IMAGE_SIZE}",
                f"image_size={self.image_size}")
        if not 0 <= self.dropout < 1:
            raise BadInputError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        if self.head_units < 0:
            raise BadInputError(f"head_units must be >= 0. Received: head_units={self.head_units}")
        if not self.weights:
            raise BadInputError("weights must be 'auto', 'imagenet', 'none' or a path. "
                                f"Received: weights={self.weights!r}")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A supported architecture, as data.

    Attributes:
        name: Registry name.
        build_backbone: `(pixels_tensor, weights_path_or_None) -> feature_tensor`.
        min_size: Smallest input side it accepts.
        imagenet_file: File name of its no-top ImageNet weights in the Keras cache; `""`
            when Keras has none.
        preprocessing: How pixels are normalised inside the graph (for the manifest), keyed
            by "pretrained" and "scratch".
        blocks: Names of its trainable blocks, input side first, as layer-name prefixes.
            Empty when the backbone always trains as a whole.
        bn_momentum: Momentum given to every BatchNormalization layer of the backbone, or
            `None` to keep the one Keras builds it with. Defaults to `None`.
        tfmot_compatible: Whether tfmot's pruning and quantization-aware training can wrap
            every layer of the built model. Defaults to `True`.
        family: The model family, for grouping variants of one design (e.g. widths).
            Defaults to `""`.
    """

    name: str
    build_backbone: Callable
    min_size: int
    imagenet_file: str
    preprocessing: dict
    blocks: tuple[str, ...]
    bn_momentum: float | None = None
    tfmot_compatible: bool = True
    family: str = ""


def _vgg16_backbone(pixels, weights_path: str | None):
    import tf_keras as keras

    # Caffe-style VGG preprocessing is "RGB -> BGR, minus the mean". The channel flip is folded
    # into block1_conv1's kernel when ImageNet weights are loaded (see `_flip_input_channels`),
    # so the graph only needs a mean subtraction: a plain built-in layer that every converter
    # and tfmot understands.
    if weights_path is not None:
        x = keras.layers.Rescaling(
            scale=1.0, offset=[-m for m in IMAGENET_MEAN_RGB], name="preprocess")(pixels)
    else:
        # From scratch nothing ties us to the caffe input scale (+-128), under which a deep
        # stack of ReLU convolutions without normalisation does not train in a short run;
        # standardised inputs and He initialisation do.
        x = keras.layers.Normalization(
            mean=list(IMAGENET_MEAN_RGB), variance=[s * s for s in IMAGENET_STD_RGB],
            name="preprocess")(pixels)
    base = keras.applications.VGG16(include_top=False, weights=None, input_tensor=x)
    if weights_path is not None:
        _load_backbone_weights(base, weights_path)
        _flip_input_channels(base.get_layer("block1_conv1"))
    else:
        _he_init(base)
    return base.output


# The 13 convolutions of VGG16, by block: (convolutions, filters).
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def _vgg16_bn_backbone(pixels, weights_path: str | None, width: float = 1.0):
    """VGG16 with batch normalisation, as torchvision's `vgg16_bn`: conv, BN, ReLU.

    The same 13 convolutions and 5 max-pools as VGG16 and the same layer names
    (`block3_conv2`, ...), with a `BatchNormalization` (`block3_bn2`) and a `ReLU`
    (`block3_relu2`) after each convolution: as three layers, the pattern tfmot's
    quantization folds. `width` multiplies every convolution's filters (VGG16's 64 to 512
    at 1.0), as `alpha` does for MobileNets. Keras has no ImageNet weights for it;
    `weights_path` may be an `.h5` of a trained vgg16_bn of the same width (matched by
    layer name).
    """
    import tf_keras as keras

    x = keras.layers.Normalization(
        mean=list(IMAGENET_MEAN_RGB), variance=[s * s for s in IMAGENET_STD_RGB],
        name="preprocess")(pixels)
    for block, (convolutions, filters) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, convolutions + 1):
            x = keras.layers.Conv2D(int(filters * width), 3, padding="same", use_bias=False,
                                    kernel_initializer="he_normal",
                                    name=f"block{block}_conv{i}")(x)
            x = keras.layers.BatchNormalization(momentum=VGG_BN_MOMENTUM, epsilon=1e-5,
                                                name=f"block{block}_bn{i}")(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    if weights_path is not None:
        model = keras.Model(pixels, x)
        _load_named_weights(model, weights_path, vgg16_bn_name(width))
    return x


# Widths of vgg16_bn: the full network, and the half-width one that the `sample` preset
# trains from scratch on small images (docs/measurements.md#teacher-width).
VGG16_BN_WIDTHS = (0.5, 1.0)


def vgg16_bn_name(width: float) -> str:
    """The registry name of vgg16_bn at `width`: `vgg16_bn`, `vgg16_bn_0.5`."""
    return "vgg16_bn" if width == 1.0 else f"vgg16_bn_{width}"


def _vgg16_bn_architectures() -> list[Architecture]:
    import functools

    return [Architecture(
        name=vgg16_bn_name(width),
        build_backbone=functools.partial(_vgg16_bn_backbone, width=width),
        min_size=32,
        imagenet_file="",
        preprocessing=dict.fromkeys(("pretrained", "scratch"), {
            "in_graph": True, "layer": "preprocess", "formula": "(x - mean_rgb) / std_rgb",
            "mean_rgb": list(IMAGENET_MEAN_RGB), "std_rgb": list(IMAGENET_STD_RGB),
        }),
        blocks=("block1", "block2", "block3", "block4", "block5"),
        bn_momentum=VGG_BN_MOMENTUM,
        family="vgg16",
    ) for width in VGG16_BN_WIDTHS]


def _he_init(base) -> None:
    import numpy as np

    rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)))
    for layer in base.layers:
        if layer.name.endswith(tuple(f"conv{i}" for i in range(1, 4))) and layer.weights:
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:3])
            kernel = rng.normal(0, np.sqrt(2.0 / fan_in), kernel.shape).astype(kernel.dtype)
            layer.set_weights([kernel, np.zeros_like(bias)])


def _load_backbone_weights(base, weights_path: str) -> None:
    _load_named_weights(base, weights_path, "VGG16")
    if not [w for layer in base.layers for w in layer.weights]:
        raise BadInputError(f"{weights_path}: no weights matched the VGG16 layers")


def _flip_input_channels(conv) -> None:
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel[:, :, ::-1, :], bias])


# --- MobileNet students ---

# Keras builds MobileNet BatchNormalization layers with momentum 0.999: in a short run from
# scratch (a few hundred steps) the moving statistics barely leave their initial values, and
# inference-mode accuracy stays at chance while training accuracy climbs. 0.9 tracks the
# batch statistics within a few dozen steps.
STUDENT_BN_MOMENTUM = 0.9
# The same for vgg16_bn, trained from scratch (PyTorch's BN momentum 0.1 is Keras's 0.9).
VGG_BN_MOMENTUM = 0.9
MOBILENET_V2_WIDTHS = (0.35, 0.5, 0.75, 1.0)

# MobileNets take pixels in [-1, 1], pretrained or not.
_MOBILENET_PREPROCESSING = {
    "in_graph": True, "layer": "preprocess", "formula": "x / 127.5 - 1",
    "mean_rgb": [127.5, 127.5, 127.5], "std_rgb": [127.5, 127.5, 127.5],
}


def _set_bn_momentum(base, momentum: float | None) -> None:
    import tf_keras as keras

    if momentum is None:
        return
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Read in `call()` when the training graph is traced, and saved in the config.
            layer.momentum = momentum


def _load_named_weights(base, weights_path: str, what: str) -> None:
    import h5py

    try:
        with h5py.File(weights_path, "r"):
            pass
    except OSError as err:
        raise BadInputError(f"{weights_path}: not a readable HDF5 weights file ({err})") from None
    try:
        # By layer name: convolution kernels do not depend on the input size, so weights
        # saved at 224 px fit a backbone built at any size.
        base.load_weights(weights_path, by_name=True, skip_mismatch=False)
    except (ValueError, KeyError) as err:
        raise BadInputError(f"{weights_path}: weights do not fit the {what} backbone ({err})") from None


def _mobilenet_backbone(pixels, weights_path: str | None, *, builder: str, alpha: float,
                        bn_momentum: float | None, what: str):
    import tf_keras as keras

    x = keras.layers.Rescaling(scale=1 / 127.5, offset=-1.0, name="preprocess")(pixels)
    kwargs = {"include_preprocessing": False} if builder.startswith("MobileNetV3") else {}
    # `input_tensor` makes Keras add the backbone's layers to our graph, so the classifier
    # stays one flat Functional model (tfmot cannot wrap a nested Model).
    base = getattr(keras.applications, builder)(
        include_top=False, weights=None, input_tensor=x, alpha=alpha, **kwargs)
    if weights_path is not None:
        _load_named_weights(base, weights_path, what)
    _set_bn_momentum(base, bn_momentum)
    return base.output


def _mobilenet_architectures() -> list[Architecture]:
    import functools

    specs = []
    for alpha in MOBILENET_V2_WIDTHS:
        name = f"mobilenet_v2_{alpha}"
        specs.append(Architecture(
            name=name,
            build_backbone=functools.partial(
                _mobilenet_backbone, builder="MobileNetV2", alpha=alpha,
                bn_momentum=STUDENT_BN_MOMENTUM, what=name),
            min_size=32,
            imagenet_file=f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5",
            preprocessing={"pretrained": _MOBILENET_PREPROCESSING, "scratch": _MOBILENET_PREPROCESSING},
            blocks=(),
            bn_momentum=STUDENT_BN_MOMENTUM,
            family="mobilenet_v2",
        ))
    for size, builder in (("small", "MobileNetV3Small"), ("large", "MobileNetV3Large")):
        name = f"mobilenet_v3_{size}"
        specs.append(Architecture(
            name=name,
            build_backbone=functools.partial(
                _mobilenet_backbone, builder=builder, alpha=1.0,
                bn_momentum=STUDENT_BN_MOMENTUM, what=name),
            min_size=32,
            imagenet_file=f"weights_mobilenet_v3_{size}_224_1.0_float_no_top_v2.h5",
            preprocessing={"pretrained": _MOBILENET_PREPROCESSING, "scratch": _MOBILENET_PREPROCESSING},
            blocks=(),
            bn_momentum=STUDENT_BN_MOMENTUM,
            # Keras builds its hard-swish from raw TensorFlow ops (TFOpLambda layers), which
            # tfmot's pruning and quantization wrappers refuse.
            tfmot_compatible=False,
            family="mobilenet_v3",
        ))
    return specs


ARCHITECTURES: dict[str, Architecture] = {
    "vgg16": Architecture(
        name="vgg16",
        build_backbone=_vgg16_backbone,
        min_size=32,
        imagenet_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        preprocessing={
            "pretrained": {
                "in_graph": True, "layer": "preprocess",
                "formula": "(x - mean_rgb) / std_rgb; VGG's BGR order folded into block1_conv1",
                "mean_rgb": list(IMAGENET_MEAN_RGB), "std_rgb": [1.0, 1.0, 1.0],
            },
            "scratch": {
                "in_graph": True, "layer": "preprocess", "formula": "(x - mean_rgb) / std_rgb",
                "mean_rgb": list(IMAGENET_MEAN_RGB), "std_rgb": list(IMAGENET_STD_RGB),
            },
        },
        blocks=("block1", "block2", "block3", "block4", "block5"),
        family="vgg16",
    ),
    **{spec.name: spec for spec in _vgg16_bn_architectures()},
    **{spec.name: spec for spec in _mobilenet_architectures()},
}


def get_architecture(name: str) -> Architecture:
    """Looks up an architecture by name; the error lists the valid names."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise BadInputError(
            f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}"
        ) from None


def require_tfmot_compatible(name: str, step: str) -> Architecture:
    """Refuses an architecture that tfmot cannot wrap, before any work starts.

    Args:
        name: A name from `ARCHITECTURES`.
        step: What was asked for (e.g. `"prune"`), for the message.

    Returns:
        The architecture.

    Raises:
        BadInputError: Unknown name, or an architecture tfmot cannot wrap.
    """
    spec = get_architecture(name)
    if not spec.tfmot_compatible:
        usable = [n for n, a in ARCHITECTURES.items() if a.tfmot_compatible]
        raise BadInputError(
            f"{step} cannot handle architecture {name!r}: tfmot cannot wrap its layers "
            f"(Keras builds its hard-swish from raw TensorFlow ops). Architectures {step} "
            f"supports: {', '.join(usable)}"
        )
    return spec


def imagenet_weights_path(architecture: str) -> Path:
    """Where the architecture's ImageNet weights are kept: the Keras cache, which
    `resolve_weights` fills on demand."""
    return keras_cache_dir() / get_architecture(architecture).imagenet_file


def choose_weights(weights: str, architecture: str) -> str:
    """Settles `"auto"`: `"imagenet"` when those weights are in the local Keras cache, else
    `"none"`; never downloads. Any other value is returned as it is."""
    if weights != "auto":
        return weights
    if not get_architecture(architecture).imagenet_file:
        return "none"
    return "imagenet" if imagenet_weights_path(architecture).is_file() else "none"


def settle_auto_weights(options: "ModelOptions", log: Callable[[str], None], who: str = "",
                        flag: str = "--weights") -> "ModelOptions":
    """`options` with `"auto"` weights settled by `choose_weights` (never downloads), saying
    which in one `log` line prefixed with `who`; other weights are returned as they are."""
    if options.weights != "auto":
        return options
    settled = dataclasses.replace(options, weights=choose_weights("auto", options.architecture))
    if not get_architecture(options.architecture).imagenet_file:
        log(f"{who}Keras has no ImageNet weights for {options.architecture}: random weights")
        return settled
    cached = imagenet_weights_path(options.architecture)
    log(f"{who}using ImageNet weights from {cached}" if settled.weights == "imagenet" else
        f"{who}no ImageNet weights at {cached}: random weights (auto never downloads, "
        f"{flag} imagenet does)")
    return settled


def resolve_weights(weights: str, architecture: str, offline: bool = False,
                    log: Callable[[str], None] = lambda message: None,
                    flag: str = "--weights") -> str | None:
    """Turns `--weights` into a local file path, or `None` for random initialisation.

    `"imagenet"` is read from the Keras cache and, when it is not there, downloaded into it
    from Keras's URL (see `models.weights.fetch_weights`) unless `offline`. `"auto"` never
    downloads: it is `"imagenet"` only when the file is already cached.

    Args:
        weights: `"imagenet"`, `"none"`, `"auto"` or a path to an `.h5` file.
        architecture: A name from `ARCHITECTURES`.
        offline: Never download; `VGG_MOBILE_OFFLINE=1` does the same. Defaults to `False`.
        log: Receives a download's progress lines. Defaults to discarding them.
        flag: The option that chose `weights`, for the messages. Defaults to `"--weights"`.

    Returns:
        The path of the weights file, or `None` for random weights.

    Raises:
        BadInputError: The file is absent (for `"imagenet"`: and downloads are off); the
            message says where it was looked for.
        VggMobileError: The download failed (e.g. no network) or its hash did not match.
    """
    spec = get_architecture(architecture)
    weights = choose_weights(weights, architecture)
    if weights == "none":
        return None
    if weights == "imagenet":
        if not spec.imagenet_file:
            raise BadInputError(
                f"Keras has no ImageNet weights for {spec.name}: train it from scratch "
                f"(--weights none) or pass --weights PATH. Received: weights={weights!r}")
        return str(fetch_weights(spec.imagenet_file, offline=offline, flag=flag, log=log,
                                 what=f"ImageNet weights for {spec.name}"))
    path = Path(weights)
    if not path.is_file():
        raise BadInputError(f"{path}: weights file not found (weights={weights!r})")
    return str(path)


def build_classifier(options: ModelOptions, num_classes: int, offline: bool = False):
    """Builds a flat classifier: pixels -> preprocessing -> backbone -> head -> softmax.

    Args:
        options: Architecture, input size, weights and head.
        num_classes: Number of output classes (at least 2).
        offline: Never download ImageNet weights (see `resolve_weights`). Defaults to `False`.

    Returns:
        An uncompiled `tf_keras.Model` named after the architecture.

    Raises:
        BadInputError: Bad weights, or fewer than two classes.
    """
    import tf_keras as keras

    if num_classes < 2:
        raise BadInputError(f"num_classes must be at least 2. Received: num_classes={num_classes}")
    spec = get_architecture(options.architecture)
    weights_path = resolve_weights(options.weights, options.architecture, offline=offline)
    pixels = keras.Input((options.image_size, options.image_size, 3), name="pixels")
    features = spec.build_backbone(pixels, weights_path)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    if options.head_units:
        if options.dropout:
            x = keras.layers.Dropout(options.dropout, name="head_dropout1")(x)
        x = keras.layers.Dense(options.head_units, activation="relu", name="head_dense")(x)
    if options.dropout:
        x = keras.layers.Dropout(options.dropout, name="head_dropout2")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    return keras.Model(pixels, probs, name=spec.name)


def block_of(layer_name: str, architecture: str) -> int | None:
    """Index of the backbone block a layer belongs to, or `None` for head/preprocessing."""
    for i, prefix in enumerate(get_architecture(architecture).blocks):
        if layer_name.startswith(prefix + "_"):
            return i
    return None


def set_trainable_blocks(model, architecture: str, trainable_blocks: int) -> None:
    """Freezes the backbone except its last `trainable_blocks` blocks; the head stays trainable.

    Args:
        model: A model from `build_classifier`.
        architecture: Its architecture name.
        trainable_blocks: 0 freezes the whole backbone (feature extraction); the number of
            blocks or more trains everything.
    """
    n_blocks = len(get_architecture(architecture).blocks)
    first_trainable = n_blocks - trainable_blocks
    for layer in model.layers:
        block = block_of(layer.name, architecture)
        layer.trainable = block is None or block >= first_trainable
