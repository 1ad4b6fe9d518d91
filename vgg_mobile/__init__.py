"""vgg-mobile: fine-tune VGG16 on an image folder and ship it to phones and browsers.

The public API, one name for each step of the data flow:

    import vgg_mobile as vm
    teacher = vm.train("photos/", "runs/teacher", vm.ModelOptions(image_size=224))
    pruned = vm.prune_run(teacher.run_dir, "photos/", "runs/pruned", vm.PruneConfig())
    student = vm.distill(teacher.run_dir, "photos/", "runs/student", vm.DistillConfig())
    export = vm.convert_run(student.run_dir, "runs/export", vm.ConvertOptions())

Names are imported on first use, so `import vgg_mobile` stays light (no TensorFlow).
"""

import importlib
import os

# tensorflow-model-optimization only understands Keras 2 models, so every model here is a
# tf_keras model; TensorFlow must see this before it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 VNNI, BF16 or
# AMX, though on AVX2 CPUs too they train the teacher much faster
# (docs/measurements.md#teacher). So they are on here unless the environment says
# `TF_ENABLE_ONEDNN_OPTS=0`; results differ from the default kernels only by rounding.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from vgg_mobile.core import quiet  # noqa: E402
from vgg_mobile.core.version import __version__  # noqa: E402

# TensorFlow's own log lines, silenced before it loads unless VGG_MOBILE_VERBOSE asks for them.
quiet.configure()

# Public name -> the module that defines it (each name is defined once, there).
_API = {
    # errors
    "VggMobileError": "vgg_mobile.core.errors", "BadInputError": "vgg_mobile.core.errors",
    "DataError": "vgg_mobile.core.errors", "RunDirError": "vgg_mobile.core.errors",
    "WriteError": "vgg_mobile.core.errors", "BudgetError": "vgg_mobile.core.errors",
    # run directories and budgets
    "Run": "vgg_mobile.core.run_dir", "Manifest": "vgg_mobile.core.run_dir",
    "load_run": "vgg_mobile.core.run_dir", "Budgets": "vgg_mobile.core.budgets",
    # data
    "scan_folder": "vgg_mobile.data.dataset", "split": "vgg_mobile.data.dataset",
    "scan_unlabeled": "vgg_mobile.data.unlabeled",
    "choose_split": "vgg_mobile.data.splits", "stratified_sample": "vgg_mobile.data.splits",
    "write_sample_data": "vgg_mobile.data.sample",
    # models
    "ModelOptions": "vgg_mobile.models.architectures",
    "ARCHITECTURES": "vgg_mobile.models.architectures",
    "get_architecture": "vgg_mobile.models.architectures",
    # training the teacher
    "TrainConfig": "vgg_mobile.training.hyperparameters", "train": "vgg_mobile.training.train",
    "DistributeConfig": "vgg_mobile.training.distribute",
    "measure_throughput": "vgg_mobile.training.throughput",
    # evaluation
    "evaluate_run": "vgg_mobile.evaluation.metrics",
    # compression
    "PruneConfig": "vgg_mobile.compression.prune", "prune_run": "vgg_mobile.compression.prune",
    "QATConfig": "vgg_mobile.compression.qat", "qat_run": "vgg_mobile.compression.qat",
    # distillation
    "DistillConfig": "vgg_mobile.distillation.distill", "distill": "vgg_mobile.distillation.distill",
    "build_distiller": "vgg_mobile.distillation.distiller",
    # exports
    "ConvertOptions": "vgg_mobile.converters.convert", "convert_run": "vgg_mobile.converters.convert",
    # the web demo
    "assemble_demo": "vgg_mobile.web_demo.build",
    # the pipeline, its summary, benchmark and report
    "PipelineConfig": "vgg_mobile.pipeline.config", "build_config": "vgg_mobile.pipeline.config",
    "load_config": "vgg_mobile.pipeline.config", "run_pipeline": "vgg_mobile.pipeline.runner",
    "summary_rows": "vgg_mobile.pipeline.summary",
    "benchmark_pipeline": "vgg_mobile.reporting.benchmark",
    "write_report": "vgg_mobile.reporting.report",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'vgg_mobile' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
