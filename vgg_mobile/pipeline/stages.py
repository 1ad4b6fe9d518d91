"""The pipeline's stages, as data: one `Stage` per stage, in the order they run.

A stage's name is used everywhere: its TOML config section, its folder under OUT, the `stage`
its manifest records, and its rows of the summary. Everything else that needs the stages
(the config, the plan, the resume rules, the summary, the report) reads `STAGES`.

    teacher      `training.train`                  VGG16 (or any registered) teacher
    pruned       `compression.prune.prune_run`     channel-pruned (or magnitude-pruned) teacher
    pruned_qat   `compression.qat.qat_run`         its quantization-aware training
    student      `distillation.distill`            MobileNet student taught by the teacher
    student_qat  `distillation.qat.qat_run`        quantization-aware student, still distilled
    export       `vgg_mobile.converters.convert.convert_run`  verified int8 TFLite (+ OUT/android)
    teacher_export  `vgg_mobile.converters.convert.convert_run`  the compressed teacher
                 (`pruned_qat`) the same way (+ OUT/teacher_android)
    web_export   `vgg_mobile.converters.convert.convert_run`  verified TF.js bundle, float16 TFLite
    web_demo     `web_demo.assemble_demo`          static web demo folder
    benchmark    `reporting.benchmark.benchmark_pipeline`, in a fresh child process: every
                 artifact measured in one process
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from vgg_mobile.converters.convert import convert_run
from vgg_mobile.compression.prune import PruneConfig, prune_run
from vgg_mobile.compression.qat import QATConfig
from vgg_mobile.core.errors import BadInputError, VggMobileError, require
from vgg_mobile.core.processes import call_in_child
from vgg_mobile.core.outputs import MANIFEST
from vgg_mobile.distillation.distill import DistillConfig, distill
from vgg_mobile.distillation.qat import qat_run
from vgg_mobile.pipeline.sections import (BenchmarkConfig, ExportConfig, TeacherConfig,
                                          TeacherExportConfig, WebDemoConfig, WebExportConfig)
from vgg_mobile.training.train import train
from vgg_mobile.web_demo import assemble_demo

BENCHMARK_JSON = "benchmark.json"
# What a stage's folder holds: a run directory with a Keras model, an export folder (its
# manifest lists the converted artifacts), or something else (the web demo, the benchmark).
KINDS = ("run", "export", "other")


@dataclasses.dataclass(frozen=True)
class StageJob:
    """What a stage's runner gets besides its settings.

    Attributes:
        name: The stage's name (the `stage` its manifest records).
        data_dir: The image folder.
        out: The pipeline's output folder.
        path: The stage's own folder, `out / name`.
        parent: The parent stage's folder; `None` for a stage without one.
        resume: Continue the stage's interrupted run from its last checkpoint.
        command: The command line, recorded in manifests.
        log: Receives progress lines.
        verbose: Keras progress output.
        offline: Never download pretrained weights. Defaults to `False`.
        inputs: The folder of every stage it reads (`Stage.inputs_of`), by name; a stage it
            reads that this run does not plan (switched off) is absent. Defaults to none.
    """

    name: str
    data_dir: Path
    out: Path
    path: Path
    parent: Path | None
    resume: bool
    command: list[str]
    log: Callable[[str], None]
    verbose: int
    offline: bool = False
    inputs: dict[str, Path] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        name: Its config section, its folder under OUT, its manifest's `stage`, its summary
            rows' `stage`.
        config: The class of its config section (a frozen dataclass; see `pipeline.config`).
        run: `run(job, settings)` does the stage's work into `job.path`.
        heading: The comment above its section in the printed TOML.
        kind: What its folder holds: `run`, `export` or `other` (see `KINDS`).
        parent: The stage it is made from; `None` for none. With `parent_from_source`, the
            section's `source` chooses it and this is only its default.
        parent_from_source: The section's `source` field names the parent.
        artifact: The summary's title of its Keras model (`run` stages).
        curves: The report's title of its training curves (`run` stages).
        resumes: It backs up every epoch and continues an interrupted run instead of redoing
            it (its folder is kept when it fails).
        finished_file: The file it writes last: its presence means the stage finished.
        reads: Stages besides its parent whose output it reads. With the parent (and every
            earlier stage for `after_all`) they are its inputs (`inputs_of`): it is redone
            when one of them is, and its recorded inputs digest covers them all.
        after_all: Its inputs are every earlier stage's output (it measures them all).
        extra_outputs: Folders under OUT outside its own that it writes (discarded with it).
        formerly: Names its config section had before; such a section is refused with the
            new name.
    """

    name: str
    config: type
    run: Callable[[StageJob, object], None]
    heading: str
    kind: str = "run"
    parent: str | None = None
    parent_from_source: bool = False
    artifact: str | None = None
    curves: str | None = None
    resumes: bool = False
    finished_file: str = MANIFEST
    reads: tuple[str, ...] = ()
    after_all: bool = False
    extra_outputs: tuple[str, ...] = ()
    formerly: tuple[str, ...] = ()

    def __post_init__(self):
        require(self.kind in KINDS, f"kind must be one of {', '.join(KINDS)}", f"kind={self.kind!r}")
        require(self.kind != "run" or (self.artifact and self.curves),
                "a run stage needs an artifact and a curves title", f"name={self.name!r}")

    def parent_of(self, settings) -> str | None:
        """The stage this one is made from, under `settings` (its config section)."""
        return settings.source if self.parent_from_source else self.parent

    def inputs_of(self, settings, among) -> tuple[str, ...]:
        """The stages of `among` whose output this one reads under `settings`: its parent and
        its `reads`, or all of `among` for a stage that measures every earlier one."""
        if self.after_all:
            return tuple(among)
        wanted = (self.parent_of(settings), *self.reads)
        return tuple(name for name in among if name in wanted)

    @staticmethod
    def enabled(settings) -> bool:
        """Whether `settings` switch the stage on: a section may have an `enabled` field."""
        return getattr(settings, "enabled", True)

    @staticmethod
    def unlabeled(settings) -> str | None:
        """The folder of unlabelled images `settings` name, or `None`: a section may have an
        `unlabeled` field (the student's)."""
        return getattr(settings, "unlabeled", None)


