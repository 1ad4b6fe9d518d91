"""`vgg-mobile pipeline`: images -> teacher -> compressed teacher -> student -> phone and browser.

Each stage is an ordinary library call writing its own run directory under OUT:

    teacher      `training.train`                      VGG16 (or any registered) teacher
    pruned       `compression.prune_run`               magnitude-pruned teacher
    pqat         `compression.qat_run`                 its sparsity-preserving QAT
    student      `distillation.distill`                MobileNet student taught by the teacher
    student_qat  `compression.qat_run`                 quantization-aware student
    export       `converters.convert.convert_run`      verified int8 TFLite (+ OUT/android)
    web_export   `converters.convert.convert_run`      verified TF.js bundle, float16 TFLite
    site         `web_demo.assemble_demo`              static web demo folder
    benchmark    `benchmark.benchmark_pipeline`        every artifact measured in one process

The exported model is the quantization-aware student (`student_qat`): it is the smallest
model and the one trained for the int8 arithmetic the phone runs. `[convert] source` can
choose another run. The browser gets the float student (`web_source`): TF.js has no kernel
for the fake-quantization ops a quantization-aware model keeps.

`OUT/pipeline_state.json` records, per stage, a hash of what the stage was built from (its
settings, the parent run's manifest and the data fingerprint). A re-run skips a finished
stage whose hash is unchanged and redoes every other one, discarding its partial output.
`OUT/pipeline.toml` is the configuration of the latest run, in full.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable

from vgg_mobile.core.errors import BadInputError, RunDirError
from vgg_mobile.training.hyperparameters import TrainConfig
from vgg_mobile.models.architectures import ModelOptions
from vgg_mobile.core.io import gzip_size
from vgg_mobile.core.run_dir import manifest_digest

STATE_FILE = "pipeline_state.json"
CONFIG_FILE = "pipeline.toml"
BENCHMARK_JSON = "benchmark.json"
PRESET_NAMES = ("sample", "real")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The web-demo stage.

    Attributes:
        enabled: Assemble the static web demo folder `OUT/site`.
    """

    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Which run is exported, and how (the remaining fields are `ConvertOptions`').

    Attributes:
        source: The stage whose run is converted to TFLite with `flavours` (and Android assets):
            `student_qat`, `student`, `pqat`, `pruned` or `teacher`.
        web_source: The stage whose run becomes the TF.js bundle of the web demo (with
            `tfjs = true`). TF.js has no kernel for the fake-quantization ops of a
            quantization-aware model, so the browser gets the float student by default. A
            float16 TFLite of this run is written beside the bundle.
        android: Also write Android assets to `OUT/android`.
    """

    source: str = "student_qat"
    web_source: str = "student"
    android: bool = True

    def __post_init__(self):
        for key in ("source", "web_source"):
            if getattr(self, key) not in RUN_STAGES:
                raise BadInputError(f"{key} must be one of {', '.join(RUN_STAGES)}. "
                                    f"Received: {key}={getattr(self, key)!r}")


def _compression():
    from vgg_mobile.compression import compress as compression

    return compression


def _convert_options_class():
    from converters.convert import ConvertOptions

    return ConvertOptions


def _benchmark_config_class():
    from vgg_mobile.reporting.benchmark import BenchmarkConfig

    return BenchmarkConfig


def _distill_config_class():
    from vgg_mobile.distillation.distill import DistillConfig

    return DistillConfig


# TOML section -> the config classes whose fields it holds. `teacher` merges the model's
# architecture knobs with its training knobs (their field names do not overlap).
def _section_classes() -> dict[str, tuple[type, ...]]:
    compression = _compression()
    return {
        "teacher": (ModelOptions, TrainConfig),
        "prune": (compression.PruneConfig,),
        "qat": (compression.QATConfig,),
        "distill": (_distill_config_class(),),
        "student_qat": (compression.QATConfig,),
        "convert": (ExportConfig, _convert_options_class()),
        "demo": (DemoConfig,),
        "benchmark": (_benchmark_config_class(),),
    }


RUN_STAGES = ("teacher", "pruned", "pqat", "student", "student_qat")
# Stages that back up every epoch and continue an interrupted run instead of redoing it.
RESUMABLE_STAGES = ("teacher", "student")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Every stage's settings, one existing config dataclass per concern."""

    teacher_model: ModelOptions
    teacher: TrainConfig
    prune: Any  # compression.PruneConfig
    qat: Any  # compression.QATConfig (sparsity preserving)
    distill: Any  # distillation.DistillConfig
    student_qat: Any  # compression.QATConfig
    export: ExportConfig
    convert: Any  # converters.convert.ConvertOptions
    demo: DemoConfig
    benchmark: Any  # benchmark.BenchmarkConfig


# Presets are data: section -> key -> value, in TOML's own types, applied over the defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Mirrors `make demo`: minutes on 2 cores on the built-in sample data.
    "sample": {
        "teacher": {"architecture": "vgg16", "image_size": 32, "weights": "none", "epochs": 8,
                    "batch_size": 16, "learning_rate": 3e-4},
        "prune": {"target_sparsity": 0.5, "epochs": 2, "batch_size": 16, "learning_rate": 1e-4},
        "qat": {"preserve_sparsity": True, "epochs": 1, "batch_size": 16},
        "distill": {"student": "mobilenet_v2_0.35", "image_size": 64, "epochs": 15,
                    "batch_size": 16},
        "student_qat": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-5},
        "convert": {"source": "student_qat", "flavours": ["int8"],
                    "max_size": "10MB", "min_agreement": 0.9},
        "demo": {"enabled": True},
        "benchmark": {"enabled": True, "repeats": 30, "threads": 1},
    },
    # Real photos: 224 px, ImageNet weights from the local Keras cache (never downloaded).
    "real": {
        "teacher": {"architecture": "vgg16", "image_size": 224, "weights": "imagenet",
                    "epochs": 10, "batch_size": 32, "learning_rate": 1e-4},
        "prune": {"target_sparsity": 0.5, "epochs": 4, "batch_size": 32},
        "qat": {"preserve_sparsity": True, "epochs": 2, "batch_size": 32},
        "distill": {"student": "mobilenet_v2_0.35", "image_size": 224, "epochs": 20,
                    "batch_size": 32},
        "student_qat": {"epochs": 2, "batch_size": 32, "learning_rate": 1e-5},
        "convert": {"source": "student_qat", "flavours": ["int8"],
                    "max_size": "10MB", "min_agreement": 0.9},
        "demo": {"enabled": True},
        "benchmark": {"enabled": True, "repeats": 20, "threads": 1, "images": 200},
    },
}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + ' or "none"'
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(args[0])}"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(hint, str(hint))


