"""The pipeline's TOML configuration: presets, overrides, errors, renamed sections, printing."""

from __future__ import annotations

import dataclasses
import time
import tomllib

import pytest

from vgg_mobile.converters.convert import ConvertOptions
from vgg_mobile.core.errors import BadInputError
from vgg_mobile.pipeline import config as pipeline_config
from vgg_mobile.pipeline.config import (PRESETS, build_config, config_toml, default_config_toml,
                                        load_config, load_pipeline_config, section_keys)
from vgg_mobile.pipeline.stages import STAGE_NAMES, STAGES, get_stage


@pytest.mark.parametrize("preset", list(PRESETS))
def test_printed_config_reads_back_to_the_same_config(preset):
    text = default_config_toml(preset)
    data = tomllib.loads(text)
    assert list(data) == list(STAGE_NAMES)
    assert "# " in text  # commented
    assert build_config(data, preset) == build_config({}, preset)
    # Read over the other preset too: the printed file holds every key.
    other = next(name for name in PRESETS if name != preset)
    assert load_config(text=text, preset=other) == build_config({}, preset)
    # Every key is printed under its description.
    for stage in STAGES:
        for key in section_keys(stage.config).values():
            assert key.doc, (stage.name, key.name)


def test_print_config_cli_prints_every_section(cli):
    result = cli("pipeline", "--print-config", "--preset", "real")
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout) == tomllib.loads(default_config_toml("real"))


def test_presets_keep_their_values_under_the_new_names():
    sample, real = build_config({}, "sample"), build_config({}, "real")
    assert (sample.teacher.model.image_size, real.teacher.model.image_size) == (32, 224)
    assert real.teacher.model.weights == "imagenet" and sample.teacher.train.epochs == 24
    assert sample.pruned.target_sparsity == 0.5 and sample.pruned.epochs == 4
    assert sample.pruned.method == "channels" and sample.pruned.ratio == 0.3
    assert not sample.pruned_qat.preserve_sparsity and sample.pruned_qat.epochs == 1
    assert not sample.student_qat.preserve_sparsity
    assert sample.student.student == "mobilenet_v2_1.0" and sample.student.image_size == 64
    # Without pretrained weights the teacher is VGG16 with batch normalisation, at half width.
    assert (sample.teacher.model.architecture, real.teacher.model.architecture) == ("vgg16_bn_0.5", "vgg16")
    for config in (sample, real):
        assert config.export.source == "student_qat" and config.export.android
        assert config.export.options == ConvertOptions(flavours=("int8",), tfjs=False, onnx=True,
                                                       max_size=10_000_000, min_agreement=0.9,
                                                       verify_images=0)
        # What the web export converted before it had a section: the export's options with
        # the float16 flavour and TF.js (and no ONNX: the export writes it).
        assert config.web_export.source == "student" and config.web_export.enabled
        assert config.web_export.options == dataclasses.replace(
            config.export.options, flavours=("float16",), tfjs=True, onnx=False)
        assert config.web_demo.enabled and config.benchmark.enabled
    assert (real.benchmark.repeats, real.benchmark.images) == (20, 200)


def test_overrides_reach_the_stage_configs():
    config = load_config(text='[pruned]\ntarget_sparsity = 0.7\n'
                              '[export]\nmax_size = "2MB"\nflavours = ["int8", "float16"]\n'
                              'max_accuracy_drop = 0.02\n'
                              '[web_export]\nsource = "student_qat"\nmin_agreement = "none"\n'
                              '[student]\nimage_size = "none"\nlearning_rate = 1\n')
    assert config.pruned.target_sparsity == 0.7 and config.pruned.epochs == 4  # rest: preset
    assert config.export.options.max_size == 2_000_000
    assert config.export.options.flavours == ("int8", "float16")
    assert config.export.options.budgets.max_accuracy_drop == 0.02
    # The two exports' sections are their own: a budget set in one is not the other's.
    assert config.web_export.options.max_size == 10_000_000
    assert config.web_export.options.budgets.max_accuracy_drop is None
    assert config.web_export.source == "student_qat" and config.web_export.options.min_agreement is None
    assert config.student.image_size is None and config.student.learning_rate == 1.0


