"""The public API: every name resolves, from the one module that defines it, lazily."""

from __future__ import annotations

import subprocess
import sys

import vgg_mobile


def test_every_public_name_resolves_to_its_defining_module():
    for name, module in vgg_mobile._API.items():
        value = getattr(vgg_mobile, name)
        assert getattr(value, "__module__", module) == module, (name, value)
    assert set(vgg_mobile.__all__) == {"__version__", *vgg_mobile._API}


def test_an_unknown_name_is_an_attribute_error():
    try:
        vgg_mobile.no_such_thing
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_light():
    code = ("import sys, vgg_mobile; vgg_mobile.ModelOptions; vgg_mobile.TrainConfig; "
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'tensorflow_model_optimization') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
