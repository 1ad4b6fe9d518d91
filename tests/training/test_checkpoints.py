"""Which interrupted runs a run may resume (`read_resume_state`): the same settings, or
settings that differ only by keys added since, left at their defaults."""

from __future__ import annotations

import json

import pytest

from vgg_mobile.core.errors import RunDirError
from vgg_mobile.training.checkpoints import read_resume_state

DEFAULTS = {"train": {"epochs": 10, "flip": "auto", "mixup_alpha": 0.0}}


def _state(tmp_path, config: dict):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"config": config, "history": {"loss": [1.0]}}))
    return path


def test_a_state_written_before_a_setting_existed_resumes_at_its_default(tmp_path):
    old = _state(tmp_path, {"train": {"epochs": 12}})
    current = {"train": {"epochs": 12, "flip": "auto", "mixup_alpha": 0.0}}
    state = read_resume_state(old, tmp_path, {"config": current}, defaults={"config": DEFAULTS})
    assert state["history"] == {"loss": [1.0]}


@pytest.mark.parametrize("current", [
    {"train": {"epochs": 12, "flip": "off", "mixup_alpha": 0.0}},  # a new key off its default
    {"train": {"epochs": 11, "flip": "auto", "mixup_alpha": 0.0}},  # an old key changed
    {"train": {"epochs": 12, "flip": "auto", "unknown": 1}},  # a new key without a default
    {"train": {"flip": "auto"}},  # a recorded key gone
])
def test_other_settings_are_refused(tmp_path, current):
    old = _state(tmp_path, {"train": {"epochs": 12}})
    with pytest.raises(RunDirError, match="the settings differ from the interrupted run's"):
        read_resume_state(old, tmp_path, {"config": current}, defaults={"config": DEFAULTS})


def test_without_defaults_a_new_key_is_a_difference(tmp_path):
    old = _state(tmp_path, {"train": {"epochs": 12}})
    with pytest.raises(RunDirError, match="the settings differ"):
        read_resume_state(old, tmp_path, {"config": {"train": {"epochs": 12, "flip": "auto"}}})