def test_export_sections_fix_what_their_stage_decides():
    export_keys = section_keys(get_stage("export").config)
    web_keys = section_keys(get_stage("web_export").config)
    assert "tfjs" not in export_keys and "tfjs_quantization" not in export_keys
    assert "android" in export_keys and "enabled" not in export_keys
    assert "tfjs" not in web_keys and "tfjs_quantization" in web_keys
    assert "enabled" in web_keys and "android" not in web_keys
    for text, words in (("[export]\ntfjs = true\n", ("[export]", "tfjs", "valid keys")),
                        ("[web_export]\ntfjs = false\n", ("[web_export]", "tfjs", "valid keys")),
                        ("[web_export]\nandroid = true\n", ("[web_export]", "android"))):
        with pytest.raises(BadInputError) as err:
            load_config("p.toml", text=text)
        for word in words:
            assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize("text, words", [
    ('[teacher]\nepochs = "3"\n', ("[teacher]", "epochs", "integer", "'3'")),
    ("[web_export]\nenabled = 1\n", ("[web_export]", "enabled", "boolean")),
    ("[export]\nflavours = \"int8\"\n", ("[export]", "flavours", "list of string")),
    ("[export]\nmax_size = \"ten\"\n", ("[export]", "max_size", "not a size", "'ten'")),
    ("[pruned_qat]\nepochz = 3\nfoo = 1\n", ("[pruned_qat]", "epochz", "foo", "valid keys")),
    ("[stages]\na = 1\n", ("stages", "valid sections", "pruned_qat")),
    ("pruned = 3\n", ("[pruned] must be a table", "pruned=3")),
    ("[pruned]\ntarget_sparsity = 1.5\n", ("[pruned]", "target_sparsity=1.5")),
    ("[pruned]\nratio = 1.0\n", ("[pruned]", "ratio=1.0")),
    ("[pruned]\nmethod = 'filters'\n", ("[pruned]", "method='filters'", "channels, magnitude")),
    ("[pruned_qat]\npreserve_sparsity = true\n", ("[pruned_qat] preserve_sparsity", "'channels'",
                                                  "method = \"magnitude\"")),
    ("[export]\nmax_accuracy_drop = 2\n", ("[export]", "max_accuracy_drop=2")),
    ("[export]\nsource = 'nope'\n", ("[export] source", "student_qat", "source='nope'")),
    ("[web_export]\nsource = 'web_demo'\n", ("[web_export] source", "source='web_demo'")),
    ("[benchmark]\nrepeats = 0\n", ("[benchmark]", "repeats=0")),
])
def test_bad_values_name_the_file_section_key_and_value(text, words):
    with pytest.raises(BadInputError) as err:
        load_config("p.toml", text=text)
    message = str(err.value)
    assert message.startswith("p.toml: "), message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("old, new", [("prune", "[pruned]"), ("qat", "[pruned_qat]"),
                                      ("distill", "[student]"), ("demo", "[web_demo]"),
                                      ("site", "[web_demo]"),
                                      ("convert", "[export] and [web_export]")])
def test_old_section_names_say_what_they_were_renamed(old, new):
    with pytest.raises(BadInputError) as err:
        load_config("old.toml", text=f"[{old}]\nepochs = 1\n")
    assert str(err.value).startswith(f"old.toml: [{old}] was renamed {new}"), str(err.value)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(BadInputError, match=r"valid presets: sample, real\. Received: preset='big'"):
        build_config({}, "big")


def test_unreadable_or_invalid_files_are_named(tmp_path):
    with pytest.raises(BadInputError, match="missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[teacher\n")
    with pytest.raises(BadInputError, match="broken.toml: not valid TOML"):
        load_config(broken)


def test_config_of_an_out_folder(tmp_path):
    assert load_pipeline_config(tmp_path) == build_config({})
    config = load_config(text="[student_qat]\nepochs = 3\n[web_demo]\nenabled = false\n")
    (tmp_path / pipeline_config.CONFIG_FILE).write_text(config_toml(config, "a test's"))
    assert load_pipeline_config(tmp_path) == config


def test_bad_config_exits_2_fast_and_writes_nothing(cli, sample_dir, tmp_path):
    out = tmp_path / "out"
    for text, word in (("[teacher]\nepochz = 3\n", "epochz"),
                       ("[teacher]\nepochs = 2.5\n", "epochs=2.5"),
                       ("[qat]\nepochs = 2\n", "[qat] was renamed [pruned_qat]"),
                       ("[teacher\n", "not valid TOML")):
        config = tmp_path / "pipeline.toml"
        config.write_text(text)
        start = time.perf_counter()
        result = cli("pipeline", sample_dir, "--out", out, "--config", config)
        assert result.returncode == 2, result.stderr
        assert str(config) in result.stderr and word in result.stderr
        assert time.perf_counter() - start < 10
        assert not out.exists()
    result = cli("pipeline", sample_dir, "--out", out, "--preset", "huge")
    assert result.returncode == 2 and "preset='huge'" in result.stderr and not out.exists()


