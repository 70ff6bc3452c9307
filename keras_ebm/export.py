"""SavedModel export: plain TensorFlow can load and use a trained EBM.

Endpoints (float32 NHWC images in [-1, 1], dynamic batch; every sampling
endpoint takes an optional scalar int32 `num_steps`, whose default -1
stands for the endpoint's default below):

- `energy(x) -> [B]`: the potential `U(x)` of the regime (E/T plus any
  prior and Gaussian terms), what Langevin descends;
- `sample(x, num_steps=K) -> x`: Langevin from `x` with the trained step
  size and temperature (default: the training K);
- `purify(x, num_steps=purify_steps) -> x`: the regime's purification at
  `purify_step_size`;
- `generate(n, num_steps=eval_steps) -> [n, H, W, C]`: generator init plus
  Langevin at the evaluation step size and temperature (only for models
  with a generator; the longrun default is 100,000 steps, so pass fewer to
  look quickly).

`r = tf.saved_model.load(path)`, then `r.energy(x)` or
`r.generate(8, num_steps=100)`. Keep `r` referenced while calling its
endpoints.
"""

import contextlib
import logging

import keras
import tensorflow as tf

from keras_ebm import networks
from keras_ebm.sampling import langevin


def checked(x, state_shape, endpoint):
    """Rank and size checks with a message that says what is expected."""
    expected = "[B, " + ", ".join(str(d) for d in state_shape) + "] float32"
    target = tf.constant(state_shape, tf.int32)
    # Pad the shape so both comparisons have fixed sizes whatever the rank.
    padded = tf.concat([tf.shape(x), tf.zeros([len(state_shape) + 1], tf.int32)], 0)
    ok = tf.logical_and(
        tf.equal(tf.rank(x), len(state_shape) + 1),
        tf.reduce_all(tf.equal(padded[1 : len(state_shape) + 1], target)),
    )
    check = tf.debugging.Assert(
        ok, [f"{endpoint} expects {expected}, got", tf.shape(x)]
    )
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(x), (None,) + tuple(state_shape))


class _SaveNotes(logging.Filter):
    """Drops TF's INFO notes while a SavedModel is written: one per
    endpoint input whose name a signature key cannot hold, the sharding
    callback's duration, "Assets written", the fingerprint (nothing a user
    can act on); warnings and errors pass."""

    def filter(self, record):
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def quiet_save():
    """Writes SavedModels without TF's INFO notes (`_SaveNotes`)."""
    notes = _SaveNotes()
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    for logger in loggers:
        logger.addFilter(notes)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notes)


def write_out(archive, path):
    """`archive.write_out(path)` without TF's per-input notes."""
    with quiet_save():
        archive.write_out(path, verbose=False)
    return path


NUM_STEPS = tf.TensorSpec([], tf.int32, name="num_steps")
DEFAULT_STEPS = -1  # what an omitted `num_steps` is: the endpoint's default


def add_endpoint(archive, name, fn, *specs):
    """Adds `fn(*specs, num_steps=-1)` as endpoint `name`: one concrete
    function whose last argument may be omitted (the SavedModel keeps the
    Python default)."""
    archive.add_endpoint(name, tf.function(fn), input_signature=[*specs, NUM_STEPS])


def steps_or(num_steps, default):
    """`num_steps`, or the endpoint's `default` for -1 (omitted); other
    negative values fail."""
    check = tf.debugging.assert_greater_equal(
        num_steps,
        DEFAULT_STEPS,
        message="num_steps must be >= 0 (or -1, the endpoint's default)",
    )
    with tf.control_dependencies([check]):
        return tf.where(num_steps == DEFAULT_STEPS, default, num_steps)


def export(
    model,
    path,
    *,
    purify_steps=None,
    eval_steps=None,
    eval_step_size=None,
    eval_temperature=None,
    purify_step_size=None,
    purify_temperature=None,
):
    """Writes a SavedModel of `model` with the endpoints above to `path`.

    `purify` takes `purify_steps` steps at `purify_step_size` and
    `purify_temperature`; `generate` takes `eval_steps` at `eval_step_size`
    and `eval_temperature`. Every unset value is the model's training one
    (K, eps, T); each is the default of its endpoint's `num_steps`.
    """
    purify_steps = model.num_steps if purify_steps is None else purify_steps
    eval_steps = model.num_steps if eval_steps is None else eval_steps
    shape = tuple(model.state_shape)
    any_rank = tf.TensorSpec(None, tf.float32, name="x")
    archive = keras.export.ExportArchive()
    archive.track(model)

    def run(x, num_steps, step_size=None, temperature=None):
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        u = model.potential_at(temperature or model.temperature)
        x, _ = langevin(
            u,
            x,
            num_steps=num_steps,
            step_size=step_size or model.step_size,
            seed=seed,
            max_drift_norm=model.max_drift_norm,
        )
        return x

    def energy(x):
        return model.potential(checked(x, shape, "energy"))

    def sample(x, num_steps=DEFAULT_STEPS):
        x = checked(x, shape, "sample")
        return run(x, steps_or(num_steps, model.num_steps))

    def purify(x, num_steps=DEFAULT_STEPS):
        return run(
            checked(x, shape, "purify"),
            steps_or(num_steps, purify_steps),
            purify_step_size,
            purify_temperature,
        )

    archive.add_endpoint("energy", tf.function(energy), input_signature=[any_rank])
    add_endpoint(archive, "sample", sample, any_rank)
    add_endpoint(archive, "purify", purify, any_rank)
    if model.generator is not None:

        def generate(n, num_steps=DEFAULT_STEPS):
            tf.debugging.assert_positive(n, message="generate expects n >= 1")
            seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
            z = networks.sample_latent(
                model.generator, (n, model.generator.latent_dim), seed
            )
            x = model.generate(z, training=False)
            steps = steps_or(num_steps, eval_steps)
            return run(x, steps, eval_step_size, eval_temperature)

        add_endpoint(archive, "generate", generate, tf.TensorSpec([], tf.int32, "n"))
    return write_out(archive, path)
