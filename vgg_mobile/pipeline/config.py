"""The pipeline's configuration: one TOML section per stage, read over a preset, printed back.

Each section is named as its stage (`stages.STAGES`) and holds the fields of the stage's config
class; a field of that class whose type is a dataclass (a *part*, e.g. `ExportConfig.options`)
has its fields written flat into the section. `PipelineConfig` has one field per stage, named
as the stage. Values are type-checked against the dataclass fields before any class is built,
so a TOML mistake is reported with the file, the section, the key and the value.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Callable

from vgg_mobile.converters.convert import ConvertOptions, parse_size
from vgg_mobile.core.errors import BadInputError, clip
from vgg_mobile.pipeline.stages import RUN_STAGES, STAGES

CONFIG_FILE = "pipeline.toml"

# Presets are data: section -> key -> value, in TOML's own types, applied over the defaults.
PRESETS: dict[str, dict[str, dict[str, object]]] = {
    # Mirrors `make demo`, and is the recipe for any few thousand small images without
    # pretrained weights: trained from scratch in minutes on 2 cores, never downloading. It
    # departs from the library defaults (a recipe for 224 px photos from ImageNet weights)
    # wherever such a run needs something else; each departure and the measurement behind it
    # is in docs/cli.md#flag-defaults-and-the-presets.
    "sample": {
        "teacher": {"architecture": "vgg16_bn_0.5", "image_size": 32, "weights": "none",
                    "epochs": 24, "batch_size": 32, "learning_rate": 1e-3,
                    "label_smoothing": 0.0},
        "pruned": {"method": "channels", "ratio": 0.3, "epochs": 4, "batch_size": 32,
                   "learning_rate": 1e-3},
        "pruned_qat": {"preserve_sparsity": False, "epochs": 1, "batch_size": 32},
        "student": {"student": "mobilenet_v2_1.0", "image_size": 64, "epochs": 15,
                    "batch_size": 32, "temperature": 4.0, "alpha": 0.1},
        "student_qat": {"epochs": 2, "batch_size": 32, "learning_rate": 1e-4},
        "export": {"source": "student_qat", "flavours": ["int8"], "max_size": "10MB",
                   "min_agreement": 0.9, "verify_images": 0},
        # The export's budgets. The VGG16 ships int8 only: its float32 ONNX (29 MB for a full
        # VGG16 channel-pruned at 0.3) is no file for a phone.
        "teacher_export": {"enabled": True, "source": "pruned_qat", "flavours": ["int8"],
                           "onnx_flavours": ["int8"], "max_size": "10MB", "min_agreement": 0.9,
                           "verify_images": 0},
        "web_export": {"source": "student", "max_size": "10MB", "min_agreement": 0.9,
                       "verify_images": 0},
        "web_demo": {"enabled": True},
        "benchmark": {"enabled": True, "repeats": 30, "threads": 1},
    },
    # Real photos: the library's training defaults, asking outright for ImageNet weights for
    # teacher and student (from the Keras cache, or downloaded into it unless offline): a missing
    # file is fetched, or refused offline, rather than replaced by random weights as `auto` does.
    "real": {
        "teacher": {"architecture": "vgg16", "image_size": 224, "weights": "imagenet",
                    "epochs": 10, "batch_size": 32, "learning_rate": 1e-4},
        "pruned": {"method": "channels", "ratio": 0.3, "epochs": 4, "batch_size": 32},
        "pruned_qat": {"preserve_sparsity": False, "epochs": 2, "batch_size": 32},
        "student": {"student": "mobilenet_v2_0.35", "image_size": 224, "epochs": 20,
                    "batch_size": 32, "student_weights": "imagenet"},
        "student_qat": {"epochs": 2, "batch_size": 32, "learning_rate": 1e-5},
        "export": {"source": "student_qat", "flavours": ["int8"], "max_size": "10MB",
                   "min_agreement": 0.9, "verify_images": 0},
        "teacher_export": {"enabled": True, "source": "pruned_qat", "flavours": ["int8"],
                           "onnx_flavours": ["int8"], "max_size": "10MB", "min_agreement": 0.9,
                           "verify_images": 0},
        "web_export": {"source": "student", "max_size": "10MB", "min_agreement": 0.9,
                       "verify_images": 0},
        "web_demo": {"enabled": True},
        "benchmark": {"enabled": True, "repeats": 20, "threads": 1, "images": 200},
    },
}

# Sections that were renamed, by their old name: read from the table, so a config written for
# an older vgg-mobile is told where its settings went instead of "unknown section".
RENAMED: dict[str, tuple[str, ...]] = {
    old: tuple(stage.name for stage in STAGES if old in stage.formerly)
    for old in dict.fromkeys(old for stage in STAGES for old in stage.formerly)}

# Fields that TOML may also write as text, with their parser: sizes as "10MB".
_PARSERS: dict[tuple[type, str], Callable[[str], object]] = {(ConvertOptions, "max_size"): parse_size}


# Longest text value: every string key is a name or a path, and no path is longer (PATH_MAX).
MAX_TEXT = 4096

# Longest message a config error carries: enough for every valid name it lists.
_MESSAGE_LIMIT = 2000


def _names(names: list[str]) -> str:
    """Names from the file, for a message: each shown as `repr` and cut, at most ten."""
    shown = ", ".join(clip(repr(name)) for name in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _check_sources(config) -> None:
    if config.pruned.method != "magnitude" and config.pruned_qat.preserve_sparsity:
        raise BadInputError(
            "[pruned_qat] preserve_sparsity = true keeps the zeros of magnitude pruning; "
            f"[pruned] method = {config.pruned.method!r} leaves none: set preserve_sparsity = "
            "false, or method = \"magnitude\"")
    for stage in STAGES:
        if stage.parent_from_source:
            source = getattr(config, stage.name).source
            if source not in RUN_STAGES:
                raise BadInputError(f"[{stage.name}] source must be one of "
                                    f"{', '.join(RUN_STAGES)}. Received: source={clip(repr(source))}")


PipelineConfig = dataclasses.make_dataclass(
    "PipelineConfig", [(stage.name, stage.config) for stage in STAGES], frozen=True,
    namespace={"__module__": __name__, "__post_init__": _check_sources, "__doc__": (
        """Every stage's settings: one field per stage of `stages.STAGES`, named as the stage
        and holding an instance of its `config` class (e.g. `config.pruned` is a `PruneConfig`,
        `config.export.options` a `ConvertOptions`). Build it with `build_config`.

        Raises:
            BadInputError: An export's `source` is not a stage with a Keras model.
        """)})


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a TOML section.

    Attributes:
        name: The key, a field name of `owner`.
        owner: The dataclass whose field it is.
        part: The field of the section's class that holds `owner`; `None` for its own fields.
        hint: The field's type.
        doc: The first lines of the field's description in `owner`'s docstring.
    """

    name: str
    owner: type
    part: str | None
    hint: object
    doc: str


