"""Whether a folder's images may be mirrored in training: the rule behind `flip = "auto"`.

A mirror image is a fair training example of the same class for photos of objects and clothes,
but not for digits and letters, where it is another glyph (2 and 5, b and d) or none at all.
Which kind a folder holds is measured, not guessed from the image size:

    A nearest-class-mean classifier is fitted on a seeded, stratified sample of the training
    images (`SAMPLE_PER_CLASS` a class, as `THUMBNAIL` x `THUMBNAIL` grayscale thumbnails,
    each standardised; two-fold, so that no image is scored by a class mean it helped to fit)
    and scores accuracy `a` on those images and `m` on the same images mirrored left-right. With `c` the accuracy of chance (1 / classes), mirroring costs the
    share `(a - m) / (a - c)` of the classifier's margin over chance. A cost above
    `MAX_MIRROR_COST` means that a mirrored image looks like something else: no flips.
    Otherwise, or when the margin is under `MIN_MARGIN` (the class means tell nothing), flips.

Measured (docs/cli.md#augmentation), 100 images a class, seed 0: scikit-learn's digits lose
0.70 of the margin (no flips); Fashion-MNIST 0.27 (flips: shoes face one way, most clothes
are symmetric); the built-in sample shapes score at chance (0.26 against 0.25: flips).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vgg_mobile.data.images import load_rgb

SAMPLE_PER_CLASS = 100
THUMBNAIL = 16
# Above this share of its margin lost to mirroring, mirror images are another thing. Measured
# costs over three seeds: digits 0.69 to 0.70; Fashion-MNIST 0.22 to 0.27; the rule sits between.
MAX_MIRROR_COST = 0.5
# Below this margin over chance the class means do not describe the classes and the mirrored
# score says nothing about them: such data (varied photos) is flipped.
MIN_MARGIN = 0.1


@dataclasses.dataclass(frozen=True)
class MirrorTest:
    """What `mirror_test` measured.

    Attributes:
        images: Images in the sample.
        accuracy: Nearest-class-mean accuracy on the sample.
        mirrored_accuracy: The same classifier's accuracy on the sample mirrored left-right.
        chance: Accuracy of chance, 1 / classes.
        colour: Whether any sampled image has colour (channels that differ).
    """

    images: int
    accuracy: float
    mirrored_accuracy: float
    chance: float
    colour: bool

    @property
    def cost(self) -> float:
        """The share of the margin over chance that mirroring costs (0 without a margin)."""
        margin = self.accuracy - self.chance
        return max(0.0, (self.accuracy - self.mirrored_accuracy) / margin) if margin > 0 else 0.0

    @property
    def flip(self) -> bool:
        """The rule's answer: whether training may mirror these images."""
        return self.accuracy - self.chance < MIN_MARGIN or self.cost <= MAX_MIRROR_COST

    def describe(self) -> str:
        """The measurement in words, e.g. "mirrored nearest-mean accuracy 0.34 vs 0.89: 0.70
        of the margin over chance (0.10) lost, above 0.5"."""
        shown = f"mirrored nearest-mean accuracy {self.mirrored_accuracy:.2f} vs {self.accuracy:.2f}"
        if self.accuracy - self.chance < MIN_MARGIN:
            return (f"{shown}: within {MIN_MARGIN} of chance ({self.chance:.2f}), so the class "
                    "means say nothing against mirror images")
        return (f"{shown}: {self.cost:.2f} of the margin over chance ({self.chance:.2f}) lost, "
                f"{'above' if self.cost > MAX_MIRROR_COST else 'at most'} {MAX_MIRROR_COST}")

    def record(self) -> dict:
        """The manifest's record of the measurement."""
        return {"rule": "nearest-class-mean accuracy, mirrored vs not", "images": self.images,
                "accuracy": round(self.accuracy, 4),
                "mirrored_accuracy": round(self.mirrored_accuracy, 4),
                "chance": round(self.chance, 4), "cost": round(self.cost, 4),
                "max_cost": MAX_MIRROR_COST, "colour": self.colour}


def stratified_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of up to `per_class` items of each label, drawn with `seed`, in sorted order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.permutation(members)[:per_class])
    return np.sort(np.asarray(chosen, dtype=int))


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    gray = Image.fromarray(rgb).convert("L").resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR,
                                                    reducing_gap=None)
    pixels = np.asarray(gray, np.float32).ravel()
    pixels -= pixels.mean()
    # A blank image stays zero rather than dividing by nothing.
    return pixels / max(float(np.linalg.norm(pixels)), 1e-6)


def mirror_test_arrays(thumbnails: np.ndarray, labels: np.ndarray, colour: bool = False,
                       seed: int = 0) -> MirrorTest:
    """The rule on thumbnails already made: `(n, THUMBNAIL, THUMBNAIL)` standardised grayscale.

    Two-fold: the class means are fitted on one half of each class and scored on the other
    half, as it is and mirrored, then the halves swap; an image is never scored by means it
    helped to fit, so that both accuracies are out of sample.

    Args:
        thumbnails: One standardised grayscale thumbnail per image.
        labels: Integer labels of the thumbnails.
        colour: Recorded as `MirrorTest.colour`. Defaults to `False`.
        seed: Seed of the halving. Defaults to `0`.

    Returns:
        A `MirrorTest`.
    """
    flat = thumbnails.reshape(len(thumbnails), -1)
    mirrored = thumbnails[:, :, ::-1].reshape(len(thumbnails), -1)
    classes = np.unique(labels)
    fold = np.zeros(len(labels), bool)
    rng = np.random.default_rng(seed)
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members[: len(members) // 2]] = True
    right = right_mirrored = scored_images = 0
    for fit in (fold, ~fold):
        scored = ~fit
        present = [c for c in classes if np.any(labels[fit] == c)]
        if not present:  # one image a class: nothing to fit on this side
            continue
        scored_images += int(scored.sum())
        means = np.stack([flat[fit & (labels == c)].mean(axis=0) for c in present])

        def hits(x):
            distances = ((x[:, None, :] - means[None]) ** 2).sum(axis=-1)
            return int((np.asarray(present)[distances.argmin(axis=1)] == labels[scored]).sum())

        right += hits(flat[scored])
        right_mirrored += hits(mirrored[scored])
    # Without anything scored the accuracies are 0: no margin over chance, so no evidence.
    scored_images = max(scored_images, 1)
    return MirrorTest(images=len(flat), accuracy=right / scored_images,
                      mirrored_accuracy=right_mirrored / scored_images, chance=1.0 / len(classes),
                      colour=colour)


def mirror_test(examples, seed: int = 0, per_class: int = SAMPLE_PER_CLASS) -> MirrorTest:
    """Measures whether mirror images of `examples` stay in their class (the module's rule).

    Args:
        examples: Training examples (`dataset.Example`: a path and a label).
        seed: Seed of the stratified sample. Defaults to `0`.
        per_class: Images read per class at most. Defaults to `SAMPLE_PER_CLASS`.

    Returns:
        A `MirrorTest`; its `flip` is the decision.
    """
    labels = np.asarray([e.label for e in examples])
    chosen = stratified_sample(labels, per_class, seed)
    thumbnails, colour = [], False
    for index in chosen:
        rgb = load_rgb(examples[index].path)
        colour = colour or bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))
        thumbnails.append(_thumbnail(rgb).reshape(THUMBNAIL, THUMBNAIL))
    return mirror_test_arrays(np.stack(thumbnails), labels[chosen], colour, seed)
