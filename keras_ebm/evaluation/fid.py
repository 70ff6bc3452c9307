"""FID backbones, data statistics with a cache, realism; FID along
Langevin chains is `keras_ebm.evaluation.trajectory`.

Backbones map images in [-1, 1] `[N, H, W, C]` to features `[N, D]`:

- `inception_ttur`: pool_3 of the 2015 Inception graph
  (`classify_image_graph_def.pb` from inception-2015-12-05), the network of
  the original FID code and of the paper's tables. Images go in as 0..255
  (rounded, clipped) and the graph resizes them to 299 itself.
- `inception_keras`: `keras.applications.InceptionV3` average-pool features,
  as ebm-life-cycle's "unofficial" `fid.py`; not comparable with TTUR numbers.
- `digits`: penultimate features of the digits classifier (CPU-sized FID).
"""

import hashlib
import json
import os
import tarfile

import numpy as np
import tensorflow as tf

from keras_ebm import data
from keras_ebm.errors import ConfigError
from keras_ebm.evaluation import metrics
from keras_ebm.runs import files

INCEPTION_URL = (
    "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"
)
INCEPTION_GRAPH = "classify_image_graph_def.pb"
INPUT_TENSOR, OUTPUT_TENSOR = "ExpandDims:0", "pool_3:0"


class Backbone:
    """A named feature map `images [-1, 1] -> [N, D]`, applied in batches.

    `fingerprint` identifies its weights (a file hash), so that cached
    statistics and features computed with other weights are never reused.
    """

    def __init__(self, name, fn, batch_size=100, fingerprint="", logits=None):
        # Compiled: called eagerly, a Keras network runs op by op.
        self.fn = tf.function(fn)
        self.name, self.batch_size = name, batch_size
        self.fingerprint = fingerprint
        # features -> class logits, where the backbone is a classifier: the
        # samples' class histogram along the chains.
        self.logits = logits

    def classes(self, features):
        """Class labels `[N]` of `features`, or None (no classifier head)."""
        if self.logits is None:
            return None
        return np.argmax(np.asarray(self.logits(np.asarray(features))), -1)

    def __call__(self, images):
        images = np.asarray(images, np.float32)
        out = [
            np.asarray(self.fn(tf.constant(images[i : i + self.batch_size])))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out).reshape(len(images), -1)


# === Backbones ===


