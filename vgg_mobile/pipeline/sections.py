"""The config sections of the stages that have no single library config of their own.

The other stages' sections are library configs as they are (`PruneConfig`, `QATConfig`,
`DistillConfig`). A field here whose type is a dataclass is a *part*: its fields are written
flat into the TOML section, beside the section's own fields (see `pipeline.config`).
A part field's `fixed` metadata names the part's fields the stage sets itself, which the TOML
section therefore does not offer.
"""

from __future__ import annotations

import dataclasses

from vgg_mobile.converters.convert import ConvertOptions
from vgg_mobile.core.errors import BadInputError, require
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.training.hyperparameters import TrainConfig


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """The teacher: its architecture and its training (their field names do not overlap).

    Attributes:
        model: Architecture knobs.
        train: Training knobs.
    """

    model: ModelOptions = dataclasses.field(default_factory=ModelOptions)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def _export_options() -> ConvertOptions:
    # ONNX beside the TFLite files: the same verification and budgets, for ONNX Runtime.
    return ConvertOptions(tfjs=False, onnx=True)


def _web_export_options() -> ConvertOptions:
    # A quantization-aware model converts to int8 weights whatever the flavour asks, so a
    # float16 TFLite is only meaningful from the float model the browser gets.
    return ConvertOptions(flavours=("float16",), tfjs=True)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The exported model: which run becomes TFLite files, ONNX models and Android assets, and how.

    Its other keys are `ConvertOptions`' (budgets included; `onnx = false` leaves ONNX out).
    It never writes TF.js: the browser's bundle is `[web_export]`'s.

    Attributes:
        source: The stage whose run is converted (a stage with a Keras model).
        android: Also write Android assets to `OUT/android`.
        options: The conversion and its budgets.
    """

    source: str = "student_qat"
    android: bool = True
    options: ConvertOptions = dataclasses.field(
        default_factory=_export_options, metadata={"fixed": ("tfjs", "tfjs_quantization")})

    def __post_init__(self):
        require(not self.options.tfjs, "an export section never writes TF.js ([web_export] does)",
                f"tfjs={self.options.tfjs}")


@dataclasses.dataclass(frozen=True)
class TeacherExportConfig(ExportConfig):
    """The compressed teacher, shipped beside the student: the same conversion as `[export]`.

    Its other keys are `ConvertOptions`' (budgets included; `onnx = false` leaves ONNX out).

    Attributes:
        source: The stage whose run is converted (a stage with a Keras model).
        android: Also write its Android assets to `OUT/teacher_android` (the student's stay
            in `OUT/android`).
        options: The conversion and its budgets.
        enabled: Export the compressed teacher (`OUT/teacher_export`); false ships the
            student alone.
    """

    source: str = "pruned_qat"
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class WebExportConfig:
    """The browser's model: a verified TF.js bundle, with a TFLite of the same run beside it.

    Its other keys are `ConvertOptions`' (budgets included). TF.js has no kernel for the
    fake-quantization ops of a quantization-aware model, so the browser gets the float
    student by default.

    Attributes:
        enabled: Write the TF.js bundle (`OUT/web_export`); the web demo needs it.
        source: The stage whose run is converted (a stage with a Keras model).
        options: The conversion and its budgets; TF.js is always written.
    """

    enabled: bool = True
    source: str = "student"
    options: ConvertOptions = dataclasses.field(
        default_factory=_web_export_options, metadata={"fixed": ("tfjs",)})

    def __post_init__(self):
        require(self.options.tfjs, "[web_export] always writes TF.js", f"tfjs={self.options.tfjs}")


@dataclasses.dataclass(frozen=True)
class WebDemoConfig:
    """The web demo.

    Attributes:
        enabled: Assemble the static web demo folder `OUT/web_demo` (needs `[web_export]`).
    """

    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """The benchmark stage (`vgg-mobile benchmark`).

    Attributes:
        enabled: Measure every artifact at the end of the pipeline (`OUT/benchmark`).
        repeats: Timed single-image runs per artifact; the median is reported.
        threads: Threads for TensorFlow and LiteRT (TF.js's WASM backend in Node has one).
        images: Held-out images every artifact runs on, at most; "none" for all of them.
    """

    enabled: bool = True
    repeats: int = 30
    threads: int = 1
    images: int | None = None

    def __post_init__(self):
        if self.repeats < 1 or self.threads < 1:
            raise BadInputError("repeats and threads must be at least 1. Received: "
                                f"repeats={self.repeats}, threads={self.threads}")
        require(self.images is None or self.images >= 1, "images must be at least 1 or none",
                f"images={self.images}")
