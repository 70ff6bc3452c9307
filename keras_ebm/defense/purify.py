"""Langevin purification in front of a classifier (paper Section 3).

Purification `T(x)`: K_def Langevin steps from `x` under the EBM's
potential `E/T` (T the training temperature unless set; no clipping of
states). The defended classifier averages
the logits of H purified replicates,

`F(x) = argmax_c (1/H) sum_h f(T_h(x))_c`,

for any Keras classifier `f` that maps float32 `[B, H, W, C]` images in
[-1, 1] to logits.
"""

import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import export as export_lib
from keras_ebm.errors import ConfigError
from keras_ebm.networks.smooth import smooth_relu
from keras_ebm.runs import files
from keras_ebm.sampling import langevin, surrogate_potential


class DefendedClassifier:
    """`classifier` behind `num_steps` steps of `model`'s Langevin.

    Inputs are the EBM's states, float32 `[B, *model.state_shape]` (images:
    NHWC in [-1, 1]); outputs are the classifier's logits `[B, classes]`.

    Args:
        model: a trained `EnergyModel` (its potential and step size).
        classifier: a Keras model, states -> logits, trained without the
            EBM (any naturally trained classifier).
        num_steps: K_def.
        step_size: purification eps; default the model's training eps.
        temperature: purification T of `U = E/T`; default the training T.
    """

    def __init__(self, model, classifier, num_steps, step_size=None, temperature=None):
        self.model = model
        self.classifier = classifier
        self.num_steps = num_steps
        self.step_size = step_size or model.step_size
        self.temperature = temperature or model.temperature
        self.potential = model.potential_at(self.temperature)

    def purify(self, x, seed, num_steps=None, first_step=0, potential=None):
        """`T(x)`: K_def (or `num_steps`) Langevin steps, noise from `seed`
        `[2]`; 0 steps is the identity (the undefended classifier).
        `first_step` continues a chain cut into segments: steps
        `first_step, first_step + 1, ...` of the chain of `seed`.
        `potential` replaces the purification potential (a surrogate with
        the same value and gradient: `surrogate_potential`)."""
        num_steps = self.num_steps if num_steps is None else num_steps
        if isinstance(num_steps, int) and num_steps == 0:
            return x
        x, _ = langevin(
            potential or self.potential,
            x,
            num_steps=num_steps,
            step_size=self.step_size,
            seed=seed,
            max_drift_norm=self.model.max_drift_norm,
            first_step=first_step,
        )
        return x

    def surrogate_potential(self, beta):
        """The purification potential U with the Hessian of its smooth twin
        (every ReLU of the EBM, and of the prior, as softplus(beta z)/beta;
        `sampling.surrogate_potential`): chains under it are the true
        chains, their gradients the twin's at the true states."""
        nets = [self.model.energy_net]
        if getattr(self.model, "prior_net", None) is not None:
            nets.append(self.model.prior_net)

        def smooth(x):
            with smooth_relu(nets, beta):
                return self.potential(x)

        return surrogate_potential(self.potential, smooth)

    def settings(self):
        """What the defended classifier computes with, as JSON values."""
        return dict(
            k_def=int(self.num_steps),
            purify_step_size=float(self.step_size),
            purify_temperature=float(self.temperature),
            defended=self.digest(),
        )

    def digest(self):
        """A short hash of everything the defended classifier computes with:
        the EBM's and the classifier's weights, T, the purification step
        size and drift clip (results cached under it are recomputed when
        any of them changes)."""
        h = hashlib.sha256()
        nets = [self.model.energy_net, self.classifier]
        if getattr(self.model, "prior_net", None) is not None:
            nets.append(self.model.prior_net)
        for net in nets:
            h.update(type(net).__qualname__.encode())
            # An input adapter's size and range change what it computes.
            h.update(json.dumps(getattr(net, "adapter_settings", None)).encode())
            for v in net.weights:
                value = np.asarray(v)
                h.update(str((value.shape, value.dtype.str)).encode())
                h.update(value.tobytes())
        h.update(
            json.dumps(
                [
                    float(self.temperature),
                    float(self.step_size),
                    float(self.model.max_drift_norm),
                ]
            ).encode()
        )
        return h.hexdigest()[:16]

    def logits(self, x, num_replicates, seed, num_steps=None):
        """Replicate-averaged logits `[B, classes]` of `f(T(x))` (K_def or
        `num_steps` purification steps).

        Replicates are laid out as the reference's `tf.repeat` (`[x1]*H,
        [x2]*H, ...`), so one Langevin batch purifies them all.
        """
        h = num_replicates
        purified = self.purify(tf.repeat(x, h, axis=0), seed, num_steps)
        out = self.classifier(purified, training=False)
        return tf.reduce_mean(tf.reshape(out, (-1, h, tf.shape(out)[-1])), axis=1)


