"""What a model file asks Keras to build, read before Keras builds any of it.

A model file is data from outside: its architecture config names the classes Keras will
instantiate and can carry Python code (a `Lambda` layer's marshalled function, which the
HDF5 loader runs). `check_model_file` reads that config as plain JSON (a `.keras` zip's
`config.json`, an HDF5 file's `model_config` attribute) and refuses anything but known
classes from Keras, TensorFlow, tfmot or vgg-mobile, without code.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
import zipfile
from pathlib import Path

from vgg_mobile.core.errors import RunDirError

# The packages a `.keras` config may name as the `module` of a class or function.
ALLOWED_MODULES = ("keras", "tf_keras", "tensorflow", "tensorflow_model_optimization", "vgg_mobile")
# Layers that call a TensorFlow function named in the config (Keras adds them when a model is
# built from raw ops, e.g. MobileNetV3's hard-swish).
TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
# The TensorFlow functions those layers may call: pure tensor maths, nothing that touches
# files, Python callables or the runtime.
TF_OP_NAMESPACES = ("__operators__", "math", "nn", "linalg", "image")
TF_OPS = ("reshape", "concat", "stack", "transpose", "expand_dims", "squeeze", "cast", "identity",
          "clip_by_value", "split", "tile", "pad", "gather", "where", "maximum", "minimum",
          "shape", "ones_like", "zeros_like", "broadcast_to")
# Plain-data markers of Keras's JSON configs (not classes).
DATA_MARKERS = ("TensorShape", "__tuple__", "__ellipsis__", "__tensor__", "__numpy__", "__bytes__")
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@functools.lru_cache(maxsize=1)
def keras_class_names() -> frozenset[str]:
    """The class names tf_keras itself deserialises: its layers, initializers, regularizers,
    constraints, dtype policies and model classes."""
    import inspect

    import tf_keras as keras

    modules = (keras.layers, keras.initializers, keras.regularizers, keras.constraints,
               keras.mixed_precision, keras.models)
    names = {name for module in modules for name, obj in vars(module).items() if inspect.isclass(obj)}
    return frozenset(names | {"Functional", *TF_OP_LAYERS})


def read_config(path: Path) -> dict:
    """The architecture config of a model file, as plain JSON (nothing is deserialised).

    Read the way Keras picks the format: a `.keras` name holding a zip is the native format
    (`config.json`); anything else goes to Keras's HDF5 loader (`model_config` attribute).

    Raises:
        RunDirError: The file holds no readable architecture config.
    """
    import h5py

    try:
        if path.name.endswith(".keras") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                text = archive.read("config.json")
        else:
            with h5py.File(path, "r") as file:
                text = file.attrs.get("model_config")
            if text is None:
                raise RunDirError(f"{path}: cannot load the model; the HDF5 file holds no model "
                                  "config (a weights-only file?)")
        config = json.loads(text)
    except RunDirError:
        raise
    except Exception as err:  # zipfile, zlib, h5py and json raise many types for a damaged file
        raise RunDirError(f"{path}: cannot load the model; the file is damaged or not a Keras "
                          f"model ({type(err).__name__}: {one_line(err)})") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{path}: cannot load the model; its config is not a JSON object")
    return config


def check_config(path: Path, config: dict, known: frozenset[str]) -> None:
    """Refuses a model config that would run code or build classes from outside.

    Walks every nested value. Each object (a dict with `class_name`) must name a class in
    `known` (never `Lambda`), from a module of `ALLOWED_MODULES` if it names one; no value
    may hold a Python function, except a TensorFlow op name of `TF_OP_NAMESPACES` or
    `TF_OPS` in a `TF_OP_LAYERS` layer.

    The top-level `compile_config` is skipped: a model loaded with `compile=False` never
    builds it.

    Raises:
        RunDirError: `{path}: refusing to load: layer 'x' ...`, naming the offending layer.
    """
    config = {key: value for key, value in config.items() if key != "compile_config"}
    stack = [(config, None, None)]  # (value, enclosing class, enclosing layer name)
    while stack:
        value, owner, layer = stack.pop()
        if isinstance(value, list):
            stack.extend((item, owner, layer) for item in value)
            continue
        if not isinstance(value, dict):
            continue
        if "class_name" in value:
            owner = value["class_name"]
            inner = value.get("config")
            name = value.get("name", inner.get("name") if isinstance(inner, dict) else None)
            layer = name if isinstance(name, str) else layer
            _check_object(path, value, known, layer)
        _check_functions(path, value, owner, layer)
        stack.extend((item, owner, layer) for item in value.values())


def check_model_file(path: Path, known: frozenset[str]) -> None:
    """`check_config` of the model file at `path` (see `read_config`)."""
    check_config(path, read_config(path), known)


def _check_object(path: Path, obj: dict, known: frozenset[str], layer: str | None) -> None:
    refuse = f"{path}: refusing to load: layer {short_repr(layer)}"
    class_name, module = obj["class_name"], obj.get("module")
    registered = obj.get("registered_name")
    if class_name == "Lambda":
        raise RunDirError(f"{refuse} is a Lambda layer, which would run code from the file")
    if class_name == "__lambda__":
        raise RunDirError(f"{refuse} holds a Python function, which would run code from the file")
    if not isinstance(class_name, str) or not all(
            isinstance(v, (str, type(None))) for v in (module, registered)):
        raise RunDirError(f"{refuse} has a malformed class_name, module or registered_name "
                          f"({short_repr(class_name)}, {short_repr(module)}, {short_repr(registered)})")
    if module is not None and module.split(".")[0] not in ALLOWED_MODULES:
        raise RunDirError(f"{refuse} names {class_name!r} from module {short_repr(module)}, which is "
                          "not part of Keras, TensorFlow, tfmot or vgg-mobile")
    if class_name == "function":
        function = obj.get("config")
        if (module or "").split(".")[0] not in ("keras", "tf_keras") or not (
                isinstance(function, str) and _DOTTED_NAME.fullmatch(function)):
            raise RunDirError(f"{refuse} names function {short_repr(function)} from module "
                              f"{short_repr(module)}; only Keras functions may be named")
        return
    for name in (class_name, registered):
        if name is not None and name not in known and name not in DATA_MARKERS:
            hint = (" (a quantization-aware model loads only from a manifest with "
                    "quantization_aware: true)" if name.startswith("Quantize") else "")
            raise RunDirError(f"{refuse} uses class {short_repr(name)}, which is neither a Keras "
                              f"class nor in the run's load scope{hint}")


def _check_functions(path: Path, value: dict, owner, layer: str | None) -> None:
    refuse = f"{path}: refusing to load: layer {short_repr(layer)}"
    if "function_type" in value:
        raise RunDirError(f"{refuse} holds a Python function, which would run code from the file")
    if "function" not in value:
        return
    function = value["function"]
    if not isinstance(function, str):
        raise RunDirError(f"{refuse} holds a Python function, which would run code from the file")
    if owner in TF_OP_LAYERS:
        allowed = function in TF_OPS or (function.split(".")[0] in TF_OP_NAMESPACES
                                         and _DOTTED_NAME.fullmatch(function))
        if not allowed:
            raise RunDirError(f"{refuse} calls TensorFlow function {short_repr(function)}, which a "
                              "vgg-mobile model may not use")
    else:
        raise RunDirError(f"{refuse} names a function ({short_repr(function)}) to call, which could "
                          "run code from the file")


def short_repr(value, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: a value from a file, quoted in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def one_line(err: Exception, limit: int = 200) -> str:
    """An exception's message on one line without control characters, cut to `limit`."""
    text = " ".join(str(err).split())
    return "".join(c for c in text if unicodedata.category(c)[0] != "C")[:limit]
