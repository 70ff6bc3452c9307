"""SavedModel export: plain TensorFlow can load and use a trained EBM.

Endpoints (float32 NHWC images in [-1, 1], dynamic batch):

- `energy(x) -> [B]`: the potential `U(x)` of the regime (E/T plus any
  prior and Gaussian terms), what Langevin descends;
- `sample(x, num_steps) -> x`: Langevin from `x` with the trained step size
  and temperature;
- `purify(x) -> x`: the regime's purification, `purify_steps` steps at
  `purify_step_size`;
- `generate(n) -> [n, H, W, C]`: generator init plus the evaluation steps
  (only for models with a generator).

`r = tf.saved_model.load(path)`, then `r.energy(x)`. Keep `r` referenced
while calling its endpoints.
"""

import keras
import tensorflow as tf

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


def export(
    model,
    path,
    *,
    purify_steps,
    eval_steps,
    eval_step_size,
    eval_temperature,
    purify_step_size=None,
    purify_temperature=None,
):
    """Writes a SavedModel of `model` with the endpoints above to `path`.

    `purify` takes `purify_steps` steps at `purify_step_size` and
    `purify_temperature` (default: the training step size and temperature);
    `generate` takes `eval_steps` at the evaluation step size and
    temperature.
    """
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

    def sample(x, num_steps):
        x = checked(x, shape, "sample")
        tf.debugging.assert_non_negative(num_steps, message="num_steps must be >= 0")
        return run(x, num_steps)

    def purify(x):
        return run(
            checked(x, shape, "purify"),
            purify_steps,
            purify_step_size,
            purify_temperature,
        )

    archive.add_endpoint("energy", tf.function(energy), input_signature=[any_rank])
    archive.add_endpoint(
        "sample",
        tf.function(sample),
        input_signature=[any_rank, tf.TensorSpec([], tf.int32, name="num_steps")],
    )
    archive.add_endpoint("purify", tf.function(purify), input_signature=[any_rank])
    if model.generator is not None:

        def generate(n):
            tf.debugging.assert_positive(n, message="generate expects n >= 1")
            z = tf.random.normal((n, model.generator.latent_dim))
            x = model.generate(z, training=False)
            return run(x, eval_steps, eval_step_size, eval_temperature)

        archive.add_endpoint(
            "generate",
            tf.function(generate),
            input_signature=[tf.TensorSpec([], tf.int32, name="n")],
        )
    archive.write_out(path, verbose=False)
    return path
