"""`make bench`: the library beside minimal hand-written TensorFlow loops of
the same computations, in one run, as one table.

Rows (each timed alternately with its minimal twin, median of `--repeats`):
- Langevin on `ebm_sngan32`, batch 64: float32 and bfloat16, graph and XLA.
- One training step of shortrun, midrun, prior and longrun on their CIFAR-10
  networks at batch `--train_batch` and the paper's K 100, beside the same
  K Langevin steps alone; shortrun also beside a hand-written step (bank
  draw, generator rejuvenation, Langevin, EBM and generator Adam updates,
  write-back).
- One BPDA+EOT attack gradient (digits EBM and CNN, 64 images x H 8, K_def
  100) beside its Langevin alone and a hand-written twin.
- FID features (digits CNN; InceptionV3 at 299) against a direct call.
- The machine's matrix-multiply peak (float32, bfloat16) and the fraction
  of it that the float32 Langevin step reaches (FLOPs: 2 x the forward pass,
  counted by TensorFlow's profiler; the input gradient costs about one
  forward pass more).

Networks have random weights: speed does not depend on them. Units:
image-steps/s (one Langevin step of one image), images/s, or steps/s.

    python benchmarks/suite.py [--quick] [--repeats=3] [--no_xla]
        [--json=benchmarks/suite.json]
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_ebm import networks, run  # noqa: E402
from keras_ebm.defense import attack, gradients, purify  # noqa: E402
from keras_ebm.evaluation import fid  # noqa: E402
from keras_ebm.models import EnergyModel  # noqa: E402
from keras_ebm.sampling import langevin  # noqa: E402

flags.DEFINE_bool("quick", False, "fewer steps and rows (a smoke run)")
flags.DEFINE_integer("repeats", 3, "timed calls per implementation")
flags.DEFINE_bool("xla", True, "include the XLA rows (slow to compile on CPU)")
flags.DEFINE_integer("train_batch", 8, "batch of the training-step rows")
flags.DEFINE_string("json", "", "also write the rows here")
FLAGS = flags.FLAGS

EPS, T = 5e-3, 1e-4  # CIFAR-10 shortrun


def timed_pair(library, minimal, repeats):
    """Median seconds of two zero-argument callables, run alternately after
    one warm-up call each (tracing, compilation)."""
    for fn in (library, minimal):
        if fn is not None:
            _block(fn())
    times = ([], [])
    for _ in range(repeats):
        for i, fn in enumerate((library, minimal)):
            if fn is None:
                continue
            t = time.perf_counter()
            _block(fn())
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) if t else None for t in times]


def _block(out):
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def minimal_langevin(energy_fn, x, k, seed, eps=EPS, t=T):
    """K steps of `x - eps^2/2T grad E + eps n` by hand (a while loop)."""

    def body(i, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            e = tf.reduce_sum(tf.cast(energy_fn(x), tf.float32)) / t
        noise = tf.random.stateless_normal(
            tf.shape(x), tf.random.experimental.stateless_fold_in(seed, i)
        )
        return i + 1, x - eps**2 / 2 * tape.gradient(e, x) + eps * noise

    return tf.while_loop(lambda i, _: i < k, body, (0, x))[1]


# === Rows ===


def langevin_rows(rows, k, repeats):
    x = tf.random.stateless_uniform((64, 32, 32, 3), [0, 0], -1, 1)
    seed = tf.constant([1, 2])
    weights = None
    modes = [False, True] if FLAGS.xla else [False]
    for precision in ("float32", "bfloat16"):
        with networks.precision(precision):
            net = networks.build("ebm_sngan32")
        if weights is None:
            weights = net.get_weights()
        net.set_weights(weights)
        model = EnergyModel(net, num_steps=k, step_size=EPS, temperature=T)
        for jit in modes:
            kx = max(2, k // 5) if jit else k  # XLA convolutions are slow on CPU

            def lib(kx=kx, jit=jit, model=model):
                fn = tf.function(
                    lambda x: langevin(
                        model.potential, x, num_steps=kx, step_size=EPS, seed=seed
                    )[0],
                    jit_compile=jit,
                )
                return lambda: fn(x)

            def mini(kx=kx, jit=jit, net=net):
                fn = tf.function(
                    lambda x: minimal_langevin(
                        lambda s: net(s, training=False), x, kx, seed
                    ),
                    jit_compile=jit,
                )
                return lambda: fn(x)

            a, b = timed_pair(lib(), mini(), repeats)
            work = 64 * kx
            rows.append(
                row(
                    f"Langevin ebm_sngan32 B64 K{kx}",
                    precision,
                    "xla" if jit else "graph",
                    work / a,
                    work / b,
                    "image-steps/s",
                )
            )


def _train_config(regime, k, batch):
    import importlib

    config = importlib.import_module(f"keras_ebm.configs.{regime}").get_config(
        "cifar10"
    )
    config.train.batch_size = batch
    config.langevin.num_steps = k
    config.bank.size = 4 * batch
    if regime == "longrun":
        config.prior.workdir = ""  # no prior run here: the EBM's own terms
        config.burnin.update(size=4 * batch, steps=2, length=4)
    if "generator" in config and config.generator.get("weights"):
        config.generator.weights = ""  # random weights: speed only
    return config


def train_rows(rows, k, repeats):
    batch = FLAGS.train_batch
    regimes = (
        ["shortrun"] if FLAGS.quick else ["shortrun", "midrun", "prior", "longrun"]
    )
    for regime in regimes:
        config = _train_config(regime, k, batch)
        model = run.build_model(config)
        x = tf.random.stateless_uniform((batch, 32, 32, 3), [3, 4], -1, 1)
        if model.banks:
            n = sum(b.num_states for b in model.banks.values())
            init = tf.random.stateless_uniform((n, 32, 32, 3), [5, 6], -1, 1).numpy()
            model.initialize_bank(init if config.init.source == "data" else None)
        item = {"x": x, "x_init": x} if config.init.source == "data" else x
        iterator = iter(tf.data.Dataset.from_tensors(item).repeat())
        model.make_train_function()

        def lib(model=model, iterator=iterator):
            return model.train_function(iterator)

        seed = tf.constant([7, 8])
        alone = tf.function(
            lambda x, model=model, seed=seed: langevin(
                model.potential, x, num_steps=k, step_size=model.step_size, seed=seed
            )[0]
        )
        mini = minimal_shortrun_step(model, x, k) if regime == "shortrun" else None
        a, b = timed_pair(lib, mini, repeats)
        (c,) = [v for v in timed_pair(lambda a=alone, x=x: a(x), None, repeats) if v]
        rows.append(
            row(
                f"train step {regime} B{batch} K{k}",
                "float32",
                "graph",
                1 / a,
                None if b is None else 1 / b,
                "steps/s",
                langevin_share=c / a,
            )
        )


def minimal_shortrun_step(model, x, k):
    """The shortrun step by hand on the model's own networks and bank
    variables: draw B rows, rejuvenate with p from gen(z), K Langevin steps,
    one Adam step of the EBM on (E(x+) - E(x-)) / T, one of the generator on
    ||x- - gen(z)||^2 / B, write rows and latents back."""
    ebm, gen, bank = model.energy_net, model.generator, model.bank
    opt_e, opt_g = keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4)
    opt_e.build(ebm.trainable_variables)
    opt_g.build(gen.trainable_variables)
    states, latents, counts = bank.states.value, bank.latents.value, bank.counts.value
    b, n, p = x.shape[0], bank.num_states, bank.rejuvenation_prob

    @tf.function
    def step(x, seed):
        s = tf.random.experimental.stateless_split(seed, 4)
        idx = tf.math.top_k(tf.random.stateless_uniform((n,), s[0]), b).indices
        z = tf.random.stateless_normal((b, gen.latent_dim), s[1])
        fresh = tf.random.stateless_uniform((b,), s[2]) < p
        x0 = tf.where(fresh[:, None, None, None], gen(z), states.sparse_read(idx))
        z = tf.where(fresh[:, None], z, latents.sparse_read(idx))
        x_neg = minimal_langevin(lambda v: ebm(v, training=False), x0, k, s[3])
        with tf.GradientTape() as tape:
            e = ebm(tf.concat([x, x_neg], 0), training=False)
            loss = (tf.reduce_mean(e[:b]) - tf.reduce_mean(e[b:])) / T
        opt_e.apply(
            tape.gradient(loss, ebm.trainable_variables), ebm.trainable_variables
        )
        with tf.GradientTape() as tape:
            g = tf.reduce_sum(tf.square(x_neg - gen(z, training=True))) / b
        opt_g.apply(tape.gradient(g, gen.trainable_variables), gen.trainable_variables)
        states.scatter_update(tf.IndexedSlices(x_neg, idx))
        latents.scatter_update(tf.IndexedSlices(z, idx))
        counts.scatter_update(tf.IndexedSlices(tf.zeros([b], tf.int32), idx))
        return loss

    seed = tf.constant([9, 9])
    return lambda: step(x, seed)


def attack_rows(rows, k, repeats):
    with networks.precision("float32"):
        ebm = networks.build("ebm_small", width=32)
        clf = networks.build("clf_digits")
    model = EnergyModel(ebm, num_steps=k, step_size=4e-2, temperature=5e-5)
    d = purify.DefendedClassifier(model, clf, k)
    x = tf.random.stateless_uniform((64, 16, 16, 1), [1, 1], -1, 1)
    y = tf.zeros(64, tf.int32)
    h = 8
    settings = attack.AttackSettings(
        eps=0.3, step_size=0.075, num_steps=1, adv_replicates=h, def_replicates=h
    )
    seed = tf.constant([3, 3])
    lib = tf.function(lambda: gradients.eot_logits_and_grad(d, x, y, settings, seed))

    @tf.function
    def mini():
        xs = tf.repeat(x, h, axis=0)
        xs = minimal_langevin(
            lambda v: ebm(v, training=False), xs, k, seed, eps=4e-2, t=5e-5
        )
        with tf.GradientTape() as tape:
            tape.watch(xs)
            logits = tf.reduce_mean(tf.reshape(clf(xs), (64, h, -1)), 1)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            )
        g = tape.gradient(loss, xs)
        return tf.reduce_sum(tf.reshape(g, (64, h, 16, 16, 1)), 1)

    alone = tf.function(
        lambda: langevin(
            d.potential, tf.repeat(x, h, 0), num_steps=k, step_size=4e-2, seed=seed
        )[0]
    )
    a, b = timed_pair(lib, mini, repeats)
    (c,) = [v for v in timed_pair(alone, None, repeats) if v]
    work = 64 * h * k
    rows.append(
        row(
            f"attack BPDA+EOT gradient, digits, 64x{h} K_def{k}",
            "float32",
            "graph",
            work / a,
            work / b,
            "image-steps/s",
            langevin_share=c / a,
        )
    )


def fid_rows(rows, repeats):
    digits = networks.build("clf_digits")
    cases = [("digits CNN features", digits.features, (512, 16, 16, 1), 256)]
    if not FLAGS.quick:
        net = fid.inception_keras(weights=None)
        cases.append(("InceptionV3 pool features at 299", net, (100, 32, 32, 3), 50))
    for name, fn, shape, batch in cases:
        images = np.random.default_rng(0).uniform(-1, 1, shape).astype("float32")
        backbone = fid.Backbone(name, fn, batch)
        direct = tf.function(fn)

        def mini(images=images, batch=batch, direct=direct):
            return [
                direct(tf.constant(images[i : i + batch]))
                for i in range(0, len(images), batch)
            ]

        a, b = timed_pair(lambda bb=backbone, im=images: bb(im), mini, repeats)
        rows.append(
            row(name, "float32", "graph", shape[0] / a, shape[0] / b, "images/s")
        )


def matmul_peak(dtype, n=2048, reps=10):
    """FLOP/s of a chain of n x n matmuls (each depends on the last, so no
    graph optimization merges them)."""
    a = tf.cast(tf.random.stateless_normal((n, n), [0, 1]) / n**0.5, dtype)

    @tf.function
    def chain():
        x = a
        for _ in range(reps):
            x = tf.matmul(x, a)
        return x

    (t,) = [v for v in timed_pair(chain, None, 3) if v]
    return 2 * n**3 * reps / t


def forward_flops(net, shape):
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = (
        tf.function(lambda x: net(x, training=False))
        .get_concrete_function(tf.TensorSpec((1,) + shape))
        .graph
    )
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return model_analyzer.profile(graph, options=opts).total_float_ops


def row(name, precision, mode, library, minimal, unit, **extra):
    out = dict(
        name=name,
        precision=precision,
        mode=mode,
        library=library,
        minimal=minimal,
        unit=unit,
        **extra,
    )
    out["library_over_minimal"] = library / minimal if minimal else None
    line = f"{name} [{precision}, {mode}]: {_num(library)} {unit}"
    if minimal:
        line += f" vs minimal {_num(minimal)} ({library / minimal:.3f})"
    print(line, flush=True)
    return out


def _num(value):
    """Four significant digits, thousands separated."""
    return f"{float(f'{value:.4g}'):,}".removesuffix(".0")


def main(_):
    k_lang = 5 if FLAGS.quick else 20
    k_train = 10 if FLAGS.quick else 100
    rows = []
    peaks = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    for d, p in peaks.items():
        print(f"matmul peak {d}: {p / 1e9:,.0f} GFLOP/s", flush=True)
    langevin_rows(rows, k_lang, FLAGS.repeats)
    flop = 2 * forward_flops(networks.build("ebm_sngan32"), (32, 32, 3))
    train_rows(rows, k_train, FLAGS.repeats)
    attack_rows(rows, 20 if FLAGS.quick else 100, FLAGS.repeats)
    fid_rows(rows, FLAGS.repeats)

    print()
    print(f"{os.cpu_count()} CPUs; {tf.config.list_physical_devices()}")
    for d, p in peaks.items():
        print(f"matmul peak ({d}, 2048^2): {p / 1e9:,.0f} GFLOP/s")
    print(f"ebm_sngan32 Langevin step: {flop / 1e9:.2f} GFLOP per image (2 x forward)")
    print()
    print("| computation | precision | mode | library | minimal loop | ratio | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        note = ""
        if r["name"].startswith("Langevin") and r["precision"] == "float32":
            frac = r["library"] * flop / peaks["float32"]
            note = f"{frac:.0%} of the float32 matmul peak"
            r["fraction_of_peak"] = frac
        if "langevin_share" in r:
            note = f"Langevin alone {r['langevin_share']:.0%} of the step"
        minimal = _num(r["minimal"]) if r["minimal"] else "-"
        ratio = f"{r['library_over_minimal']:.3f}" if r["minimal"] else "-"
        print(
            f"| {r['name']} | {r['precision']} | {r['mode']} | "
            f"{_num(r['library'])} {r['unit']} | {minimal} | {ratio} | {note} |"
        )
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(
                dict(rows=rows, matmul_peak=peaks, langevin_flop=flop), f, indent=1
            )


if __name__ == "__main__":
    app.run(main)
