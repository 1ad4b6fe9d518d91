"""Distributed and accelerated training: strategies, replicas, mixed precision, XLA.

One code path for every machine. A `tf.distribute` strategy is chosen by name:

    default        one device (the CPU, or the first GPU)
    mirrored       `MirroredStrategy`: every GPU of this machine (or several logical CPUs)
    multi-worker   `MultiWorkerMirroredStrategy`: several machines described by `TF_CONFIG`
    auto           mirrored with more than one GPU, multi-worker when `TF_CONFIG` names more
                   than one worker, else default

`--batch-size` is per replica: the global batch is `batch_size * replicas`, split by the
strategy across them, and the learning rate is scaled by the same factor (the linear
scaling rule), so a step on R replicas is one step on R times the data.

In a multi-worker run only the chief writes the run directory; the other workers write to a
temporary folder that is deleted when they finish (the Keras multi-worker pattern: every
worker runs the same saves, since reading synchronised variables takes all of them).

`VGG_MOBILE_LOGICAL_CPUS=N` splits the CPU into N logical devices before TensorFlow starts,
so the mirrored path can be exercised on a machine without GPUs (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from vgg_mobile.core.errors import BadInputError, require

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
LOGICAL_CPUS_ENV = "VGG_MOBILE_LOGICAL_CPUS"
MIXED_POLICY = "mixed_float16"
# Layers kept in float32 under mixed precision: the input normalisation (raw 0..255 pixels
# lose precision in float16) and the classifier's last layers (softmax and the loss need it).
FLOAT32_LAYERS = ("preprocess", "logits", "probs")


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Where and how the training steps run.

    Attributes:
        strategy: One of `STRATEGIES`.
        mixed_precision: Compute in float16 with float32 weights (`mixed_float16`), the
            `preprocess`, `logits` and `probs` layers in float32, with loss scaling.
        jit_compile: Compile the training step with XLA.
    """

    strategy: str = "default"
    mixed_precision: bool = False
    jit_compile: bool = False

    def __post_init__(self):
        require(self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}",
                f"strategy={self.strategy!r}")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a `TF_CONFIG` cluster.

    Attributes:
        workers: Processes taking part (chief included); 1 without `TF_CONFIG`.
        task_type: `chief`, `worker`, or `None` without `TF_CONFIG`.
        task_index: Index among the processes of `task_type`.
        has_chief: The cluster has a `chief` task (else worker 0 is the chief).
    """

    workers: int = 1
    task_type: str | None = None
    task_index: int = 0
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """The chief writes the run directory: task `chief`, or worker 0 when there is none."""
        return self.task_type in (None, "chief") or (
            self.task_type == "worker" and self.task_index == 0 and not self.has_chief)

    @property
    def name(self) -> str:
        return "single" if self.task_type is None else f"{self.task_type}:{self.task_index}"


def read_cluster(environ: dict | None = None) -> Cluster:
    """Reads `TF_CONFIG` from the environment.

    Raises:
        BadInputError: `TF_CONFIG` is not JSON or lacks `cluster`/`task`.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return Cluster()
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config.get("task") or {}
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise BadInputError(f"TF_CONFIG: not a cluster description ({type(err).__name__}: {err}); "
                            f"expected {{\"cluster\": {{\"worker\": [...]}}, \"task\": {{...}}}}. "
                            f"Received: TF_CONFIG={text[:200]!r}") from None
    if "type" not in task:
        raise BadInputError(f"TF_CONFIG: no task type. Received: TF_CONFIG={text[:200]!r}")
    return Cluster(workers=workers, task_type=task["type"], task_index=int(task.get("index", 0)),
                   has_chief=bool(cluster.get("chief")))


def resolve_strategy(name: str, gpus: int, cluster: Cluster) -> str:
    """The strategy `name` stands for on a machine with `gpus` GPUs in `cluster`."""
    require(name in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}", f"strategy={name!r}")
    if name != "auto":
        return name
    if cluster.workers > 1:
        return "multi-worker"
    return "mirrored" if gpus > 1 else "default"