def _coerce(value, hint, section: str, key: str, where: str):
    """Checks a TOML value against a dataclass field type; returns the Python value."""
    def bad():
        return BadInputError(f"{where}[{section}] {key} must be of type {_type_name(hint)}. "
                             f"Received: {key}={value!r} ({type(value).__name__})")

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.lower() == "none":
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        if section == "convert" and key == "max_size" and isinstance(value, str):
            from converters.convert import parse_size

            try:
                return parse_size(value)
            except BadInputError as err:
                raise BadInputError(f"{where}[{section}] {key}: {err}") from None
        try:
            return _coerce(value, inner, section, key, where)
        except BadInputError:
            raise bad() from None
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if not isinstance(value, list):
            raise bad()
        return tuple(_coerce(v, item, section, key, where) for v in value)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise bad()
    return value


def _build_section(section: str, values: dict, where: str) -> tuple:
    classes = _section_classes()[section]
    known = {f.name: cls for cls in classes for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise BadInputError(f"{where}[{section}] unknown key(s): {', '.join(unknown)}; valid keys: "
                            f"{', '.join(sorted(known))}")
    built = []
    for cls in classes:
        hints = _hints(cls)
        kwargs = {k: _coerce(v, hints[k], section, k, where)
                  for k, v in values.items() if known[k] is cls}
        try:
            built.append(cls(**kwargs))
        except BadInputError as err:
            raise BadInputError(f"{where}[{section}] {err}") from None
    return tuple(built)


def build_config(overrides: dict | None = None, preset: str = "sample", where: str = "") -> PipelineConfig:
    """Builds a `PipelineConfig` from a preset and TOML-style overrides.

    Args:
        overrides: `{section: {key: value}}` as parsed from TOML; applied over the preset.
        preset: A name from `PRESETS`. Defaults to `"sample"`.
        where: Prefix of error messages (e.g. the config file's path and a colon).

    Returns:
        The validated configuration.

    Raises:
        BadInputError: Unknown preset, section or key, a wrong type, or a bad value.
    """
    if preset not in PRESETS:
        raise BadInputError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    overrides = overrides or {}
    sections = _section_classes()
    unknown = sorted(set(overrides) - set(sections))
    if unknown:
        raise BadInputError(f"{where}unknown section(s): {', '.join(unknown)}; valid sections: "
                            f"{', '.join(sections)}")
    merged = {}
    for section in sections:
        given = overrides.get(section, {})
        if not isinstance(given, dict):
            raise BadInputError(f"{where}[{section}] must be a table. Received: {section}={given!r}")
        merged[section] = _build_section(section, {**PRESETS[preset].get(section, {}), **given}, where)
    return PipelineConfig(
        teacher_model=merged["teacher"][0], teacher=merged["teacher"][1],
        prune=merged["prune"][0], qat=merged["qat"][0], distill=merged["distill"][0],
        student_qat=merged["student_qat"][0], export=merged["convert"][0],
        convert=merged["convert"][1], demo=merged["demo"][0], benchmark=merged["benchmark"][0])


def load_config(path: str | Path | None = None, preset: str = "sample", text: str | None = None) -> PipelineConfig:
    """Reads a pipeline TOML file (or `text`) over a preset.

    Raises:
        BadInputError: Unreadable or invalid TOML, or anything `build_config` refuses; the
            message names the file.
    """
    where = f"{path}: " if path is not None else ""
    if text is None and path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise BadInputError(f"{path}: cannot read the config ({err})") from None
    try:
        data = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as err:
        raise BadInputError(f"{where}not valid TOML ({err})") from None
    return build_config(data, preset, where)


def _toml_value(value) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _attribute_docs(cls) -> dict[str, str]:
    """First line of each attribute's description in a Google-style class docstring."""
    docs, current = {}, None
    lines = (cls.__doc__ or "").splitlines()
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside = True
            continue
        if not inside or not stripped:
            continue
        head, sep, rest = stripped.partition(": ")
        names = [n.strip() for n in head.split(",")]
        if sep and all(n.isidentifier() for n in names) and line.startswith(" " * 8) \
                and not line.startswith(" " * 12):
            for name in names:
                docs[name] = rest
            current = names
        elif current:
            for name in current:
                docs[name] = docs[name] + " " + stripped
    return docs


_SECTION_TITLES = {
    "teacher": "Teacher: architecture (ModelOptions) and training (TrainConfig).",
    "prune": "Magnitude pruning of the teacher (PruneConfig).",
    "qat": "Quantization-aware training of the pruned teacher (QATConfig).",
    "distill": "Distillation of the MobileNet student (DistillConfig).",
    "student_qat": "Quantization-aware training of the student (QATConfig).",
    "convert": "Export: which run, TFLite flavours, TF.js, budgets (ConvertOptions).",
    "demo": "The static web demo folder OUT/site.",
    "benchmark": "Every artifact measured in one process: accuracy, agreement, latency (BenchmarkConfig).",
}


def default_config_toml(preset: str = "sample") -> str:
    """The preset's full configuration as commented TOML (what `--print-config` prints).

    Raises:
        BadInputError: Unknown preset.
    """
    return config_toml(build_config({}, preset), f"preset {preset!r}")


def config_toml(config: PipelineConfig, origin: str = "") -> str:
    """A configuration as commented TOML that `load_config` reads back to the same config.

    Args:
        config: The configuration.
        origin: Where it came from, for the heading comment (e.g. "preset 'sample'").
    """
    values = {
        "teacher": (config.teacher_model, config.teacher), "prune": (config.prune,),
        "qat": (config.qat,), "distill": (config.distill,), "student_qat": (config.student_qat,),
        "convert": (config.export, config.convert), "demo": (config.demo,),
        "benchmark": (config.benchmark,),
    }
    lines = ["# vgg-mobile pipeline configuration" + (f" ({origin})." if origin else "."),
             "# Every key is optional; a missing key keeps the preset's value.",
             '# Optional values take "none"; sizes may be written "10MB".', ""]
    for section, objects in values.items():
        lines.append(f"# {_SECTION_TITLES[section]}")
        lines.append(f"[{section}]")
        for obj in objects:
            docs = _attribute_docs(type(obj))
            for field in dataclasses.fields(obj):
                doc = docs.get(field.name)
                if doc:
                    lines.append(f"# {doc}")
                lines.append(f"{field.name} = {_toml_value(getattr(obj, field.name))}")
        lines.append("")
    return "\n".join(lines)


# --- running the stages -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What happened to one stage: `ran` or `skipped`, and how long it took."""

    name: str
    path: Path
    status: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """What `run_pipeline` produced.

    Attributes:
        out_dir: The pipeline's output folder.
        stages: One `StageResult` per stage, in order.
        summary: One row per artifact: `artifact`, `stage`, `path`, `architecture`,
            `accuracy`, `agreement`, `size_bytes`, `gzip_bytes`, `budget`.
        report: Paths of `report.md` and `report.html` (empty when not written).
    """

    out_dir: Path
    stages: tuple[StageResult, ...]
    summary: tuple[dict, ...]
    report: dict


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _read_state(out: Path) -> dict:
    path = out / STATE_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"stages": {}}  # unreadable state: every stage is redone, nothing is trusted
    return state if isinstance(state.get("stages"), dict) else {"stages": {}}


