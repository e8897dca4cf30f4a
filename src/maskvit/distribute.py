"""Where the work runs. Training: one device, all local devices, or several machines, through
tf.distribute; the trainer asks for a strategy by name and learns whether this process is the
chief, the one that writes files. Inference: batches spread over a CPU's cores."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf

from .errors import MaskvitError, reason

STRATEGIES = ("default", "mirrored", "multiworker")
# Images per inference batch. Small batches keep a batch's activations in a core's cache; it
# divides data.EVAL_BATCH, so each batch of "mixed" evaluation masks hides one count.
INFER_BATCH = 50


def one_thread_per_op() -> bool:
    """For commands that only infer (evaluate, compare): each TensorFlow op on one thread, and as
    many batches at once as there are cores (map_batches). Our models are many small ops, which
    split over threads spend much of their time waiting on one another. On a 2-core EPYC,
    `evaluate --grid` with the 4-block model then shipped took 174, 182 and 201 s against 189, 218 and 266 s
    in three back-to-back pairs, every number the same; the model's inference 0.64-0.71 against
    0.75-0.81 ms per image in three interleaved repeats (3,000 images, 3 ratios), importance
    scoring of 2,000 images 11.4-12.0 s against 13.2-14.2 s with TensorFlow's default threads
    and two batches at once (3.5 s of each tracing). Process-wide, and only possible before
    TensorFlow's first op: returns whether it took effect. Not with a GPU, where the CPU's
    threads only feed it."""
    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(os.cpu_count() or 1)
    except RuntimeError:  # the runtime has started: keep its threads
        return False
    return True


def batches_at_once() -> int:
    """One batch per core when each op has one thread; else two, which keep a 2-core CPU busy
    where one leaves part of it idle (7-13% faster per grid cell)."""
    return (os.cpu_count() or 1) if tf.config.threading.get_intra_op_parallelism_threads() == 1 else 2


def map_batches(fn, n: int, batch_size: int = INFER_BATCH):
    """[fn(start, stop) for each batch of range(n)], in order, batches_at_once() at a time."""
    with ThreadPoolExecutor(batches_at_once()) as pool:
        return list(pool.map(lambda i: fn(i, min(i + batch_size, n)), range(0, n, batch_size)))


def cluster_spec() -> dict:
    """TF_CONFIG, checked: {"cluster": {"worker": [...], ...}, "task": {"type": ..., "index": ...}}."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise MaskvitError("--strategy multiworker needs TF_CONFIG (cluster and task of this process); see README, 'Several devices and machines'")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task_type, index = config["task"]["type"], int(config["task"]["index"])
        members = config["cluster"][task_type]
        if not isinstance(workers, list) or not 0 <= index < len(members):
            raise ValueError(f"task {task_type}:{index} is not in the cluster")
    except (ValueError, KeyError, TypeError) as e:
        raise MaskvitError(f"TF_CONFIG is not a valid cluster description ({reason(e)})") from None
    return config


def make(name: str) -> tf.distribute.Strategy:
    """The named strategy. Create it before any other TensorFlow work in the process: the
    multi-worker one configures collective communication, which must come first."""
    if name not in STRATEGIES:
        raise MaskvitError(f"unknown distribution strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()  # every local GPU, or the CPU when there is none
    cluster_spec()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief is the 'chief' task, or worker 0 when the cluster names none."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True when replicas sit in more than one process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return False
    return sum(len(tasks) for job, tasks in resolver.cluster_spec().as_dict().items() if job in ("chief", "worker")) > 1


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Every worker builds each global batch (the data is in memory, masks are seeded) and keeps
    its replicas' slices, so the workers see distinct parts of every epoch and the same steps."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
