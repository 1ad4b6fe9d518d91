"""The training augmentation of a run, chosen once from the configs' keys and the data.

The configs (`TrainConfig`, `DistillConfig`) hold `augment` (the off switch), `augmentation`
(a policy of `dataset.POLICIES`), `flip` (`FLIP_CHOICES`), `crop_scale` and `colour_jitter`
(`None`: the input size's defaults, `dataset.augmentation_for`). `flip = "auto"` is decided by
`data.mirror`'s rule on the training images: no flips when a mirror image of them looks like
another thing (digits, letters), flips otherwise. The choice is logged and recorded in the
run's manifest.
"""

from __future__ import annotations

import dataclasses

from vgg_mobile.data.dataset import NO_AUGMENTATION, Augmentation, augmentation_for
from vgg_mobile.data.mirror import mirror_test

FLIP_CHOICES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class AugmentationChoice:
    """What a run trains with, and why.

    Attributes:
        augmentation: The augmentation the training pipeline applies.
        record: The manifest's record: the settings, the resulting augmentation and the
            mirror measurement (or `None` when none was made).
        line: One log line saying what was chosen, e.g. "augmentation: standard, flip: auto
            → off (mirrored nearest-mean accuracy 0.34 vs 0.89, ...)".
    """

    augmentation: Augmentation
    record: dict
    line: str


def choose_augmentation(augment: bool, policy: str, flip: str, image_size: int, examples,
                        seed: int = 0, crop_scale: float | None = None,
                        colour_jitter: float | None = None) -> AugmentationChoice:
    """Settles the augmentation of a run: the flip (measured on `examples` for `"auto"`), the
    crop and colour for `image_size`, and the policy.

    Args:
        augment: The configs' `augment`; `False` is `NO_AUGMENTATION`, nothing measured.
        policy: One of `dataset.POLICIES`.
        flip: One of `FLIP_CHOICES`.
        image_size: The largest input side the augmented images feed.
        examples: The training examples, for the measurement.
        seed: Seed of the measurement's sample. Defaults to `0`.
        crop_scale: The configs' `crop_scale` (`None`: by input size). Defaults to `None`.
        colour_jitter: The configs' `colour_jitter` (`None`: by input size). Defaults to
            `None`.

    Returns:
        An `AugmentationChoice`.
    """
    if not augment:
        return AugmentationChoice(NO_AUGMENTATION, {"augment": False}, "augmentation: off")
    # TrivialAugment needs to know whether the images have colour, which the test also says.
    test = mirror_test(examples, seed) if flip == "auto" or policy == "trivialaugment" else None
    flips = test.flip if flip == "auto" else flip == "on"
    colour = test.colour if test is not None else True
    augmentation = augmentation_for(True, image_size, flip=flips, policy=policy, colour=colour,
                                    crop_scale=crop_scale, colour_jitter=colour_jitter)
    decided = f"auto → {'on' if flips else 'off'} ({test.describe()})" if flip == "auto" else flip
    chosen = "".join(f", {name}: {value:g}" for name, value in
                     (("crop_scale", crop_scale), ("colour_jitter", colour_jitter))
                     if value is not None)
    record = {"augment": True, "policy": policy, "flip_setting": flip, "flip": flips,
              "crop_scale_setting": crop_scale, "colour_jitter_setting": colour_jitter,
              "crop_scale": list(augmentation.crop_scale),
              "brightness": augmentation.brightness, "contrast": augmentation.contrast,
              "saturation": augmentation.saturation, "colour": colour,
              "mirror_test": test.record() if test is not None else None}
    return AugmentationChoice(augmentation, record,
                              f"augmentation: {policy}, flip: {decided}{chosen}")
