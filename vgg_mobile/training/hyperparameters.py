"""Training knobs, kept apart from architecture knobs (`models.ModelOptions`)."""

from __future__ import annotations

import dataclasses

from vgg_mobile.core.errors import require

FINE_TUNE_MODES = ("auto", "full", "feature-extraction", "last-blocks", "progressive")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Images per step.
        learning_rate: Peak learning rate, reached after warm-up, then cosine-decayed to 0.
        warmup_epochs: Linear warm-up length in epochs (may be fractional).
        weight_decay: Decoupled weight decay (AdamW).
        label_smoothing: Label smoothing of the cross-entropy.
        fine_tune: `full` trains everything; `feature-extraction` freezes the backbone;
            `last-blocks` trains the last `unfreeze_blocks` blocks; `progressive` starts with
            the head alone and unfreezes one more block per phase up to `unfreeze_blocks`;
            `auto` is `full` from random weights and `progressive` from pretrained ones.
        unfreeze_blocks: Blocks trained by `last-blocks`, and reached by `progressive`.
        val_fraction: Share of each class held out for validation (unsplit folders).
        seed: Seeds the split, shuffles, augmentation and initialisation.
        augment: Augment training images (`dataset.augmentation_for`: shift, scale and
            contrast up to 64 px; random resized crop, flip and colour jitter above).
        class_weights: Weight the loss by inverse class frequency.
        strict: Fail on any bad image instead of skipping it.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    fine_tune: str = "auto"
    unfreeze_blocks: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    class_weights: bool = False
    strict: bool = False

    def __post_init__(self):
        require(self.epochs >= 1, "epochs must be >= 1", f"epochs={self.epochs}")
        require(self.batch_size >= 1, "batch_size must be >= 1", f"batch_size={self.batch_size}")
        require(self.learning_rate > 0, "learning_rate must be > 0", f"learning_rate={self.learning_rate}")
        require(self.warmup_epochs >= 0, "warmup_epochs must be >= 0", f"warmup_epochs={self.warmup_epochs}")
        require(self.weight_decay >= 0, "weight_decay must be >= 0", f"weight_decay={self.weight_decay}")
        require(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)",
             f"label_smoothing={self.label_smoothing}")
        require(self.fine_tune in FINE_TUNE_MODES, f"fine_tune must be one of {', '.join(FINE_TUNE_MODES)}",
             f"fine_tune={self.fine_tune!r}")
        require(self.unfreeze_blocks >= 1, "unfreeze_blocks must be >= 1", f"unfreeze_blocks={self.unfreeze_blocks}")
        require(0 < self.val_fraction < 1, "val_fraction must be in (0, 1)", f"val_fraction={self.val_fraction}")


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs `[start, end)` trained with the last `trainable_blocks` backbone blocks unfrozen."""

    start: int
    end: int
    trainable_blocks: int


def plan_phases(config: TrainConfig, pretrained: bool, n_blocks: int) -> tuple[Phase, ...]:
    """Splits the epochs into phases of the fine-tuning mode.

    Args:
        config: The training configuration.
        pretrained: Whether the backbone starts from pretrained weights (for `auto`).
        n_blocks: Number of blocks of the backbone.

    Returns:
        Non-empty phases covering `[0, epochs)` in order.
    """
    mode = config.fine_tune
    if mode == "auto":
        mode = "progressive" if pretrained else "full"
    epochs = config.epochs
    top = min(config.unfreeze_blocks, n_blocks)
    if mode == "full":
        return (Phase(0, epochs, n_blocks),)
    if mode == "feature-extraction":
        return (Phase(0, epochs, 0),)
    if mode == "last-blocks":
        return (Phase(0, epochs, top),)
    # progressive: head alone, then one more block per phase.
    stages = top + 1
    bounds = [round(epochs * k / stages) for k in range(stages + 1)]
    phases = tuple(Phase(bounds[k], bounds[k + 1], k) for k in range(stages)
                   if bounds[k + 1] > bounds[k])
    return phases
