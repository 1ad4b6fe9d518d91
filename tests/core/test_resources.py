"""Where the non-Python files are, and how TensorFlow.js is found or installed."""

from __future__ import annotations

import shutil

import pytest

from vgg_mobile.core import resources
from vgg_mobile.core.errors import BadInputError, VggMobileError
from vgg_mobile.web_demo.build import PAGE_FILES


def test_package_data_is_found_through_the_packages():
    assert all((resources.web_demo_dir() / name).is_file() for name in PAGE_FILES)
    assert "{model_file}" in resources.android_template().read_text(encoding="utf-8")
    for name in ("predict.mjs", *resources.LOCK_FILES):
        assert (resources.js_dir() / name).is_file()
    assert resources.node_executable() is not None


def test_the_checkout_uses_its_own_node_modules(monkeypatch):
    monkeypatch.delenv(resources.NODE_MODULES_ENV, raising=False)
    assert resources.node_modules_dir() == resources.js_dir() / "node_modules"


def test_the_override_must_hold_tensorflow_js(monkeypatch, tmp_path):
    monkeypatch.setenv(resources.NODE_MODULES_ENV, str(tmp_path))
    with pytest.raises(BadInputError, match=f"{resources.NODE_MODULES_ENV}=.*no @tensorflow/tfjs"):
        resources.node_modules_dir()
    checkout = resources.js_dir() / "node_modules"
    monkeypatch.setenv(resources.NODE_MODULES_ENV, str(checkout))
    assert resources.node_modules_dir() == checkout


@pytest.fixture
def outside_the_checkout(monkeypatch, tmp_path):
    """The shipped lock without a node_modules beside it, and an empty per-user cache."""
    js = tmp_path / "js"
    js.mkdir()
    for name in resources.LOCK_FILES:
        shutil.copyfile(resources.js_dir() / name, js / name)
    monkeypatch.setattr(resources, "js_dir", lambda: js)
    monkeypatch.delenv(resources.NODE_MODULES_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_the_cache_is_named_by_the_lock(outside_the_checkout):
    folder = resources.npm_cache_dir()
    assert folder.parent == outside_the_checkout / "cache" / "vgg-mobile" / "npm"
    assert folder.name == resources.lock_digest() and len(folder.name) == 16
    assert resources.node_modules_dir(install=False) is None


def test_no_registry_is_one_line_and_leaves_no_half_install(outside_the_checkout, monkeypatch):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(outside_the_checkout / "npm"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    with pytest.raises(VggMobileError) as caught:
        resources.node_modules_dir()
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(resources.npm_cache_dir()))
    assert "ECONNREFUSED" in message and resources.NODE_MODULES_ENV in message
    assert list(resources.npm_cache_dir().parent.iterdir()) == []