def section_keys(cls: type) -> dict[str, Key]:
    """The keys of the TOML section of config class `cls`, in the order they are printed.

    Raises:
        BadInputError: Two of its parts have a field of the same name (a bug of the table).
    """
    keys: dict[str, Key] = {}

    def add(key: Key) -> None:
        if key.name in keys:
            raise BadInputError(f"{cls.__name__}: key {key.name!r} is in two of its parts")
        keys[key.name] = key

    hints, docs = typing.get_type_hints(cls), _attribute_docs(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if not dataclasses.is_dataclass(hint):
            add(Key(field.name, cls, None, hint, docs.get(field.name, "")))
            continue
        part_hints, part_docs = typing.get_type_hints(hint), _attribute_docs(hint)
        for inner in dataclasses.fields(hint):
            if inner.name not in field.metadata.get("fixed", ()):
                add(Key(inner.name, hint, field.name, part_hints[inner.name],
                        part_docs.get(inner.name, "")))
    return keys


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + ' or "none"'
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(args[0])}"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(hint, str(hint))


def _coerce(value, hint, key: Key, section: str, where: str):
    """Checks a TOML value against a dataclass field type; returns the Python value."""
    def bad():
        return BadInputError(f"{where}[{section}] {key.name} must be of type {_type_name(hint)}. "
                             f"Received: {key.name}={clip(repr(value))} ({type(value).__name__})")

    parser = _PARSERS.get((key.owner, key.name))
    if parser is not None and isinstance(value, str):
        try:
            return parser(value)
        except BadInputError as err:
            raise BadInputError(f"{where}[{section}] {key.name}: {err}") from None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.lower() == "none":
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        try:
            return _coerce(value, inner, key, section, where)
        except BadInputError:
            raise bad() from None
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise bad()
        return tuple(_coerce(v, item, key, section, where) for v in value)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
        if ok and len(value) > MAX_TEXT:
            raise BadInputError(f"{where}[{section}] {key.name} must be at most {MAX_TEXT} "
                                f"characters. Received: {key.name}={clip(repr(value))}")
    else:
        ok = True
    if not ok:
        raise bad()
    return value


def _build_section(stage, values: dict, where: str):
    keys = section_keys(stage.config)
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise BadInputError(f"{where}[{stage.name}] unknown key(s): {_names(unknown)}; valid "
                            f"keys: {', '.join(sorted(keys))}")
    own: dict[str, object] = {}
    parts: dict[str, dict[str, object]] = {}
    for name, value in values.items():
        key = keys[name]
        coerced = _coerce(value, key.hint, key, stage.name, where)
        (parts.setdefault(key.part, {}) if key.part else own)[name] = coerced
    try:
        # A part starts from the section class's own default for it (the web export's
        # float16 flavour, the export's TF.js switched off), not from the part class's.
        default = stage.config()
        for part, changes in parts.items():
            own[part] = dataclasses.replace(getattr(default, part), **changes)
        return stage.config(**own)
    except BadInputError as err:
        # Some config classes quote a value in their own words (an unknown architecture):
        # the line stays short whatever the file holds.
        raise BadInputError(f"{where}[{stage.name}] {clip(err, _MESSAGE_LIMIT)}") from None


