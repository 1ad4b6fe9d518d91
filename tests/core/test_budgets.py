"""The one budget rule of exports and summaries."""

from __future__ import annotations

import pytest

from vgg_mobile.core.budgets import Budgets
from vgg_mobile.core.errors import BadInputError


def test_each_budget_is_checked_and_named():
    check = {"top1_agreement": 0.97, "accuracy_drop": 0.02}
    assert Budgets(max_size=None, min_agreement=0.95, max_accuracy_drop=0.03).misses("m.tflite", 5, check) == []
    misses = Budgets(max_size=4, min_agreement=0.99, max_accuracy_drop=0.01).misses("m.tflite", 5, check)
    assert len(misses) == 3
    assert misses[0].startswith("m.tflite: 0.00 MB is over the size budget")
    assert "top-1 agreement with Keras 0.9700 is below 0.99" in misses[1]
    assert "accuracy drop 0.0200 is over 0.01" in misses[2]


def test_an_unmeasured_value_misses_the_budget_that_needs_it():
    misses = Budgets(max_size=None, max_accuracy_drop=0.01).misses("tfjs/", 5, {"top1_agreement": 1.0})
    assert misses == ["tfjs/: accuracy drop unknown is over 0.01 (--max-accuracy-drop)"]
    assert Budgets(max_size=None).misses("tfjs/", 5, {}) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"max_size": 0}, "max_size must be positive. Received: max_size=0"),
    ({"min_agreement": 1.5}, r"min_agreement must be in \[0, 1\]. Received: min_agreement=1.5"),
    ({"max_accuracy_drop": -0.1}, r"max_accuracy_drop must be in \[0, 1\]"),
])
def test_bad_budgets_are_refused(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        Budgets(**kwargs)
