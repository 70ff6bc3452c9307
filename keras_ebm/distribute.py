"""Replica-aware helpers: strategy choice, replica-independent draws, loss
scaling, cross-replica flags and counts, the replica agreement check."""

import hashlib

import numpy as np
import tensorflow as tf


def get_strategy(name="default"):
    """Returns the `tf.distribute` strategy named by `config.train.strategy`.

    `default` is the no-op single-device strategy; `mirrored` spreads over all
    local GPUs (or, without GPUs, all logical CPUs); `multi_worker` reads
    `TF_CONFIG`; `tpu` resolves the local TPU.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every local GPU; without one, every logical CPU (TensorFlow's own
        # default would be a single CPU replica).
        devices = None
        if not tf.config.list_logical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy=None):
    """Whether this process writes the run's files.

    Under `MultiWorkerMirroredStrategy` every worker runs the same steps on
    the same global state (the banks and weights are mirrored), so one
    writer suffices: the `chief` task if the cluster names one, else worker
    0 (TensorFlow's convention). Every other strategy runs in one process.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def step_logs(logs):
    """A `train_step`'s returned metrics, shaped for Keras' reduction.

    Keras 3 reduces a multi-worker step's outputs with
    `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars ("Invalid
    reduction dimension 0 for input with 0 dimensions", tensorflow#72388);
    a leading axis of one makes that the mean over workers, a scalar again.
    """
    if isinstance(
        tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy
    ):
        return {name: tf.reshape(value, (1,)) for name, value in logs.items()}
    return logs


def _digest(array):
    """SHA-256 of an array's dtype, shape and bytes, as 4 int64 (a row that
    `strategy.gather` can carry)."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    h.update(array.tobytes())
    return np.frombuffer(h.digest(), dtype=np.int64)


def local_digests(variables, strategy):
    """`[local replica, variable, 4]` int64: the SHA-256 of every replica's
    own copy of each variable on this worker (a variable with one copy
    counts as every replica's)."""
    num_local = len(strategy.extended.worker_devices)
    out = np.zeros((num_local, len(variables), 4), np.int64)
    for j, v in enumerate(variables):
        value = getattr(v, "value", v)  # a Keras variable's TF variable
        copies = list(getattr(value, "values", None) or [value] * num_local)
        for i, copy in enumerate(copies):
            out[i, j] = _digest(copy.numpy())
    return out


def check_replicas_agree(variables, strategy):
    """Raises `RuntimeError` naming the variables whose replicas differ.

    Every replica's copy of each variable (on every worker) is hashed
    (SHA-256 of its bytes, on the host) and the digests are gathered: one
    global bank and one set of weights means one digest for all. Any
    difference in any byte shows, wherever it is (a weighted checksum
    misses permutations that keep its weights). Collective under a
    multi-worker strategy: every worker must call it. Returns the number
    of replicas compared.
    """
    variables = list(variables)
    mine = local_digests(variables, strategy)
    num_local = len(mine)

    def rows(ctx):
        return tf.constant(mine[ctx.replica_id_in_sync_group % num_local])

    per_replica = strategy.experimental_distribute_values_from_function(rows)
    every = strategy.gather(per_replica, axis=0).numpy()
    every = every.reshape(strategy.num_replicas_in_sync, len(variables), 4)
    differ = [
        v.path
        for j, v in enumerate(variables)
        if len({tuple(row) for row in every[:, j]}) > 1
    ]
    if differ:
        raise RuntimeError(
            f"replicas disagree on {len(differ)} variables: {', '.join(differ[:5])}"
        )
    return strategy.num_replicas_in_sync


def shape_keras_steps(model, example):
    """Makes a stock Keras model's `fit` and `evaluate` work under
    `MultiWorkerMirroredStrategy` (the classifier's); a no-op otherwise.

    Two Keras 3 bugs: the step metrics need `step_logs`, and `fit` builds
    the model by averaging its first distributed `(x, y)` batch over the
    replicas with one `strategy.reduce` of the whole tuple, which the
    multi-worker strategy cannot do ("Attempt to convert a value
    (PerReplica ...)"); the build is done from `example`, a plain batch of
    the same shapes, instead.
    """
    strategy = model.distribute_strategy
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    train_step, test_step = model.train_step, model.test_step
    model.train_step = lambda data: step_logs(train_step(data))
    model.test_step = lambda data: step_logs(test_step(data))

    def build(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=example)

    model._maybe_symbolic_build = build


def worker_task(name):
    """`(index, count, chief)` of this process among the workers named by
    `TF_CONFIG` when `name` is `multi_worker` (the chief, if any, first),
    else `(0, 1, True)`. Jobs that split work without collectives (the
    attack's batches) need no strategy, only this."""
    if name != "multi_worker":
        return 0, 1, True
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec().as_dict()
    tasks = [("chief", i) for i in range(len(spec.get("chief", [])))]
    tasks += [("worker", i) for i in range(len(spec.get("worker", [])))]
    if not tasks:
        return 0, 1, True
    index = tasks.index((resolver.task_type, resolver.task_id))
    return index, len(tasks), index == 0


def replica_info():
    """`(replica_id, num_replicas)` of the current replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: act as one replica
        return tf.constant(0), 1
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


def replica_rows(draw, shape):
    """This replica's rows of a draw made for the whole global batch.

    `draw(global_shape)` must be a function of its seed alone (a stateless
    draw); with R replicas of local batch `b = shape[0]`, replica r returns
    rows `r*b .. (r+1)*b` of `draw((R*b,) + shape[1:])`. Every replica makes
    the same global draw, so a step under R replicas uses exactly the random
    numbers of the same step on one device, and a run's results do not depend
    on how many devices it ran on (tested: a mirrored step equals a
    one-device step). The cost is R times the random numbers, negligible next
    to the network passes they feed.
    """
    replica_id, num_replicas = replica_info()
    if num_replicas == 1:
        return draw(shape)
    shape = tf.convert_to_tensor(shape, tf.int32)
    local = shape[0]
    full = draw(tf.concat([[local * num_replicas], shape[1:]], 0))
    return full[replica_id * local : (replica_id + 1) * local]


def run_on_rows(strategy, fn, x, *args):
    """`fn(x, *args) -> (rows, stats)` with replica r running rows
    `r*b .. (r+1)*b` of `x` (its share of the global batch, as
    `replica_rows`): the rows gathered back in order on every replica and
    worker, each of `stats` (scalars) averaged over replicas."""
    local = x.shape[0] // strategy.num_replicas_in_sync

    def rows(ctx):
        r = ctx.replica_id_in_sync_group
        return x[r * local : (r + 1) * local]

    shards = strategy.experimental_distribute_values_from_function(rows)
    out, stats = strategy.run(fn, args=(shards, *args))
    stats = [strategy.reduce("MEAN", v, axis=None) for v in stats]
    return strategy.gather(out, axis=0), stats


def replica_sum(x):
    """`x` summed over every replica (and worker), in replica context; `x`
    itself on one replica or in cross-replica context.

    For per-step metrics that are totals or flags: Keras reports the mean
    of the replicas' values, so a count of 3 bad rows on one of two
    replicas would read 1.5, and a flag raised on one of them 0.5. Summed
    first, every replica holds the global value and so does the mean.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def replica_any(flag):
    """1.0 on every replica when `flag` (0.0 or 1.0) is 1.0 on any of them
    (`replica_sum`; `ReduceOp` has no MAX)."""
    return tf.cast(replica_sum(flag) > 0.0, flag.dtype)


def scale_for_replicas(loss):
    """Divides a hand-written loss by the replica count.

    Keras sums gradients over replicas and does not scale losses computed in
    `train_step`, so without this the effective learning rate would grow with
    the number of replicas (the reference divides too).
    """
    _, num_replicas = replica_info()
    return loss / num_replicas
