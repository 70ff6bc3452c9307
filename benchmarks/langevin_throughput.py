"""Langevin throughput of the library core against a minimal hand-written loop.

Both run K Langevin steps of `ebm_sngan32` at batch 64 in plain tf.function
graph mode (XLA off: on CPU its convolutions are several times slower) and
report image-steps per second (one image-step = one forward pass plus input
gradient for one image). Runs alternate, so drifts in machine load hit both.

    python benchmarks/langevin_throughput.py [--num_steps=20] [--repeats=5]
        [--network=ebm_sngan32] [--batch_size=64] [--jit]
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_ebm import networks  # noqa: E402
from keras_ebm.sampling import langevin, potential  # noqa: E402

flags.DEFINE_string("network", "ebm_sngan32", "registered EBM")
flags.DEFINE_integer("batch_size", 64, "chains")
flags.DEFINE_integer("num_steps", 20, "Langevin steps per timed call")
flags.DEFINE_integer("repeats", 5, "timed calls per implementation")
flags.DEFINE_bool("jit", False, "compile both with XLA")
FLAGS = flags.FLAGS

STEP_SIZE, TEMPERATURE = 5e-3, 1e-4  # CIFAR-10 shortrun


def minimal_loop(net, num_steps):
    """The same update written by hand: the floor for library overhead."""

    def run(x, seed):
        def body(i, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                e = tf.reduce_sum(net(x, training=False)) / TEMPERATURE
            grad = tape.gradient(e, x)
            noise = tf.random.stateless_normal(
                tf.shape(x), tf.random.experimental.stateless_fold_in(seed, i)
            )
            return i + 1, x - STEP_SIZE**2 / 2 * grad + STEP_SIZE * noise

        return tf.while_loop(lambda i, x: i < num_steps, body, (0, x))[1]

    return run


def library_loop(net, num_steps):
    u = potential(lambda x: net(x, training=False), temperature=TEMPERATURE)

    def run(x, seed):
        return langevin(u, x, num_steps=num_steps, step_size=STEP_SIZE, seed=seed)[0]

    return run


def main(argv):
    del argv
    net = networks.build(FLAGS.network)
    shape = (FLAGS.batch_size,) + tuple(net.image_shape)
    x = tf.random.uniform(shape, -1, 1, seed=0)
    seed = tf.constant([0, 1])
    impls = {
        name: tf.function(make(net, FLAGS.num_steps), jit_compile=FLAGS.jit)
        for name, make in (("library", library_loop), ("minimal", minimal_loop))
    }
    for fn in impls.values():
        fn(x, seed).numpy()  # trace and warm up
    times = {name: [] for name in impls}
    for _ in range(FLAGS.repeats):
        for name, fn in impls.items():
            start = time.perf_counter()
            fn(x, seed).numpy()
            times[name].append(time.perf_counter() - start)
    work = FLAGS.batch_size * FLAGS.num_steps
    rates = {name: work / np.median(t) for name, t in times.items()}
    print(
        f"{FLAGS.network}, batch {FLAGS.batch_size}, K={FLAGS.num_steps}, "
        f"jit={FLAGS.jit}, {FLAGS.repeats} repeats, TF {tf.__version__}"
    )
    for name, rate in rates.items():
        spread = work / np.max(times[name]), work / np.min(times[name])
        print(
            f"  {name:8s} {rate:8.1f} image-steps/s  "
            f"(range {spread[0]:.1f}-{spread[1]:.1f})"
        )
    ratio = rates["library"] / rates["minimal"]
    print(f"  library / minimal = {ratio:.3f} ({100 * (ratio - 1):+.1f}%)")


if __name__ == "__main__":
    app.run(main)
