"""The Stage table: every other list of stages derives from it, so it must hold together."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.pipeline.config import PRESETS, RENAMED, PipelineConfig, build_config, section_keys
from vgg_mobile.pipeline.runner import stage_plan
from vgg_mobile.pipeline.stages import KINDS, RUN_STAGES, STAGE_NAMES, STAGES, Stage, get_stage


def test_names_are_unique_and_in_the_documented_order():
    assert STAGE_NAMES == ("teacher", "pruned", "pruned_qat", "student", "student_qat", "export",
                           "teacher_export", "web_export", "web_demo", "benchmark")
    assert RUN_STAGES == ("teacher", "pruned", "pruned_qat", "student", "student_qat")


def test_parents_come_before_their_children():
    seen = set()
    for stage in STAGES:
        assert stage.kind in KINDS
        assert stage.parent is None or stage.parent in seen, stage.name
        seen.add(stage.name)
    # Only the first stage and the one measuring all the others stand on nothing.
    assert [s.name for s in STAGES if s.parent is None] == ["teacher", "benchmark"]
    assert [s.name for s in STAGES if s.after_all] == ["benchmark"]


def test_the_config_has_one_field_per_stage_of_its_class():
    hints = typing.get_type_hints(PipelineConfig)
    assert tuple(f.name for f in dataclasses.fields(PipelineConfig)) == STAGE_NAMES
    for stage in STAGES:
        assert hints[stage.name] is stage.config
        assert dataclasses.is_dataclass(stage.config)
        assert stage.config.__dataclass_params__.frozen, stage.config
        section_keys(stage.config)  # its parts' keys do not collide
    assert set(PRESETS["sample"]) <= set(STAGE_NAMES) and set(PRESETS["real"]) <= set(STAGE_NAMES)


def test_titles_resumes_and_sources():
    for stage in STAGES:
        assert stage.heading
        if stage.kind == "run":
            assert stage.artifact and stage.curves and stage.finished_file == "manifest.json"
        else:
            assert stage.artifact is None and stage.curves is None and not stage.resumes
        if stage.parent_from_source:
            # The default parent is the section's default source.
            assert stage.config().source == stage.parent and stage.parent in RUN_STAGES
    assert [s.name for s in STAGES if s.resumes] == ["teacher", "student"]
    assert len({s.artifact for s in STAGES if s.artifact}) == len(RUN_STAGES)


def test_former_names_are_no_current_names():
    assert set(RENAMED).isdisjoint(STAGE_NAMES)
    assert RENAMED == {"prune": ("pruned",), "qat": ("pruned_qat",), "distill": ("student",),
                       "convert": ("export", "web_export"), "demo": ("web_demo",),
                       "site": ("web_demo",)}


def test_the_plan_follows_enabled_and_parents():
    assert [s.name for s, _ in stage_plan(build_config({}))] == list(STAGE_NAMES)
    config = build_config({"web_export": {"enabled": False}, "benchmark": {"enabled": False}})
    # No web demo without the TF.js bundle it is built on.
    assert [s.name for s, _ in stage_plan(config)] == list(RUN_STAGES) + ["export",
                                                                           "teacher_export"]
    # The compressed teacher's export can be switched off; the student's still ships.
    config = build_config({"teacher_export": {"enabled": False}})
    assert "teacher_export" not in [s.name for s, _ in stage_plan(config)]
    assert "export" in [s.name for s, _ in stage_plan(config)]
    config = build_config({"web_demo": {"enabled": False}, "export": {"source": "pruned_qat"}})
    plan = dict((s.name, settings) for s, settings in stage_plan(config))
    assert "web_demo" not in plan and get_stage("export").parent_of(plan["export"]) == "pruned_qat"


def test_get_stage_and_a_bad_stage():
    assert get_stage("web_demo").finished_file == "index.html"
    with pytest.raises(BadInputError, match=r"valid stages: teacher, .*Received: stage='pqat'"):
        get_stage("pqat")
    with pytest.raises(BadInputError, match="kind='model'"):
        Stage("x", dict, lambda job, settings: None, "x", kind="model")


def test_each_export_writes_its_android_assets_to_a_folder_of_its_own():
    assert get_stage("export").extra_outputs == ("android",)
    teacher = get_stage("teacher_export")
    assert teacher.kind == "export" and teacher.extra_outputs == ("teacher_android",)
    for preset in PRESETS:
        config = build_config({}, preset)
        assert teacher.parent_of(config.teacher_export) == "pruned_qat"
        assert config.teacher_export.enabled and config.teacher_export.options.onnx
        assert config.teacher_export.options.flavours == config.export.options.flavours
        assert config.teacher_export.options.min_agreement == config.export.options.min_agreement
