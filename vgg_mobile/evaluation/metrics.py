"""Classification metrics, and evaluating a run directory on a data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vgg_mobile.data import dataset, splits
from vgg_mobile.core.run_dir import load_run
from vgg_mobile.core.io import write_json
from vgg_mobile.evaluation.tta import TTA, predict_views, resolve_flip, view_names

def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], top_k: int = 5
) -> dict:
    """Accuracy, top-k accuracy, per-class precision/recall/F1 and the confusion matrix.

    Args:
        probs: `(n, num_classes)` predicted probabilities.
        labels: `(n,)` true class indices.
        classes: Class names, in output order.
        top_k: k of the top-k accuracy, capped below the number of classes (where it would
            always be 1). Defaults to `5`.

    Returns:
        A JSON-ready dict; `confusion_matrix[i][j]` counts images of class i predicted as j.
        A class without an image among `labels` is not measured: its recall and F1 would be
        a made-up 0, so its entry says `"measured": false`, it is listed in
        `unmeasured_classes` and the macro F1 averages the measured classes only.
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs)
    num_classes = len(classes)
    predicted = probs.argmax(axis=1)
    k = max(1, min(top_k, num_classes - 1))
    top = np.argsort(-probs, axis=1)[:, :k]
    confusion = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        predicted_i = confusion[:, i].sum()
        actual_i = confusion[i, :].sum()
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                           "f1": round(float(f1), 4), "support": int(actual_i),
                           "measured": bool(actual_i)}
    present = [c for c in classes if per_class[c]["support"]]
    unmeasured = [c for c in classes if not per_class[c]["support"]]
    return {
        "num_images": int(len(labels)),
        "accuracy": round(float((predicted == labels).mean()), 4) if len(labels) else 0.0,
        f"top_{k}_accuracy": round(float((top == labels[:, None]).any(axis=1).mean()), 4),
        "macro_f1": round(float(np.mean([per_class[c]["f1"] for c in present])), 4) if present else 0.0,
        "macro_f1_classes": len(present),
        "unmeasured_classes": unmeasured,
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": confusion.tolist(),
    }


def class_recall(metrics: dict) -> dict[str, dict]:
    """`{class: {"recall", "support"}}` of `classification_metrics`' answer (or a manifest's
    `metrics`), for the classes measured (with an image); `{}` when it has no per-class
    recall."""
    return {name: {"recall": m["recall"], "support": m["support"]}
            for name, m in (metrics.get("per_class") or {}).items()
            if m.get("support") and m.get("recall") is not None}


def predict(model, examples, image_size: int, num_classes: int, batch_size: int = 32):
    """Runs a Keras model over examples; returns `(probs, labels)` as numpy arrays."""
    ds = dataset.make_dataset(examples, image_size, batch_size, num_classes, one_hot=False)
    probs, labels = [], []
    for x, y in ds:
        probs.append(model(x, training=False).numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def tta_summary(probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], flip: bool,
                why: str, crop: float) -> dict:
    """Single-pass and TTA figures from `tta.predict_views`' probabilities on the same images.

    Returns:
        `{"views", "num_views", "flip", "flip_from", "crop", "num_images",
        "single_pass_accuracy", "accuracy", "top_<k>_accuracy", "macro_f1"}`, the last three
        of the probabilities averaged over the views.
    """
    single = classification_metrics(probs[0], labels, classes)
    averaged = classification_metrics(probs.mean(axis=0), labels, classes)
    top_key = next(k for k in averaged if k.startswith("top_"))
    return {"views": view_names(flip, crop), "num_views": int(probs.shape[0]), "flip": flip,
            "flip_from": why, "crop": crop, "num_images": averaged["num_images"],
            "single_pass_accuracy": single["accuracy"], "accuracy": averaged["accuracy"],
            top_key: averaged[top_key], "macro_f1": averaged["macro_f1"]}


def validation_metrics(model, examples, image_size: int, classes: tuple[str, ...],
                       batch_size: int = 32) -> dict:
    """`classification_metrics` of a model on examples, without the class list (the run's
    manifest has it); `{}` when there are no examples."""
    if not examples:
        return {}
    probs, labels = predict(model, examples, image_size, len(classes), batch_size)
    full = classification_metrics(probs, labels, classes)
    return {k: v for k, v in full.items() if k != "classes"}


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    split: str = "auto",
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    tta: TTA | None = None,
) -> dict:
    """Evaluates a run's model on a data folder and writes the report.

    Args:
        run_dir: A finished run directory.
        data_dir: An image folder whose class folders are among the run's classes.
        split: `auto`, `val`, `train` or `all` (see `data.splits.held_out`). Defaults to `"auto"`.
        out_dir: Where to write `metrics.json`, `confusion_matrix.json` and `.png`.
            Defaults to `RUN_DIR/eval`.
        batch_size: Images per batch. Defaults to `32`.
        tta: Also measure test-time augmentation (`evaluation.tta`) on the same images, in
            the same forward passes (the single-pass figures are its first view). Defaults to
            `None` (single pass only).

    Returns:
        The metrics dict, with `run`, `data`, `split` and `files` added, and with `tta`
        `tta` (`tta_summary`).
    """
    from vgg_mobile.evaluation import plots

    run = load_run(run_dir)
    folder = dataset.scan_folder(data_dir, classes=run.classes)
    examples, used_split = splits.held_out(run.manifest.data, folder, split)
    model = run.load_model()
    augmented = None
    if tta is None:
        probs, labels = predict(model, examples, run.image_size, len(run.classes), batch_size)
    else:
        flip, why = resolve_flip(tta, run.manifest)
        every, labels = predict_views(model, examples, run.image_size, len(run.classes), flip,
                                      tta.crop, batch_size)
        probs = every[0]
        augmented = tta_summary(every, labels, run.classes, flip, why, tta.crop)
    metrics = classification_metrics(probs, labels, run.classes)
    out_dir = Path(out_dir) if out_dir is not None else run.path / "eval"
    files = {
        "metrics": str(out_dir / "metrics.json"),
        "confusion_matrix_json": str(out_dir / "confusion_matrix.json"),
        "confusion_matrix_png": str(out_dir / "confusion_matrix.png"),
    }
    report = {"run": str(run.path), "data": str(folder.root), "split": used_split,
              "skipped_files": [{"path": str(c.path), "problem": c.problem} for c in folder.bad],
              **metrics, **({"tta": augmented} if augmented else {}), "files": files}
    write_json(files["confusion_matrix_json"],
               {"classes": metrics["classes"], "matrix": metrics["confusion_matrix"]})
    plots.confusion_matrix_png(metrics["confusion_matrix"], run.classes, files["confusion_matrix_png"])
    write_json(files["metrics"], report)
    return report
