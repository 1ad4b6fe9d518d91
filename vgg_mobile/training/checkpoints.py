"""Per-epoch checkpoints and the state file that makes a training run resumable.

`RUN/checkpoints/state.json` records the run's identity (settings, data fingerprint, replica
count, and for a student the teacher's manifest and its unlabelled images' fingerprint), the
epochs done and the history so far.
A resume is refused, naming what changed, unless every part of the identity matches: a
resumed run must be the run that was interrupted.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from vgg_mobile.core.errors import RunDirError
from vgg_mobile.core.io import write_guard, write_json
from vgg_mobile.core.outputs import CHECKPOINT_STATE

STATE = CHECKPOINT_STATE[-1]

# The parts of a run's identity, and how a refusal names each.
IDENTITY = {
    "config": "the settings",
    "teacher_manifest": "the teacher run",
    "data_fingerprint": "the data",
    "replicas": "the replica count (and so the global batch)",
    "unlabeled_fingerprint": "the unlabelled images",
}


def _same(recorded, current, default) -> bool:
    """`recorded == current`, or two dicts that differ only by keys added to `current` since
    `recorded` was written (by an older vgg-mobile) whose values are their defaults."""
    if recorded == current:
        return True
    if not all(isinstance(d, dict) for d in (recorded, current, default)):
        return False
    for key, value in current.items():
        if key in recorded:
            if not _same(recorded[key], value, default.get(key)):
                return False
        elif key not in default or default[key] != value:
            return False
    return set(recorded) <= set(current)


def read_resume_state(state_path: Path, run_dir: Path, identity: dict,
                      defaults: dict | None = None) -> dict:
    """Reads an interrupted run's state and checks that this run is the same one.

    Args:
        state_path: The interrupted run's `state.json` (every worker reads the chief's).
        run_dir: The run directory, for messages.
        identity: This run's values for some keys of `IDENTITY`.
        defaults: For a key of `identity` whose value is a dict (the settings), the values
            its keys default to: a run interrupted before a setting existed resumes when this
            run leaves that setting at its default. Defaults to none.

    Returns:
        The recorded state.

    Raises:
        RunDirError: The state cannot be read, or a part of the identity differs.
    """
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"{state_path}: cannot read the interrupted run's state ({err})") from None
    for key, value in identity.items():
        recorded = state.get(key)
        if key == "replicas" and recorded is None:
            continue  # states written before replicas were recorded: one replica
        if not _same(recorded, json.loads(json.dumps(value)),
                     json.loads(json.dumps((defaults or {}).get(key)))):
            raise RunDirError(f"{run_dir}: {IDENTITY[key]} differ from the interrupted run's; "
                              "resume with the same ones or pass --force to start over")
    return state


def record_epoch_logs(history: dict[str, list[float]], epoch: int, logs: dict | None) -> None:
    """Puts one epoch's Keras logs into `history` at index `epoch`: a restart that redoes an
    epoch replaces its entry instead of adding one."""
    for key, value in (logs or {}).items():
        values = history.setdefault(key, [])
        del values[epoch:]
        values.append(float(value))


def save_checkpoint(model, optimizer, directory: Path) -> None:
    import numpy as np

    directory.mkdir(parents=True)
    model.save_weights(str(directory / "weights.h5"))
    arrays = {f"v{i:04d}": v.numpy() for i, v in enumerate(optimizer.variables)}
    with open(directory / "optimizer.npz", "wb") as f:
        np.savez(f, **arrays)


def restore_checkpoint(model, optimizer, directory: Path) -> None:
    """Restores weights, and optimizer state when `optimizer` is given (same phase only)."""
    import numpy as np

    try:
        model.load_weights(str(directory / "weights.h5"))
        if optimizer is None:
            return
        with np.load(directory / "optimizer.npz") as saved:
            values = [saved[k] for k in sorted(saved.files)]
    except (OSError, ValueError, KeyError) as err:
        raise RunDirError(f"{directory}: damaged checkpoint ({err}); pass --force to start over") from None
    variables = optimizer.variables
    if len(values) != len(variables) or any(
            tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, values)):
        raise RunDirError(f"{directory}: optimizer state does not fit the model; pass --force to start over")
    for variable, value in zip(variables, values):
        variable.assign(value)


def epoch_checkpoint(ckpt_dir: Path, model, optimizer, state: dict, history: dict):
    import tf_keras as keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            record_epoch_logs(history, epoch, logs)
            name = f"epoch-{epoch + 1:04d}"
            staging = ckpt_dir / f".{name}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            try:
                with write_guard(staging):
                    save_checkpoint(model, optimizer, staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            final = ckpt_dir / name
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            state.update(epochs_done=epoch + 1, checkpoint=name, history=history,
                         train_seconds=state.get("train_seconds", 0.0) + self.epoch_seconds())
            write_json(ckpt_dir / STATE, state)
            for old in ckpt_dir.glob("epoch-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def epoch_seconds(self):
            return time.perf_counter() - getattr(self, "_t0", time.perf_counter())

    return EpochCheckpoint()