def _write_state(out: Path, state: dict) -> None:
    from vgg_mobile.core.io import write_json

    write_json(out / STATE_FILE, state)


def _check_out(out: Path, data_dir: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (out / STATE_FILE).is_file():
        raise RunDirError(f"{out}: exists and is not a pipeline output folder (no {STATE_FILE}); "
                          "choose another --out")
    resolved, data = out.resolve(), data_dir.resolve()
    if resolved == data or resolved in data.parents or data in resolved.parents:
        raise RunDirError(f"{out}: overlaps the data folder {data_dir}; choose another --out")


def _stage_plan(config: PipelineConfig) -> list[dict]:
    """The stages in order: name, folder, parent stage and the settings that shape it."""
    asdict = dataclasses.asdict
    plan = [
        {"name": "teacher", "dir": "teacher", "parent": None,
         "settings": {"model": asdict(config.teacher_model), "train": asdict(config.teacher)}},
        {"name": "pruned", "dir": "pruned", "parent": "teacher", "settings": asdict(config.prune)},
        {"name": "pqat", "dir": "pqat", "parent": "pruned", "settings": asdict(config.qat)},
        {"name": "student", "dir": "student", "parent": "teacher", "settings": asdict(config.distill)},
        {"name": "student_qat", "dir": "student_qat", "parent": "student",
         "settings": asdict(config.student_qat)},
        {"name": "export", "dir": "export", "parent": config.export.source,
         "settings": {"source": config.export.source, "android": config.export.android,
                      "convert": asdict(config.convert)}},
    ]
    if config.convert.tfjs:
        plan.append({"name": "web_export", "dir": "web_export", "parent": config.export.web_source,
                     "settings": {"source": config.export.web_source,
                                  "convert": asdict(_web_options(config))}})
        if config.demo.enabled:
            plan.append({"name": "site", "dir": "site", "parent": "web_export",
                         "settings": asdict(config.demo)})
    if config.benchmark.enabled:
        # Measures every artifact before it: its inputs are all of their manifests.
        plan.append({"name": "benchmark", "dir": "benchmark", "parent": None, "after_all": True,
                     "settings": {"benchmark": asdict(config.benchmark),
                                  "budgets": {"max_size": config.convert.max_size,
                                              "min_agreement": config.convert.min_agreement}}})
    return plan


def _web_options(config: PipelineConfig):
    # Beside the bundle, the float model's float16 TFLite: a quantization-aware model
    # converts to int8 weights whatever the flavour, so float16 is only meaningful here.
    return dataclasses.replace(config.convert, flavours=("float16",), tfjs=True)


def _finished(path: Path, name: str) -> bool:
    # The site folder is written atomically (it exists only when complete); the benchmark
    # writes its JSON last; the others end with their manifest.
    last = {"site": "index.html", "benchmark": BENCHMARK_JSON}.get(name, "manifest.json")
    return (path / last).is_file()


def run_pipeline(
    data_dir: str | Path,
    out_dir: str | Path,
    config: PipelineConfig | None = None,
    force: bool = False,
    report: bool = True,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
) -> PipelineResult:
    """Runs every stage from an image folder to exported models and a web demo, resumably.

    Args:
        data_dir: Image folder (`<class>/...` or `train/` + `val/`).
        out_dir: Output folder; each stage writes its run directory inside it.
        config: Every stage's settings. Defaults to the `sample` preset.
        force: Redo every stage, even finished ones. Defaults to `False`.
        report: Write `report.md` and `report.html`. Defaults to `True`.
        log: Receives one line per stage (with elapsed time) and the stages' own messages.
        verbose: Keras progress output inside training stages. Defaults to `0`.

    Returns:
        A `PipelineResult` with the summary table as data.

    Raises:
        DataError: The data folder fails its checks (before anything is written).
        RunDirError: `out_dir` is not a pipeline output folder, or overlaps the data.
        BadInputError: The teacher's weights are not on this machine (before anything is
            written).
        BadInputError, BudgetError: From the stages; earlier finished stages are kept.
    """
    from vgg_mobile.data import dataset

    from vgg_mobile.models.architectures import resolve_weights

    config = config or build_config({}, "sample")
    data_dir, out = Path(data_dir), Path(out_dir)
    _check_out(out, data_dir)
    folder = dataset.scan_folder(data_dir, strict=config.teacher.strict)
    # Missing ImageNet weights (the real preset) stop the run here, not after OUT is made.
    resolve_weights(config.teacher_model.weights, config.teacher_model.architecture)
    data_fingerprint = folder.fingerprint()
    out.mkdir(parents=True, exist_ok=True)
    from vgg_mobile.core.io import write_text

    write_text(out / CONFIG_FILE, config_toml(config, "the latest run's"))
    state = _read_state(out)
    if not (out / STATE_FILE).is_file():
        _write_state(out, state)
    paths: dict[str, Path] = {}
    results = []
    started_all = time.perf_counter()
    plan = _stage_plan(config)
    for number, stage in enumerate(plan, 1):
        name, path = stage["name"], out / stage["dir"]
        paths[name] = path
        parent = paths.get(stage["parent"]) if stage["parent"] else None
        if stage.get("after_all"):
            parent_digest = {other: manifest_digest(p) for other, p in paths.items() if other != name}
        else:
            parent_digest = manifest_digest(parent) if parent is not None else None
        inputs = _digest({"stage": name, "settings": stage["settings"], "data": data_fingerprint,
                          "parent": parent_digest})
        recorded = state["stages"].get(name, {})
        prefix = f"[{number}/{len(plan)}] {name}"
        if not force and recorded.get("inputs") == inputs and recorded.get("status") == "finished" \
                and _finished(path, name):
            log(f"{prefix}: finished earlier, inputs unchanged; skipped ({path})")
            results.append(StageResult(name, path, "skipped", 0.0))
            continue
        resume = (name in RESUMABLE_STAGES and not force and recorded.get("inputs") == inputs
                  and recorded.get("status") == "running"
                  and (path / "checkpoints" / "state.json").is_file() and not _finished(path, name))
        if not resume:
            _discard(path)
            if name == "export":
                _discard(out / "android")
        state["stages"][name] = {"inputs": inputs, "status": "running", "path": str(path)}
        _write_state(out, state)
        log(f"{prefix}: started" + (" (resuming from its last checkpoint)" if resume else ""))
        t0 = time.perf_counter()
        try:
            _run_stage(name, data_dir, out, paths, parent, config, resume, log, verbose)
        except Exception:
            # A failed stage leaves nothing half-written; the teacher and the student keep
            # their epoch checkpoints so that the next run resumes them.
            if name not in RESUMABLE_STAGES:
                _discard(path)
            raise
        seconds = time.perf_counter() - t0
        state["stages"][name] = {"inputs": inputs, "status": "finished", "path": str(path),
                                 "seconds": round(seconds, 1),
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if name in RUN_STAGES:
            # Measured once here, not on every summary: the teacher's file is tens of MB.
            state["stages"][name]["gzip_bytes"] = _gzip_bytes(path)
        _write_state(out, state)
        log(f"{prefix}: done in {_clock(seconds)} (total {_clock(time.perf_counter() - started_all)})")
        results.append(StageResult(name, path, "ran", seconds))

    if not config.benchmark.enabled and any(r.status == "ran" for r in results):
        # Measurements of artifacts since redone would be read as theirs: drop them.
        _discard(out / "benchmark")
        if state["stages"].pop("benchmark", None) is not None:
            _write_state(out, state)
    summary = tuple(summary_rows(out, config))
    files = {}
    if report:
        from vgg_mobile.reporting import report as report_module

        files = report_module.write_report(out, summary, config.export.source,
                                            config.convert.max_size, config.convert.min_agreement)
        log(f"report: {files['html']}")
    return PipelineResult(out, tuple(results), summary, files)


def _gzip_bytes(run_path: Path) -> int | None:
    """Bytes of the run's model file after gzip: what pruning's zeros save in a download."""
    manifest_path = run_path / "manifest.json"
    if not manifest_path.is_file():
        return None
    return gzip_size(run_path / json.loads(manifest_path.read_text(encoding="utf-8"))
                     .get("model_file", "model.keras"))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def _discard(path: Path) -> None:
    # Only folders the pipeline itself owns inside OUT reach here.
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _run_stage(name, data_dir, out, paths, parent, config: PipelineConfig, resume, log, verbose):
    command = ["vgg-mobile", "pipeline", str(data_dir), "--out", str(out)]
    path = paths[name]
    if name == "teacher":
        from vgg_mobile.training.train import train

        train(data_dir, path, config.teacher_model, config.teacher, resume=resume,
              command=command, log=log, verbose=verbose)
    elif name in ("pruned", "pqat", "student_qat"):
        compression = _compression()
        if name == "pruned":
            compression.prune_run(parent, data_dir, path, config.prune, command=command,
                                  log=log, verbose=verbose)
        else:
            qat = config.qat if name == "pqat" else config.student_qat
            compression.qat_run(parent, data_dir, path, qat, command=command, log=log,
                                verbose=verbose)
    elif name == "student":
        from vgg_mobile.distillation.distill import distill

        distill(parent, data_dir, path, config.distill, resume=resume, command=command, log=log,
                verbose=verbose)
    elif name == "export":
        from converters.convert import convert_run

        convert_run(parent, path, dataclasses.replace(config.convert, tfjs=False),
                    data_dir=data_dir,
                    android_dir=out / "android" if config.export.android else None,
                    command=command, log=log)
    elif name == "web_export":
        from converters.convert import convert_run

        convert_run(parent, path, _web_options(config), data_dir=data_dir, command=command, log=log)
    elif name == "site":
        from vgg_mobile.site import assemble_demo

        assemble_demo(path, parent)
    elif name == "benchmark":
        _benchmark_in_child(out, path, log)


def _benchmark_in_child(out: Path, path: Path, log) -> None:
    # A fresh process: every runtime gets the configured thread count (TensorFlow fixes its
    # thread pools when it starts, and this process has been training), and the training
    # stages' memory does not weigh on the timings.
    import subprocess
    import sys

    from vgg_mobile.core.errors import VggMobileError

    result = subprocess.run([sys.executable, "-m", "vgg_mobile", "benchmark", str(out),
                             "--output", str(path), "--quiet"],
                            capture_output=True, text=True)
    for line in result.stderr.splitlines():
        if line.startswith(("benchmark:", "error", "internal error")):
            log(line)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        raise VggMobileError(f"the benchmark stage failed (exit {result.returncode}): "
                             + (errors[-1] if errors else result.stderr.strip()[-500:]))


# --- the summary table --------------------------------------------------------------------

_ARTIFACT_TITLES = {
    "teacher": "float teacher", "pruned": "pruned teacher", "pqat": "pruned + QAT teacher",
    "student": "distilled student", "student_qat": "QAT student",
}


def _run_size(path: Path, manifest: dict) -> int:
    model = path / manifest.get("model_file", "model.keras")
    return model.stat().st_size if model.is_file() else 0


def summary_rows(out: str | Path, config: PipelineConfig) -> list[dict]:
    """One row per artifact under OUT: every run's Keras model, then every exported file.

    Each row has `artifact` (its title), `stage`, `format` (`keras`, `tflite` or `tfjs`), `path`,
    `parent` (the stage it was made from), `architecture`, `accuracy` (held-out images),
    `agreement` (top-1 agreement with the parent), `size_bytes`, `gzip_bytes`, `latency_ms`
    and `speedup` (single image, against the float teacher in the same process), and `budget`:
    `pass` or `fail` against `[convert] max_size` and `min_agreement` for exported files, `-`
    for runs. The benchmark stage's measurements (`OUT/benchmark`) fill in what the stages
    did not record; missing values are `None`.
    """
    out = Path(out)
    rows = []
    recorded = _read_state(out)["stages"]
    parents = {stage["name"]: stage["parent"] for stage in _stage_plan(config)}
    for stage in RUN_STAGES:
        path = out / stage
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            continue
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        rows.append({"artifact": _ARTIFACT_TITLES[stage], "stage": stage, "format": "keras",
                     "path": str(path / manifest.get("model_file", "model.keras")),
                     "parent": parents.get(stage), "architecture": manifest.get("architecture"),
                     "accuracy": (manifest.get("metrics") or {}).get("accuracy"),
                     "agreement": None, "size_bytes": _run_size(path, manifest),
                     "gzip_bytes": recorded.get(stage, {}).get("gzip_bytes"),
                     "latency_ms": None, "speedup": None, "budget": "-"})
    for folder, source in (("export", config.export.source), ("web_export", config.export.web_source)):
        rows += _export_rows(out / folder, source, config.convert)
    measured = out / "benchmark" / BENCHMARK_JSON
    if measured.is_file():
        by_path = {row["path"]: row for row in json.loads(measured.read_text(encoding="utf-8"))["rows"]}
        for row in rows:
            found = by_path.get(row["path"], {})
            for key in ("latency_ms", "speedup", "agreement", "accuracy"):
                if row[key] is None:
                    row[key] = found.get(key)
    return rows


def _export_rows(folder: Path, source: str, options) -> list[dict]:
    rows = []
    export = folder / "manifest.json"
    if export.is_file():
        manifest = json.loads(export.read_text(encoding="utf-8"))
        for artifact in manifest.get("artifacts", []):
            check = artifact.get("verification", {})
            ok = ((options.max_size is None or artifact["size_bytes"] <= options.max_size)
                  and (options.min_agreement is None
                       or check.get("top1_agreement", 0) >= options.min_agreement))
            tflite = artifact["format"] == "tflite"
            kind = f"TFLite {artifact['flavour']}" if tflite else "TF.js"
            rows.append({"artifact": f"{kind} ({source})", "stage": folder.name,
                         "format": "tflite" if tflite else "tfjs",
                         "path": str(folder / artifact["file"]), "parent": source,
                         "architecture": manifest.get("architecture"),
                         "accuracy": check.get("accuracy"), "agreement": check.get("top1_agreement"),
                         "size_bytes": artifact["size_bytes"],
                         "gzip_bytes": artifact.get("gzip_bytes"),
                         "latency_ms": None, "speedup": None,
                         "budget": "pass" if ok else "fail"})
    return rows


SUMMARY_COLUMNS = ("artifact", "accuracy", "agreement", "size", "gzip", "latency",
                   "vs teacher", "budget")


def summary_cells(row: dict) -> tuple[str, ...]:
    """A summary row as table text, one cell per `SUMMARY_COLUMNS` ("-" where unknown)."""
    def number(value, template):
        return "-" if value is None else template.format(value)

    return (row["artifact"], number(row["accuracy"], "{:.3f}"), number(row["agreement"], "{:.3f}"),
            f"{row['size_bytes'] / 1e6:.2f} MB",
            number(None if row.get("gzip_bytes") is None else row["gzip_bytes"] / 1e6, "{:.2f} MB"),
            number(row.get("latency_ms"), "{:.2f} ms"), number(row.get("speedup"), "{:.1f}x"),
            row["budget"])


def format_summary(rows) -> str:
    """The summary rows as a Markdown table."""
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|---|" + "---:|" * 6 + "---|"]
    lines += ["| " + " | ".join(summary_cells(row)) + " |" for row in rows]
    return "\n".join(lines)