def _teacher(job: StageJob, settings: TeacherConfig) -> None:
    train(job.data_dir, job.path, settings.model, settings.train, resume=job.resume,
          command=job.command, log=job.log, verbose=job.verbose, stage=job.name,
          offline=job.offline)


def _prune(job: StageJob, settings: PruneConfig) -> None:
    prune_run(job.parent, job.data_dir, job.path, settings, command=job.command, log=job.log,
              verbose=job.verbose, stage=job.name)


def _qat(job: StageJob, settings: QATConfig) -> None:
    qat_run(job.parent, job.data_dir, job.path, settings, command=job.command, log=job.log,
            verbose=job.verbose, stage=job.name)


def _distill(job: StageJob, settings: DistillConfig) -> None:
    distill(job.parent, job.data_dir, job.path, settings, resume=job.resume, command=job.command,
            log=job.log, verbose=job.verbose, stage=job.name, offline=job.offline)


def _export(job: StageJob, settings: ExportConfig) -> None:
    # Each export's Android assets go to the one folder its stage declares in `extra_outputs`.
    (android,) = get_stage(job.name).extra_outputs
    convert_run(job.parent, job.path, settings.options, data_dir=job.data_dir,
                android_dir=job.out / android if settings.android else None,
                command=job.command, log=job.log, stage=job.name)


def _web_export(job: StageJob, settings: WebExportConfig) -> None:
    convert_run(job.parent, job.path, settings.options, data_dir=job.data_dir,
                command=job.command, log=job.log, stage=job.name)


