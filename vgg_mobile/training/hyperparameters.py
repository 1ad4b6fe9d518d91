"""Training knobs, kept apart from architecture knobs (`models.ModelOptions`)."""

from __future__ import annotations

import dataclasses

from vgg_mobile.core.errors import require, require_number
from vgg_mobile.data.augmentation import FLIP_CHOICES
from vgg_mobile.data.dataset import POLICIES

FINE_TUNE_MODES = ("auto", "full", "feature-extraction", "last-blocks", "progressive")

# Upper bounds of the knobs every training config shares (teacher, distillation, pruning,
# QAT): far above any useful value, low enough that a typo (`epochs = 1e20`, a learning rate
# of 1e6) is refused before training instead of running for ever or diverging at once.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_LEARNING_RATE = 10.0
# Above this the focal loss's factor (1 - p)^gamma is 0 in float32 for any image the model
# gets even half right: nothing left to learn from. Lin et al. (2017) found 2 best.
MAX_FOCAL_GAMMA = 10.0
# NumPy and TensorFlow seeds: TensorFlow refuses one beyond 64 bits, NumPy a negative one.
MAX_SEED = 2**31 - 1
# Beta parameters of MixUp and CutMix: above a few, every mix is close to half and half.
MAX_MIX_ALPHA = 100.0
# Colour jitter: contrast and saturation change by up to twice it, and a factor must stay > 0.
MAX_COLOUR_JITTER = 0.45


def check_augmentation_keys(config) -> None:
    """Checks the augmentation keys that the training configs share, where `config` has them:
    `augmentation` (one of `dataset.POLICIES`), `flip` (one of `FLIP_CHOICES`), `crop_scale`
    (`None` or in (0, 1]) and `colour_jitter` (`None` or in [0, `MAX_COLOUR_JITTER`]).

    Raises:
        BadInputError: Naming the key and the value.
    """
    if hasattr(config, "augmentation"):
        require(config.augmentation in POLICIES,
                f"augmentation must be one of {', '.join(POLICIES)}",
                f"augmentation={config.augmentation!r}")
    if hasattr(config, "flip"):
        require(config.flip in FLIP_CHOICES, f"flip must be one of {', '.join(FLIP_CHOICES)}",
                f"flip={config.flip!r}")
    if getattr(config, "crop_scale", None) is not None:
        require_number(config.crop_scale, "crop_scale", 0, 1, low_open=True)
    if getattr(config, "colour_jitter", None) is not None:
        require_number(config.colour_jitter, "colour_jitter", 0, MAX_COLOUR_JITTER)


def check_training_knobs(config) -> None:
    """Checks the numeric knobs that the training configs share, where `config` has them:
    `epochs`, `batch_size`, `learning_rate`, `warmup_epochs`, `weight_decay`.

    Raises:
        BadInputError: A value that is not a finite number in its range (`inf`, `nan`,
            `epochs = 1e20`, ...), naming the field and the value.
    """
    rules = {"epochs": dict(low=1, high=MAX_EPOCHS, integer=True),
             "batch_size": dict(low=1, high=MAX_BATCH_SIZE, integer=True),
             "learning_rate": dict(low=0, low_open=True, high=MAX_LEARNING_RATE),
             "warmup_epochs": dict(low=0, high=MAX_EPOCHS),
             "weight_decay": dict(low=0, high=1)}
    for name, bounds in rules.items():
        if hasattr(config, name):
            require_number(getattr(config, name), name, **bounds)


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
        augment: Augment training images; `False` turns off `augmentation` and `flip`.
        augmentation: The policy (`dataset.POLICIES`): `standard` is a random crop (a mild
            shift and scale up to 64 px, a resized crop from 60% of the area above) and colour
            jitter; `trivialaugment` the same crop, then one TrivialAugment-wide operation
            per image instead of the jitter.
        flip: Random horizontal flips: `on`, `off`, or `auto`, decided from the training
            images by `data.mirror`'s rule (off when a mirror image looks like another thing,
            as digits and letters do), logged and recorded in the manifest
            (`training.augmentation`).
        crop_scale: The smallest share of the image's area a random crop keeps (1: no
            crop); `None` keeps the input size's default: 0.75 up to 64 px, 0.6 above.
        colour_jitter: The largest brightness change, as a share of 255, with contrast and
            saturation changed by up to twice it (0: none); `None` keeps the input size's
            default: 0.1 (no saturation change up to 64 px). `trivialaugment` replaces it.
        mixup_alpha: MixUp: each batch blended with a shuffled copy of itself, labels alike,
            by a share drawn from Beta(alpha, alpha); 0 turns it off.
        cutmix_alpha: CutMix: a box of the shuffled copy pasted in, labels mixed by area;
            0 turns it off. With both above 0 each batch gets one of the two at even odds.
        class_weights: Weight the loss by inverse class frequency (of a mixed image, by its
            classes' weights mixed as its label is).
        focal_gamma: The focal loss's gamma (Lin et al., 2017): each image's cross-entropy is
            weighted by `(1 - p)^gamma`, `p` the probability given to its class, so images
            the model already gets right count less; 0 is the plain cross-entropy. Works
            with `label_smoothing` (applied to the labels first) and `class_weights`.
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
    augmentation: str = "standard"
    flip: str = "auto"
    crop_scale: float | None = None
    colour_jitter: float | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    class_weights: bool = False
    focal_gamma: float = 0.0
    strict: bool = False

    def __post_init__(self):
        check_training_knobs(self)
        check_augmentation_keys(self)
        require_number(self.mixup_alpha, "mixup_alpha", 0, MAX_MIX_ALPHA)
        require_number(self.cutmix_alpha, "cutmix_alpha", 0, MAX_MIX_ALPHA)
        require_number(self.focal_gamma, "focal_gamma", 0, MAX_FOCAL_GAMMA)
        require(isinstance(self.class_weights, bool), "class_weights must be true or false",
                f"class_weights={self.class_weights!r}")
        require_number(self.label_smoothing, "label_smoothing", 0, 1, high_open=True)
        require(self.fine_tune in FINE_TUNE_MODES, f"fine_tune must be one of {', '.join(FINE_TUNE_MODES)}",
             f"fine_tune={self.fine_tune!r}")
        require_number(self.unfreeze_blocks, "unfreeze_blocks", 1, integer=True)
        require_number(self.val_fraction, "val_fraction", 0, 1, low_open=True, high_open=True)
        require_number(self.seed, "seed", 0, MAX_SEED, integer=True)

    def imbalance_remedy(self) -> str:
        """What this config does about unbalanced classes, as a clause; "" for nothing."""
        return imbalance_remedy(self.class_weights, self.focal_gamma)


def imbalance_remedy(class_weights: bool, focal_gamma: float) -> str:
    """What a training does about unbalanced classes, for `dataset.imbalance_warning`."""
    done = [*(["the loss is weighted by class (class_weights)"] if class_weights else []),
            *([f"the focal loss is on (focal_gamma={focal_gamma:g})"] if focal_gamma else [])]
    return " and ".join(done)


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
