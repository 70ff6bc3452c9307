"""What the midrun report writes: the accuracy over attack steps and the
K_def curves as CSV and PNG, TensorBoard scalars, and the printed table."""

import os
import re

import numpy as np
import tensorflow as tf


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_steps(out, attacks):
    """Accuracy over attack steps (mean over seeds): row 0 natural, row
    i + 1 after i PGD steps (the monotone record); empty past an attack's
    last step (attacks may take different numbers of steps)."""
    names = list(attacks)
    rows = max(len(attacks[n]["curve"]) for n in names)

    def cell(curve, i):
        return f"{curve[i]:.6f}" if i < len(curve) else ""

    with open(os.path.join(out, "accuracy_over_steps.csv"), "w") as f:
        f.write("attack_step," + ",".join(names) + "\n")
        for i in range(rows):
            label = "natural" if i == 0 else str(i - 1)
            values = [cell(attacks[n]["curve"], i) for n in names]
            f.write(label + "," + ",".join(values) + "\n")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for n in names:
        seeds = len(attacks[n]["seeds"])
        label = f"{n} ({seeds} seed{'s' * (seeds > 1)}"
        # A cascade's curve is over the survivors it attacked, not the set.
        of = attacks[n].get("cascade_of")
        if of:
            label += f"; on the {attacks[n]['num_images']} survivors of {of[0]}"
        ax.plot(
            np.arange(-1, len(attacks[n]["curve"]) - 1),
            attacks[n]["curve"],
            "--" if of else ".-",
            label=label + ")",
            ms=3,
        )
    ax.set_xlabel("PGD step (-1 = natural images)")
    ax.set_ylabel("accuracy (monotone record)")
    ax.set_ylim(0, 1.03)  # a cascade that broke nothing sits at 1
    ax.grid(True, alpha=0.3)
    # Below the axes: with cascades there are more curves than free corners.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
    fig.savefig(
        os.path.join(out, "accuracy_over_steps.png"), dpi=110, bbox_inches="tight"
    )
    plt.close(fig)


def write_curve(out, curve, a):
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


def tensorboard_run(config):
    """The TensorBoard run of a report: `eval/attack/<report>/<classifier>`,
    so that reports of other names or classifiers, which write the same tags
    at the same checkpoint step, show as separate (overlaid) runs."""
    report = config.attack.get("report_name", "") or "report"
    classifier = config.defense.get("classifier_workdir", "") or "classifier"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.normpath(classifier)).strip("_")
    return os.path.join("eval", "attack", report, slug)


def write_tensorboard(workdir, step, attacks, curve, run="eval"):
    """Scalars of one report under `<workdir>/tensorboard/<run>`."""
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", run))
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


def print_results(results):
    print(
        f"\n{results['norm']} eps {results['eps_in_255']:.1f}/255 (radius "
        f"{results['radius']:.3f} in [-1, 1] units), {results['num_steps']} PGD "
        f"steps, H_adv {results['adv_replicates']}, H_def "
        f"{results['def_replicates']}, K_def {results['k_def']} at eps "
        f"{results['purify_step_size']:g}, T {results['purify_temperature']:g}; "
        f"{results['num_images']} {results['split']} images, seeds {results['seeds']}"
    )
    print(
        f"{'attack':>16} | {'gradient, loss':>16} | {'natural':>14} | "
        f"{'robust mean +- std':>18} | per-seed robust (95% CI) | "
        "last-fifth drop | s/step | non-finite"
    )
    for name, r in results["attacks"].items():
        seeds = ", ".join(
            f"{p['robust_accuracy']:.3f} ({p['robust_ci95'][0]:.3f}-"
            f"{p['robust_ci95'][1]:.3f})"
            for p in r["per_seed"]
        )
        how = f"{r.get('estimator', '')}, {r.get('loss', '')}"
        if "cascade_of" in r:
            name = f"{name} [on {r['num_images']} of {r['cascade_of'][0]}]"
        print(
            f"{name:>16} | {how:>16} | {r['natural_accuracy']:.3f} +- "
            f"{r['natural_std']:.3f} | {r['robust_accuracy']:.3f} +- "
            f"{r['robust_std']:.3f} | {seeds} | {r['last_fifth_drop']:.3f} | "
            f"{r['seconds_per_attack_step']:.2f} | {r.get('nonfinite_gradients', 0)}"
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
    check = results.get("gradient_check")
    if check:
        print_gradient_check(check)
    for c in results["k_def_curve"]:
        print(
            f"K_def {c['k_def']:>5} {c['attack']:>14}: natural "
            f"{c['natural_accuracy']:.3f}, robust {c['robust_accuracy']:.3f} "
            f"({c['robust_ci95'][0]:.3f}-{c['robust_ci95'][1]:.3f})"
        )


def print_gradient_check(check):
    """Each attack's gradient against central differences of the expected
    loss (`gradients.gradient_check`): cosines, the same divided by the
    reference's own ceiling, and norm ratios; mean and range over the
    points."""

    def spread(values):
        v = np.asarray(values)
        return f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})"

    ceiling = np.asarray(check["ceiling"])
    print(
        f"\ngradient check at {check['points']} points (images + a random "
        f"start), loss {check['loss']}: central differences of the expected "
        f"loss along every pixel, {check['replicates']} purifications per "
        f"point, delta {check['delta']:g}; the reference's split-half cosine "
        f"{spread(check['fd_split_half'])}, its ceiling {spread(ceiling)}"
    )
    print(
        f"{'attack':>16} | {'cos, one draw':>22} | "
        f"{'cos, mean of ' + str(check['draws']):>22} | "
        f"{'cos / ceiling':>22} | norm ratio"
    )
    for name, r in check["estimators"].items():
        corrected = np.asarray(r["cos_mean"]) / np.maximum(ceiling, 1e-9)
        print(
            f"{name:>16} | {spread(r['cos_one_draw']):>22} | "
            f"{spread(r['cos_mean']):>22} | {spread(corrected):>22} | "
            f"{spread(r['norm_ratio'])}"
        )