def build_config(overrides: dict | None = None, preset: str = "sample", where: str = "") -> PipelineConfig:
    """Builds a `PipelineConfig` from a preset and TOML-style overrides.

    Args:
        overrides: `{section: {key: value}}` as parsed from TOML; applied over the preset.
            Defaults to `None` (the preset as it is).
        preset: A name from `PRESETS`. Defaults to `"sample"`.
        where: Prefix of error messages (e.g. the config file's path and a colon).
            Defaults to `""`.

    Returns:
        The validated `PipelineConfig`.

    Raises:
        BadInputError: Unknown preset, a renamed or unknown section or key, a wrong type, or
            a bad value.
    """
    if preset not in PRESETS:
        raise BadInputError(f"unknown preset; valid presets: {', '.join(PRESETS)}. "
                            f"Received: preset={preset!r}")
    overrides = overrides or {}
    for old in overrides:
        if old in RENAMED:
            raise BadInputError(f"{where}[{old}] was renamed "
                                + " and ".join(f"[{new}]" for new in RENAMED[old])
                                + " (see vgg-mobile pipeline --print-config)")
    names = [stage.name for stage in STAGES]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise BadInputError(f"{where}unknown section(s): {_names(unknown)}; valid sections: "
                            f"{', '.join(names)}")
    sections = {}
    for stage in STAGES:
        given = overrides.get(stage.name, {})
        if not isinstance(given, dict):
            raise BadInputError(f"{where}[{stage.name}] must be a table. "
                                f"Received: {stage.name}={clip(repr(given))}")
        sections[stage.name] = _build_section(
            stage, {**PRESETS[preset].get(stage.name, {}), **given}, where)
    try:
        return PipelineConfig(**sections)
    except BadInputError as err:
        raise BadInputError(f"{where}{err}") from None


def load_config(path: str | Path | None = None, preset: str = "sample",
                text: str | None = None) -> PipelineConfig:
    """Reads a pipeline TOML file (or `text`) over a preset.

    Args:
        path: The TOML file; `None` for `text` alone (or the preset alone). Defaults to `None`.
        preset: A name from `PRESETS`. Defaults to `"sample"`.
        text: TOML text read instead of the file, whose path then only names the errors.
            Defaults to `None`.

    Returns:
        The validated `PipelineConfig`.

    Raises:
        BadInputError: Unreadable or invalid TOML, or anything `build_config` refuses; the
            message names the file.
    """
    where = f"{path}: " if path is not None else ""
    if text is None and path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise BadInputError(f"{path}: cannot read the config ({err})") from None
    try:
        data = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as err:
        raise BadInputError(f"{where}not valid TOML ({clip(err)})") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise BadInputError(f"{where}not a pipeline config: arrays or tables nested too deep "
                            "for the TOML reader") from None
    return build_config(data, preset, where)


def load_pipeline_config(out_dir: str | Path) -> PipelineConfig:
    """The configuration of the pipeline that wrote OUT: `OUT/pipeline.toml`, else the defaults.

    Raises:
        BadInputError: `OUT/pipeline.toml` is unreadable or invalid.
    """
    config_file = Path(out_dir) / CONFIG_FILE
    return load_config(config_file) if config_file.is_file() else build_config({})


def _toml_value(value) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _attribute_docs(cls) -> dict[str, str]:
    """Each attribute's description in a Google-style class docstring, joined into one line."""
    docs: dict[str, str] = {}
    current: list[str] = []
    inside = False
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            inside = True
            continue
        if not inside or not stripped:
            continue
        head, sep, rest = stripped.partition(": ")
        names = [n.strip() for n in head.split(",")]
        if sep and all(n.isidentifier() for n in names) and line.startswith(" " * 8) \
                and not line.startswith(" " * 12):
            for name in names:
                docs[name] = rest
            current = names
        elif current:
            for name in current:
                docs[name] = docs[name] + " " + stripped
    return docs


def config_toml(config: PipelineConfig, origin: str = "") -> str:
    """A configuration as commented TOML that `load_config` reads back to the same config.

    Args:
        config: The configuration.
        origin: Where it came from, for the heading comment (e.g. "preset 'sample'").
            Defaults to `""`.

    Returns:
        The TOML text: every section and key, each key under its description.
    """
    lines = ["# vgg-mobile pipeline configuration" + (f" ({origin})." if origin else "."),
             "# Every key is optional; a missing key keeps the preset's value.",
             '# Optional values take "none"; sizes may be written "10MB".', ""]
    for stage in STAGES:
        settings = getattr(config, stage.name)
        lines += [f"# {stage.heading}", f"[{stage.name}]"]
        for key in section_keys(stage.config).values():
            holder = getattr(settings, key.part) if key.part else settings
            if key.doc:
                lines.append(f"# {key.doc}")
            lines.append(f"{key.name} = {_toml_value(getattr(holder, key.name))}")
        lines.append("")
    return "\n".join(lines)


def default_config_toml(preset: str = "sample") -> str:
    """The preset's full configuration as commented TOML (what `--print-config` prints).

    Args:
        preset: A name from `PRESETS`. Defaults to `"sample"`.

    Raises:
        BadInputError: Unknown preset.
    """
    return config_toml(build_config({}, preset), f"preset {preset!r}")
