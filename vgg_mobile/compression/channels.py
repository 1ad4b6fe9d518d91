"""Channel pruning: the weakest filters of each convolution removed, the network rebuilt narrower.

Magnitude pruning zeroes weights but keeps every tensor's shape, so the file and the
arithmetic stay the same size. Channel pruning (Li et al., "Pruning Filters for Efficient
ConvNets", 2017) removes whole filters: a convolution's output channel, its batch-norm entries
and the next layer's matching input channels go, and the model that is left is an ordinary
narrower Keras model (no custom layer), smaller and faster in every runtime.

Filters are ranked by the L1 norm of their kernel, computed on the unpruned model; after a
batch norm, by the L1 norm of the kernel the batch norm folds into it
(`|gamma| / sqrt(variance + epsilon)` times the kernel's), since that is the filter the
converters ship. `scope="layer"` removes `ratio` of every convolution's filters, so the
parameters of a convolution between two pruned ones fall to about `(1 - ratio) ** 2` of theirs;
`scope="global"` ranks every filter against the others (each layer's norms divided by their
mean, since fan-ins differ) and removes `ratio` of all filters, each layer keeping at least
`GLOBAL_FLOOR` of its own.

Only a chain of layers is rebuilt (each layer fed by the one before), made of the layers a
VGG16 classifier holds; anything else is refused before any work.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vgg_mobile.core.errors import BadInputError, require, require_number

SCOPES = ("layer", "global")
# Under `scope="global"`, the share of its filters every convolution keeps at least: a layer
# whose norms are all low would otherwise be cut to nothing.
GLOBAL_FLOOR = 0.1
# Layers that carry channels through unchanged, by tf_keras class name.
_PASS_THROUGH = frozenset({"ReLU", "Activation", "MaxPooling2D", "AveragePooling2D", "Dropout",
                           "Rescaling", "Normalization", "GlobalAveragePooling2D",
                           "GlobalMaxPooling2D"})
# After one of these, a Dense layer's inputs are the channels: its rows follow them.
_POOLS_TO_VECTOR = frozenset({"GlobalAveragePooling2D", "GlobalMaxPooling2D"})


@dataclasses.dataclass(frozen=True)
class ChannelPlan:
    """Which filters of each convolution are kept.

    Attributes:
        ratio: The share of filters asked to be removed.
        scope: `"layer"` or `"global"`.
        keep: Convolution name -> indices of the kept filters, ascending.
        filters: Convolution name -> its number of filters before.
    """

    ratio: float
    scope: str
    keep: dict[str, np.ndarray]
    filters: dict[str, int]

    def record(self) -> dict:
        """The plan for a manifest: filters before and after, per convolution."""
        return {"ratio": self.ratio, "scope": self.scope,
                "channels": {name: [self.filters[name], int(len(kept))]
                             for name, kept in self.keep.items()}}


def check_ratio(ratio, scope: str = "layer") -> None:
    """Refuses a ratio outside (0, 1), NaN, or an unknown scope, naming the value."""
    require_number(ratio, "ratio", 0, 1, low_open=True, high_open=True)
    require(scope in SCOPES, f"scope must be one of {', '.join(SCOPES)}", f"scope={scope!r}")


def chain(model) -> list:
    """The model's layers, input first, checked to form a chain this module can rebuild.

    Raises:
        BadInputError: A layer fed by anything but the layer before it, or of a kind whose
            channels this module cannot follow (e.g. `Flatten`, `Add`, a depthwise convolution).
    """
    config = model.get_config()
    if "input_layers" not in config:
        raise BadInputError(f"channel pruning rebuilds a Functional model; {model.name!r} is a "
                            f"{type(model).__name__}")
    nodes = {entry["name"]: entry.get("inbound_nodes") or [] for entry in config["layers"]}
    layers = list(model.layers)
    for before, layer in zip(layers, layers[1:]):
        inbound = nodes.get(layer.name, [])
        # tf_keras writes inbound nodes as [[[name, node, tensor, kwargs], ...], ...].
        sources = [call[0] for node in inbound for call in node] if inbound else []
        if sources != [before.name]:
            raise BadInputError(f"channel pruning needs a chain of layers; {layer.name!r} is fed "
                                f"by {sources or 'nothing'}, not by {before.name!r}")
        kind = type(layer).__name__
        if kind not in _PASS_THROUGH | {"Conv2D", "BatchNormalization", "Dense"}:
            raise BadInputError(f"channel pruning cannot follow channels through layer "
                                f"{layer.name!r} ({kind})")
        if kind == "Conv2D" and (layer.groups != 1 or layer.data_format != "channels_last"):
            raise BadInputError(f"channel pruning cannot rebuild convolution {layer.name!r} "
                                "(grouped, or channels first)")
    return layers


def filter_scores(model) -> dict[str, np.ndarray]:
    """Per convolution, the L1 norm of each filter (folded with the batch norm after it)."""
    layers = chain(model)
    scores = {}
    for layer, after in zip(layers, layers[1:] + [None]):
        if type(layer).__name__ != "Conv2D":
            continue
        kernel = layer.get_weights()[0]
        norms = np.abs(kernel).sum(axis=(0, 1, 2)).astype(np.float64)
        if after is not None and type(after).__name__ == "BatchNormalization":
            gamma = after.gamma.numpy() if after.scale else np.ones_like(norms)
            norms = norms * np.abs(gamma) / np.sqrt(after.moving_variance.numpy() + after.epsilon)
        scores[layer.name] = norms
    return scores


def plan_channels(model, ratio: float, scope: str = "layer") -> ChannelPlan:
    """Chooses the filters to keep in every convolution of `model`.

    Raises:
        BadInputError: A bad ratio or scope, or one that would leave a convolution with no
            filter (the message names the ratio and the layer).
    """
    check_ratio(ratio, scope)
    scores = filter_scores(model)
    require(bool(scores), "channel pruning needs a model with convolutions", f"model={model.name!r}")
    filters = {name: len(s) for name, s in scores.items()}
    if scope == "layer":
        drop = {name: int(round(n * ratio)) for name, n in filters.items()}
    else:
        drop = _global_drops(scores, ratio)
    keep = {}
    for name, s in scores.items():
        kept = filters[name] - drop[name]
        if kept < 1:
            raise BadInputError(f"ratio={ratio} would leave convolution {name!r} with no filter "
                                f"(it has {filters[name]}); give a smaller ratio")
        # Stable: among equal norms, the later filters go first.
        order = np.argsort(-s, kind="stable")
        keep[name] = np.sort(order[:kept])
    return ChannelPlan(ratio=float(ratio), scope=scope, keep=keep, filters=filters)


def _global_drops(scores: dict[str, np.ndarray], ratio: float) -> dict[str, int]:
    """How many filters each layer loses when `ratio` of all filters go, weakest first."""
    entries = []
    for name, s in scores.items():
        mean = s.mean()
        normalised = s / mean if mean > 0 else np.zeros_like(s)
        entries += [(value, name) for value in normalised]
    floor = {name: max(1, int(np.ceil(len(s) * GLOBAL_FLOOR))) for name, s in scores.items()}
    left = {name: len(s) for name, s in scores.items()}
    wanted = int(round(len(entries) * ratio))
    drop = dict.fromkeys(scores, 0)
    for _value, name in sorted(entries, key=lambda entry: entry[0]):
        if wanted == 0:
            break
        if left[name] > floor[name]:
            left[name] -= 1
            drop[name] += 1
            wanted -= 1
    return drop


def rebuild(model, plan: ChannelPlan):
    """A new model with only the planned filters, its weights copied from `model`.

    Every layer keeps its name and settings; a convolution gets fewer filters, the batch norm
    after it the matching entries, the next convolution (or the dense layer after global
    pooling) the matching input channels. `model` is not changed.

    Returns:
        A plain tf_keras Functional model.
    """
    import tf_keras as keras

    layers = chain(model)
    first = layers[0]
    inputs = keras.Input(batch_shape=model.input_shape, dtype=model.inputs[0].dtype,
                         name=first.name)
    x, flowing, vector = inputs, None, False
    for layer in layers[1:]:
        kind = type(layer).__name__
        config = layer.get_config()
        weights = layer.get_weights()
        if kind == "Conv2D":
            kept = plan.keep.get(layer.name)
            kernel = weights[0] if flowing is None else weights[0][:, :, flowing, :]
            if kept is not None:
                config["filters"] = int(len(kept))
                weights = [kernel[..., kept], *(w[kept] for w in weights[1:])]
            else:
                weights = [kernel, *weights[1:]]
            flowing = kept
        elif kind == "BatchNormalization" and flowing is not None:
            weights = [w[flowing] for w in weights]
        elif kind == "Dense":
            if flowing is not None:
                if not vector:
                    raise BadInputError(f"channel pruning cannot follow channels into dense "
                                        f"layer {layer.name!r} without global pooling before it")
                weights = [weights[0][flowing, :], *weights[1:]]
            flowing = None
        vector = vector or kind in _POOLS_TO_VECTOR
        rebuilt = type(layer).from_config(config)
        x = rebuilt(x)
        rebuilt.set_weights(weights)
    return keras.Model(inputs, x, name=model.name)


def recalibrate_batch_norm(model, batches) -> int:
    """Re-estimates every batch norm's moving mean and variance from `batches` of raw pixels.

    Removing channels shifts the statistics every later convolution's output has, while each
    batch norm still normalises with the ones it saw before: thirteen such shifts in a row
    leave a VGG16 answering one class (chance accuracy right after the rebuild). Their average
    over a few hundred training images, as the narrow model computes them, puts every layer
    back on its scale before fine-tuning starts. Only the moving statistics change (no optimizer runs).

    Returns:
        The number of images it averaged over (0 for a model without batch norm).
    """
    import tf_keras as keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    momenta = [layer.momentum for layer in norms]
    seen = 0
    try:
        for i, pixels in enumerate(batches):
            # A running average: batch i weighs 1 / (i + 1).
            for layer in norms:
                layer.momentum = i / (i + 1)
            model(pixels, training=True)
            seen += int(pixels.shape[0])
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    return seen


def predicted_parameters(model, plan: ChannelPlan) -> int:
    """The parameter count `rebuild(model, plan)` will have, from the plan alone."""
    total, flowing = 0, None
    for layer in chain(model):
        kind = type(layer).__name__
        shapes = [tuple(w.shape) for w in layer.weights]
        if kind == "Conv2D":
            kh, kw, cin, cout = shapes[0]
            cin = cin if flowing is None else flowing
            cout = len(plan.keep[layer.name]) if layer.name in plan.keep else cout
            total += kh * kw * cin * cout + (cout if layer.use_bias else 0)
            flowing = cout
        elif kind == "BatchNormalization":
            total += len(shapes) * (shapes[0][0] if flowing is None else flowing)
        elif kind == "Dense":
            rows, cols = shapes[0]
            rows = rows if flowing is None else flowing
            total += rows * cols + (cols if layer.use_bias else 0)
            flowing = None
        else:
            total += sum(int(np.prod(shape)) for shape in shapes)
    return int(total)


def prune_channels(model, ratio: float, scope: str = "layer"):
    """Plans and rebuilds in one step.

    Returns:
        `(narrow_model, record)`; `record` holds the plan (`ChannelPlan.record`) and the
        parameter counts before and after, JSON-ready.
    """
    plan = plan_channels(model, ratio, scope)
    narrow = rebuild(model, plan)
    record = {**plan.record(), "parameters": [int(model.count_params()),
                                               int(narrow.count_params())]}
    return narrow, record