@pytest.mark.parametrize("text,words", [
    ("[teacher]\nlearning_rate = inf\n", "learning_rate=inf"),
    ("[teacher]\nlearning_rate = nan\n", "learning_rate=nan"),
    ("[teacher]\nepochs = 100000000000000000000\n", "epochs=100000000000000000000"),
    ("[student]\ntemperature = inf\n", "temperature=inf"),
    ("[pruned]\nlearning_rate = -inf\n", "learning_rate=-inf"),
    ("[student_qat]\nbatch_size = 9223372036854775807\n", "batch_size=9223372036854775807"),
])
def test_values_that_are_not_finite_or_sane_are_refused(text, words):
    with pytest.raises(BadInputError, match="p.toml: ") as err:
        load_config(text=text, path="p.toml")
    assert words in str(err.value)


@pytest.mark.parametrize("text", [
    "x = " + "[" * 10_000 + "]" * 10_000,
    "[teacher]\nepochs = " + "[" * 10_000 + "]" * 10_000,
    "a = " + "{b = " * 10_000 + "1" + "}" * 10_000,
])
def test_toml_nested_too_deep_is_refused_naming_the_file(text):
    with pytest.raises(BadInputError, match="p.toml: .*nested too deep"):
        load_config(text=text, path="p.toml")


@pytest.mark.parametrize("text", [
    '[teacher]\narchitecture = "{}"\n', '[teacher]\nepochs = "{}"\n', '[export]\nsource = "{}"\n',
    '[teacher]\n"{}" = 1\n', '["{}"]\nx = 1\n'])
def test_a_huge_value_is_not_echoed_whole(text):
    huge = "x" * 50_000_000
    with pytest.raises(BadInputError) as err:
        load_config(text=text.format(huge), path="p.toml")
    message = str(err.value)
    assert len(message) < 2_100 and "\n" not in message and message.startswith("p.toml: ")
    assert "x" * 150 in message


def test_a_config_nested_10000_deep_exits_2_and_writes_nothing(cli, sample_dir, tmp_path):
    out, config = tmp_path / "out", tmp_path / "pipeline.toml"
    config.write_text("[teacher]\nepochs = " + "[" * 10_000 + "]" * 10_000 + "\n")
    result = cli("pipeline", sample_dir, "--out", out, "--config", config)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and str(config) in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_the_imbalance_keys_of_teacher_and_student_are_checked():
    config = load_config(text="[teacher]\nclass_weights = true\nfocal_gamma = 2.0\n"
                              "[student]\nclass_weights = true\nfocal_gamma = 1.5\n")
    assert (config.teacher.train.class_weights, config.teacher.train.focal_gamma) == (True, 2.0)
    assert (config.student.class_weights, config.student.focal_gamma) == (True, 1.5)
    for section in ("teacher", "student"):
        with pytest.raises(BadInputError, match=rf"\[{section}\] focal_gamma must be in "
                                                r"\[0, 10\]. Received: focal_gamma=-1"):
            load_config(text=f"[{section}]\nfocal_gamma = -1\n")


def test_the_crop_and_jitter_keys_are_read_and_checked():
    config = load_config(text="[teacher]\ncrop_scale = 0.4\ncolour_jitter = 0\n"
                              "[student]\ncrop_scale = 1\n")
    assert (config.teacher.train.crop_scale, config.teacher.train.colour_jitter) == (0.4, 0.0)
    assert (config.student.crop_scale, config.student.colour_jitter) == (1.0, None)
    assert load_config(text="[teacher]\ncrop_scale = \"none\"\n").teacher.train.crop_scale is None
    for section in ("teacher", "student"):
        with pytest.raises(BadInputError, match=rf"\[{section}\] crop_scale must be in "
                                                r"\(0, 1\]. Received: crop_scale=0.0"):
            load_config(text=f"[{section}]\ncrop_scale = 0\n")
        with pytest.raises(BadInputError, match=rf"\[{section}\] colour_jitter must be in "
                                                r"\[0, 0.45\]. Received: colour_jitter=0.5"):
            load_config(text=f"[{section}]\ncolour_jitter = 0.5\n")
