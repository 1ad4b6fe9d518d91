"""`vgg-mobile doctor`: what this installation runs on, and whether the GPU path is active."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

from vgg_mobile.core.errors import BadInputError

# Distribution names as installed (importlib.metadata), in the order they are reported.
PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tensorflowjs",
            "tflite-support", "ai-edge-litert", "nvidia-cudnn-cu12")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions read from package metadata (no import); `None` when absent."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_hint(cuda_build: bool, gpus: int, cuda_wheels: bool) -> str:
    """One sentence on the GPU path: active, or what to do to get it."""
    if cuda_build and gpus:
        return f"GPU path active: {gpus} GPU(s); use --strategy mirrored (or auto) and --mixed-precision"
    if not cuda_build:
        return ("GPU path inactive: this TensorFlow is not built with CUDA (Linux x86-64 wheels "
                "are; macOS and Windows builds are CPU-only)")
    if not cuda_wheels:
        return ("GPU path inactive: no CUDA libraries; install them with `uv sync --extra gpu` "
                "(tensorflow[and-cuda]), then run `vgg-mobile doctor` again")
    return ("GPU path inactive: TensorFlow sees no GPU; check the NVIDIA driver (`nvidia-smi`), "
            "and that CUDA_VISIBLE_DEVICES does not hide the GPUs")


def diagnose() -> dict:
    """Versions, devices and the state of the GPU path, as a JSON-ready dict.

    Imports TensorFlow (a few seconds) but starts no training, and leaves the devices
    unconfigured apart from what listing them does.

    Returns:
        `{"python", "platform", "packages", "tensorflow": {"cuda_build", "cuda_version",
        "cudnn_version"}, "devices": {"physical", "logical"}, "gpu_path_active", "hint",
        "cluster"}`.
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
        "packages": packages,
        "tensorflow": {"version": tf.__version__, "cuda_build": cuda_build,
                       "cuda_version": build.get("cuda_version"),
                       "cudnn_version": build.get("cudnn_version")},
        "devices": {"physical": [f"{d.device_type}:{d.name}" for d in physical],
                    "logical": [f"{d.device_type}:{d.name}" for d in logical]},
        "gpus": len(gpus),
        "gpu_path_active": cuda_build and bool(gpus),
        "hint": gpu_hint(cuda_build, len(gpus), packages.get("nvidia-cudnn-cu12") is not None),
        "cluster": cluster_info,
    }
