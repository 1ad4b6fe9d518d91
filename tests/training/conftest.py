"""Data for the training tests that run their own small trainings."""

from __future__ import annotations

import pytest

from vgg_mobile.data.sample import write_sample_data


@pytest.fixture(scope="package")
def tiny_data(tmp_path_factory):
    """4 classes x 10 images of 32 px: 32 training and 8 validation images."""
    return write_sample_data(tmp_path_factory.mktemp("tiny") / "data", images_per_class=10,
                             image_size=32, seed=2, colour_cue=True)
