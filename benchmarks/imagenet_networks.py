"""What the ImageNet networks cost on this machine: FLOPs per image, forward
time, and for the EBMs the time of one Langevin step, at batch 1 and 8.

    python benchmarks/imagenet_networks.py [--batch_sizes=1,8] [--repeats=3]

Networks: `ebm_biggan` at 224 (the defense), 128 and 64;
`gen_biggan_deep256` resized to 224 and `gen_biggan_deep128` resized to 64
(as the configs use them; generators only run forward, they are frozen
initializers). Everything runs in plain `tf.function` graph mode (on CPU,
XLA's convolutions are slower), median of `--repeats` calls after a warm-up.
A Langevin step is one forward pass, the input gradient and the update
(`keras_ebm.sampling.langevin`, num_steps 1). FLOPs come from TensorFlow's
graph profiler on the batch-1 forward graph (a multiply-add is 2 FLOPs).
Writes `--out` (JSON) and prints a Markdown table.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from timing import median_seconds  # noqa: E402

from keras_ebm import networks  # noqa: E402
from keras_ebm.sampling import langevin, potential  # noqa: E402

flags.DEFINE_list("batch_sizes", ["1", "8"], "batch sizes to time")
flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median)")
flags.DEFINE_string("out", "runs/benchmarks/imagenet_networks.json", "results")
FLAGS = flags.FLAGS

CASES = [
    ("ebm_biggan", dict(image_shape=(224, 224, 3))),
    ("ebm_biggan", dict(image_shape=(128, 128, 3))),
    ("ebm_biggan", dict(image_shape=(64, 64, 3))),
    ("gen_biggan_deep256", dict(image_shape=(224, 224, 3))),
    ("gen_biggan_deep128", dict(image_shape=(64, 64, 3))),
]


def flops_per_image(fn, spec):
    """Float operations of one call of `fn` on a batch-1 input."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(spec))
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    stats = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts)
    return int(stats.total_float_ops)


def measure(name, kwargs):
    net = networks.build(name, **kwargs)
    generator = name.startswith("gen_")
    width = net.latent_dim if generator else None
    row = dict(
        network=name,
        output=list(net.image_shape),
        parameters=int(sum(np.prod(w.shape) for w in net.weights)),
    )
    forward = tf.function(lambda x: net(x, training=False))
    spec = tf.TensorSpec((1, width) if generator else (1,) + net.image_shape)
    row["gflops_per_image"] = flops_per_image(forward, spec) / 1e9
    u = None if generator else potential(forward, temperature=1e-5)
    step = tf.function(
        lambda x: langevin(u, x, num_steps=1, step_size=2e-2, seed=[0, 1])[0]
    )
    for b in map(int, FLAGS.batch_sizes):
        if generator:
            x = net.sample_latent((b, width), tf.constant([0, b]))
        else:
            x = tf.random.uniform((b,) + net.image_shape, -1, 1, seed=b)
        row[f"forward_s_batch{b}"] = median_seconds(
            lambda x=x: np.asarray(forward(x)), FLAGS.repeats
        )
        if not generator:
            row[f"langevin_step_s_batch{b}"] = median_seconds(
                lambda x=x: np.asarray(step(x)), FLAGS.repeats
            )
    return row


def main(argv):
    del argv
    rows = []
    for name, kwargs in CASES:
        rows.append(measure(name, kwargs))
        print(json.dumps(rows[-1]), flush=True)
    batches = list(map(int, FLAGS.batch_sizes))
    print(
        "\n| network | output | parameters | GFLOPs/image | "
        + " | ".join(f"forward b{b} (s)" for b in batches)
        + " | "
        + " | ".join(f"Langevin step b{b} (s)" for b in batches)
        + " |"
    )
    print("|---" * (4 + 2 * len(batches)) + "|")
    for r in rows:
        cells = [f"{r[f'forward_s_batch{b}']:.3f}" for b in batches]
        cells += [
            f"{r[k]:.3f}" if (k := f"langevin_step_s_batch{b}") in r else "-"
            for b in batches
        ]
        print(
            f"| {r['network']} | {r['output'][0]} | {r['parameters']:,} | "
            f"{r['gflops_per_image']:.2f} | " + " | ".join(cells) + " |"
        )
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(
            dict(tf_version=tf.__version__, cpus=os.cpu_count(), rows=rows), f, indent=2
        )
    print(f"\nwritten to {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
