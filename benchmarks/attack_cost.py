"""What the attacks cost on a midrun EBM: speed against the Langevin core,
and the memory of the full gradient against keeping every step on the tape.

    python benchmarks/attack_cost.py --workdir=runs/midrun/digits

Speed (one batch of `attack.batch_size` images x H_adv replicates, K_def
steps, compiled, median of `--repeats`): image-steps per second of
- the Langevin core alone (`keras_ebm.sampling.langevin`), the same chains;
- one BPDA+EOT gradient (`gradients.eot_logits_and_grad`, grad_steps 0);
- one full-gradient step (grad_steps K_def, checkpointed every ~sqrt(K_def));
- one surrogate step (the same through the smooth twin at `--beta`);
- one SPSA step (`attack.spsa_samples` pairs: 2N + 1 purifications of the
  batch; image-steps counted as the forward chains it runs),
and how far the exact gradient is from the straight-through one with the
same noise (for a ReLU EBM: zero up to rounding).

Memory (`--memory_images` images x H_adv replicates): the peak of
TensorFlow's own allocator count during one full-gradient step, for K_def
100 and 1000, checkpointed every ~sqrt(K_def) steps and with one segment
(every step on the tape), beside a BPDA step's. Writes
`<workdir>/eval/attack_cost.json`.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from timing import median_seconds  # noqa: E402

from keras_ebm import run  # noqa: E402
from keras_ebm.cli import parse  # noqa: E402

flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median)")
flags.DEFINE_integer("memory_images", 8, "images per memory measurement")
flags.DEFINE_list("memory_k_defs", ["100", "1000"], "K_def of the memory cases")
flags.DEFINE_float(
    "beta", 0.0, "the surrogate's beta (0: the config's first surrogate_betas)"
)


def load(config, workdir):
    from keras_ebm import classify
    from keras_ebm.defense import report
    from keras_ebm.regimes import midrun
    from keras_ebm.runs import training

    model, _ = training.load_trained(config, workdir, midrun.build)
    classifier = classify.load_to_defend(config.defense.classifier_workdir)
    images, labels = report.test_set(config)
    return model, classifier, images, labels


def speed(config, workdir):
    import tensorflow as tf

    from keras_ebm.defense import gradients, plan, report
    from keras_ebm.sampling import langevin

    model, classifier, images, labels = load(config, workdir)
    k = config.defense.num_steps
    b = config.attack.batch_size
    h = config.attack.adv_replicates
    d = report.defended_classifier(config, model, classifier, k)
    x = tf.constant(images[:b])
    y = tf.constant(labels[:b], tf.int32)
    seed = tf.constant([0, 1])
    chains = tf.repeat(x, h, axis=0)

    core = tf.function(
        lambda: langevin(
            d.potential, chains, num_steps=k, step_size=d.step_size, seed=seed
        )[0]
    )
    bpda = plan.settings_of(config)
    spsa = plan.spsa_settings(config)
    beta = flags.FLAGS.beta or config.attack.surrogate_betas[0]
    estimators = {
        "bpda_eot_gradient": bpda,
        "full_gradient": plan.full_gradient_settings(config, k),
        "surrogate": plan.surrogate_settings(config, k, beta),
        "spsa": spsa,
    }
    steps = {"langevin_core": core}
    for name, s in estimators.items():
        steps[name] = tf.function(
            lambda s=s: gradients.logits_and_grad(d, x, y, s, seed)
        )
    out = {}
    for name, fn in steps.items():
        # Forward chains: SPSA purifies 2N + 1 batches of its H replicates.
        s = estimators.get(name, bpda)
        image_steps = b * s.adv_replicates * k * (1 + 2 * s.spsa_samples)
        seconds = median_seconds(
            lambda fn=fn: [t.numpy() for t in tf.nest.flatten(fn())],
            flags.FLAGS.repeats,
        )
        out[name] = dict(
            seconds=seconds,
            image_steps=image_steps,
            image_steps_per_second=image_steps / seconds,
        )
        print(
            f"{name:>18}: {seconds:7.2f} s, {image_steps / seconds:9.0f} image-steps/s"
        )
    # ReLU energies are piecewise linear: their Hessian vanishes almost
    # everywhere, so the exact gradient through the purification should be
    # the straight-through one. Same seed, same loss (cross-entropy).
    same_loss = plan.settings_of(config, grad_steps=k)
    _, g_full = gradients.eot_logits_and_grad(d, x, y, same_loss, seed)
    _, g_bpda = gradients.eot_logits_and_grad(d, x, y, bpda, seed)
    out["full_vs_bpda_gradient_max_relative_difference"] = float(
        tf.reduce_max(tf.abs(g_full - g_bpda)) / tf.reduce_max(tf.abs(g_bpda))
    )
    print(
        "full vs BPDA gradient (cross-entropy, same noise): max relative "
        f"difference {out['full_vs_bpda_gradient_max_relative_difference']:.2e}"
    )
    core_rate = out["langevin_core"]["image_steps_per_second"]
    out["bpda_over_core"] = (
        out["bpda_eot_gradient"]["image_steps_per_second"] / core_rate
    )
    for name in ("full_gradient", "surrogate", "spsa"):
        out[f"{name}_overhead"] = (
            out[name]["seconds"] / out["bpda_eot_gradient"]["seconds"]
        )
    out.update(
        chains=b * h,
        k_def=k,
        segment=gradients.segment_length(k),
        beta=beta,
        spsa_samples=spsa.spsa_samples,
        spsa_replicates=spsa.adv_replicates,
    )
    return out


def memory(config, workdir, k_defs):
    """Peak TensorFlow memory (MiB, the allocator's own count,
    `tf.config.experimental.get_memory_info`) of one exact-gradient step
    through K_def steps, checkpointed every ~sqrt(K_def) steps and with one
    segment (every step on the tape), beside the BPDA step's."""
    import tensorflow as tf

    from keras_ebm.defense import gradients, plan, report

    model, classifier, images, labels = load(config, workdir)
    n = flags.FLAGS.memory_images
    x, y = tf.constant(images[:n]), tf.constant(labels[:n], tf.int32)
    seed = tf.constant([0, 1])
    cases = []
    for k in k_defs:
        d = report.defended_classifier(config, model, classifier, k)
        for segment in (None, gradients.segment_length(k), k):
            if segment is None:  # BPDA: nothing of the chain on a tape
                s = plan.settings_of(config)
            else:
                s = plan.settings_of(config, grad_steps=k, checkpoint_every=segment)
            step = tf.function(
                lambda d=d, s=s: gradients.eot_logits_and_grad(d, x, y, s, seed)
            )
            step()  # trace outside the measurement
            tf.config.experimental.reset_memory_stats("CPU:0")
            started = time.perf_counter()
            step()
            seconds = time.perf_counter() - started
            peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
            case = dict(
                k_def=k,
                segment=segment or 0,
                chains=n * config.attack.adv_replicates,
                peak_mib=peak,
                seconds=seconds,
            )
            cases.append(case)
            name = "BPDA" if segment is None else f"exact, segment {segment:4d}"
            print(
                f"K_def {k:5d}, {name:>19}: peak {peak:9.1f} MiB "
                f"({case['chains']} chains, {seconds:.1f} s)",
                flush=True,
            )
    return cases


def main(argv):
    config, workdir = parse.resolved()
    config = run.run_config(config, workdir)
    result = dict(
        speed=speed(config, workdir),
        memory=memory(config, workdir, [int(v) for v in flags.FLAGS.memory_k_defs]),
    )
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "attack_cost.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse.parse_flags)