class ExportedDefense:
    """A defended classifier read back from `export_defended`, as much of
    it as a gradient-free attack needs: `logits(x, num_replicates, seed)`
    calls the export's `predict` (its noise is its own, fresh at every
    call: `seed` is ignored), and `num_steps` / `digest()` come from the
    settings stored beside it. `attack.evaluate` runs SPSA against it
    (`spsa_samples` > 0); the pathwise attacks need the EBM itself."""

    gradient_free_only = True

    def __init__(self, path):
        settings = os.path.join(path, "assets.extra", SETTINGS_FILE)
        if not os.path.isfile(settings):
            raise ConfigError(
                f"{path} holds no defended export (no assets.extra/{SETTINGS_FILE}): "
                "write one with `python evaluate.py --export`"
            )
        with open(settings) as f:
            self.exported = json.load(f)
        self.loaded = tf.saved_model.load(path)
        self.num_steps = int(self.exported["k_def"])

    def logits(self, x, num_replicates, seed=None):
        return self.loaded.predict(x, tf.constant(num_replicates, tf.int32))

    def digest(self):
        return "export-" + self.exported["defended"]


def export_defended(defended, path):
    """A SavedModel with `classify(x)` (the undefended logits, differentiable
    in x), `purify(x, num_steps=K_def)` (fresh noise every call) and
    `predict(x, num_replicates, num_steps=K_def)` (replicate-averaged logits
    of classify(purify(x))), on float32 `[B, H, W, C]` in [-1, 1], loadable
    with plain TensorFlow; `num_steps` is an optional int32 scalar."""
    shape = tuple(defended.model.state_shape)
    any_rank = tf.TensorSpec(None, tf.float32, name="x")
    archive = keras.export.ExportArchive()
    archive.track(defended.model)
    archive.track(defended.classifier)

    def seed():
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)

    def steps(num_steps):
        return export_lib.steps_or(num_steps, defended.num_steps)

    def classify(x):
        x = export_lib.checked(x, shape, "classify")
        return defended.classifier(x, training=False)

    def purify(x, num_steps=export_lib.DEFAULT_STEPS):
        x = export_lib.checked(x, shape, "purify")
        return defended.purify(x, seed(), steps(num_steps))

    def predict(x, num_replicates, num_steps=export_lib.DEFAULT_STEPS):
        x = export_lib.checked(x, shape, "predict")
        tf.debugging.assert_positive(num_replicates, message="num_replicates >= 1")
        return defended.logits(x, num_replicates, seed(), steps(num_steps))

    archive.add_endpoint("classify", tf.function(classify), input_signature=[any_rank])
    export_lib.add_endpoint(archive, "purify", purify, any_rank)
    replicates = tf.TensorSpec([], tf.int32, name="num_replicates")
    export_lib.add_endpoint(archive, "predict", predict, any_rank, replicates)
    export_lib.write_out(archive, path)
    # What it computes, beside the SavedModel (its `assets.extra` holds
    # files TF does not read): a figure measured on the export is compared
    # only with a report made at the same settings (`matching_settings`).
    files.write_json(
        os.path.join(path, "assets.extra", SETTINGS_FILE), defended.settings()
    )
    return path


SETTINGS_FILE = "defense.json"
# Settings a report and an export must share for their figures to agree.
COMPARED = ("k_def", "purify_step_size", "purify_temperature", "defended")


def matching_settings(export_path, reported):
    """A `ConfigError` unless the export at `export_path` computes what the
    report `reported` (its results dict) measured: same K_def, step size,
    temperature and networks (`DefendedClassifier.digest`)."""
    path = os.path.join(export_path, "assets.extra", SETTINGS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{export_path} records no defense settings (an older export): "
            "write it again with `python evaluate.py --export`"
        )
    with open(path) as f:
        exported = json.load(f)
    differ = [
        f"{k} {exported.get(k)} (export) vs {reported.get(k)} (report)"
        for k in COMPARED
        if exported.get(k) != reported.get(k)
    ]
    if differ:
        raise ConfigError(
            f"the export in {export_path} and the report differ in "
            f"{'; '.join(differ)}: export again with the report's settings "
            "(e.g. --config.defense.num_steps) or rerun the report"
        )
    return exported
