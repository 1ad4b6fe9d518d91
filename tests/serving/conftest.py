"""The serving tests' models, trained and exported once for the package (about 20 s)."""

from __future__ import annotations

import pytest

from serving_models import TinyModels, build


@pytest.fixture(scope="package")
def tiny(tmp_path_factory) -> TinyModels:
    return build(tmp_path_factory.mktemp("serving"))
