"""benchmarks/pseudo_labels.py: which unlabelled images become pseudo-labels (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from harness import benchmark_script

pseudo = benchmark_script("pseudo_labels")


def test_each_class_keeps_its_most_confident_images_however_few_the_teacher_is_sure_of():
    paths = [Path(f"{i}.png") for i in range(7)]
    # Class 0 is predicted four times (0.9, 0.6, 0.8, 0.95), class 1 twice (0.55, 0.7) and
    # class 2 once, at 0.4: a threshold of 0.5 would leave class 2 with nothing.
    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1],
                              [0.95, 0.03, 0.02], [0.25, 0.55, 0.2], [0.1, 0.7, 0.2],
                              [0.3, 0.3, 0.4]])
    chosen, floors = pseudo.pseudo_labels(probabilities, paths, per_class=2)
    assert [(e.path.name, e.label) for e in chosen] == [
        ("3.png", 0), ("0.png", 0), ("5.png", 1), ("4.png", 1), ("6.png", 2)]
    assert floors == [0.9, 0.55, 0.4]
    chosen, floors = pseudo.pseudo_labels(probabilities[:4], paths[:4], per_class=10)
    assert {e.label for e in chosen} == {0} and floors == [0.6, None, None]
