"""`OUT/pipeline_state.json` and the inputs digest."""

from __future__ import annotations

from vgg_mobile.pipeline.state import STATE_FILE, inputs_digest, is_pipeline_out, read_state, write_state


def test_state_round_trips_and_marks_the_folder(tmp_path):
    assert read_state(tmp_path) == {"stages": {}} and not is_pipeline_out(tmp_path)
    state = {"stages": {"teacher": {"inputs": "abc", "status": "finished"}}}
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state and is_pipeline_out(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary left behind


def test_unreadable_state_trusts_nothing(tmp_path):
    for text in ("{not json", "[1, 2]", '{"stages": 3}', "\xff"):
        (tmp_path / STATE_FILE).write_text(text, encoding="latin-1")
        assert read_state(tmp_path) == {"stages": {}}, text


def test_digest_changes_with_every_input():
    base = inputs_digest("pruned", {"epochs": 2}, "data1", "parent1")
    assert base == inputs_digest("pruned", {"epochs": 2}, "data1", "parent1")
    assert len({base, inputs_digest("student", {"epochs": 2}, "data1", "parent1"),
                inputs_digest("pruned", {"epochs": 3}, "data1", "parent1"),
                inputs_digest("pruned", {"epochs": 2}, "data2", "parent1"),
                inputs_digest("pruned", {"epochs": 2}, "data1", None),
                inputs_digest("pruned", {"epochs": 2}, "data1", {"teacher": "parent1"})}) == 6


def test_the_crop_and_jitter_keys_change_the_digest_only_when_set():
    from vgg_mobile.pipeline.config import load_config
    from vgg_mobile.pipeline.runner import _settings_record

    def teacher_digest(text):
        settings = load_config(text=text).teacher
        return inputs_digest("teacher", _settings_record(settings, None), "data", None)

    unset = load_config(text="").teacher
    record = _settings_record(unset, None)
    # Unset, they are not in the record at all: a teacher run before the keys existed has the
    # same digest and stays finished.
    assert "crop_scale" not in record["train"] and "colour_jitter" not in record["train"]
    assert teacher_digest("") == teacher_digest('[teacher]\ncrop_scale = "none"\n')
    assert teacher_digest("") != teacher_digest("[teacher]\ncrop_scale = 0.5\n")
    assert teacher_digest("") != teacher_digest("[teacher]\ncolour_jitter = 0\n")
