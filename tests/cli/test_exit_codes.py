"""Bad option values are usage errors (exit 2) found while parsing, never internal errors."""

from __future__ import annotations

import math

import click
import pytest
from click.testing import CliRunner

from vgg_mobile.cli.common import fraction
from vgg_mobile.cli.main import main

# The arguments each command needs before its options are looked at; none of the paths exist.
BASE = {
    "sample-data": ["{tmp}/sample"],
    "train": ["{tmp}/data", "--out", "{tmp}/run"],
    "evaluate": ["{tmp}/run", "--data", "{tmp}/data"],
    "convert": ["{tmp}/run", "--out", "{tmp}/export"],
    "prune": ["{tmp}/run", "--data", "{tmp}/data", "--out", "{tmp}/pruned"],
    "qat": ["{tmp}/run", "--data", "{tmp}/data", "--out", "{tmp}/qat"],
    "distill": ["--teacher", "{tmp}/run", "--data", "{tmp}/data", "--out", "{tmp}/student"],
}

FRACTIONS = [(command, option, value)
             for command, option in (("convert", "--min-agreement"),
                                     ("convert", "--max-accuracy-drop"))
             for value in ("abc", "nan", "inf", "-inf", "nan%", "abc%", "", "1e400")]

COUNTS = [(command, option, value)
          for command, options in {
              "sample-data": ("--images-per-class", "--image-size"),
              "train": ("--epochs", "--batch-size", "--unfreeze-blocks"),
              "evaluate": ("--batch-size",),
              "convert": ("--verify-images",),
              "prune": ("--epochs", "--batch-size", "--frequency"),
              "qat": ("--epochs", "--batch-size"),
              "distill": ("--epochs", "--batch-size", "--image-size"),
          }.items()
          for option in options for value in ("0", "-3")]


def _invoke(tmp_path, command, *options):
    args = [command, *(a.format(tmp=tmp_path) for a in BASE[command]), *options]
    return CliRunner().invoke(main, args)


def _assert_usage_error(result, option):
    output = result.output + result.stderr
    assert result.exit_code == 2, (result.exit_code, output)
    assert f"Invalid value for '{option}'" in result.stderr, output
    assert "internal error" not in output and "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("command,option,value", FRACTIONS)
def test_a_fraction_that_is_not_a_finite_number_exits_2(tmp_path, command, option, value):
    result = _invoke(tmp_path, command, option, value)
    _assert_usage_error(result, option)
    assert "must be a number between 0 and 1" in result.stderr
    assert f"Received: {value}" in result.stderr


@pytest.mark.parametrize("command,option,value", COUNTS)
def test_a_count_below_one_exits_2_while_parsing(tmp_path, command, option, value):
    result = _invoke(tmp_path, command, option, value)
    _assert_usage_error(result, option)
    assert f"{value} is not in the range x>=1" in result.stderr


@pytest.mark.parametrize("value", ("0", "-3", "31"))
def test_a_teacher_image_size_below_32_exits_2_while_parsing(tmp_path, value):
    result = _invoke(tmp_path, "train", "--image-size", value)
    _assert_usage_error(result, "--image-size")
    assert f"{value} is not in the range x>=32" in result.stderr


def test_head_units_may_be_zero_but_not_negative(tmp_path):
    result = _invoke(tmp_path, "train", "--head-units", "-1")
    _assert_usage_error(result, "--head-units")
    assert "-1 is not in the range x>=0" in result.stderr


@pytest.mark.parametrize("text,number", [("0.99", 0.99), ("99%", 0.99), ("0", 0.0), ("1", 1.0),
                                         ("100%", 1.0), (" 5% ", 0.05), (None, None)])
def test_fraction_accepts_shares_and_percentages(text, number):
    value = fraction(None, None, text)
    assert value == number if number is None else math.isclose(value, number)


@pytest.mark.parametrize("text", ["1.5", "150%", "-0.1", "nan", "inf", "abc", "%"])
def test_fraction_refuses_anything_else_with_bad_parameter(text):
    with pytest.raises(click.BadParameter, match=f"Received: {text}"):
        fraction(None, None, text)


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_negative_focal_gamma_exits_2_naming_the_key_and_value(tmp_path, command):
    result = _invoke(tmp_path, command, "--focal-gamma", "-1")
    assert result.exit_code == 2, result.output
    assert "focal_gamma must be in [0, 10]. Received: focal_gamma=-1.0" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written
