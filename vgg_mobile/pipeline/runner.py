"""`vgg-mobile pipeline`: images -> teacher -> compressed teacher -> student -> phone and browser.

Each stage of `stages.STAGES` is an ordinary library call writing its own folder under OUT,
named as the stage. The exported model is the quantization-aware student (`student_qat`): it
is the smallest model and the one trained for the int8 arithmetic the phone runs
(`[export] source` can choose another run). The browser gets the float student
(`[web_export] source`): TF.js has no kernel for the fake-quantization ops a
quantization-aware model keeps.

`OUT/pipeline_state.json` (`pipeline.state`) records, per stage, a digest of what the stage was
built from. A re-run skips a finished stage whose digest is unchanged and redoes every other
one, discarding its partial output; the stages that back up every epoch continue an
interrupted run. `OUT/pipeline.toml` is the configuration of the latest run, in full. The
report is not written here: `vgg_mobile.reporting.report.write_report(OUT)` writes it from the
finished folder (the `vgg-mobile pipeline` command calls it).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

from vgg_mobile.core.errors import RunDirError
from vgg_mobile.core.io import gzip_size, write_text
from vgg_mobile.core.outputs import CHECKPOINT_STATE, MANIFEST, inside, lock
from vgg_mobile.core.run_dir import manifest_digest, read_manifest
from vgg_mobile.data import dataset
from vgg_mobile.data.unlabeled import scan_unlabeled
from vgg_mobile.models.architectures import resolve_weights
from vgg_mobile.pipeline.config import CONFIG_FILE, PipelineConfig, build_config, config_toml
from vgg_mobile.pipeline.stages import STAGES, Stage, StageJob
from vgg_mobile.pipeline.state import (REPORT_FILES, STATE_FILE, inputs_digest, is_pipeline_out,
                                      read_state, write_state)
from vgg_mobile.pipeline.summary import summary_rows


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
        stages: One `StageResult` per planned stage, in order.
        summary: One row per artifact (see `pipeline.summary.summary_rows`).
    """

    out_dir: Path
    stages: tuple[StageResult, ...]
    summary: tuple[dict, ...]


def stage_plan(config: PipelineConfig) -> tuple[tuple[Stage, object], ...]:
    """The stages `config` runs, in order, each with its settings.

    A stage runs when its section does not switch it off (`enabled`) and its parent runs:
    no web demo without the TF.js export.

    Args:
        config: Every stage's settings.

    Returns:
        `(stage, settings)` pairs in `STAGES` order.
    """
    planned: dict[str, tuple[Stage, object]] = {}
    for stage in STAGES:
        settings = getattr(config, stage.name)
        parent = stage.parent_of(settings)
        if stage.enabled(settings) and (parent is None or parent in planned):
            planned[stage.name] = (stage, settings)
    return tuple(planned.values())


def run_pipeline(
    data_dir: str | Path,
    out_dir: str | Path,
    config: PipelineConfig | None = None,
    force: bool = False,
    log: Callable[[str], None] = lambda message: None,
    verbose: int = 0,
    offline: bool = False,
) -> PipelineResult:
    """Runs every stage from an image folder to exported models and a web demo, resumably.

    Args:
        data_dir: Image folder (`<class>/...` or `train/` + `val/`).
        out_dir: Output folder; each stage writes its folder inside it.
        config: Every stage's settings. Defaults to the `sample` preset.
        force: Redo every stage, even finished ones. Defaults to `False`.
        log: Receives one line per stage (with elapsed time) and the stages' own messages.
            Defaults to discarding them.
        verbose: Keras progress output inside training stages. Defaults to `0`.
        offline: Never download: ImageNet weights that the teacher's `weights` or the
            student's `student_weights` ask for must be in the Keras cache
            (`VGG_MOBILE_OFFLINE=1` does the same). Otherwise they are downloaded into it
            before anything is written; "auto" (and so the default `sample` preset) never
            downloads. Defaults to `False`.

    Returns:
        A `PipelineResult` with the summary table as data.

    Raises:
        DataError: The data folder, or the student's folder of unlabelled images, fails its
            checks (before anything is written).
        RunDirError: `out_dir` is not a pipeline output folder, or overlaps the data or the
            unlabelled images.
        BadInputError: The teacher's or the student's weights are not on this machine and
            downloads are off (before anything is written).
        VggMobileError: Their download failed (before anything is written).
        BadInputError, BudgetError, WriteError: From the stages; earlier finished stages are
            kept.
    """
    config = config or build_config({}, "sample")
    data_dir, out = Path(data_dir), Path(out_dir)
    _check_out(out, data_dir, config)
    # One pipeline per OUT: a second one stops here, naming the first.
    with lock(out):
        return _run(data_dir, out, config, force, log, verbose, offline)


