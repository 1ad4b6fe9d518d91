"""Quantization-aware training of a distilled student that keeps learning from its teacher.

`compression.qat.qat_run` fine-tunes a fake-quantized model on the labels alone. A student
distilled with few labels and many unlabelled images learnt most of what it knows from its
teacher's answers on those images; two epochs of cross-entropy on the labelled ones then pull
it towards them and away from what it learnt (measured on Fashion-MNIST with 100 labelled
and 2,000 unlabelled images a class: 0.788 float, 0.741 after QAT on the labels). Here the
QAT model is trained with the student's own distillation loss instead (`Distiller`: the same
teacher, temperature and alpha, and the unlabelled images it was distilled with, drawn at
the same ratio), so quantization-aware training goes on teaching what distillation taught.

`QATConfig.distill` chooses: `auto` (a distilled student whose teacher run is still there),
`on` (fail otherwise) or `off` (the labels alone, as `compression.qat`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vgg_mobile.compression.common import CompressResult, fine_tune_augmentation, fine_tune_split
from vgg_mobile.compression.qat import QATConfig, Trainer, qat_run as _qat_run
from vgg_mobile.core.errors import BadInputError, DataError, RunDirError
from vgg_mobile.core.run_dir import Run, load_run
from vgg_mobile.data import dataset
from vgg_mobile.data.unlabeled import scan_unlabeled
from vgg_mobile.distillation.distill import unlabeled_per_epoch
from vgg_mobile.distillation.distiller import build_distiller


def teaching_of(run: Run, data_dir: str | Path, config: QATConfig,
                log: Callable[[str], None] = lambda message: None) -> Trainer | None:
    """The `Trainer` that distils `run`'s student from its teacher during QAT, or `None`
    when it is trained on the labels (`config.distill` is `off`, or `auto` and the run is
    not a distilled student or its teacher is gone).

    Raises:
        BadInputError: `distill = "on"` and the run is not a distilled student, or its teacher
            run or unlabelled folder cannot be read.
    """
    if config.distill == "off":
        return None
    strict = config.distill == "on"
    recipe = run.manifest.section("distillation")
    teacher_path = run.manifest.section("teacher").get("run")
    if not recipe or not isinstance(teacher_path, str):
        if strict:
            raise BadInputError(f"{run.path}: not a distilled student (no teacher recorded); "
                                "distill = 'on' needs one")
        return None
    try:
        teacher_run = load_run(teacher_path)
    except RunDirError as err:
        if strict:
            raise BadInputError(f"{run.path}: its teacher cannot be read ({err})") from None
        log(f"quantization-aware training on the labels alone: the teacher cannot be read ({err})")
        return None
    if teacher_run.classes != run.classes:
        raise BadInputError(f"{teacher_run.path}: the teacher's classes differ from the "
                            f"student's ({len(teacher_run.classes)} vs {len(run.classes)})")
    folder, parts, _ = fine_tune_split(run, data_dir, config.val_fraction, config.seed)
    unlabeled, unlabeled_record = (), None
    recorded = run.manifest.unlabeled
    if recorded:
        try:
            found = scan_unlabeled(recorded["folder"], folder)
        except DataError as err:
            if strict:
                raise BadInputError(f"{run.path}: its unlabelled images cannot be read ({err})") \
                    from None
            log(f"quantization-aware training without the unlabelled images: {err}")
        else:
            unlabeled, unlabeled_record = found.images, found.record()
    distilled = run.manifest.config.get("distill", {})
    ratio = float(distilled.get("unlabeled_ratio", 1.0))
    temperature, alpha = float(recipe["temperature"]), float(recipe["alpha"])
    # `parts` is the split `qat_run` fine-tunes on: the same call on the same folder.
    per_epoch = unlabeled_per_epoch(ratio, len(parts.train), len(unlabeled))
    record = {"teacher": str(teacher_run.path.resolve()), "temperature": temperature,
              "alpha": alpha, "unlabeled": unlabeled_record, "unlabeled_ratio": ratio}

    def fit(qat_model, parts, run_, config_, log_, verbose):
        import tf_keras as keras

        teacher = teacher_run.load_model()
        distiller = build_distiller(qat_model, teacher, temperature, alpha)
        distiller.compile(optimizer=keras.optimizers.Adam(config_.learning_rate))
        choice = fine_tune_augmentation(parts, run_, config_.augment, config_.seed, log_)
        log_(f"distilled from {teacher_run.path} (T={temperature}, alpha={alpha})"
             + (f" on {len(parts.train)} labelled + {per_epoch} of {len(unlabeled)} unlabelled "
                "images an epoch" if unlabeled else ""))
        train_ds = dataset.make_multi_view_dataset(
            parts.train, (run_.image_size, teacher_run.image_size), config_.batch_size,
            len(run_.classes), training=True, augmentation=choice.augmentation,
            seed=config_.seed, unlabeled=unlabeled, unlabeled_per_epoch=per_epoch)
        return distiller.fit(train_ds, epochs=config_.epochs, verbose=verbose)

    inputs = (teacher_run.path,) + ((Path(recorded["folder"]),) if unlabeled else ())
    return Trainer(fit=fit, record=record, inputs=inputs, unlabeled=unlabeled,
                   unlabeled_share=per_epoch / (len(parts.train) + per_epoch))


def qat_run(run_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
            config: QATConfig | None = None, log: Callable[[str], None] = lambda message: None,
            **kwargs) -> CompressResult:
    """`compression.qat.qat_run`, with a distilled student taught by its teacher during
    QAT as `config.distill` says (`teaching_of`). Arguments as there.

    Raises:
        As `compression.qat.qat_run`, and as `teaching_of`.
    """
    config = config or QATConfig()
    trainer = teaching_of(load_run(run_dir), data_dir, config, log)
    return _qat_run(run_dir, data_dir, out_dir, config, log=log, trainer=trainer, **kwargs)
