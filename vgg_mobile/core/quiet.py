"""TensorFlow's own log lines: silenced at the source unless `--verbose` or `--debug` asks.

Every TensorFlow process here used to print lines that read as failures on a machine that is
working as intended: absl's "All log messages before absl::InitializeLog()" twice, `cudart_stub`
and `cuInit` CUDA errors on every CPU-only machine, oneDNN and CPU-feature notices, converter
internals, and Python-side warnings of TensorFlow's and Keras's own (e.g. "Compiled the loaded
model, but the compiled metrics have yet to be built"). Errors that matter reach the user as
exceptions, which the CLI turns into one line naming the file and the value.

Two mechanisms, both set up here and only here, before TensorFlow is first imported:
- `TF_CPP_MIN_LOG_LEVEL=3` (C++ errors and below off: a missing GPU driver logs an ERROR) and
  the `tensorflow` / `absl` Python loggers at ERROR.
- While `tensorflow` is first imported, file descriptor 2 goes to a temporary file: the shared
  libraries print their notices as they load, before absl reads any setting (the level above
  does not reach those lines). Whatever was printed that is not one of the known notices is
  written back to stderr afterwards, so an unexpected message is never lost; a failed import
  gets everything back.
`VGG_MOBILE_VERBOSE=1` (what `--verbose` and `--debug` set) leaves all of it as TensorFlow has
it. Child processes inherit the environment, so a subprocess is as quiet as its parent.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

VERBOSE_ENV = "VGG_MOBILE_VERBOSE"
# The loggers of TensorFlow's and its tools' Python side (tf_keras logs through "tensorflow").
LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnxruntime", "h5py")
# The packages whose own Python warnings are silenced (a regular expression on the module).
WARNING_MODULES = (r"(tensorflow|tf_keras|keras|tensorflow_model_optimization|tf2onnx|onnx|"
                   r"onnxruntime|tensorflowjs|tensorflow_lite_support|h5py)(\.|$)")
# What TensorFlow's shared libraries print as they load, and what its converter and LiteRT
# print on every conversion and interpreter, on every machine: notices, not problems.
_NOTICES = re.compile(
    r"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^[IWE]\d{4} .*(cudart_stub|cpu_feature_guard|port\.cc|cuda_|dso_loader|computation_placer)"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|^fully_quantize: \d+, inference_type: "
    r"|^INFO: Created TensorFlow Lite .*delegate for CPU\.)")


def verbose_requested() -> bool:
    """Whether the environment asks for TensorFlow's own messages (`VGG_MOBILE_VERBOSE`)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, and loads it with the load-time notices captured."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        _remove_hook()
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with captured_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


@contextlib.contextmanager
def captured_stderr(replay: bool = True):
    """Holds back what native code prints to stderr (file descriptor 2) in the `with` block.

    Args:
        replay: Afterwards, write every line that is not a known notice back to stderr (every
            line, if the block raised). Defaults to `True`.

    Yields:
        A list that receives those lines when the block ends, for a caller that reports them
        its own way (`replay=False`). With `VGG_MOBILE_VERBOSE`, nothing is held back and the
        list stays empty.
    """
    held: list[str] = []
    if verbose_requested():
        yield held
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        failed = False
        try:
            yield held
        except Exception:  # an interrupt is not a failure to explain: notices stay out
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            held += [line for line in text.splitlines()
                     if failed or (line.strip() and not _NOTICES.search(line))]
            if held and replay:
                sys.stderr.write("\n".join(held) + "\n")
                sys.stderr.flush()


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFirstImport)]


def configure(verbose: bool | None = None) -> None:
    """Sets TensorFlow's logging before it is imported: quiet, or as TensorFlow has it.

    Args:
        verbose: Show TensorFlow's own messages. Defaults to `VGG_MOBILE_VERBOSE` from the
            environment. `True` is also written there, for child processes.
    """
    verbose = verbose_requested() if verbose is None else verbose
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        # Undoes only the setting made here; one the user exported stays.
        if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3":
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        _remove_hook()
        for name in LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        warnings.filters[:] = [f for f in warnings.filters
                               if getattr(f[3], "pattern", None) != WARNING_MODULES]
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Python warnings raised inside these packages (deprecations, "Statistics for quantized
    # inputs were expected" from the TFLite converter) are theirs to fix, not the user's.
    warnings.filterwarnings("ignore", module=WARNING_MODULES)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietFirstImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFirstImport())