def _run(data_dir: Path, out: Path, config: PipelineConfig, force: bool, log, verbose,
         offline: bool) -> PipelineResult:
    _check_out(out, data_dir, config)  # again, now that no other pipeline can be writing it
    folder = dataset.scan_folder(data_dir, strict=config.teacher.train.strict)
    plan = stage_plan(config)
    # Checked against the data folder before OUT is made. Their content, not their path,
    # decides whether the stage is redone, as the data folder's does.
    unlabeled = {stage.name: scan_unlabeled(stage.unlabeled(settings), folder,
                                            strict=getattr(settings, "strict", False)).fingerprint
                 for stage, settings in plan if stage.unlabeled(settings)}
    # Missing ImageNet weights (the real preset) are downloaded, or stop the run, here: not
    # after OUT is made.
    resolve_weights(config.teacher.model.weights, config.teacher.model.architecture,
                    offline=offline, log=log, flag="[teacher] weights =")
    resolve_weights(config.student.student_weights, config.student.student, offline=offline,
                    log=log, flag="[student] student_weights =")
    data_fingerprint = folder.fingerprint()
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG_FILE, config_toml(config, "the latest run's"))
    state = read_state(out)
    if not is_pipeline_out(out):
        write_state(out, state)
    command = ["vgg-mobile", "pipeline", str(data_dir), "--out", str(out)]
    results: list[StageResult] = []
    started_all = time.perf_counter()
    for number, (stage, settings) in enumerate(plan, 1):
        name, path = stage.name, out / stage.name
        parent = stage.parent_of(settings)
        reads = stage.inputs_of(settings, [earlier.name for earlier, _ in plan[:number - 1]])
        if stage.after_all or stage.reads:
            parent_digest = {read: manifest_digest(out / read) for read in reads}
        else:  # the parent alone, recorded as it always was: finished stages stay finished
            parent_digest = manifest_digest(out / parent) if parent else None
        inputs = inputs_digest(name, _settings_record(settings, unlabeled.get(name)),
                               data_fingerprint, parent_digest)
        recorded = state["stages"].get(name, {})
        same_inputs = not force and recorded.get("inputs") == inputs
        prefix = f"[{number}/{len(plan)}] {name}"
        if same_inputs and recorded.get("status") == "finished" and _finished(out, stage):
            log(f"{prefix}: finished earlier, inputs unchanged; skipped ({path})")
            results.append(StageResult(name, path, "skipped", 0.0))
            continue
        resume = (stage.resumes and same_inputs and recorded.get("status") == "running"
                  and (path.joinpath(*CHECKPOINT_STATE)).is_file() and not _finished(out, stage))
        if not resume:
            _discard_outputs(out, stage)
        # What was built from this stage is out of date from now on, even if it fails.
        _discard_dependents(out, plan, number - 1)
        state["stages"][name] = {"inputs": inputs, "status": "running", "path": str(path)}
        write_state(out, state)
        log(f"{prefix}: started" + (" (resuming from its last checkpoint)" if resume else ""))
        t0 = time.perf_counter()
        job = StageJob(name, data_dir, out, path, out / parent if parent else None, resume,
                       command, log, verbose, offline, {read: out / read for read in reads})
        try:
            stage.run(job, settings)
        except Exception:
            # A failed stage leaves nothing half-written; the stages that resume keep their
            # epoch checkpoints so that the next run continues them.
            if not stage.resumes:
                _discard_outputs(out, stage)
            raise
        seconds = time.perf_counter() - t0
        state["stages"][name] = {"inputs": inputs, "status": "finished", "path": str(path),
                                 "seconds": round(seconds, 1),
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if stage.kind == "run":
            # Measured once here, not on every summary: the teacher's file is tens of MB.
            state["stages"][name]["gzip_bytes"] = _model_gzip_bytes(path)
        write_state(out, state)
        log(f"{prefix}: done in {_clock(seconds)} (total {_clock(time.perf_counter() - started_all)})")
        results.append(StageResult(name, path, "ran", seconds))
    _discard_stale(out, config, plan, {r.name for r in results if r.status == "ran"}, state)
    return PipelineResult(out, tuple(results), tuple(summary_rows(out, config)))


# Keys added after stages had been run: left unset (`None`), they are left out of the inputs
# digest, as before they existed, so that finished stages stay finished.
_LATER_KEYS = ("crop_scale", "colour_jitter")


def _without_unset(record: dict) -> dict:
    return {key: (_without_unset(value) if isinstance(value, dict) else value)
            for key, value in record.items() if not (key in _LATER_KEYS and value is None)}


def _settings_record(settings, unlabeled_fingerprint: str | None) -> dict:
    """A stage's settings as its inputs digest reads them: a folder of unlabelled images by
    its fingerprint, and no such key when there is none (as before the key existed, so that
    finished stages stay finished); likewise `_LATER_KEYS` when unset."""
    record = _without_unset(dataclasses.asdict(settings))
    if "unlabeled" in record:
        if unlabeled_fingerprint is None:
            del record["unlabeled"]
        else:
            record["unlabeled"] = unlabeled_fingerprint
    return record


def _check_out(out: Path, data_dir: Path, config: PipelineConfig) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not is_pipeline_out(out):
        raise RunDirError(f"{out}: exists and is not a pipeline output folder (no {STATE_FILE}); "
                          "choose another --out")
    resolved = out.resolve()
    unlabeled = [(Path(folder), f"the unlabelled images {folder} ([{stage.name}] unlabeled)")
                 for stage in STAGES if (folder := stage.unlabeled(getattr(config, stage.name)))]
    for given, what in [(data_dir, f"the data folder {data_dir}"), *unlabeled]:
        source = given.resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            raise RunDirError(f"{out}: overlaps {what}; choose another --out")


def _finished(out: Path, stage: Stage) -> bool:
    return (out / stage.name / stage.finished_file).is_file()


def _discard(path: Path) -> None:
    # Only folders the pipeline itself owns inside OUT reach here.
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _discard_outputs(out: Path, stage: Stage) -> None:
    for name in (stage.name, *stage.extra_outputs):
        _discard(out / name)


def _discard_dependents(out: Path, plan, index: int) -> None:
    """Discards the report, and the later stages that read stage `plan[index]`'s output
    (`Stage.inputs_of`: directly, through other stages, or as a stage that measures every
    earlier one)."""
    for name in REPORT_FILES:
        _discard(out / name)
    stale = {plan[index][0].name}
    for stage, settings in plan[index + 1:]:
        if stage.inputs_of(settings, stale):
            stale.add(stage.name)
            _discard_outputs(out, stage)


def _discard_stale(out: Path, config: PipelineConfig, plan, ran: set[str], state: dict) -> None:
    """Discards the output of a stage switched off since, once what it was built from is redone.

    Its measurements or pages would otherwise be read as those of the new artifacts (a
    benchmark of models since retrained).
    """
    planned = {stage.name for stage, _ in plan}
    changed = set(ran)
    for stage in STAGES:
        if stage.name in planned:
            continue
        if stage.inputs_of(getattr(config, stage.name), changed):
            if (out / stage.name).exists() or stage.name in state["stages"]:
                _discard_outputs(out, stage)
                state["stages"].pop(stage.name, None)
                write_state(out, state)
                changed.add(stage.name)


def _model_gzip_bytes(run_path: Path) -> int | None:
    """Bytes of the run's model file after gzip: what pruning's zeros save in a download."""
    manifest = read_manifest(run_path)
    if manifest is None or manifest.model_file is None:
        return None
    return gzip_size(inside(run_path, manifest.model_file, "model_file", run_path / MANIFEST))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"
