"""docs/cli.md's flag tables against the commands themselves, and every flag default against
the library default it stands for. Reads click's parameters: no TensorFlow, no subprocess."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest

from vgg_mobile.cli import common
from vgg_mobile.cli.convert import _size_text
from vgg_mobile.cli.main import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

# Commands without a flag table in docs/cli.md, and where they are described instead.
UNTABLED = {"doctor": "a paragraph under 'Training the teacher' (its only flag is --json)",
            "inspect": "a paragraph under 'Converting' (its only flag is --json)",
            "serve-model": "docs/serving.md#options",
            "serve-admin": "docs/serving.md#rollback-and-feedback",
            "monitoring": "docs/serving.md#monitoring-prometheus-alerts-and-a-grafana-dashboard"}
# Commands kept under a former name, hidden from --help: documented under their new name.
HIDDEN = {name for name, command in main.commands.items() if command.hidden}


@dataclasses.dataclass
class Row:
    command: str
    names: list[str]
    default: str
    line: int


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _command_of(paragraph: list[str]) -> str:
    """The command a table documents: the first code span of the paragraph before it
    (`vgg-mobile train DATA`:, `sample-data OUT` writes ...)."""
    span = re.search(r"`([^`]+)`", " ".join(paragraph))
    assert span, f"docs/cli.md: no command named before the table after {paragraph!r}"
    return span.group(1).removeprefix("vgg-mobile ").split()[0]


def doc_rows(text: str) -> list[Row]:
    """Every row of every table of `text` with a `flag` and a `default` column."""
    lines, rows, i = text.splitlines(), [], 0
    while i < len(lines):
        if not (lines[i].startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))):
            i += 1
            continue
        header = _cells(lines[i])
        start, i = i, i + 2
        body = []
        while i < len(lines) and lines[i].startswith("|"):
            body.append((i + 1, _cells(lines[i])))
            i += 1
        if "flag" not in header or "default" not in header:
            continue
        paragraph, k = [], start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        while k >= 0 and lines[k].strip():
            paragraph.insert(0, lines[k])
            k -= 1
        for number, cells in body:
            assert len(cells) == len(header), f"docs/cli.md:{number}: {len(cells)} cells"
            row = dict(zip(header, cells))
            command = (_command_of([row["command"]]) if "command" in row
                       else _command_of(paragraph))
            rows.append(Row(command, re.findall(r"`(--?[\w-]+)", row["flag"]),
                            row["default"], number))
    return rows


def options(command: click.Command) -> dict[str, click.Option]:
    """Every spelling of every option of `command` (`--tfjs` and `--no-tfjs` alike)."""
    return {name: param for param in command.params if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)}


def shown_default(command: click.Command, param: click.Option) -> str | None:
    """The default `--help` shows for `param` (its `[default: ...]`), or None."""
    context = click.Context(command, info_name=command.name)
    record = param.get_help_record(context)
    extra = re.search(r"(?:^|  )\[([^\[\]]*)\]$", record[1]) if record else None
    for item in (extra.group(1).split("; ") if extra else ()):
        if item.startswith("default: "):
            return item.removeprefix("default: ")
    return None


def same(documented: str, shown: str) -> bool:
    text = documented.replace("`", "").strip().removeprefix("--")
    try:
        return float(text) == float(shown)
    except ValueError:
        return text == shown


ROWS = doc_rows(DOC.read_text(encoding="utf-8"))
DOCUMENTED = sorted({row.command for row in ROWS})


def test_the_tables_are_found_and_name_real_commands():
    assert len(DOCUMENTED) >= 12 and len(ROWS) > 100
    assert set(DOCUMENTED) <= set(main.commands), set(DOCUMENTED) - set(main.commands)
    untabled = set(main.commands) - set(DOCUMENTED) - HIDDEN
    assert untabled == set(UNTABLED), f"commands with no flag table in docs/cli.md: {untabled}"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_every_flag_is_documented_once_and_exists(name):
    command = main.commands[name]
    spellings = options(command)
    documented = []
    for row in (r for r in ROWS if r.command == name):
        unknown = [n for n in row.names if n not in spellings]
        assert not unknown, f"docs/cli.md:{row.line}: `{name}` has no option {unknown}"
        documented += {id(spellings[n]): spellings[n] for n in row.names}.values()
    params = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    missing = [p.opts[0] for p in params if p not in documented]
    assert not missing, f"docs/cli.md: the `{name}` table lacks {missing}"
    twice = {p.opts[0] for p in documented if documented.count(p) > 1}
    assert not twice, f"docs/cli.md: the `{name}` table has {twice} in several rows"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_defaults_are_what_help_shows(name):
    command = main.commands[name]
    spellings = options(command)
    for row in (r for r in ROWS if r.command == name):
        params = list({id(spellings[n]): spellings[n] for n in row.names}.values())
        cells = [c.strip() for c in row.default.split(",")] if len(params) > 1 else [row.default]
        assert len(cells) == len(params), f"docs/cli.md:{row.line}: one default per option"
        for param, cell in zip(params, cells):
            shown = shown_default(command, param)
            where = f"docs/cli.md:{row.line}: `{name} {param.opts[0]}`"
            if shown is not None:
                assert same(cell, shown), f"{where}: documented {cell!r}, --help shows {shown!r}"
            elif param.is_flag:
                assert cell in ("", "off"), f"{where} is off unless given; documented {cell!r}"


@pytest.mark.parametrize("name", sorted(main.commands))
def test_help_shows_every_default_a_flag_has(name):
    command = main.commands[name]
    for param in command.params:
        if not isinstance(param, click.Option) or param.multiple:
            continue
        value = param.default
        if value is None or value is click.core.UNSET:
            continue
        if param.is_flag and not param.secondary_opts:
            continue
        shown = shown_default(command, param)
        assert shown is not None, f"`{name} {param.opts[0]} --help` hides its default {value!r}"
        if not param.is_flag:
            assert same(shown, str(value)), (name, param.opts[0], shown, value)


def test_the_table_reader_catches_drift():
    text = DOC.read_text(encoding="utf-8")
    drifted = doc_rows(text.replace("| `--temperature` | 2.0 |", "| `--temperature` | 4.0 |"))
    row = next(r for r in drifted if r.names == ["--temperature"])
    distill = main.commands["distill"]
    shown = shown_default(distill, options(distill)["--temperature"])
    assert row.command == "distill" and row.default == "4.0" and not same(row.default, shown)
    assert same("`--tfjs`", "tfjs") and same("1e-4", "0.0001") and not same("`auto`", "none")


# Each command's configuration classes: a flag named as a field takes that field's default.
CONFIGS = {
    "train": ("vgg_mobile.training.hyperparameters:TrainConfig",
              "vgg_mobile.models.architectures:ModelOptions"),
    "distill": ("vgg_mobile.distillation.distill:DistillConfig",),
    "prune": ("vgg_mobile.compression.prune:PruneConfig",),
    "qat": ("vgg_mobile.compression.qat:QATConfig",),
    "convert": ("vgg_mobile.converters.convert:ConvertOptions",),
    "evaluate": ("vgg_mobile.evaluation.tta:TTA",),
    "explain": ("vgg_mobile.evaluation.gradcam:ExplainOptions",),
    "serve-model": ("vgg_mobile.serving.app:ServeConfig",),
}
# Flags whose parameter is named otherwise than their field, or that stand for no field.
FIELD_OF = {"no_augment": None, "model_version": "version", "license_": "license",
            "format_": None, "tta_flip": "flip", "tta_crop": "crop",
            # Unset, it is the number of CPUs of the machine the server starts on.
            "concurrency": None}


def _load(path: str):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flag_defaults_are_the_config_defaults(name):
    from vgg_mobile.converters.convert import parse_size

    fields = {}
    for path in CONFIGS[name]:
        cls = _load(path)
        fields.update({f.name: common.default(cls, f.name) for f in dataclasses.fields(cls)
                       if f.default is not dataclasses.MISSING})
    checked = 0
    for param in main.commands[name].params:
        field = FIELD_OF.get(param.name, param.name)
        if field not in fields or param.multiple:
            continue
        value = param.default
        if value is click.core.UNSET and param.is_flag:
            value = False
        if isinstance(value, str) and isinstance(fields[field], int):
            value = parse_size(value)  # --max-size "10MB" and the like, as the command reads them
        assert value == fields[field], f"{name} {param.opts[0]}: {value!r} != {fields[field]!r}"
        checked += 1
    assert checked >= 2


def test_the_strategy_flag_differs_from_the_library_on_purpose():
    from vgg_mobile.training.distribute import DistributeConfig

    for name in ("train", "distill"):
        strategy = options(main.commands[name])["--strategy"]
        assert strategy.default == common.COMMAND_STRATEGY == "auto"
    assert DistributeConfig().strategy == "default"


def test_default_reads_dataclass_fields_and_function_parameters():
    @dataclasses.dataclass(frozen=True)
    class Config:
        needed: int
        size: int = 3
        names: tuple = dataclasses.field(default_factory=lambda: ("a",))

    def run(data, batch_size=7):
        return data, batch_size

    assert common.default(Config, "size") == 3 and common.default(Config, "names") == ("a",)
    assert common.default(run, "batch_size") == 7
    for owner, name in ((Config, "absent"), (Config, "needed"), (run, "data"), (run, "absent")):
        with pytest.raises(LookupError, match=name):
            common.default(owner, name)


@pytest.mark.parametrize("size,text", [(10_000_000, "10MB"), (2_500_000, "2500kB"),
                                       (3_000_000_000, "3GB"), (1234, "1234"), (None, "none"),
                                       (0, "0")])
def test_size_text_reads_back(size, text):
    from vgg_mobile.converters.convert import parse_size

    assert _size_text(size) == text
    assert parse_size(text) == size


# The sections of the training stages and the classes whose fields their keys are.
SECTIONS = {"teacher": ("vgg_mobile.models.architectures:ModelOptions",
                        "vgg_mobile.training.hyperparameters:TrainConfig"),
            "pruned": ("vgg_mobile.compression.prune:PruneConfig",),
            "pruned_qat": ("vgg_mobile.compression.qat:QATConfig",),
            "student": ("vgg_mobile.distillation.distill:DistillConfig",),
            "student_qat": ("vgg_mobile.compression.qat:QATConfig",)}


def _literal(cell: str):
    text = cell.replace("`", "").strip()
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def _owner(section: str, key: str) -> type:
    """The class of `section` whose field `key` is."""
    classes = [_load(path) for path in SECTIONS[section]]
    return next(c for c in classes if key in {f.name for f in dataclasses.fields(c)})


def preset_rows(text: str) -> list[tuple[int, str, str, str, str]]:
    """`(line, section, key, flag default, sample preset)` of the table that compares them."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("| section | key | flag default | `sample` preset |"))
    rows = []
    for number, line in enumerate(lines[start + 2:], start + 3):
        if not line.startswith("|"):
            break
        section, key, flag, preset = (c.replace("`", "") if k < 2 else c
                                      for k, c in enumerate(_cells(line)[:4]))
        rows.append((number, section, key, flag, preset))
    return rows


def test_the_flag_defaults_against_the_sample_preset_table():
    from vgg_mobile.pipeline.config import PRESETS

    rows = preset_rows(DOC.read_text(encoding="utf-8"))
    listed = set()
    for number, section, key, flag, preset in rows:
        owner = _owner(section, key)
        library = common.default(owner, key)
        where = f"docs/cli.md:{number}: [{section}] {key}"
        if library is not None:
            assert _literal(flag) == library, f"{where}: the library's default is {library!r}"
        assert _literal(preset) == PRESETS["sample"][section][key], where
        listed.add((section, key))
    for section in SECTIONS:
        for key, value in PRESETS["sample"][section].items():
            if value != common.default(_owner(section, key), key):
                assert (section, key) in listed, f"docs/cli.md lacks [{section}] {key} = {value!r}"
