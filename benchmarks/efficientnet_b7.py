"""The imagenet2012 preset's classifier, EfficientNet-B7, through the
preset's own path, and what it costs the attack on this machine.

    python benchmarks/efficientnet_b7.py [--weights=efficientnetb7.h5] [--repeats=3]

Builds the classifier of `midrun.get_config("imagenet2012")` exactly as the
defense does (`keras.applications.EfficientNetB7:<weights>` behind the
input adapter: 224 states in [-1, 1] resized to 600x600 in [0, 255]). With
no `--weights` it saves B7 with random weights to a temporary file first
(the real file cannot be downloaded here). Checks that the adapted logits
equal B7 on a hand-made resize, then times (graph mode, median of
`--repeats`) the logits and the logits' input gradient at batch 1, the
unit of every BPDA+EOT step (H_adv replicates x 50 PGD steps per image).
Writes `--out` (JSON).
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from timing import median_seconds  # noqa: E402

flags.DEFINE_string("weights", "", "B7 weights file (default: random, saved first)")
flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median)")
flags.DEFINE_string("out", "runs/benchmarks/efficientnet_b7.json", "results")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras

    from keras_ebm.configs import midrun
    from keras_ebm.regimes import midrun as regime

    weights = FLAGS.weights
    started = time.perf_counter()
    if not weights:
        weights = os.path.join(tempfile.mkdtemp(), "efficientnetb7.weights.h5")
        keras.applications.EfficientNetB7(weights=None).save_weights(weights)
    config = midrun.get_config("imagenet2012")
    config.defense.classifier_workdir = f"keras.applications.EfficientNetB7:{weights}"
    classifier = regime.classifier_of(config)
    built = time.perf_counter() - started

    x = tf.random.stateless_uniform((1, 224, 224, 3), [0, 4], -1, 1)
    b7 = classifier.classifier
    by_hand = b7((tf.image.resize(x, (600, 600), antialias=False) + 1) * 127.5)
    error = float(tf.reduce_max(tf.abs(classifier(x) - by_hand)))

    logits = tf.function(lambda x: classifier(x, training=False))

    @tf.function
    def input_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            top = tf.reduce_max(classifier(x, training=False), axis=1)
        return tape.gradient(top, x)

    row = dict(
        weights=FLAGS.weights or "random",
        parameters=int(b7.count_params()),
        input=list(b7.input_shape[1:]),
        seconds_to_build=built,
        max_abs_difference_to_hand_resize=error,
        logits_s_batch1=median_seconds(lambda: np.asarray(logits(x)), FLAGS.repeats),
        input_gradient_s_batch1=median_seconds(
            lambda: np.asarray(input_gradient(x)), FLAGS.repeats
        ),
    )
    print(json.dumps(row, indent=2))
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(row, f, indent=2)
    if error > 1e-3:
        sys.exit(f"adapted logits differ from B7 on a hand resize by {error}")


if __name__ == "__main__":
    app.run(main)
