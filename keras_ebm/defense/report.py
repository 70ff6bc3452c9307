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


def undefended_settings(config):
    """The same PGD against the classifier alone (one replicate: it is
    deterministic)."""
    return settings_of(config, adv_replicates=1, def_replicates=1)


def full_gradient_settings(config, k_def):
    """The adaptive attack of `config.attack`: exact gradients through the
    last `adaptive_grad_steps` Langevin steps (-1: all K_def, the full
    gradient; no BPDA anywhere), checkpointed every `checkpoint_every` steps
    (0: ~sqrt), with the loss `adaptive_loss`."""
    a = config.attack
    m = k_def if a.adaptive_grad_steps < 0 else min(a.adaptive_grad_steps, k_def)
    return settings_of(
        config,
        loss=a.adaptive_loss,
        grad_steps=m,
        checkpoint_every=a.checkpoint_every,
    )


def adaptive_name(settings, k_def):
    """`full_gradient` when every purification step is differentiated,
    `exact_last<m>` when only the last m are (BPDA through the rest)."""
    if settings.grad_steps >= k_def:
        return "full_gradient"
    return f"exact_last{settings.grad_steps}"


def attack_seeds(config):
    """The independent seeds of every attack: `attack.seed`, + 1, ...
    (`attack.num_seeds` of them). Each seeds the random start and all
    purification noise of its run."""
    a = config.attack
    return [a.seed + i for i in range(a.num_seeds)]


def test_set(config):
    """`config.attack.num_images` labeled images of `config.attack.split`,
    in a seeded random order (the reference shuffles its test set)."""
    a = config.attack
    images, labels = data.labeled(config, a.split)
    order = np.random.default_rng(a.seed).permutation(len(images))[: a.num_images]
    return images[order], labels[order]


def defended_classifier(config, model, classifier, num_steps):
    """`classifier` behind `num_steps` purification steps at
    `defense.step_size` and `defense.temperature` (0: the training
    values)."""
    d = config.defense
    return purify.DefendedClassifier(
        model,
        classifier,
        num_steps,
        step_size=d.get("step_size") or None,
        temperature=d.get("temperature") or None,
    )


