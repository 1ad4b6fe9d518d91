"""Where the project's non-Python files are: the web demo, templates, npm packages."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def node_modules_dir() -> Path | None:
    """The `node_modules` folder holding @tensorflow/tfjs (`npm ci` in the project), if any."""
    for parent in (PROJECT_ROOT, *PROJECT_ROOT.parents):
        candidate = parent / "node_modules"
        if (candidate / "@tensorflow" / "tfjs").is_dir():
            return candidate
    return None
