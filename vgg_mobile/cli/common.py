"""What several commands share: the log line, option groups, value callbacks."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from vgg_mobile.data.augmentation import FLIP_CHOICES
from vgg_mobile.data.dataset import POLICIES
from vgg_mobile.training.distribute import STRATEGIES
from vgg_mobile.training.hyperparameters import MAX_COLOUR_JITTER


def default(owner, name: str):
    """The library's default of field `name` of config dataclass `owner`, or of parameter
    `name` of function `owner`: a flag's default is read from there, never written twice.

    Raises:
        LookupError: `owner` has no such field or parameter, or it has no default.
    """
    if dataclasses.is_dataclass(owner):
        for field in dataclasses.fields(owner):
            if field.name == name and field.default is not dataclasses.MISSING:
                return field.default
            if field.name == name and field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
    else:
        parameter = inspect.signature(owner).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise LookupError(f"{owner.__qualname__} has no default for {name!r}")


def invocation() -> str:
    """How to run this same `vgg-mobile` again from the user's shell, for printed hints.

    Inside `uv run` (as `make demo` runs it) the command is on PATH only for that run: the
    user's shell answers `command not found`, so the hint is `uv run vgg-mobile` there. An
    install whose `vgg-mobile` is on PATH gets the plain name; anything else (a venv that is
    not activated) gets this interpreter with `-m vgg_mobile`.
    """
    prefix = Path(sys.prefix)
    if os.environ.get("UV_RUN_RECURSION_DEPTH") and (prefix.parent / "pyproject.toml").is_file():
        # Any uv on PATH runs the checkout's; else the one that is running now, by its path.
        uv = "uv" if shutil.which("uv") else shlex.quote(os.environ.get("UV", "uv"))
        return f"{uv} run vgg-mobile"
    found = shutil.which("vgg-mobile")
    if found and Path(found).resolve().parent == (prefix / "bin").resolve():
        return "vgg-mobile"
    return f"{shlex.quote(sys.executable)} -m vgg_mobile"


def served_address(line: str) -> tuple[str, int] | None:
    """`(host, port)` from the first line `serve` and `serve-model` print
    (`serving ... at http://HOST:PORT/ ...`), or `None` when the line is not that."""
    if " at http://" not in line:
        return None
    host, port = line.split(" at http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host.strip("[]"), int(port)


def log(message: str) -> None:
    """Progress and warnings go to stderr; stdout carries only results."""
    click.echo(message, err=True)


# The type of every option that counts something (images, epochs, steps): 0 and negatives are
# refused while parsing, with exit code 2.
COUNT = click.IntRange(min=1)


# Unlike `DistributeConfig()` (one device), a command takes what the machine it runs on offers:
# every GPU, or the cluster of a TF_CONFIG that names several workers. A library call changes
# devices only when asked, so a notebook keeps the device it was given.
COMMAND_STRATEGY = "auto"


def distribute_options(command):
    """Adds --strategy, --mixed-precision and --jit-compile to a training command."""
    command = click.option(
        "--jit-compile", is_flag=True, help="Compile the training step with XLA.")(command)
    command = click.option(
        "--mixed-precision", is_flag=True,
        help="Train in mixed_float16 (fast on GPUs with compute capability >= 7.0; slow on "
             "CPUs); the last layers stay float32 and the saved model is float32.")(command)
    return click.option(
        "--strategy", default=COMMAND_STRATEGY, show_default=True, type=click.Choice(STRATEGIES),
        help="default: one device; mirrored: every GPU of this machine; multi-worker: the "
             "machines in TF_CONFIG; auto: multi-worker if TF_CONFIG names several workers, "
             "mirrored with several GPUs, else default. --batch-size is per replica: the "
             "global batch is batch-size x replicas, and the learning rate is multiplied by "
             "the replica count too (linear scaling), as the manifest records.")(command)


def augmentation_options(config):
    """Adds --augmentation, --flip, --crop-scale and --colour-jitter to a training command,
    with `config`'s defaults (a config class with those fields: `TrainConfig`,
    `DistillConfig`)."""
    def add(command):
        command = click.option(
            "--colour-jitter", default=default(config, "colour_jitter"),
            type=click.FloatRange(0, MAX_COLOUR_JITTER),
            help="Largest brightness change (share of 255), contrast and saturation up to "
                 "twice it; 0: none. Default: by input size (0.1).")(command)
        command = click.option(
            "--crop-scale", default=default(config, "crop_scale"),
            type=click.FloatRange(0, 1, min_open=True),
            help="Smallest share of the area a random crop keeps; 1: no crop. Default: by "
                 "input size (0.75 up to 64 px, 0.6 above).")(command)
        command = click.option(
            "--flip", default=default(config, "flip"), show_default=True,
            type=click.Choice(FLIP_CHOICES),
            help="Random horizontal flips; auto: decided from the training images (off when "
                 "a mirror image looks like another class, as digits do), logged and "
                 "recorded.")(command)
        return click.option(
            "--augmentation", default=default(config, "augmentation"), show_default=True,
            type=click.Choice(POLICIES),
            help="standard: random crop and colour jitter; trivialaugment: the same crop, "
                 "then one random TrivialAugment operation per image.")(command)

    return add


def offline_option(command):
    """Adds --offline: never download weights (the same switch as VGG_MOBILE_OFFLINE=1)."""
    return click.option(
        "--offline", is_flag=True,
        help="Never download: ImageNet weights missing from the Keras cache are an error "
             "(VGG_MOBILE_OFFLINE=1 does the same). Without it, --weights imagenet downloads "
             "them into the cache from Keras's URL (or $VGG_MOBILE_WEIGHTS_URL); auto never "
             "downloads.")(command)


def distribute_config(strategy, mixed_precision, jit_compile):
    from vgg_mobile.training.distribute import DistributeConfig

    return DistributeConfig(strategy=strategy, mixed_precision=mixed_precision,
                            jit_compile=jit_compile)


def fraction(ctx, param, value):
    """A share written as 0.99 or 99%, checked to be a finite number in [0, 1]."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise click.BadParameter(f"must be a number between 0 and 1 (or 0% and 100%). "
                                 f"Received: {value}")
    return number
