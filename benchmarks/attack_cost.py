"""What the attacks cost on a midrun EBM: speed against the Langevin core,
and the memory of the full gradient against keeping every step on the tape.

    python benchmarks/attack_cost.py --workdir=runs/midrun/digits

Speed (one batch of `attack.batch_size` images x H_adv replicates, K_def
steps, compiled, median of `--repeats`): image-steps per second of
- the Langevin core alone (`keras_ebm.sampling.langevin`), the same chains;
- one BPDA+EOT gradient (`attack.eot_logits_and_grad`, grad_steps 0);
- one full-gradient step (grad_steps K_def, checkpointed every ~sqrt(K_def)),
and how far the exact gradient is from the straight-through one with the
same noise (for a ReLU EBM: zero up to rounding).

Memory (`--memory_images` images x H_adv replicates, each case in a fresh
process): the peak resident memory of one full-gradient step above the same
process after a BPDA step, for K_def 100 and 1000, checkpointed every
~sqrt(K_def) steps and with one segment (every step on the tape). Writes
`<workdir>/eval/attack_cost.json`.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_ebm import cli, run  # noqa: E402

flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median)")
flags.DEFINE_integer("memory_images", 2, "images per memory measurement")
flags.DEFINE_list("memory_k_defs", ["100", "1000"], "K_def of the memory cases")
flags.DEFINE_string(
    "memory_case", "", "internal: `k_def,segment` measured in this process"
)


def load(config, workdir):
    from keras_ebm import training
    from keras_ebm.defense import report
    from keras_ebm.regimes import midrun

    model, _ = training.load_trained(config, workdir, midrun.build)
    classifier = midrun.load_classifier(config.defense.classifier_workdir)
    images, labels = report.test_set(config)
    return model, classifier, images, labels


def timed(fn, repeats):
    import numpy as np

    fn()  # trace and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def speed(config, workdir):
    import tensorflow as tf

    from keras_ebm.defense import attack, report
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
    bpda = report.settings_of(config)
    full = report.full_gradient_settings(config, k)
    steps = {
        "langevin_core": core,
        "bpda_eot_gradient": tf.function(
            lambda: attack.eot_logits_and_grad(d, x, y, bpda, seed)
        ),
        "full_gradient": tf.function(
            lambda: attack.eot_logits_and_grad(d, x, y, full, seed)
        ),
    }
    image_steps = b * h * k
    out = {}
    for name, fn in steps.items():
        seconds = timed(lambda fn=fn: [t.numpy() for t in tf.nest.flatten(fn())], 3)
        out[name] = dict(seconds=seconds, image_steps_per_second=image_steps / seconds)
        print(
            f"{name:>18}: {seconds:7.2f} s, {image_steps / seconds:9.0f} image-steps/s"
        )
    # ReLU energies are piecewise linear: their Hessian vanishes almost
    # everywhere, so the exact gradient through the purification should be
    # the straight-through one. Same seed, same loss (cross-entropy).
    same_loss = report.settings_of(config, grad_steps=k)
    _, g_full = attack.eot_logits_and_grad(d, x, y, same_loss, seed)
    _, g_bpda = attack.eot_logits_and_grad(d, x, y, bpda, seed)
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
    out["full_gradient_overhead"] = (
        out["full_gradient"]["seconds"] / out["bpda_eot_gradient"]["seconds"]
    )
    out.update(chains=b * h, k_def=k, segment=attack.segment_length(k))
    return out


def memory_case(config, workdir, k, segment):
    """Peak RSS growth (MiB) of one exact-gradient step through K_def = k
    steps with checkpoints every `segment` steps, over the same process
    after a BPDA step (which runs the same forward chain)."""
    import resource

    import tensorflow as tf

    from keras_ebm.defense import attack, report

    model, classifier, images, labels = load(config, workdir)
    n = flags.FLAGS.memory_images
    d = report.defended_classifier(config, model, classifier, k)
    x, y = tf.constant(images[:n]), tf.constant(labels[:n], tf.int32)
    seed = tf.constant([0, 1])
    bpda = report.settings_of(config)
    exact = report.settings_of(config, grad_steps=k, checkpoint_every=segment)
    tf.function(lambda: attack.eot_logits_and_grad(d, x, y, bpda, seed))()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    tf.function(lambda: attack.eot_logits_and_grad(d, x, y, exact, seed))()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(
        k_def=k,
        segment=segment,
        chains=n * config.attack.adv_replicates,
        baseline_mib=base,
        peak_mib=peak,
        growth_mib=peak - base,
        seconds=seconds,
    )


def main(argv):
    config, workdir = cli.resolved()
    config = run.run_config(config, workdir)
    if flags.FLAGS.memory_case:
        k, segment = (int(v) for v in flags.FLAGS.memory_case.split(","))
        print("RESULT " + json.dumps(memory_case(config, workdir, k, segment)))
        return
    from keras_ebm.defense import attack

    result = dict(speed=speed(config, workdir), memory=[])
    for k in (int(v) for v in flags.FLAGS.memory_k_defs):
        for segment in (attack.segment_length(k), k):
            args = [a for a in sys.argv if not a.startswith("--memory_case")]
            proc = subprocess.run(
                [sys.executable, *args, f"--memory_case={k},{segment}"],
                capture_output=True,
                text=True,
            )
            line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
            if not line:
                print(proc.stderr[-2000:])
                continue
            case = json.loads(line[0][len("RESULT ") :])
            result["memory"].append(case)
            print(
                f"K_def {k:5d}, segment {segment:5d}: peak +{case['growth_mib']:8.1f} "
                f"MiB over {case['baseline_mib']:.0f} MiB ({case['chains']} chains, "
                f"{case['seconds']:.1f} s)",
                flush=True,
            )
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "attack_cost.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
