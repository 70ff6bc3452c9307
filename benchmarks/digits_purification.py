"""How far purification moves images, against the attack radius, and what it
costs in natural accuracy: the cheap screen before an adaptive attack.

    python benchmarks/digits_purification.py --workdir=runs/midrun/digits \
        --step_sizes=0.01,0.02,0.03 --k_defs=100,200,400

For each purification step size eps and K_def, on the evaluation's test
images (`attack.num_images`, same order as `evaluate.py`): the rms and the
mean largest per-pixel displacement of purified natural images (in [-1, 1]
units, beside the attack radius 2 * attack.eps and the pure-noise scale
eps sqrt(K_def)), the accuracy of one purified replicate and of the
H_def-averaged logits, and the accuracy on transferred adversarial images
(PGD of the same eps against the undefended classifier, then purified
once): a setting that fails here fails the adaptive attack too. Writes
`<workdir>/eval/purification_screen<tag>.{json,csv}`. With `--pgd_eps` it
only measures the undefended classifier under PGD at each eps.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_ebm import run  # noqa: E402
from keras_ebm.cli import parse  # noqa: E402

flags.DEFINE_list("step_sizes", ["0.01", "0.02", "0.03"], "purification eps")
flags.DEFINE_list("k_defs", ["100", "200", "400"], "purification steps")
flags.DEFINE_list("temperatures", ["0"], "purification T (0: the training T)")
flags.DEFINE_list(
    "pgd_eps", [], "only measure undefended PGD accuracy at these eps ([0, 1] units)"
)
flags.DEFINE_integer("batch_size", 256, "images per purification call")
flags.DEFINE_string("tag", "", "suffix of the output files")


def main(argv):
    import numpy as np
    import tensorflow as tf

    from keras_ebm import classify
    from keras_ebm.defense import attack, plan, report
    from keras_ebm.regimes import midrun
    from keras_ebm.runs import training

    config, workdir = parse.resolved()
    config = run.run_config(config, workdir)
    model, step = training.load_trained(config, workdir, midrun.build)
    classifier = classify.load_to_defend(config.defense.classifier_workdir)
    images, labels = report.test_set(config)
    x = tf.constant(images)
    y = tf.constant(labels, tf.int32)
    if flags.FLAGS.pgd_eps:
        return undefended_pgd(config, classifier, x, y, model)
    settings = plan.settings_of(config, adv_replicates=1, def_replicates=1)
    plain = report.purify.DefendedClassifier(model, classifier, 0)
    tf.random.set_seed(config.attack.seed)
    eta0 = attack.random_start(x, settings)
    x_adv = attack.batch_attack(plain, settings)(
        x, y, eta0, tf.constant([config.attack.seed, 0])
    ).x_adv
    undefended_adv = float(np.mean(np.argmax(classifier(x_adv), -1) == labels))
    radius = 2 * config.attack.eps
    h_def = config.attack.def_replicates
    rows = []
    print(
        f"{len(images)} test images, attack radius {radius:.3f} ([-1, 1] units), "
        f"undefended accuracy on the transferred PGD images {undefended_adv:.3f}"
    )
    print(
        f"{'eps':>6} {'K_def':>6} {'T':>7} {'noise':>6} {'rms':>6} {'max':>6} "
        f"{'nat@1':>6} {'nat@H':>6} {'transfer':>8} {'s':>6}"
    )
    settings_grid = [
        (float(e), int(k), float(t))
        for t in flags.FLAGS.temperatures
        for e in flags.FLAGS.step_sizes
        for k in flags.FLAGS.k_defs
    ]
    for eps, k, t in settings_grid:
        d = report.purify.DefendedClassifier(model, classifier, k, eps, t or None)
        run_k = tf.function(lambda v, s, d=d: d.purify(v, s))
        logits_h = tf.function(lambda v, s, d=d: d.logits(v, h_def, s))
        started = time.perf_counter()
        moved, adv, nat_h = [], [], []
        for i in range(0, len(images), flags.FLAGS.batch_size):
            sl = slice(i, i + flags.FLAGS.batch_size)
            moved.append(run_k(x[sl], tf.constant([1, i])).numpy())
            adv.append(run_k(x_adv[sl], tf.constant([2, i])).numpy())
            nat_h.append(logits_h(x[sl], tf.constant([3, i])).numpy())
        seconds = time.perf_counter() - started
        moved, adv = np.concatenate(moved), np.concatenate(adv)
        delta = (moved - images).reshape(len(images), -1)
        row = dict(
            step_size=eps,
            k_def=k,
            temperature=float(d.temperature),
            noise_scale=eps * np.sqrt(k),
            rms_displacement=float(np.sqrt(np.mean(delta**2))),
            mean_max_displacement=float(np.abs(delta).max(1).mean()),
            radius=radius,
            natural_1=float(np.mean(np.argmax(classifier(moved), -1) == labels)),
            natural_h=float(np.mean(np.argmax(np.concatenate(nat_h), -1) == labels)),
            transfer_1=float(np.mean(np.argmax(classifier(adv), -1) == labels)),
            seconds=seconds,
        )
        rows.append(row)
        print(
            f"{eps:6.3f} {k:6d} {t:7.1e} {row['noise_scale']:6.3f} "
            f"{row['rms_displacement']:6.3f} {row['mean_max_displacement']:6.3f} "
            f"{row['natural_1']:6.3f} {row['natural_h']:6.3f} "
            f"{row['transfer_1']:8.3f} {seconds:6.1f}",
            flush=True,
        )
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    result = dict(
        checkpoint_step=step,
        num_images=len(images),
        def_replicates=h_def,
        undefended_transfer=undefended_adv,
        rows=rows,
    )
    with open(
        os.path.join(out, f"purification_screen{flags.FLAGS.tag}.json"), "w"
    ) as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, f"purification_screen{flags.FLAGS.tag}.csv"), "w") as f:
        f.write(",".join(rows[0]) + "\n")
        for r in rows:
            f.write(",".join(f"{v:.6g}" for v in r.values()) + "\n")


def undefended_pgd(config, classifier, x, y, model):
    """PGD accuracy of the undefended classifier at each `--pgd_eps`, over
    `attack.num_seeds` random starts (the choice of the attack radius)."""
    import dataclasses

    import numpy as np

    from keras_ebm.defense import attack, plan, report

    plain = report.purify.DefendedClassifier(model, classifier, 0)
    print(f"undefended PGD, {config.attack.num_steps} steps of eps/4, random start")
    for eps in (float(e) for e in flags.FLAGS.pgd_eps):
        s = dataclasses.replace(
            plan.undefended_settings(config), eps=2 * eps, step_size=2 * eps / 4
        )
        accs = []
        for seed in plan.attack_seeds(config):
            r = attack.evaluate(
                plain,
                x.numpy(),
                y.numpy(),
                s,
                f"/tmp/pgd_eps_{eps}_{seed}",
                batch_size=len(x),
                seed=seed,
            )
            accs.append(r["robust_accuracy"])
        print(f"eps {eps:.4f} ({eps * 255:.1f}/255): {np.round(accs, 3)}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse.parse_flags)