def _web_demo(job: StageJob, settings: WebDemoConfig) -> None:
    # MediaPipe in the page runs the int8 TFLite that ships to Android: the export stage's
    # (declared in `reads`, so a redone export redoes the page).
    shipped = job.inputs.get("export")
    assemble_demo(job.path, job.parent, stage=job.name,
                  tflite_from=shipped if shipped and (shipped / MANIFEST).is_file() else None)


def _benchmark(job: StageJob, settings: BenchmarkConfig) -> None:
    # A fresh process: every runtime gets the configured thread count (TensorFlow fixes its
    # thread pools when it starts, and this process has been training), and the training
    # stages' memory does not weigh on the timings. It dies with this process: a killed
    # pipeline leaves no benchmark writing into OUT. Named by its import path: the reporting
    # layer sits above this one, and only the child imports it.
    call_in_child("vgg_mobile.reporting.benchmark:benchmark_pipeline", job.out, settings,
                  output_dir=job.path, what="the benchmark stage")


STAGES: tuple[Stage, ...] = (
    Stage("teacher", TeacherConfig, _teacher,
          "Teacher: architecture (ModelOptions) and training (TrainConfig).",
          artifact="float teacher", curves="teacher training", resumes=True),
    Stage("pruned", PruneConfig, _prune,
          "Pruning of the teacher: by channel or by magnitude (PruneConfig).",
          parent="teacher", artifact="pruned teacher", curves="pruning fine-tuning",
          formerly=("prune",)),
    Stage("pruned_qat", QATConfig, _qat,
          "Quantization-aware training of the pruned teacher (QATConfig).",
          parent="pruned", artifact="pruned + QAT teacher", curves="teacher QAT",
          formerly=("qat",)),
    Stage("student", DistillConfig, _distill,
          "Distillation of the MobileNet student from the teacher (DistillConfig).",
          parent="teacher", artifact="distilled student", curves="student distillation",
          resumes=True, formerly=("distill",)),
    Stage("student_qat", QATConfig, _qat,
          "Quantization-aware training of the student, still taught by the teacher (QATConfig).",
          parent="student", artifact="QAT student", curves="student QAT", reads=("teacher",)),
    Stage("export", ExportConfig, _export,
          "The exported model: verified TFLite files and Android assets, budgets (ConvertOptions).",
          kind="export", parent="student_qat", parent_from_source=True,
          extra_outputs=("android",), formerly=("convert",)),
    Stage("teacher_export", TeacherExportConfig, _export,
          "The compressed teacher shipped beside the student: verified TFLite files, ONNX models "
          "and Android assets in OUT/teacher_android, budgets (ConvertOptions).",
          kind="export", parent="pruned_qat", parent_from_source=True,
          extra_outputs=("teacher_android",)),
    Stage("web_export", WebExportConfig, _web_export,
          "The browser's model: a verified TF.js bundle and a TFLite beside it, budgets "
          "(ConvertOptions).",
          kind="export", parent="student", parent_from_source=True, formerly=("convert",)),
    # The web demo's folder is written atomically: it exists only when complete.
    Stage("web_demo", WebDemoConfig, _web_demo, "The static web demo folder OUT/web_demo.",
          kind="other", parent="web_export", reads=("export",), finished_file="index.html",
          formerly=("demo", "site")),
    # The benchmark writes its JSON last.
    Stage("benchmark", BenchmarkConfig, _benchmark,
          "Every artifact measured in one process: accuracy, agreement, latency (BenchmarkConfig).",
          kind="other", finished_file=BENCHMARK_JSON, after_all=True),
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
# The stages whose folder is a run directory with a Keras model: what an export can convert.
RUN_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.kind == "run")


def get_stage(name: str) -> Stage:
    """The stage called `name`.

    Raises:
        BadInputError: No such stage; the message lists the valid names.
    """
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise BadInputError(f"unknown stage; valid stages: {', '.join(STAGE_NAMES)}. Received: "
                        f"stage={name!r}")
