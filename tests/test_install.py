"""The release: the wheel carries every file the commands need, and installs anywhere.

The slow test builds the wheel, installs it with the command the README gives, into folders
outside the checkout and with nothing of the checkout on any path, runs the commands a consumer
project's CI runs, and uninstalls it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from harness import assert_serves_demo

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "install"
INSTALL_ARGS = ("--python", "3.11", "--overrides", str(INSTALL / "overrides.txt"),
                "--constraints", str(INSTALL / "requirements.txt"))


def _uv() -> str:
    """The uv running this suite (`uv run` names itself in $UV), else PATH's."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH: the install test needs it (`make install` installs it)")
    return uv


def _requirements(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_install_overrides_are_the_projects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert _requirements(INSTALL / "overrides.txt") == \
        project["tool"]["uv"]["override-dependencies"]


def test_docs_show_the_overrides_and_the_install_command():
    ci = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n".join(_requirements(INSTALL / "overrides.txt")) in ci
    for text in (ci, readme):
        assert "uv tool install" in text and "--overrides overrides.txt" in text


def test_the_pinned_requirements_are_the_lock():
    exported = subprocess.run(
        [_uv(), "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project",
         "--no-annotate", "--no-header"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert _requirements(INSTALL / "requirements.txt") == [
        line.strip() for line in exported.stdout.splitlines() if line.strip()], (
        "install/requirements.txt is out of date: regenerate it with the command in its header")


def _isolated_env(tmp: Path, uv: str) -> dict[str, str]:
    """The environment of a consumer's CI job: tool, home and cache folders in `tmp`, PATH with
    nothing of the checkout; uv's and npm's download caches (and npm's registry settings) kept,
    so nothing is fetched twice."""
    uv_cache = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True,
                              check=True).stdout.strip()
    npm_cache = os.environ.get("npm_config_cache") or str(Path.home() / ".npm")
    npmrc = os.environ.get("npm_config_userconfig") or str(Path.home() / ".npmrc")
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT", "UV_RUN_RECURSION_DEPTH",
            "VGG_MOBILE_NODE_MODULES", "KERAS_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and p != venv_bin and not Path(p).resolve().is_relative_to(ROOT)]
    env.update(
        PATH=os.pathsep.join([str(tmp / "bin"), str(Path(sys.base_prefix) / "bin"), *path]),
        HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "cache"),
        UV_TOOL_DIR=str(tmp / "tools"), UV_TOOL_BIN_DIR=str(tmp / "bin"), UV_CACHE_DIR=uv_cache,
        UV_PYTHON_DOWNLOADS="never", npm_config_cache=npm_cache, npm_config_userconfig=npmrc,
        PYTHONUNBUFFERED="1")
    (tmp / "home").mkdir()
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    uv = _uv()
    work = tmp_path / "job"
    work.mkdir()
    env = _isolated_env(tmp_path, uv)

    def run(*args, timeout=600):
        done = subprocess.run(list(map(str, args)), cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr[-3000:]}"
        return done

    run(uv, "build", "--out-dir", tmp_path / "dist", ROOT)
    wheel, = (tmp_path / "dist").glob("vgg_mobile-*.whl")
    # The size docs/ci.md gives stays true (within a fifth).
    documented = re.search(r"the package \(`uv build`\), about (\d+) KB",
                           (ROOT / "docs" / "ci.md").read_text())
    assert documented and 0.8 <= wheel.stat().st_size / (int(documented[1]) * 1000) <= 1.2, (
        wheel.stat().st_size)
    names = set(zipfile.ZipFile(wheel).namelist())
    # One top-level package: `converters/` installs as `vgg_mobile.converters`, a name no other
    # project can collide with in site-packages.
    top_level, = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["vgg_mobile"]
    assert not [n for n in names if not n.startswith(("vgg_mobile/", "vgg_mobile-"))], names
    for shipped in ("vgg_mobile/py.typed", "vgg_mobile/web_demo/page/index.html",
                    "vgg_mobile/web_demo/page/app.js", "vgg_mobile/web_demo/page/style.css",
                    "vgg_mobile/android_assets/README.template.md", "vgg_mobile/converters/js/predict.mjs",
                    "vgg_mobile/converters/js/package.json",
                    "vgg_mobile/converters/js/package-lock.json"):
        assert shipped in names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vgg_mobile").rglob("*.py")}
    modules |= {"vgg_mobile/" + p.relative_to(ROOT).as_posix()
                for p in (ROOT / "converters").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"

    run(uv, "tool", "install", wheel, *INSTALL_ARGS)
    tool = tmp_path / "bin" / "vgg-mobile"
    assert tool.is_file()

    run(tool, "sample-data", "D", "--images-per-class", "8", "--image-size", "32")
    run(tool, "train", "D", "--out", "R", "--architecture", "mobilenet_v2_0.35", "--head-units", "0",
        "--image-size", "32", "--weights", "none", "--epochs", "1", "--batch-size", "8")
    export = json.loads(run(tool, "convert", "R", "--out", "E", "--flavour", "int8",
                            "--json").stdout)
    artifacts = {a["format"]: a for a in export["artifacts"]}
    assert artifacts["tflite"]["flavour"] == "int8"
    assert artifacts["tflite"]["verification"]["top1_agreement"] >= 0.99
    assert artifacts["tfjs_graph_model"]["verified_with"].startswith("TensorFlow.js (Node")
    assert artifacts["tfjs_graph_model"]["verification"]["top1_agreement"] >= 0.99
    int8 = work / "E" / artifacts["tflite"]["file"]
    report = json.loads(run(tool, "inspect", int8, "--json").stdout)
    assert report["size_bytes"] == int8.stat().st_size and report["metadata"]
    run(tool, "web-demo", "S", "--model", "E")
    assert (work / "S" / "vendor" / "tf.min.js").is_file()

    assert_serves_demo([str(tool), "serve", "S", "--port", "0"], work, env)
    # The monitoring files ship inside the wheel.
    run(tool, "monitoring", "M", "--target", "127.0.0.1:8500")
    assert json.loads((work / "M" / "dashboard.json").read_text())["panels"]
    assert "alert: VggMobileDrift" in (work / "M" / "alerts.yml").read_text()

    doctor = json.loads(run(tool, "doctor", "--json").stdout)
    own = doctor["vgg_mobile"]
    assert Path(own["location"]).is_relative_to(tmp_path / "tools")
    assert Path(own["tfjs"]).is_relative_to(tmp_path / "cache" / "vgg-mobile" / "npm")
    assert doctor["tflite_support"]["metadata writers"] == "ok"
    # No checkout to `uv sync` in: the GPU hint names the wheel's own install.
    assert "uv sync" not in doctor["hint"]
    python = tmp_path / "tools" / "vgg-mobile" / "bin" / "python"
    paths = json.loads(run(python, "-c", "import json, sys, vgg_mobile.converters; print(json.dumps("
                           "[vgg_mobile.__file__, vgg_mobile.converters.__file__, *sys.path]))").stdout)
    assert not [p for p in paths if p and Path(p).resolve().is_relative_to(ROOT)]

    run(uv, "tool", "uninstall", "vgg-mobile")
    assert not tool.exists() and not (tmp_path / "tools" / "vgg-mobile").exists()
