"""`vgg-mobile doctor`: versions, devices, whether the GPU path is active and what to do."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import tf_config


def test_tflite_support_hint_names_what_fails():
    from vgg_mobile.training.doctor import tflite_support_hint

    assert "cannot pack metadata" in tflite_support_hint({"metadata writers": "ImportError: x"})
    hint = tflite_support_hint({"metadata writers": "ok", "tflite_support.metadata": "TypeError: y",
                                "tflite_support.task.vision": "TypeError: y"})
    assert "tflite_support.metadata and tflite_support.task.vision do not import" in hint
    assert tflite_support_hint({"metadata writers": "ok"}) == "tflite-support imports fully"


def test_gpu_hint_says_what_to_do():
    from vgg_mobile.training.doctor import gpu_hint

    assert gpu_hint(True, 2, True).startswith("GPU path active: 2 GPU(s)")
    assert "uv sync --extra gpu" in gpu_hint(True, 0, False)
    # An installed wheel has no checkout to `uv sync`: the hint names its own install.
    outside = gpu_hint(True, 0, False, checkout=False)
    assert "uv sync" not in outside and "[gpu]" in outside
    assert "nvidia-smi" in gpu_hint(True, 0, True)
    assert "not built with CUDA" in gpu_hint(False, 0, False)


def test_doctor_reports_versions_devices_and_the_gpu_path(cli):
    result = cli("doctor", "--json", env={"TF_CONFIG": tf_config([1, 2], 1)})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for name in ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tensorflowjs",
                 "tflite-support"):
        assert report["packages"][name] == importlib.metadata.version(name)
    assert report["tensorflow"]["version"] == report["packages"]["tensorflow"]
    import vgg_mobile

    assert report["vgg_mobile"]["location"] == str(Path(vgg_mobile.__file__).resolve().parent)
    assert report["vgg_mobile"]["tfjs"]  # the checkout's, installed by `make install`
    # What convert needs works; tflite-support's public modules fail on the old protobuf files.
    assert report["tflite_support"]["metadata writers"] == "ok"
    assert report["tflite_support"]["tflite_support.task.vision"].startswith("TypeError")
    assert "uses only the metadata writers" in report["tflite_support_hint"]
    assert report["python"] == sys.version.split()[0]
    assert any(d.startswith("CPU:") for d in report["devices"]["physical"])
    assert any(d.startswith("CPU:") for d in report["devices"]["logical"])
    # No GPU on the machines this runs on; the report must say so, and why.
    assert report["gpus"] == len([d for d in report["devices"]["physical"] if d.startswith("GPU:")])
    assert report["gpu_path_active"] == (report["tensorflow"]["cuda_build"] and report["gpus"] > 0)
    assert report["hint"].startswith("GPU path " + ("active" if report["gpu_path_active"] else "inactive"))
    assert report["cluster"] == {"workers": 2, "task": "worker:1", "chief": False,
                                 "auto_strategy": "multi-worker"}
    text = cli("doctor")
    assert text.returncode == 0
    # Nothing on stderr that reads as a crash or an error on a machine that works.
    assert "Error" not in text.stderr and "E0000" not in text.stderr, text.stderr
    assert f"tensorflow                      {report['packages']['tensorflow']}" in text.stdout
    assert report["hint"] in text.stdout and "physical devices: CPU:" in text.stdout
    assert "import metadata writers: ok" in text.stdout


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False")])
def test_onednn_kernels_are_on_unless_the_environment_says_no(setting, expected):
    # TensorFlow leaves them off on CPUs without AVX-512 VNNI/BF16/AMX; importing vgg_mobile
    # first turns them on, and an explicit TF_ENABLE_ONEDNN_OPTS=0 is respected.
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = ("import vgg_mobile, tensorflow\n"
            "from vgg_mobile.training.doctor import onednn_enabled\n"
            "print(onednn_enabled())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected
