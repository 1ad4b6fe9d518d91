"""`vgg-mobile doctor`: what this installation runs on, and whether the GPU path is active."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from pathlib import Path

from vgg_mobile.core.errors import BadInputError

# Distribution names as installed (importlib.metadata), in the order they are reported.
PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tensorflowjs",
            "tflite-support", "ai-edge-litert", "nvidia-cudnn-cu12")


# What `convert` imports of tflite-support (its metadata writers, through their own package),
# then tflite-support's two public entry points, which its protobuf 3 generated files break.
TFLITE_SUPPORT_IMPORTS = {
    "metadata writers": "tensorflow_lite_support.metadata.python.metadata_writers.image_classifier",
    "tflite_support.metadata": "tflite_support.metadata",
    "tflite_support.task.vision": "tflite_support.task.vision",
}


def tflite_support_imports(modules: dict[str, str] = TFLITE_SUPPORT_IMPORTS) -> dict[str, str]:
    """Tries each import, with libusb preloaded as `convert` does: `"ok"` or the error in one line."""
    from vgg_mobile.core import quiet
    from vgg_mobile.core.resources import load_libusb

    load_libusb()
    found = {}
    for label, module in modules.items():
        # A failing import also prints a bare line of its own to stderr (protobuf's
        # "AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'"), which
        # reads as the doctor crashing: it is held back; the state below says what failed.
        with quiet.captured_stderr(replay=False):
            try:
                importlib.import_module(module)
            except Exception as err:  # an old _pb2 file raises TypeError, a missing library ImportError
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                found[label] = f"{type(err).__name__}: {first}".rstrip(": ")
            else:
                found[label] = "ok"
    return found


def tflite_support_hint(states: dict[str, str]) -> str:
    """One sentence on the tflite-support imports: what `convert` can do, and what it cannot."""
    writers = states.get("metadata writers", "ok")
    if writers != "ok":
        return (f"tflite-support's metadata writers do not import ({writers}): `convert` cannot "
                "pack metadata into .tflite files; check the libusb-package and protobuf installs")
    broken = [name for name, state in states.items() if state != "ok"]
    if not broken:
        return "tflite-support imports fully"
    return (f"{' and '.join(broken)} do not import under this protobuf (tflite-support 0.4.4's "
            "generated files need protobuf < 4, TensorFlow 2.21 needs >= 6.31.1); vgg-mobile "
            "uses only the metadata writers, which work")


def installation() -> dict:
    """Where vgg-mobile and its TensorFlow.js are: `{"version", "location", "tfjs"}`."""
    from vgg_mobile.core import resources
    from vgg_mobile.core.version import __version__

    tfjs = resources.node_modules_dir(install=False)
    return {"version": __version__, "location": str(Path(resources.__file__).resolve().parents[1]),
            "tfjs": str(tfjs) if tfjs else None, "tfjs_cache": str(resources.npm_cache_dir())}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions read from package metadata (no import); `None` when absent."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def in_checkout() -> bool:
    """Whether this vgg-mobile runs from the project's checkout (`uv sync` applies there)."""
    return (Path(__file__).resolve().parents[2] / "pyproject.toml").is_file()


def gpu_hint(cuda_build: bool, gpus: int, cuda_wheels: bool, checkout: bool = True) -> str:
    """One sentence on the GPU path: active, or what to do to get it.

    Args:
        cuda_build: TensorFlow is built with CUDA.
        gpus: GPUs TensorFlow sees.
        cuda_wheels: The CUDA libraries (the `gpu` extra) are installed.
        checkout: It runs from the project's checkout, where `uv sync --extra gpu` installs
            them; an installed wheel gets the command for its own install. Defaults to `True`.
    """
    if cuda_build and gpus:
        return f"GPU path active: {gpus} GPU(s); use --strategy mirrored (or auto) and --mixed-precision"
    if not cuda_build:
        return ("GPU path inactive: this TensorFlow is not built with CUDA (Linux x86-64 wheels "
                "are; macOS and Windows builds are CPU-only)")
    if not cuda_wheels:
        install = ("`uv sync --extra gpu`" if checkout else
                   "the `gpu` extra of the wheel (`uv tool install 'vgg_mobile-...whl[gpu]'` "
                   "with the same --overrides and --constraints, or `pip install "
                   "'tensorflow[and-cuda]==2.21.0'` into its environment)")
        return (f"GPU path inactive: no CUDA libraries; install them with {install} "
                "(tensorflow[and-cuda]), then run `vgg-mobile doctor` again")
    return ("GPU path inactive: TensorFlow sees no GPU; check the NVIDIA driver (`nvidia-smi`), "
            "and that CUDA_VISIBLE_DEVICES does not hide the GPUs")


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels (`TF_ENABLE_ONEDNN_OPTS`, read at import).

    Returns:
        `None` when this TensorFlow build cannot say.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def diagnose() -> dict:
    """Versions, devices and the state of the GPU path, as a JSON-ready dict.

    Imports TensorFlow (a few seconds) but starts no training, and leaves the devices
    unconfigured apart from what listing them does.

    Returns:
        `{"python", "platform", "vgg_mobile": {"version", "location", "tfjs", "tfjs_cache"},
        "packages", "tflite_support": {import: "ok" or the error}, "tflite_support_hint",
        "tensorflow": {"version", "cuda_build", "cuda_version", "cudnn_version", "onednn"},
        "devices": {"physical", "logical"},
        "gpu_path_active", "hint", "cluster"}`.
    """
    from vgg_mobile.training import distribute

    packages = package_versions()
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    physical = tf.config.list_physical_devices()
    logical = tf.config.list_logical_devices()
    gpus = [d for d in physical if d.device_type == "GPU"]
    cuda_build = bool(tf.test.is_built_with_cuda())
    try:
        cluster = distribute.read_cluster()
        cluster_info = {"workers": cluster.workers, "task": cluster.name, "chief": cluster.is_chief,
                        "auto_strategy": distribute.resolve_strategy("auto", len(gpus), cluster)}
    except BadInputError as err:
        cluster_info = {"error": str(err)}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "vgg_mobile": installation(),
        "packages": packages,
        "tflite_support": (tflite := tflite_support_imports()),
        "tflite_support_hint": tflite_support_hint(tflite),
        "tensorflow": {"version": tf.__version__, "cuda_build": cuda_build,
                       "cuda_version": build.get("cuda_version"),
                       "cudnn_version": build.get("cudnn_version"),
                       "onednn": onednn_enabled()},
        "devices": {"physical": [f"{d.device_type}:{d.name}" for d in physical],
                    "logical": [f"{d.device_type}:{d.name}" for d in logical]},
        "gpus": len(gpus),
        "gpu_path_active": cuda_build and bool(gpus),
        "hint": gpu_hint(cuda_build, len(gpus), packages.get("nvidia-cudnn-cu12") is not None,
                         in_checkout()),
        "cluster": cluster_info,
    }
