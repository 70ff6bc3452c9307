"""The midrun robustness report: natural and robust accuracy of the defended
classifier under BPDA+EOT and the full-gradient attack, each over several
seeds, their per-image worst case, beside the undefended classifier under
the same PGD; the accuracy over attack steps and the accuracy-vs-K_def
curves (paper Figure 6).

Outputs (written by `keras_ebm.defense.outputs`) in
`<workdir>/eval/attack/<report_name>/`: `results.json`,
`accuracy_over_steps` and `k_def_curve` as CSV and PNG, and TensorBoard
scalars in the run `<workdir>/tensorboard/eval/attack/<report_name>/
<classifier>` (`outputs.tensorboard_run`); one resumable folder per attack
and seed in `<workdir>/eval/attack/`.
"""

import json
import os
import time

import numpy as np

from keras_ebm import data
from keras_ebm.defense import attack, outputs, purify


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
    num = data.num_labeled(config, a.split)
    order = np.random.default_rng(a.seed).permutation(num)[: a.num_images]
    return data.labeled(config, a.split, indices=order)


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


def run_attack(
    name, defended, images, labels, settings, out, config, step, seed, shard=None
):
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
            shard=shard or attack.Shard(),
        )
    finally:
        bar.close()
    if result is not None:  # None: a worker's share, summarized by the chief
        result["name"] = name
    return result


def report(config, workdir, model, classifier, step, images, labels, shard=None):
    """Runs the attacks of `config.attack` on `images`, `labels` and writes
    the report: every attack with every seed of `attack_seeds` (the
    full-gradient attack with the first `attack.adaptive_seeds`), their mean
    and spread over seeds beside the per-seed 95% intervals, the per-image
    worst case of the defended attacks, and the K_def curves.

    With a `shard` (`attack.Shard`) of several workers, each attack's
    batches are spread over the workers; a worker that does not wait (not
    the chief) runs its share of every attack and returns None.

    Returns:
        The results dict (also `eval/attack/<report_name>/results.json`).
    """
    shard = shard or attack.Shard()
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
                shard,
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
    curve = []
    # The curve's adaptive points carry the main adaptive attack's name.
    adaptive_label = adaptive_name(full_gradient_settings(config, k_def), k_def)
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
                    curve.append(dict(k_def=0, attack=adaptive_label, **_summary(r)))
                continue
            d = defended_classifier(config, model, classifier, int(k))
            r = each_seed("bpda_eot", d, settings_of(config), seeds[:1], count)[0]
            curve.append(dict(k_def=int(k), attack="bpda_eot", **_summary(r)))
            if a.adaptive:
                s = full_gradient_settings(config, int(k))
                r = each_seed(adaptive_name(s, int(k)), d, s, seeds[:1], count)[0]
                curve.append(dict(k_def=int(k), attack=adaptive_label, **_summary(r)))
    if not shard.wait:
        return None
    defended_runs = {k: r for k, r in runs.items() if k != "undefended"}
    worst = worst_case(defended_runs) if len(defended_runs) > 1 else None
    attacks = {k: aggregate(r) for k, r in runs.items()}
    results = dict(
        checkpoint_step=step,
        **defended.settings(),  # k_def, step size, T, networks' digest
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
    outputs.write_steps(report_dir, attacks)
    if curve:
        outputs.write_curve(report_dir, curve, a)
    outputs.write_tensorboard(
        workdir, step, attacks, curve, outputs.tensorboard_run(config)
    )
    outputs.print_results(results)
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
