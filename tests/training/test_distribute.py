"""Training at scale, tested on CPU: strategies, replicas, multi-worker restarts, mixed
precision and XLA."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vgg_mobile.training import distribute as dist
from vgg_mobile.training.distribute import Cluster, DistributeConfig
from vgg_mobile.core.errors import BadInputError

from harness import TINY_MODEL_FLAGS as TINY
from harness import tf_config


# --- choosing a strategy (no TensorFlow runtime) ---


def test_tf_config_decides_the_chief_and_auto_strategy():
    assert dist.read_cluster({}) == Cluster()
    assert Cluster().is_chief
    workers = dist.read_cluster({"TF_CONFIG": tf_config([1, 2, 3], 1)})
    assert (workers.workers, workers.task_type, workers.task_index) == (3, "worker", 1)
    assert not workers.is_chief and workers.name == "worker:1"
    assert dist.read_cluster({"TF_CONFIG": tf_config([1, 2], 0)}).is_chief
    with_chief = dist.read_cluster({"TF_CONFIG": json.dumps(
        {"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}})})
    assert with_chief.workers == 2 and not with_chief.is_chief  # the chief task writes, not worker 0

    assert dist.resolve_strategy("auto", gpus=0, cluster=Cluster()) == "default"
    assert dist.resolve_strategy("auto", gpus=1, cluster=Cluster()) == "default"
    assert dist.resolve_strategy("auto", gpus=2, cluster=Cluster()) == "mirrored"
    assert dist.resolve_strategy("auto", gpus=2, cluster=workers) == "multi-worker"
    assert dist.resolve_strategy("mirrored", gpus=0, cluster=workers) == "mirrored"
    # A non-chief writes nothing only when it really runs multi-worker.
    assert not dist.writes_run(DistributeConfig("multi-worker"), workers)
    assert not dist.writes_run(DistributeConfig("auto"), workers)
    assert dist.writes_run(DistributeConfig("default"), workers)


def test_bad_strategy_or_tf_config_is_refused_with_the_value():
    with pytest.raises(BadInputError, match=r"strategy must be one of auto, default, mirrored, "
                                            r"multi-worker. Received: strategy='tpu'"):
        DistributeConfig(strategy="tpu")
    with pytest.raises(BadInputError, match=r"TF_CONFIG: not a cluster description .*'\{oops'"):
        dist.read_cluster({"TF_CONFIG": "{oops"})
    with pytest.raises(BadInputError, match="no task type"):
        dist.read_cluster({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}})})
    with pytest.raises(BadInputError, match="needs TF_CONFIG naming at least two workers"):
        dist.check_cluster(DistributeConfig("multi-worker"), Cluster())


def test_multi_worker_without_tf_config_exits_2_and_writes_nothing(sample_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "vgg_mobile", "train", str(sample_dir), "--out",
                             str(tmp_path / "run"), *TINY, "--strategy", "multi-worker"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs TF_CONFIG naming at least two workers" in result.stderr
    assert not (tmp_path / "run").exists()


# --- one machine: mirrored replicas, mixed precision, XLA, the data benchmark ---


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_trains_and_distills_with_two_replicas(cli, tiny_data,
                                                                           teacher_run, tmp_path):
    from vgg_mobile.core.run_dir import load_run

    env = {dist.LOGICAL_CPUS_ENV: "2"}
    result = cli("train", tiny_data, "--out", tmp_path / "teacher", *TINY, "--epochs", "1",
                 "--batch-size", "4", "--learning-rate", "0.001", "--strategy", "mirrored",
                 "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "teacher" / "manifest.json").read_text())
    record = manifest["distribution"]
    assert record["strategy"] == "mirrored" and record["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in record["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert (record["per_replica_batch"], record["global_batch"]) == (4, 8)
    assert record["scaled_learning_rate"] == pytest.approx(0.002)
    assert json.loads(result.stdout)["distribution"] == record
    load_run(tmp_path / "teacher").load_model()

    # The session teacher (VGG16) on other images of its classes.
    student = cli("distill", "--teacher", teacher_run.run_dir, "--data", tiny_data,
                  "--out", tmp_path / "student", "--image-size", "32", "--epochs", "1",
                  "--batch-size", "4", "--strategy", "mirrored", "--mixed-precision", "--json",
                  env=env)
    assert student.returncode == 0, student.stderr[-3000:]
    run = load_run(tmp_path / "student")
    record = run.manifest.section("distribution")
    assert (record["replicas"], record["global_batch"], record["mixed_precision"]) == (2, 8, True)
    assert record["scaled_learning_rate"] == pytest.approx(2 * record["learning_rate"])
    model = run.load_model()
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


@pytest.mark.slow
def test_mixed_precision_and_xla_train_a_model_that_converts(tiny_data, tmp_path):
    import tf_keras as keras

    from vgg_mobile.converters.tflite import convert_keras_model, predict_tflite
    from vgg_mobile.data import dataset
    from vgg_mobile.training.hyperparameters import TrainConfig
    from vgg_mobile.models.architectures import ModelOptions
    from vgg_mobile.core.run_dir import load_run
    from vgg_mobile.training.train import train

    seen = {}

    class Inspect(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not seen:
                seen.update({name: self.model.get_layer(name).compute_dtype
                             for name in ("block1_conv1", "block5_conv3", "logits", "probs")})
                seen["optimizer"] = type(self.model.optimizer).__name__
                seen["jit_compile"] = self.model.jit_compile
                seen["output"] = self.model.output.dtype.name

    before = keras.mixed_precision.global_policy().name
    result = train(tiny_data, tmp_path / "run", ModelOptions(image_size=32, weights="none"),
                   TrainConfig(epochs=2, batch_size=8, learning_rate=3e-4), callbacks=(Inspect(),),
                   distribute=DistributeConfig(mixed_precision=True, jit_compile=True))
    assert seen == {"block1_conv1": "float16", "block5_conv3": "float16", "logits": "float32",
                    "probs": "float32", "optimizer": "LossScaleOptimizerV3", "jit_compile": True,
                    "output": "float32"}
    assert keras.mixed_precision.global_policy().name == before == "float32"
    assert len(result.history["loss"]) == 2 and np.isfinite(result.history["loss"]).all()
    assert result.distribution["mixed_precision"] and result.distribution["jit_compile"]

    run = load_run(result.run_dir)
    model = run.load_model()
    # Saved in float32: TFLite's builtin kernels take no float16 convolutions.
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert dist.weights_digest(model) == result.weights_sha256
    images, _ = next(iter(dataset.make_dataset(dataset.scan_folder(tiny_data).train[:12], 32, 12, 4)))
    images = images.numpy()
    reference = model.predict(images, verbose=0)
    assert reference.std(axis=0).max() > 1e-3  # outputs vary across images
    lite = predict_tflite(convert_keras_model(model, "float32"), images)
    np.testing.assert_allclose(lite, reference, atol=1e-4)


# --- several workers: MultiWorkerMirroredStrategy on 127.0.0.1 ---


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture()
def workers():
    """Starts training workers; kills whatever is left of them at the end, so nothing hangs."""
    started: list[subprocess.Popen] = []

    def start(data, out, *extra, epochs=3):
        ports = _free_ports(2)
        procs = []
        for index in range(2):
            env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vgg_mobile", "train", str(data), "--out", str(out), *TINY,
                 "--epochs", str(epochs), "--batch-size", "4", "--strategy", "multi-worker",
                 "--json", "--quiet", *extra],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_multi_worker_trains_in_step_and_resumes_from_the_backup_after_a_kill(workers, tiny_data,
                                                                              tmp_path):
    from vgg_mobile.core.run_dir import load_run

    out = tmp_path / "run"
    state = out / "checkpoints" / "state.json"
    # BackupAndRestore's index file: names the latest backup, one per epoch (ckpt-N after N).
    backup = out / "checkpoints" / "backup" / "phase-0" / "chief" / "checkpoint"

    def backed_up(epochs: int) -> bool:
        return (state.exists() and json.loads(state.read_text())["epochs_done"] >= epochs
                and backup.exists() and f'"ckpt-{epochs}"' in backup.read_text())

    chief, worker = workers(tiny_data, out)
    deadline = time.monotonic() + 400
    while not backed_up(2):
        assert chief.poll() is None and worker.poll() is None, chief.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "epoch 2 not reached"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)  # a lost machine
    worker.wait(timeout=30)
    # The chief now waits on a collective that will never complete: restart both, as with
    # any multi-worker job.
    chief.kill()
    chief.wait(timeout=30)
    epochs_before_kill = json.loads(state.read_text())["epochs_done"]
    assert epochs_before_kill >= 2 and not (out / "manifest.json").exists()

    chief, worker = workers(tiny_data, out, "--resume")
    chief_out, chief_err = chief.communicate(timeout=480)
    worker_out, worker_err = worker.communicate(timeout=120)
    assert chief.returncode == 0, chief_err[-3000:]
    assert worker.returncode == 0, worker_err[-3000:]
    chief_result, worker_result = json.loads(chief_out), json.loads(worker_out)

    # The same weights on both workers, and they are the ones saved.
    assert chief_result["weights_sha256"] == worker_result["weights_sha256"]
    saved = load_run(out).load_model()
    assert dist.weights_digest(saved) == chief_result["weights_sha256"]

    # Resumed: the epochs done before the kill were not redone.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["resumed_from_epoch"] == epochs_before_kill
    assert manifest["training"]["restored_from_backup_epoch"] == epochs_before_kill
    assert f"continued from the backup after epoch {epochs_before_kill}" in chief_err
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 3
    assert chief_result["resumed_from_epoch"] == worker_result["resumed_from_epoch"] == epochs_before_kill

    # Only the chief wrote the run directory; the worker's own folder is gone.
    record = manifest["distribution"]
    assert (record["strategy"], record["replicas"], record["workers"]) == ("multi-worker", 2, 2)
    assert (record["global_batch"], record["written_by"]) == (8, "worker:0")
    assert chief_result["run"] == str(out) and worker_result["run"] is None
    assert worker_result["worker"] == "worker:1"
    assert {p.name for p in out.iterdir()} == {"model.keras", "labels.txt", "manifest.json",
                                                "history.json", "training_curves.png", "logs"}
    assert not [p for p in out.rglob("*") if "workertemp" in p.name]
    own = re.search(r"this worker's own files went to (\S+) \(deleted on exit\)", worker_err).group(1)
    assert not Path(own).exists() and not Path(own).is_relative_to(out)