def is_multi_worker(config: DistributeConfig, cluster: Cluster) -> bool:
    """Whether `config` runs multi-worker in `cluster` (known before TensorFlow starts)."""
    return config.strategy == "multi-worker" or (config.strategy == "auto" and cluster.workers > 1)


def check_cluster(config: DistributeConfig, cluster: Cluster) -> None:
    """Raises `BadInputError` when `config` asks for multi-worker and `cluster` has one worker."""
    require(config.strategy != "multi-worker" or cluster.workers > 1,
            "the multi-worker strategy needs TF_CONFIG naming at least two workers (see README, "
            "'Training at scale')", f"TF_CONFIG workers={cluster.workers}")


def writes_run(config: DistributeConfig, cluster: Cluster) -> bool:
    """Whether this process writes the run directory: always, except a multi-worker non-chief."""
    return cluster.is_chief or not is_multi_worker(config, cluster)


def shard_by_data(ds):
    """Shards `ds` across workers by element: it reads files by path, not file by file."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def configure_logical_cpus() -> int:
    """Splits the CPU into `$VGG_MOBILE_LOGICAL_CPUS` logical devices (before TF starts).

    Returns:
        The number of logical CPUs configured (1 when the variable is unset).

    Raises:
        BadInputError: The variable is not a positive integer.
    """
    text = os.environ.get(LOGICAL_CPUS_ENV, "").strip()
    if not text:
        return 1
    require(text.isdigit() and int(text) >= 1, f"{LOGICAL_CPUS_ENV} must be a positive integer",
            f"{LOGICAL_CPUS_ENV}={text!r}")
    import tensorflow as tf

    count = int(text)
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        pass  # TensorFlow already started in this process: keep whatever it has.
    return len(tf.config.list_logical_devices("CPU"))


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A created strategy and what it means for this process.

    Attributes:
        strategy: The `tf.distribute.Strategy`.
        name: The resolved strategy name (never `auto`).
        requested: The name asked for.
        replicas: Replicas in sync across every worker.
        cluster: This process's place in the cluster.
        devices: The devices of this worker's replicas.
        config: The settings it was created from.
    """

    strategy: object
    name: str
    requested: str
    replicas: int
    cluster: Cluster
    devices: tuple[str, ...]
    config: DistributeConfig

    @property
    def writes_run(self) -> bool:
        return writes_run(self.config, self.cluster)

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    def scaled_learning_rate(self, base: float) -> float:
        return base * self.replicas

    @property
    def is_special(self) -> bool:
        """Anything other than one device in float32 without XLA: worth a log line."""
        return self.name != "default" or self.config.mixed_precision or self.config.jit_compile

    def describe(self, per_replica_batch: int, base_learning_rate: float) -> str:
        """One log line: strategy, replicas, global batch, scaled learning rate, precision."""
        return (f"strategy {self.name} ({self.cluster.name}): {self.replicas} replica(s), global "
                f"batch {self.global_batch(per_replica_batch)} ({per_replica_batch} per replica), "
                f"learning rate {self.scaled_learning_rate(base_learning_rate):g} "
                f"({base_learning_rate:g} x {self.replicas})"
                + (", mixed_float16" if self.config.mixed_precision else "")
                + (", XLA" if self.config.jit_compile else ""))

    def record(self, per_replica_batch: int, base_learning_rate: float) -> dict:
        """The manifest's `distribution` entry."""
        return {"strategy": self.name, "requested": self.requested, "replicas": self.replicas,
                "workers": self.cluster.workers, "devices": list(self.devices),
                "per_replica_batch": per_replica_batch,
                "global_batch": self.global_batch(per_replica_batch),
                "learning_rate": base_learning_rate,
                "scaled_learning_rate": self.scaled_learning_rate(base_learning_rate),
                "learning_rate_scaling": "linear in replicas",
                "mixed_precision": self.config.mixed_precision,
                "jit_compile": self.config.jit_compile,
                "written_by": self.cluster.name}


