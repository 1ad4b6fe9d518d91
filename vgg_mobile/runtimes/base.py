"""What every runtime offers: load an artifact, run raw pixels, time one image, describe itself.

A runtime takes the models' own input, float32 RGB pixels `(n, h, w, 3)` in [0, 255], and
answers float32 probabilities `(n, classes)`: whatever the artifact's input type, quantization
or batch layout, the runtime deals with it, so every caller feeds the same thing.
"""

from __future__ import annotations

import abc
import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np

from vgg_mobile.core.errors import BadInputError


class Runtime(abc.ABC):
    """One loaded artifact in one runtime.

    Subclasses set the class attributes and implement `load`, `predict` and `latency_ms`.

    Attributes:
        key: The runtime's short name (`litert`), used as a key in results.
        label: How tables name it (`LiteRT`).
        format: The artifact format it runs (a key of `vgg_mobile.runtimes.RUNTIMES`).
        suffix: The artifact's file suffix, or `""` for a folder.
        module: The Python module the runtime needs: `available()` looks for it.
        package: The distribution whose version `describe()` reports.
        thread_safe: Whether `predict` may be called from several threads at once.
        threads: Threads of one inference.
    """

    key: ClassVar[str]
    label: ClassVar[str]
    format: ClassVar[str]
    suffix: ClassVar[str] = ""
    module: ClassVar[str]
    package: ClassVar[str]
    thread_safe: ClassVar[bool] = False

    def __init__(self, threads: int = 1):
        self.threads = threads

    @classmethod
    def available(cls) -> bool:
        """Whether the runtime's module is installed (checked without importing it)."""
        return importlib.util.find_spec(cls.module) is not None

    @classmethod
    @abc.abstractmethod
    def load(cls, source: str | Path | bytes, threads: int = 1) -> "Runtime":
        """Loads an artifact: its path, or (for a one-file format) its bytes.

        Raises:
            BadInputError: Not an artifact this runtime can load.
        """

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple:
        """The input tensor's shape, `(batch, h, w, 3)`; a side the model leaves open is not
        an `int`."""

    @property
    @abc.abstractmethod
    def output_shape(self) -> tuple:
        """The output tensor's shape, `(batch, classes)`."""

    @property
    def image_size(self) -> int | None:
        """The side of the square input the model takes, or `None` when it does not say."""
        side = self.input_shape[1] if len(self.input_shape) == 4 else None
        return side if isinstance(side, int) and not isinstance(side, bool) and side > 0 else None

    @abc.abstractmethod
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 pixels `(n, h, w, 3)` in [0, 255] -> float32 probabilities `(n, classes)`."""

    @abc.abstractmethod
    def latency_ms(self, image: np.ndarray, repeats: int = 50, warmup: int = 3) -> float:
        """Median wall time in milliseconds of one single-image inference.

        Args:
            image: One float32 image `(h, w, 3)` in [0, 255].
            repeats: Timed runs after `warmup` untimed ones. Defaults to `50`.
            warmup: Untimed runs first. Defaults to `3`.
        """

    def measure(self, pixels: np.ndarray, repeats: int = 50) -> tuple[np.ndarray, float]:
        """`predict(pixels)` and `latency_ms(pixels[0], repeats)`, as one call (which a runtime
        that starts a process per call does in one process)."""
        return self.predict(pixels), self.latency_ms(np.asarray(pixels)[0], repeats)

    def describe(self) -> dict:
        """`{"runtime", "key", "format", "version", "threads"}` of this runtime."""
        from importlib import metadata

        try:
            version = metadata.version(self.package)
        except metadata.PackageNotFoundError:
            version = None
        return {"runtime": self.label, "key": self.key, "format": self.format,
                "version": version, "threads": self.threads}


def read_bytes(source: str | Path | bytes) -> bytes:
    """An artifact's bytes: `source` itself, or the file it names.

    Raises:
        BadInputError: The file cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as err:
        raise BadInputError(f"{source}: cannot read the model ({err.strerror or err})") from None