def load_inception_graph(path):
    """The TTUR Inception graph as a function `uint8-range floats -> pool_3`.

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable graph file,
            or one without the `ExpandDims` input and `pool_3` output.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Inception graph {path!r} not found. Get inception-2015-12-05.tgz "
            f"({INCEPTION_URL}), extract {INCEPTION_GRAPH} and pass its path with "
            "--config.eval.inception_graph (or let a machine with network "
            "download it: --config.eval.download=True)"
        )
    graph_def = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as f:
            graph_def.ParseFromString(f.read())
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ValueError(f"{path!r} is not a readable GraphDef: {e}") from None
    names = {node.name for node in graph_def.node}
    for tensor in (INPUT_TENSOR, OUTPUT_TENSOR):
        if tensor.split(":")[0] not in names:
            raise ValueError(f"{path!r} has no tensor {tensor}; is it the FID graph?")

    def imported(images):
        return tf.compat.v1.import_graph_def(
            graph_def,
            input_map={INPUT_TENSOR: images},
            return_elements=[OUTPUT_TENSOR],
            name="inception",
        )[0]

    fn = tf.compat.v1.wrap_function(
        imported, [tf.TensorSpec([None, None, None, 3], tf.float32)]
    )

    def features(images):
        # TTUR feeds uint8 images: round what we have in [-1, 1] the same way.
        pixels = tf.round(tf.clip_by_value((images + 1.0) * 127.5, 0.0, 255.0))
        if pixels.shape[-1] == 1:
            pixels = tf.image.grayscale_to_rgb(pixels)
        return tf.reshape(fn(pixels), (tf.shape(images)[0], -1))

    return features


def download_inception(cache_dir, sha256=""):
    """Downloads and extracts the TTUR graph once; verifies its checksum.

    With `sha256` set the archive must match it. Without, the hash of the
    first download is recorded beside it and later files must match that.
    """
    import keras

    os.makedirs(cache_dir, exist_ok=True)
    archive = keras.utils.get_file(
        "inception-2015-12-05.tgz",
        INCEPTION_URL,
        cache_dir=cache_dir,
        cache_subdir=".",
        file_hash=sha256 or None,
    )
    digest = files.sha256(archive)
    record = archive + ".sha256"
    if os.path.exists(record):
        with open(record) as f:
            expected = f.read().strip()
        if digest != expected:
            raise ValueError(f"{archive} changed: sha256 {digest} != {expected}")
    else:
        with open(record, "w") as f:
            f.write(digest)
    graph = os.path.join(cache_dir, INCEPTION_GRAPH)
    if not os.path.exists(graph):
        with tarfile.open(archive) as tar:
            member = tar.getmember(INCEPTION_GRAPH)
            tar.extract(member, cache_dir, filter="data")
    return graph


def inception_keras(weights="imagenet"):
    import keras

    net = keras.applications.InceptionV3(
        include_top=False,
        pooling="avg",
        weights=weights or None,
        input_shape=(299, 299, 3),
    )

    def features(images):
        # Inputs already in [-1, 1], the range `preprocess_input` produces.
        images = tf.clip_by_value(images, -1.0, 1.0)
        if images.shape[-1] == 1:
            images = tf.image.grayscale_to_rgb(images)
        return net(tf.image.resize(images, (299, 299)), training=False)

    return features


def backbone(config):
    """The `Backbone` named by `config.eval.backbone`."""
    ev = config.eval
    check_backbone(config)
    if ev.backbone == "digits":
        from keras_ebm import classify
        from keras_ebm.configs import classifier as clf_configs

        size = config.data.image_size
        trained = classify.trained_image_size(ev.classifier_workdir)
        clf_config = clf_configs.get_config("digits")
        # A smaller run (8x8) is seen at the classifier's size through the
        # resize that made the classifier's own images: one yardstick.
        resize = trained is not None and size < trained
        clf_config.data.image_size = trained if resize else size
        model = classify.load(clf_config, ev.classifier_workdir)
        weights = os.path.join(ev.classifier_workdir, classify.WEIGHTS)

        def features(x):
            if resize:
                x = data.resize_digits(x, trained)
            return model.features(x, training=False)

        return Backbone(
            "digits", features, 256, files.sha256(weights), logits=model.logits
        )
    if ev.backbone == "inception_ttur":
        path = ev.inception_graph
        if not path and ev.download:
            path = download_inception(ev.cache_dir, ev.inception_sha256)
        fn = load_inception_graph(path)
        return Backbone("inception_ttur", fn, 50, files.sha256(path))
    if ev.backbone == "inception_keras":
        weights = ev.inception_weights
        fingerprint = files.sha256(weights) if os.path.isfile(weights) else str(weights)
        return Backbone("inception_keras", inception_keras(weights), 50, fingerprint)
    raise ConfigError(f"config.eval.backbone: unknown FID backbone {ev.backbone!r}")


BACKBONES = ("digits", "inception_ttur", "inception_keras")
_INCEPTION_KERAS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"


def check_backbone(config):
    """A `ConfigError` for a backbone that cannot measure this run: an
    unknown name, grayscale digits features for color images, Inception
    weights that are neither on disk nor allowed to download."""
    ev, d = config.eval, config.data
    others = (
        "--config.eval.backbone=inception_ttur with "
        "--config.eval.inception_graph=<classify_image_graph_def.pb> (or "
        "--config.eval.download=True), or inception_keras"
    )
    if ev.backbone not in BACKBONES:
        raise ConfigError(
            f"config.eval.backbone: unknown FID backbone {ev.backbone!r}; use "
            f"{', '.join(BACKBONES)}"
        )
    if ev.backbone == "digits" and d.channels != 1:
        raise ConfigError(
            f"config.eval.backbone: the digits backbone measures grayscale "
            f"digits; this run's images are {d.image_size}x{d.image_size}x"
            f"{d.channels} ({d.name}): use {others}"
        )
    if ev.backbone == "inception_keras" and ev.inception_weights == "imagenet":
        home = os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))
        cached = os.path.join(home, "models", _INCEPTION_KERAS_FILE)
        if not ev.download and not os.path.isfile(cached):
            raise ConfigError(
                f"config.eval.backbone: inception_keras needs the ImageNet "
                f"weights of InceptionV3, not in {cached}: pass "
                "--config.eval.download=True on a machine with network, or "
                "--config.eval.inception_weights=<.h5 file>"
            )


# === Statistics ===


def _reference(images, net, cache_path, need_features):
    """The reference set's features and their `(mu, sigma)`, from or into
    the `.npz` cache (features added to a cache that lacks them)."""
    ref = {}
    if cache_path and os.path.exists(cache_path):
        try:
            with np.load(cache_path) as f:
                ref = {k: f[k] for k in f.files}
        except Exception as e:  # recomputed: a cache is never the only copy
            files.quarantine(cache_path, f"the cache does not load ({e})")
    if "mu" in ref and ("features" in ref or not need_features):
        return ref
    ref["features"] = net(images)
    if "mu" not in ref:
        ref["mu"], ref["sigma"] = metrics.activation_statistics(ref["features"])
    if cache_path:
        files.atomic_write(cache_path, lambda tmp: np.savez(tmp, **ref))
    return ref


def data_statistics(images, net, cache_path=None):
    """`(mu, sigma)` of the data features, cached (with the features) as an
    `.npz` file."""
    ref = _reference(images, net, cache_path, need_features=False)
    return ref["mu"], ref["sigma"]


def reference_features(images, net, cache_path=None):
    """The data features (for `realism`), from the same cache as
    `data_statistics`."""
    return _reference(images, net, cache_path, need_features=True)["features"]


def realism(real, fake, nearest_k=5):
    """Precision, recall, density and coverage of `fake` against `real`
    features (Kynkaanniemi et al. 2019; Naeem et al. 2020; the `prdc`
    package).

    With B_k(r) the ball around a real feature r reaching its k-th nearest
    real neighbour: precision = share of fakes in some B_k(r) (realism),
    density = mean number of such balls per fake / k, coverage = share of
    reals whose B_k(r) holds a fake; recall = share of reals inside some
    fake's k-NN ball. FID mixes realism and coverage; these separate them.
    """
    import contextlib
    import io

    import prdc

    names = ("precision", "recall", "density", "coverage")
    if not np.isfinite(fake).all():  # diverged chains, as for FID
        return dict.fromkeys(names, float("nan"))
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the sizes
        out = prdc.compute_prdc(np.asarray(real), np.asarray(fake), nearest_k)
    return {k: float(out[k]) for k in names}


def save_curve(results, path_png, title, floor=None):
    """FID against Langevin steps, log x axis (step 0 drawn at 1), with the
    real-data floor as a dashed line when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(results)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([max(s, 1) for s in steps], [results[s] for s in steps], "o-")
    ax.set_xscale("log")
    finite = [results[s] for s in steps if np.isfinite(results[s]) and results[s] > 0]
    if finite and max(finite) / min(finite) > 10:
        ax.set_yscale("log")  # oversaturated chains would flatten the rest
    if floor is not None:
        ax.axhline(floor, ls="--", color="gray", label="held-out real data")
        ax.legend()
    ax.set_xlabel("Langevin steps (0 shown at 1)")
    ax.set_ylabel("FID")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.savefig(path_png, dpi=120, bbox_inches="tight")
    plt.close(fig)


def settings_key(settings):
    """A short stable hash of a JSON-able dict, for cache file names."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_results(results, path_json, extra=None):
    with open(path_json, "w") as f:
        json.dump(
            {"fid": {str(k): v for k, v in results.items()}, **(extra or {})},
            f,
            indent=2,
        )
