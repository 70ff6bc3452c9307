"""Cost of the bank write-back under MirroredStrategy: a large bank against
a small one, the same training step otherwise.

The step is the smoke shortrun's (a width-8 EBM, K Langevin steps, noise
rejuvenation) at 32x32x3 and batch 64 on two logical CPUs, so that anything
the bank costs per step is visible next to the networks. With an O(B)
write-back the two rows take the same time; an O(N) copy of the bank
(20000 x 32 x 32 x 3 float32 = 246 MB) shows as a difference.

    python benchmarks/bank_scale.py [--sizes=256,20000] [--num_steps=5]
        [--steps=20] [--repeats=5] [--strategy=mirrored]
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list("sizes", ["256", "20000"], "bank sizes to compare")
flags.DEFINE_integer("num_steps", 5, "Langevin steps K per training step")
flags.DEFINE_integer("batch_size", 64, "global batch")
flags.DEFINE_integer("steps", 20, "training steps per timed fit")
flags.DEFINE_integer("repeats", 5, "timed fits per size (alternating)")
flags.DEFINE_enum("strategy", "mirrored", ["mirrored", "default"], "")
FLAGS = flags.FLAGS


def build(size):
    from keras_ebm import distribute, run
    from keras_ebm.configs import shortrun

    c = shortrun.get_config("smoke")
    c.data.update(image_size=32, channels=3)
    c.model.update(ebm="ebm_small", generator="")
    c.init.update(source="noise", persistent=True)
    c.bank.update(size=size, rejuvenation_prob=0.05)
    c.langevin.num_steps = FLAGS.num_steps
    c.train.batch_size = FLAGS.batch_size
    strategy = distribute.get_strategy(FLAGS.strategy)
    with strategy.scope():
        model = run.build_model(c)
    model.initialize_bank()
    x = tf.random.stateless_uniform((FLAGS.batch_size, 32, 32, 3), [0, 0], -1, 1)
    ds = tf.data.Dataset.from_tensors(x).repeat()
    return model, ds


def main(_):
    if FLAGS.strategy == "mirrored":  # two logical CPUs, as the tests
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    sizes = [int(s) for s in FLAGS.sizes]
    runs = {s: build(s) for s in sizes}
    times = {s: [] for s in sizes}
    for model, ds in runs.values():  # trace
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    for _ in range(FLAGS.repeats):
        for s, (model, ds) in runs.items():
            t = time.perf_counter()
            model.fit(ds, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
            times[s].append((time.perf_counter() - t) / FLAGS.steps)
    base = np.median(times[sizes[0]])
    print(
        f"{FLAGS.strategy}, batch {FLAGS.batch_size}, K {FLAGS.num_steps}, "
        f"median of {FLAGS.repeats} x {FLAGS.steps} steps"
    )
    print("| bank states | bank MB | ms per step | vs the smallest bank |")
    print("|---|---|---|---|")
    for s, (model, _) in runs.items():
        mb = model.bank.num_states * 32 * 32 * 3 * 4 / 1e6
        med = np.median(times[s])
        ms, ratio = 1e3 * med, med / base
        print(f"| {model.bank.num_states} | {mb:.0f} | {ms:.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    app.run(main)