def run_attack(name, defended, images, labels, settings, out, config, step, seed):
    """One attack over the test set with one seed, resumable in its own
    folder, named by everything its result depends on: the attack settings,
    K_def, the seed, the batch size and the defended classifier's digest
    (both networks' weights, T, step size); each batch file is further
    named by a hash of its images and labels."""
    from tqdm import tqdm

    a = config.attack
    key = attack.settings_key(
        settings,
        k_def=int(defended.num_steps),
        defended=defended.digest(),
        checkpoint_step=int(step),
        seed=int(seed),
        batch_size=a.batch_size,
    )
    folder = os.path.join(out, f"{name}_k{defended.num_steps}_s{seed}_{key}")
    # One tick per PGD iterate of every batch: a batch of a long attack
    # takes minutes.
    per_batch = settings.num_steps + 1
    batches = -(-len(images) // a.batch_size)
    bar = tqdm(
        total=batches * per_batch,
        desc=f"{name} (K_def {defended.num_steps}, seed {seed})",
        unit="PGD step",
    )

    def progress(done, total, record):
        bar.n = done * per_batch
        bar.set_postfix(robust=f"{record[-1].mean():.3f}", images=record.shape[1])
        bar.refresh()

    def on_step(iterate, accuracy):
        bar.update(1)
        bar.set_postfix(batch_robust=f"{float(accuracy):.3f}", refresh=False)

    try:
        result = attack.evaluate(
            defended,
            images,
            labels,
            settings,
            folder,
            batch_size=a.batch_size,
            seed=seed,
            progress=progress,
            on_step=on_step,
        )
    finally:
        bar.close()
    result["name"] = name
    return result


def report(config, workdir, model, classifier, step, images, labels):
    """Runs the attacks of `config.attack` on `images`, `labels` and writes
    the report: every attack with every seed of `attack_seeds` (the
    full-gradient attack with the first `attack.adaptive_seeds`), their mean
    and spread over seeds beside the per-seed 95% intervals, the per-image
    worst case of the defended attacks, and the K_def curves.

    Returns:
        The results dict (also `eval/attack/<report_name>/results.json`).
    """
    a = config.attack
    out = os.path.join(workdir, "eval", "attack")
    report_dir = os.path.join(out, a.get("report_name", ""))
    os.makedirs(report_dir, exist_ok=True)
    k_def = config.defense.num_steps
    seeds = attack_seeds(config)
    started = time.perf_counter()
    plain = purify.DefendedClassifier(model, classifier, 0)  # no purification
    defended = defended_classifier(config, model, classifier, k_def)

    def each_seed(name, d, settings, seed_list, count=None):
        count = count or len(images)
        return [
            run_attack(
                name,
                d,
                images[:count],
                labels[:count],
                settings,
                out,
                config,
                step,
                seed,
            )
            for seed in seed_list
        ]

    runs = {
        "undefended": each_seed(
            "undefended", plain, undefended_settings(config), seeds
        ),
        "bpda_eot": each_seed("bpda_eot", defended, settings_of(config), seeds),
    }
    if a.adaptive:
        adaptive = full_gradient_settings(config, k_def)
        runs[adaptive_name(adaptive, k_def)] = each_seed(
            adaptive_name(adaptive, k_def),
            defended,
            adaptive,
            seeds[: a.adaptive_seeds],
            a.adaptive_images or None,
        )
    defended_runs = {k: r for k, r in runs.items() if k != "undefended"}
    worst = worst_case(defended_runs) if len(defended_runs) > 1 else None
    curve = []
    if a.k_def_curve:
        count = a.curve_images or None
        for k in a.k_def_curve:
            # Named as the main attacks, so K_def 0 and K_def = defense.num_steps
            # reuse their batches (seed `attack.seed`).
            if not k:
                r = each_seed(
                    "undefended", plain, undefended_settings(config), seeds[:1], count
                )[0]
                curve.append(dict(k_def=0, attack="bpda_eot", **_summary(r)))
                if a.adaptive:
                    curve.append(dict(k_def=0, attack="full_gradient", **_summary(r)))
                continue
            d = defended_classifier(config, model, classifier, int(k))
            r = each_seed("bpda_eot", d, settings_of(config), seeds[:1], count)[0]
            curve.append(dict(k_def=int(k), attack="bpda_eot", **_summary(r)))
            if a.adaptive:
                s = full_gradient_settings(config, int(k))
                r = each_seed(adaptive_name(s, int(k)), d, s, seeds[:1], count)[0]
                curve.append(dict(k_def=int(k), attack="full_gradient", **_summary(r)))
    attacks = {k: aggregate(r) for k, r in runs.items()}
    results = dict(
        checkpoint_step=step,
        k_def=k_def,
        purify_step_size=float(defended.step_size),
        purify_temperature=float(defended.temperature),
        eps=a.eps,
        eps_in_255=a.eps * 255,
        radius=2 * a.eps,
        step_size=a.step_size,
        num_steps=a.num_steps,
        norm=a.norm,
        adv_replicates=a.adv_replicates,
        def_replicates=a.def_replicates,
        num_images=len(images),
        split=a.split,
        seeds=seeds,
        attacks=attacks,
        worst_case=worst,
        disjoint=disjoint_from_undefended(attacks, worst),
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


def aggregate(runs):
    """One attack over its seeds: each seed's summary (with its 95%
    interval), and the mean, sample standard deviation and range of the
    natural and robust accuracies over seeds; the record's mean per row
    over seeds (`curve`) and the drop over its last fifth (0 when the
    attack had converged)."""
    per_seed = [dict(seed=r["seed"], **_summary(r)) for r in runs]
    out = dict(seeds=[r["seed"] for r in runs], per_seed=per_seed)
    for field in ("natural", "robust"):
        v = np.array([r[f"{field}_accuracy"] for r in runs])
        out[f"{field}_accuracy"] = float(v.mean())
        out[f"{field}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out[f"{field}_range"] = [float(v.min()), float(v.max())]
        out[f"{field}_ci95_lowest"] = min(r[f"{field}_ci95"][0] for r in runs)
        out[f"{field}_ci95_highest"] = max(r[f"{field}_ci95"][1] for r in runs)
    curve = np.mean([r["curve"] for r in runs], axis=0)
    out["curve"] = curve.tolist()
    # Rows: natural, then iterates 0..n; the last fifth of the n PGD steps.
    n = len(curve) - 2
    out["last_fifth_drop"] = float(curve[-1 - max(1, n // 5)] - curve[-1])
    out["num_images"] = runs[0]["num_images"]
    out["seconds"] = float(sum(r["seconds"] for r in runs))
    out["seconds_per_attack_step"] = float(
        np.mean([r["seconds_per_attack_step"] for r in runs])
    )
    out["image_steps_per_second"] = float(
        sum(r["langevin_image_steps"] for r in runs) / max(out["seconds"], 1e-9)
    )
    out["settings"] = runs[0]["settings"]
    return out


def worst_case(defended_runs):
    """Robust accuracy against the strongest of the defended attacks, per
    image and per seed: an image counts as robust for a seed only if it
    survived every defended attack run with that seed (over the first
    images, as many as every such attack covered). The undefended attack is
    not a defended attack and never enters."""
    per_seed = []
    for seed in sorted({r["seed"] for runs in defended_runs.values() for r in runs}):
        these = [
            r for runs in defended_runs.values() for r in runs if r["seed"] == seed
        ]
        if len(these) < len(defended_runs):
            continue  # not every attack ran with this seed
        n = min(len(r["per_image_robust"]) for r in these)
        survived = np.logical_and.reduce(
            [np.asarray(r["per_image_robust"][:n], bool) for r in these]
        )
        per_seed.append(
            dict(
                seed=seed,
                robust_accuracy=float(survived.mean()),
                robust_ci95=attack.proportion_ci(int(survived.sum()), n),
                num_images=n,
            )
        )
    if not per_seed:
        return None
    v = np.array([w["robust_accuracy"] for w in per_seed])
    return dict(
        attacks=list(defended_runs),
        per_seed=per_seed,
        robust_accuracy=float(v.mean()),
        robust_std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        robust_ci95_lowest=min(w["robust_ci95"][0] for w in per_seed),
        num_images=per_seed[0]["num_images"],
    )


def disjoint_from_undefended(attacks, worst):
    """For each defended attack (and the worst case): does every seed's 95%
    interval of robust accuracy lie above every seed's interval of the
    undefended classifier's?"""
    ceiling = attacks["undefended"]["robust_ci95_highest"]
    out = {
        k: bool(r["robust_ci95_lowest"] > ceiling)
        for k, r in attacks.items()
        if k != "undefended"
    }
    if worst is not None:
        out["worst_case"] = bool(worst["robust_ci95_lowest"] > ceiling)
    return out


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
        "langevin_image_steps",
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
    """Accuracy over attack steps (mean over seeds): row 0 natural, row
    i + 1 after i PGD steps (the monotone record)."""
    names = list(attacks)
    rows = max(len(attacks[n]["curve"]) for n in names)
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
        seeds = len(attacks[n]["seeds"])
        ax.plot(
            np.arange(-1, rows - 1),
            attacks[n]["curve"],
            ".-",
            label=f"{n} ({seeds} seed{'s' * (seeds > 1)})",
            ms=3,
        )
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
        f.write(
            "k_def,attack,natural,natural_lo,natural_hi,robust,robust_lo,robust_hi\n"
        )
        for c in curve:
            f.write(
                f"{c['k_def']},{c['attack']},{c['natural_accuracy']:.6f},"
                f"{c['natural_ci95'][0]:.6f},{c['natural_ci95'][1]:.6f},"
                f"{c['robust_accuracy']:.6f},{c['robust_ci95'][0]:.6f},"
                f"{c['robust_ci95'][1]:.6f}\n"
            )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lines = [("natural", "bpda_eot", "natural")]
    for name in dict.fromkeys(c["attack"] for c in curve):
        lines.append(("robust", name, f"robust, {name} (eps {a.eps * 255:.0f}/255)"))
    for offset, (field, name, label) in enumerate(lines):
        points = [c for c in curve if c["attack"] == name]
        k = np.array([c["k_def"] for c in points], float)
        acc = np.array([c[f"{field}_accuracy"] for c in points])
        ci = np.array([c[f"{field}_ci95"] for c in points])
        ax.errorbar(
            k * (1 + 0.015 * offset),  # side by side where intervals overlap
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
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "k_def_curve.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def _tensorboard(workdir, step, attacks, curve):
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", "eval"))
    with writer.as_default(step=step):
        for name, r in attacks.items():
            tf.summary.scalar(f"attack/{name}/natural_accuracy", r["natural_accuracy"])
            tf.summary.scalar(f"attack/{name}/robust_accuracy", r["robust_accuracy"])
            tf.summary.scalar(f"attack/{name}/robust_std", r["robust_std"])
    for name, r in attacks.items():  # the curve over attack steps
        with writer.as_default():
            for i, v in enumerate(r["curve"]):
                tf.summary.scalar(f"attack_over_steps/{name}", v, step=i)
    with writer.as_default():
        for c in curve:
            tf.summary.scalar(
                f"k_def_curve/{c['attack']}/natural",
                c["natural_accuracy"],
                step=c["k_def"],
            )
            tf.summary.scalar(
                f"k_def_curve/{c['attack']}/robust",
                c["robust_accuracy"],
                step=c["k_def"],
            )
    writer.flush()


def _print(results):
    print(
        f"\n{results['norm']} eps {results['eps_in_255']:.1f}/255 (radius "
        f"{results['radius']:.3f} in [-1, 1] units), {results['num_steps']} PGD "
        f"steps, H_adv {results['adv_replicates']}, H_def "
        f"{results['def_replicates']}, K_def {results['k_def']} at eps "
        f"{results['purify_step_size']:g}, T {results['purify_temperature']:g}; "
        f"{results['num_images']} {results['split']} images, seeds {results['seeds']}"
    )
    print(
        f"{'attack':>16} | {'natural':>14} | {'robust mean +- std':>18} | "
        f"per-seed robust (95% CI) | last-fifth drop | s/step"
    )
    for name, r in results["attacks"].items():
        seeds = ", ".join(
            f"{p['robust_accuracy']:.3f} ({p['robust_ci95'][0]:.3f}-"
            f"{p['robust_ci95'][1]:.3f})"
            for p in r["per_seed"]
        )
        print(
            f"{name:>16} | {r['natural_accuracy']:.3f} +- {r['natural_std']:.3f} | "
            f"{r['robust_accuracy']:.3f} +- {r['robust_std']:.3f} | {seeds} | "
            f"{r['last_fifth_drop']:.3f} | {r['seconds_per_attack_step']:.2f}"
        )
    w = results["worst_case"]
    if w is not None:
        seeds = ", ".join(
            f"{p['robust_accuracy']:.3f} ({p['robust_ci95'][0]:.3f}-"
            f"{p['robust_ci95'][1]:.3f})"
            for p in w["per_seed"]
        )
        print(
            f"{'worst case':>16} | {'':>14} | {w['robust_accuracy']:.3f} +- "
            f"{w['robust_std']:.3f} | {seeds}"
        )
    print(
        "95% intervals above the undefended one's: "
        + ", ".join(
            f"{k} {'yes' if v else 'no'}" for k, v in results["disjoint"].items()
        )
    )
    for c in results["k_def_curve"]:
        print(
            f"K_def {c['k_def']:>5} {c['attack']:>14}: natural "
            f"{c['natural_accuracy']:.3f}, robust {c['robust_accuracy']:.3f} "
            f"({c['robust_ci95'][0]:.3f}-{c['robust_ci95'][1]:.3f})"
        )
