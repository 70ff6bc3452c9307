"""Langevin purification in front of a classifier (paper Section 3).

Purification `T(x)`: K_def Langevin steps from `x` under the EBM's training
potential (`E/T`; no clipping of states). The defended classifier averages
the logits of H purified replicates,

`F(x) = argmax_c (1/H) sum_h f(T_h(x))_c`,

for any Keras classifier `f` that maps float32 `[B, H, W, C]` images in
[-1, 1] to logits.
"""

import keras
import tensorflow as tf

from keras_ebm import export as export_lib
from keras_ebm.sampling import langevin


class DefendedClassifier:
    """`classifier` behind `num_steps` steps of `model`'s Langevin.

    Args:
        model: a trained `EnergyModel` (its potential and step size).
        classifier: a Keras model, images -> logits.
        num_steps: K_def.
        step_size: purification eps; default the model's training eps.
    """

    def __init__(self, model, classifier, num_steps, step_size=None):
        self.model = model
        self.classifier = classifier
        self.num_steps = num_steps
        self.step_size = step_size or model.step_size

    def purify(self, x, seed, num_steps=None):
        """`T(x)`: K_def (or `num_steps`) Langevin steps, noise from `seed`
        `[2]`; 0 steps is the identity (the undefended classifier)."""
        num_steps = self.num_steps if num_steps is None else num_steps
        if isinstance(num_steps, int) and num_steps == 0:
            return x
        x, _ = langevin(
            self.model.potential,
            x,
            num_steps=num_steps,
            step_size=self.step_size,
            seed=seed,
            max_drift_norm=self.model.max_drift_norm,
        )
        return x

    def logits(self, x, num_replicates, seed):
        """Replicate-averaged logits `[B, classes]` of `f(T(x))`.

        Replicates are laid out as the reference's `tf.repeat` (`[x1]*H,
        [x2]*H, ...`), so one Langevin batch purifies them all.
        """
        h = num_replicates
        purified = self.purify(tf.repeat(x, h, axis=0), seed)
        out = self.classifier(purified, training=False)
        return tf.reduce_mean(tf.reshape(out, (-1, h, tf.shape(out)[-1])), axis=1)


def export_defended(defended, path):
    """A SavedModel with `classify(x)` (the undefended logits, differentiable
    in x), `purify(x)` (K_def steps, fresh noise every call) and
    `predict(x, num_replicates)` (replicate-averaged logits of
    classify(purify(x))), on float32 `[B, H, W, C]` in [-1, 1], loadable with
    plain TensorFlow."""
    shape = tuple(defended.model.state_shape)
    any_rank = tf.TensorSpec(None, tf.float32, name="x")
    archive = keras.export.ExportArchive()
    archive.track(defended.model)
    archive.track(defended.classifier)

    def seed():
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)

    def classify(x):
        x = export_lib.checked(x, shape, "classify")
        return defended.classifier(x, training=False)

    def purify(x):
        return defended.purify(export_lib.checked(x, shape, "purify"), seed())

    def predict(x, num_replicates):
        x = export_lib.checked(x, shape, "predict")
        tf.debugging.assert_positive(num_replicates, message="num_replicates >= 1")
        return defended.logits(x, num_replicates, seed())

    archive.add_endpoint("classify", tf.function(classify), input_signature=[any_rank])
    archive.add_endpoint("purify", tf.function(purify), input_signature=[any_rank])
    archive.add_endpoint(
        "predict",
        tf.function(predict),
        input_signature=[any_rank, tf.TensorSpec([], tf.int32, name="num_replicates")],
    )
    archive.write_out(path, verbose=False)
    return path