def create_distribution(config: DistributeConfig | None = None) -> Distribution:
    """Creates the strategy; call it before any other TensorFlow work in the process.

    `MultiWorkerMirroredStrategy` configures collective ops, which TensorFlow accepts only
    before its runtime starts; logical CPUs likewise.

    Args:
        config: Strategy, mixed precision and XLA settings. Defaults to `DistributeConfig()`.

    Returns:
        A `Distribution`.

    Raises:
        BadInputError: `multi-worker` without a `TF_CONFIG` of at least two workers, or a bad
            `TF_CONFIG` or `VGG_MOBILE_LOGICAL_CPUS`.
    """
    config = config or DistributeConfig()
    cluster = read_cluster()
    logical_cpus = configure_logical_cpus()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    name = resolve_strategy(config.strategy, len(gpus), cluster)
    check_cluster(config, cluster)
    if name == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        # Without GPUs MirroredStrategy would take the one CPU; logical CPUs stand in for GPUs.
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")][:logical_cpus]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        strategy = tf.distribute.get_strategy()
    # The default strategy has no device list: TensorFlow places ops on the first GPU, if any.
    devices = (tuple(strategy.extended.worker_devices) if name != "default"
               else ("/gpu:0",) if gpus else ("/cpu:0",))
    return Distribution(strategy, name, config.strategy, int(strategy.num_replicas_in_sync),
                        cluster, devices, config)


@contextlib.contextmanager
def writer_dir(out_dir: Path, distribution: Distribution) -> Iterator[Path]:
    """The folder this process writes its run into: `out_dir` on the chief, else a temporary
    folder deleted on exit (even on failure)."""
    if writes_run(distribution.config, distribution.cluster):
        yield Path(out_dir)
        return
    temp = Path(tempfile.mkdtemp(prefix=f"vgg-mobile-{distribution.cluster.task_type}"
                                        f"{distribution.cluster.task_index}-"))
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def backup_callback(backup_dir: Path, own_dir: Path, distribution: Distribution,
                    delete_checkpoint: bool = True):
    """A `BackupAndRestore` callback that restores from the chief's backup in `backup_dir`.

    Every worker restores from `backup_dir/chief` (so the folder must be on storage they all
    reach); a non-chief worker's own writes go under `own_dir`, never into the chief's folder:
    it gets a private folder whose `chief` entry is a link to the chief's.
    `delete_checkpoint=False` keeps the backup when training ends.
    """
    import tf_keras as keras

    if writes_run(distribution.config, distribution.cluster):
        return keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=delete_checkpoint)
    own_dir.mkdir(parents=True, exist_ok=True)
    link = own_dir / "chief"
    if not link.is_symlink():
        link.symlink_to((backup_dir / "chief").resolve(), target_is_directory=True)
    return keras.callbacks.BackupAndRestore(str(own_dir), delete_checkpoint=delete_checkpoint)


def with_layer_policies(model, policy_of):
    """A copy of `model` whose layers compute in `policy_of(layer_name)`, same weights.

    Args:
        model: A Functional `tf_keras` model.
        policy_of: Maps a layer name to a dtype policy name (`float32`, `mixed_float16`).

    Returns:
        A new model; the original is unchanged.
    """
    import tf_keras as keras

    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":
            layer["config"]["dtype"] = policy_of(layer["name"])
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def to_mixed_precision(model):
    """A `mixed_float16` copy of a classifier, keeping `FLOAT32_LAYERS` in float32.

    The global Keras policy is left alone, so nothing else in the process changes.
    """
    return with_layer_policies(model, lambda name: "float32" if name in FLOAT32_LAYERS else MIXED_POLICY)


def to_float32(model):
    """A float32 copy of a (mixed-precision) classifier: what converters and tfmot take."""
    return with_layer_policies(model, lambda name: "float32")


def wrap_optimizer(optimizer, config: DistributeConfig):
    """Adds dynamic loss scaling under mixed precision (float16 gradients underflow)."""
    if not config.mixed_precision:
        return optimizer
    import tf_keras as keras

    return keras.mixed_precision.LossScaleOptimizer(optimizer)


def inner_optimizer(optimizer):
    """The optimizer whose variables are checkpointed (inside a loss-scale wrapper, if any)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def weights_digest(model) -> str:
    """SHA-256 of every weight of `model`, in order: equal digests mean equal models."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
