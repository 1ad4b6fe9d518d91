"""`OUT/pipeline_state.json`: what each stage was built from, and whether it finished.

Per stage it records `inputs` (a digest of the stage's settings, its parent run's manifest and
the data fingerprint), `status` (`running` or `finished`), `path`, and once finished its
`seconds`, `finished` time and, for runs with a Keras model, `gzip_bytes`. A re-run trusts a
finished stage only while its inputs digest is unchanged. The file also marks OUT as a folder
the pipeline owns: nothing else under OUT is ever deleted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vgg_mobile.core.io import write_json
from vgg_mobile.core.outputs import PIPELINE_STATE as STATE_FILE

# What `reporting.report.write_report` writes under OUT: it describes every stage, so a stage
# that is redone discards it first (an old report must never vouch for a deleted artifact).
REPORT_FILES = ("report.md", "report.html", "report_files")


def inputs_digest(stage: str, settings: dict, data: str, parent) -> str:
    """SHA-256 of what a stage is built from; any change to one of them redoes the stage.

    Args:
        stage: The stage's name.
        settings: Its config section as plain data (`dataclasses.asdict`).
        data: The data folder's fingerprint.
        parent: Its parent's manifest digest, a dict of them (a stage built on every earlier
            one), or `None`.
    """
    value = {"stage": stage, "settings": settings, "data": data, "parent": parent}
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def is_pipeline_out(out: str | Path) -> bool:
    """Whether `out` is a folder the pipeline wrote (it holds the state file)."""
    return (Path(out) / STATE_FILE).is_file()


def read_state(out: str | Path) -> dict:
    """The state of OUT: `{"stages": {name: record}}`; empty when missing or unreadable."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {"stages": {}}  # unreadable state: every stage is redone, nothing is trusted
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        return {"stages": {}}
    return state


def write_state(out: str | Path, state: dict) -> None:
    """Writes the state atomically: a crash leaves the previous state, never half of one."""
    write_json(Path(out) / STATE_FILE, state)
