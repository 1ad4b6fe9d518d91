from __future__ import annotations

import dataclasses

import pytest

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.compression.prune import PruneConfig
from vgg_mobile.compression.qat import QATConfig
from vgg_mobile.distillation.distill import DistillConfig
from vgg_mobile.training.hyperparameters import MAX_EPOCHS, Phase, TrainConfig, plan_phases


def test_auto_is_full_from_scratch_and_progressive_from_pretrained():
    config = TrainConfig(epochs=9, unfreeze_blocks=2)
    assert plan_phases(config, pretrained=False, n_blocks=5) == (Phase(0, 9, 5),)
    assert plan_phases(config, pretrained=True, n_blocks=5) == (
        Phase(0, 3, 0), Phase(3, 6, 1), Phase(6, 9, 2))


def test_fixed_modes_and_short_runs():
    def plan(mode, epochs=4, blocks=2):
        config = TrainConfig(epochs=epochs, fine_tune=mode, unfreeze_blocks=blocks)
        return plan_phases(config, pretrained=True, n_blocks=5)

    assert plan("feature-extraction") == (Phase(0, 4, 0),)
    assert plan("last-blocks") == (Phase(0, 4, 2),)
    assert plan("full") == (Phase(0, 4, 5),)
    # More phases than epochs: empty phases are dropped, the epochs stay covered.
    phases = plan("progressive", epochs=2, blocks=4)
    assert phases[0].start == 0 and phases[-1].end == 2
    assert all(p.end > p.start for p in phases)
    assert [p.trainable_blocks for p in phases] == sorted(p.trainable_blocks for p in phases)


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("batch_size", 0), ("learning_rate", 0.0), ("label_smoothing", 1.0),
    ("fine_tune", "some"), ("val_fraction", 0.0), ("unfreeze_blocks", 0), ("weight_decay", -1.0),
])
def test_bad_values_are_refused_with_the_value(field, value):
    with pytest.raises(BadInputError, match=f"{field}={value!r}"):
        TrainConfig(**{field: value})


def test_config_is_frozen():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    assert dataclasses.replace(config, epochs=3).epochs == 3 and config.epochs == 10


@pytest.mark.parametrize("config", [TrainConfig, DistillConfig, PruneConfig, QATConfig])
@pytest.mark.parametrize("field,value", [
    ("learning_rate", float("inf")), ("learning_rate", float("nan")), ("epochs", 10**20),
    ("epochs", MAX_EPOCHS + 1), ("epochs", 2.0), ("epochs", True), ("batch_size", 10**12),
    ("learning_rate", "0.1"), ("seed", -1), ("seed", 2**64),
])
def test_every_training_config_refuses_numbers_that_are_not_finite_or_sane(config, field, value):
    with pytest.raises(BadInputError, match=f"{field} must be .*Received: {field}={value!r}$"):
        config(**{field: value})


@pytest.mark.parametrize("config,field", [
    (TrainConfig, "warmup_epochs"), (TrainConfig, "weight_decay"), (TrainConfig, "label_smoothing"),
    (DistillConfig, "temperature"), (DistillConfig, "alpha"), (DistillConfig, "mixup"),
    (DistillConfig, "dropout"), (PruneConfig, "target_sparsity"), (PruneConfig, "begin_epoch"),
    (QATConfig, "calibration_images"),
])
def test_other_numeric_fields_refuse_infinity(config, field):
    with pytest.raises(BadInputError, match=f"Received: {field}=inf$"):
        config(**{field: float("inf")})


def test_an_echoed_value_is_cut_with_its_length():
    with pytest.raises(BadInputError) as err:
        TrainConfig(fine_tune="x" * 50_000_000)
    message = str(err.value)
    assert len(message) < 400 and message.endswith("... (50000012 chars)")


@pytest.mark.parametrize("config,field,value", [
    (TrainConfig, "mixup_alpha", -0.5), (TrainConfig, "cutmix_alpha", -1.0),
    (TrainConfig, "mixup_alpha", float("nan")), (TrainConfig, "flip", "yes"),
    (TrainConfig, "flip", True), (TrainConfig, "augmentation", "randaugment"),
    (DistillConfig, "flip", "sometimes"), (DistillConfig, "augmentation", "auto"),
    (TrainConfig, "crop_scale", 0.0), (TrainConfig, "crop_scale", 1.5),
    (DistillConfig, "crop_scale", -0.2), (TrainConfig, "colour_jitter", -0.1),
    (DistillConfig, "colour_jitter", 0.5), (TrainConfig, "colour_jitter", float("inf")),
])
def test_augmentation_keys_are_refused_with_the_key_and_value(config, field, value):
    with pytest.raises(BadInputError, match=f"{field} must be .*Received: {field}={value!r}$"):
        config(**{field: value})


@pytest.mark.parametrize("option,value,key", [("--mixup-alpha", "-0.5", "mixup_alpha"),
                                              ("--cutmix-alpha", "-2", "cutmix_alpha")])
def test_a_negative_mix_alpha_exits_2_naming_the_key_and_writes_nothing(tmp_path, option, value,
                                                                         key):
    from click.testing import CliRunner

    from vgg_mobile.cli.main import main
    from vgg_mobile.data.sample import write_sample_data

    data = write_sample_data(tmp_path / "data", images_per_class=2, image_size=32, seed=0)
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "run"),
                                       option, value])
    assert result.exit_code == 2, result.output
    assert f"{key} must be in [0, 100]. Received: {key}={float(value)!r}" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_unknown_flip_choice_exits_2_while_parsing(tmp_path):
    from click.testing import CliRunner

    from vgg_mobile.cli.main import main

    for command in (["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
                    ["distill", "--teacher", str(tmp_path / "run"), "--data",
                     str(tmp_path / "data"), "--out", str(tmp_path / "student")]):
        result = CliRunner().invoke(main, [*command, "--flip", "sideways"])
        assert result.exit_code == 2 and "Invalid value for '--flip'" in result.stderr


@pytest.mark.parametrize("config", [TrainConfig, DistillConfig])
def test_a_negative_focal_gamma_is_refused_naming_the_key(config):
    with pytest.raises(BadInputError, match=r"focal_gamma must be in \[0, 10\]. Received: "
                                            r"focal_gamma=-1"):
        config(focal_gamma=-1.0)
    with pytest.raises(BadInputError, match="class_weights must be true or false"):
        config(class_weights="yes")
    assert config(focal_gamma=2.0, class_weights=True).focal_gamma == 2.0
