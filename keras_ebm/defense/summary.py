"""Results over seeds and attacks: each attack's mean and spread over
seeds (`aggregate`), the per-image worst case over the defended attacks
(`worst_case`), the survivors a cascaded attack runs on (`survivors`,
`run_planned`), and whether intervals clear the undefended classifier's.
"""

import numpy as np

from keras_ebm.defense import attack


def survivors(runs, seed, count):
    """Indices among the first `count` images that every run of `seed` in
    `runs` (`{name: [result]}`) left robust (a run over fewer images leaves
    the images past its end to the others)."""
    alive = np.ones(count, bool)
    for results in runs.values():
        for r in results:
            if r is not None and r["seed"] == seed:
                robust = per_image(r)[:count]
                alive[: len(robust)] &= robust
    return np.flatnonzero(alive)


def per_image(r):
    """A run's per-image robustness over the images it was given; a
    cascaded run's images it did not attack count as broken (an earlier
    attack broke them)."""
    robust = np.asarray(r["per_image_robust"], bool)
    if "image_indices" not in r:
        return robust
    full = np.zeros(r["images_total"], bool)
    full[np.asarray(r["image_indices"], int)] = robust
    return full


def run_planned(planned, defended, images, labels, runs, each_seed):
    """The results of one planned attack, one per seed; a cascaded one
    attacks each seed's survivors (`survivors`) and records which images
    they were (`image_indices` of `images_total`); none are left: no run."""
    count = planned.count or len(images)
    if not planned.cascade:
        return each_seed(planned.name, defended, planned.settings, planned.seeds, count)
    out = []
    for seed in planned.seeds:
        idx = survivors(runs, seed, count)
        if not len(idx):
            print(f"{planned.name}, seed {seed}: every image already broken")
            continue
        r = each_seed(
            planned.name,
            defended,
            planned.settings,
            [seed],
            images=images[idx],
            labels=labels[idx],
        )[0]
        if r is not None:
            r.update(image_indices=idx.tolist(), images_total=count)
        out.append(r)
    return out


def aggregate(runs):
    """One attack over its seeds: each seed's summary (with its 95%
    interval), and the mean, sample standard deviation and range of the
    natural and robust accuracies over seeds; the record's mean per row
    over seeds (`curve`) and the drop over its last fifth (0 when the
    attack had converged)."""
    per_seed = [dict(seed=r["seed"], **run_summary(r)) for r in runs]
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
    settings = attack.AttackSettings(**runs[0]["settings"])
    out["estimator"], out["loss"] = settings.estimator, settings.loss
    if "image_indices" in runs[0]:  # a cascade: its figures are over survivors
        out["cascade_of"] = [r["images_total"] for r in runs]
    out["nonfinite_gradients"] = int(sum(r.get("nonfinite_gradients", 0) for r in runs))
    return out


def worst_case(defended_runs):
    """Robust accuracy against the strongest of the defended attacks, per
    image and per seed: an image counts as robust for a seed only if it
    survived every defended attack run with that seed (over the first
    images, as many as every such attack covered). The undefended attack is
    not a defended attack and never enters. A cascaded attack (it ran on
    the survivors of the others) counts its skipped images as broken, and
    holds no seed back where it found nothing left to attack."""
    per_seed = []
    cascaded = {
        k
        for k, runs in defended_runs.items()
        if any("image_indices" in r for r in runs)
    }
    for seed in sorted({r["seed"] for runs in defended_runs.values() for r in runs}):
        these = {
            k: r for k, runs in defended_runs.items() for r in runs if r["seed"] == seed
        }
        if set(these) | cascaded != set(defended_runs):
            continue  # not every attack ran with this seed
        n = min(len(per_image(r)) for r in these.values())
        survived = np.logical_and.reduce([per_image(r)[:n] for r in these.values()])
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
        if k != "undefended" and "cascade_of" not in r  # over survivors only
    }
    if worst is not None:
        out["worst_case"] = bool(worst["robust_ci95_lowest"] > ceiling)
    return out


def run_summary(r):
    if r is None:  # a worker's share: the chief summarizes
        return {}
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
