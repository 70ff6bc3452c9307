"""The midrun robustness report: natural and robust accuracy of the defended
classifier under BPDA+EOT (and, on request, a stronger adaptive attack),
beside the undefended classifier under the same PGD, the accuracy over
attack steps and the accuracy-vs-K_def curve (paper Figure 6).

Outputs in `<workdir>/eval/attack/`: `results.json`, `accuracy_over_steps`
and `k_def_curve` as CSV and PNG, one resumable folder per attack, and
TensorBoard scalars in `<workdir>/tensorboard/eval`.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from keras_ebm import data
from keras_ebm.defense import attack, purify


def settings_of(config, **override):
    """`attack.AttackSettings` from `config.attack` (eps and step size in
    [0, 1] pixel units, e.g. 8/255, doubled for images in [-1, 1])."""
    a = config.attack
    values = dict(
        eps=2 * a.eps,
        step_size=2 * a.step_size,
        num_steps=a.num_steps,
        norm=a.norm,
        adv_replicates=a.adv_replicates,
        def_replicates=a.def_replicates,
        random_start=a.random_start,
    )
    values.update(override)
    return attack.AttackSettings(**values)


def test_set(config):
    """`config.attack.num_images` labeled images of `config.attack.split`,
    in a seeded random order (the reference shuffles its test set)."""
    a = config.attack
    images, labels = data.labeled(config, a.split)
    order = np.random.default_rng(a.seed).permutation(len(images))[: a.num_images]
    return images[order], labels[order]


def defended_classifier(config, model, classifier, num_steps):
    """`classifier` behind `num_steps` purification steps at
    `defense.step_size` (0: the training eps)."""
    step_size = config.defense.get("step_size") or None
    return purify.DefendedClassifier(model, classifier, num_steps, step_size)


def run_attack(name, defended, images, labels, settings, out, config, step):
    """One attack over the test set, resumable in its own folder (named by
    everything that changes its result)."""
    from tqdm import tqdm

    a = config.attack
    # A purification step size other than the training one is part of the
    # name (the default's names stay those of earlier evaluations).
    extra = {}
    if defended.num_steps and defended.step_size != defended.model.step_size:
        extra["purify_step_size"] = float(defended.step_size)
    key = attack.settings_key(
        settings,
        **extra,
        k_def=int(defended.num_steps),
        checkpoint_step=int(step),
        split=a.split,
        seed=a.seed,
        batch_size=a.batch_size,
    )
    folder = os.path.join(out, f"{name}_k{defended.num_steps}_{key}")
    batches = -(-len(images) // config.attack.batch_size)
    bar = tqdm(total=batches, desc=f"{name} (K_def {defended.num_steps})", unit="batch")

    def progress(done, total, record):
        bar.n = done
        bar.set_postfix(robust=f"{record[-1].mean():.3f}", images=record.shape[1])
        bar.refresh()

    try:
        result = attack.evaluate(
            defended,
            images,
            labels,
            settings,
            folder,
            batch_size=config.attack.batch_size,
            seed=config.attack.seed,
            progress=progress,
        )
    finally:
        bar.close()
    result["name"] = name
    return result


def report(config, workdir, model, classifier, step):
    """Runs the attacks of `config.attack` and writes the report.

    Returns:
        The results dict (also `eval/attack/results.json`).
    """
    a = config.attack
    out = os.path.join(workdir, "eval", "attack")
    report_dir = os.path.join(out, a.get("report_name", ""))
    os.makedirs(report_dir, exist_ok=True)
    images, labels = test_set(config)
    k_def = config.defense.num_steps
    started = time.perf_counter()
    attacks = {}
    plain = purify.DefendedClassifier(model, classifier, 0)  # no purification
    # The undefended classifier under the same PGD (one replicate: it is
    # deterministic).
    attacks["undefended"] = run_attack(
        "undefended",
        plain,
        images,
        labels,
        settings_of(config, adv_replicates=1, def_replicates=1),
        out,
        config,
        step,
    )
    defended = defended_classifier(config, model, classifier, k_def)
    attacks["bpda_eot"] = run_attack(
        "bpda_eot", defended, images, labels, settings_of(config), out, config, step
    )
    if a.adaptive:
        count = a.adaptive_images or len(images)
        attacks["adaptive"] = run_attack(
            f"adaptive_{a.adaptive_loss}_g{a.adaptive_grad_steps}",
            defended,
            images[:count],
            labels[:count],
            settings_of(config, loss=a.adaptive_loss, grad_steps=a.adaptive_grad_steps),
            out,
            config,
            step,
        )
    worst = worst_case([r for k, r in attacks.items() if k != "undefended"])
    curve = []
    if a.k_def_curve:
        count = a.curve_images or len(images)
        for k in a.k_def_curve:
            # Named as the main attacks, so K_def 0 and K_def = defense.num_steps
            # reuse their batches.
            r = run_attack(
                "bpda_eot" if k else "undefended",
                defended_classifier(config, model, classifier, int(k)),
                images[:count],
                labels[:count],
                settings_of(config)
                if k
                else settings_of(config, adv_replicates=1, def_replicates=1),
                out,
                config,
                step,
            )
            curve.append(dict(k_def=int(k), **_summary(r)))
    results = dict(
        checkpoint_step=step,
        k_def=k_def,
        purify_step_size=float(defended.step_size),
        eps=a.eps,
        eps_in_255=a.eps * 255,
        step_size=a.step_size,
        num_steps=a.num_steps,
        norm=a.norm,
        adv_replicates=a.adv_replicates,
        def_replicates=a.def_replicates,
        num_images=len(images),
        split=a.split,
        attacks={k: _summary(r) for k, r in attacks.items()},
        worst_case=worst,
        k_def_curve=curve,
        seconds_total=time.perf_counter() - started,
    )
    with open(os.path.join(report_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    _write_steps(report_dir, attacks)
    if curve:
        _write_curve(report_dir, curve, a)
    _tensorboard(workdir, step, attacks, curve)
    _print(results)
    return results


def worst_case(runs):
    """Robust accuracy against the strongest of several attacks, per image:
    an image counts as robust only if it survived every attack run on it
    (over the first images, as many as every attack covered)."""
    n = min(len(r["per_image_robust"]) for r in runs)
    survived = np.logical_and.reduce(
        [np.asarray(r["per_image_robust"][:n], bool) for r in runs]
    )
    return dict(
        robust_accuracy=float(survived.mean()),
        robust_ci95=attack.proportion_ci(int(survived.sum()), n),
        attacks=[r["name"] for r in runs],
        num_images=n,
    )


def _summary(r):
    keys = (
        "natural_accuracy",
        "natural_ci95",
        "robust_accuracy",
        "robust_ci95",
        "curve",
        "adv_replicate_accuracy",
        "seconds",
        "seconds_per_attack_step",
        "settings",
        "num_images",
    )
    return {k: r[k] for k in keys}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_steps(out, attacks):
    """Accuracy over attack steps: row 0 natural, row i + 1 after i PGD
    steps (the monotone record)."""
    names = list(attacks)
    rows = len(attacks[names[0]]["curve"])
    with open(os.path.join(out, "accuracy_over_steps.csv"), "w") as f:
        f.write("attack_step," + ",".join(names) + "\n")
        for i in range(rows):
            label = "natural" if i == 0 else str(i - 1)
            f.write(
                label
                + ","
                + ",".join(f"{attacks[n]['curve'][i]:.6f}" for n in names)
                + "\n"
            )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for n in names:
        ax.plot(np.arange(-1, rows - 1), attacks[n]["curve"], ".-", label=n, ms=3)
    ax.set_xlabel("PGD step (-1 = natural images)")
    ax.set_ylabel("accuracy (monotone record)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(
        os.path.join(out, "accuracy_over_steps.png"), dpi=110, bbox_inches="tight"
    )
    plt.close(fig)


def _write_curve(out, curve, a):
    with open(os.path.join(out, "k_def_curve.csv"), "w") as f:
        f.write("k_def,natural,natural_lo,natural_hi,robust,robust_lo,robust_hi\n")
        for c in curve:
            f.write(
                f"{c['k_def']},{c['natural_accuracy']:.6f},{c['natural_ci95'][0]:.6f},"
                f"{c['natural_ci95'][1]:.6f},{c['robust_accuracy']:.6f},"
                f"{c['robust_ci95'][0]:.6f},{c['robust_ci95'][1]:.6f}\n"
            )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    k = [c["k_def"] for c in curve]
    for field, label in (
        ("natural", "natural"),
        ("robust", f"robust (eps {a.eps * 255:.0f}/255)"),
    ):
        acc = np.array([c[f"{field}_accuracy"] for c in curve])
        ci = np.array([c[f"{field}_ci95"] for c in curve])
        ax.errorbar(
            k,
            acc,
            yerr=[acc - ci[:, 0], ci[:, 1] - acc],
            fmt="o-",
            capsize=3,
            label=label,
        )
    ax.set_xlabel("purification steps K_def")
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(os.path.join(out, "k_def_curve.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def _tensorboard(workdir, step, attacks, curve):
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", "eval"))
    with writer.as_default(step=step):
        for name, r in attacks.items():
            tf.summary.scalar(f"attack/{name}/natural_accuracy", r["natural_accuracy"])
            tf.summary.scalar(f"attack/{name}/robust_accuracy", r["robust_accuracy"])
    for name, r in attacks.items():  # the curve over attack steps
        with writer.as_default():
            for i, v in enumerate(r["curve"]):
                tf.summary.scalar(f"attack_over_steps/{name}", v, step=i)
    with writer.as_default():
        for c in curve:
            tf.summary.scalar(
                "k_def_curve/natural", c["natural_accuracy"], step=c["k_def"]
            )
            tf.summary.scalar(
                "k_def_curve/robust", c["robust_accuracy"], step=c["k_def"]
            )
    writer.flush()


def _print(results):
    print(
        f"\n{results['norm']} eps {results['eps_in_255']:.1f}/255, "
        f"{results['num_steps']} PGD steps, H_adv {results['adv_replicates']}, "
        f"H_def {results['def_replicates']}, K_def {results['k_def']}, "
        f"{results['num_images']} {results['split']} images"
    )
    print(
        f"{'attack':>24} | {'natural (95% CI)':>22} | {'robust (95% CI)':>22} | s/step"
    )
    for name, r in results["attacks"].items():
        nat, rob = r["natural_ci95"], r["robust_ci95"]
        print(
            f"{name:>24} | {r['natural_accuracy']:.3f} ({nat[0]:.3f}-{nat[1]:.3f}) "
            f"| {r['robust_accuracy']:.3f} ({rob[0]:.3f}-{rob[1]:.3f}) "
            f"| {r['seconds_per_attack_step']:.2f}"
        )
    w = results["worst_case"]
    print(
        f"{'worst case (defended)':>24} | {'':>22} | {w['robust_accuracy']:.3f} "
        f"({w['robust_ci95'][0]:.3f}-{w['robust_ci95'][1]:.3f})"
    )
    for c in results["k_def_curve"]:
        print(
            f"K_def {c['k_def']:>5}: natural {c['natural_accuracy']:.3f}, "
            f"robust {c['robust_accuracy']:.3f}"
        )
