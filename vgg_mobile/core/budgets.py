"""The size and accuracy budgets an exported artifact must meet: one rule, used by `convert`
(which fails on a miss) and by every summary table (which marks it)."""

from __future__ import annotations

import dataclasses

from vgg_mobile.core.errors import require


@dataclasses.dataclass(frozen=True)
class Budgets:
    """Limits an exported artifact is held to; `None` switches a check off.

    Attributes:
        max_size: Largest allowed size in bytes.
        min_agreement: Smallest allowed top-1 agreement with the Keras model it came from.
        max_accuracy_drop: Largest allowed accuracy loss against that Keras model, as a
            fraction (0.01 = one point).
    """

    max_size: int | None = 10_000_000
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self):
        require(self.max_size is None or self.max_size > 0, "max_size must be positive",
                f"max_size={self.max_size}")
        require(self.min_agreement is None or 0 <= self.min_agreement <= 1,
                "min_agreement must be in [0, 1]", f"min_agreement={self.min_agreement}")
        require(self.max_accuracy_drop is None or 0 <= self.max_accuracy_drop <= 1,
                "max_accuracy_drop must be in [0, 1]", f"max_accuracy_drop={self.max_accuracy_drop}")

    def misses(self, name: str, size_bytes: int, verification: dict) -> list[str]:
        """What `name` misses, one sentence per budget (empty when it meets them all).

        Args:
            name: The artifact, as the messages should name it.
            size_bytes: Its size.
            verification: Its comparison with Keras: `top1_agreement` and `accuracy_drop`.
                A missing value misses the budget that needs it.
        """
        misses = []
        if self.max_size is not None and size_bytes > self.max_size:
            misses.append(f"{name}: {size_bytes / 1e6:.2f} MB is over the size budget of "
                          f"{self.max_size / 1e6:.2f} MB (--max-size)")
        agreement = verification.get("top1_agreement")
        if self.min_agreement is not None and (agreement is None or agreement < self.min_agreement):
            misses.append(f"{name}: top-1 agreement with Keras {_number(agreement)} is below "
                          f"{self.min_agreement} (--min-agreement)")
        drop = verification.get("accuracy_drop")
        if self.max_accuracy_drop is not None and (drop is None or drop > self.max_accuracy_drop):
            misses.append(f"{name}: accuracy drop {_number(drop)} is over "
                          f"{self.max_accuracy_drop} (--max-accuracy-drop)")
        return misses


def _number(value) -> str:
    return "unknown" if value is None else f"{value:.4f}"
