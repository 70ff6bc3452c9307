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

import dataclasses
import hashlib
import json
import os
import time

import numpy as np

from keras_ebm import data
from keras_ebm.defense import attack, gradients, outputs, purify
from keras_ebm.runs import files


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


def surrogate_settings(config, k_def, beta):
    """The surrogate attack at `beta`: every purification step
    differentiated through the EBM's smooth twin, loss
    `attack.surrogate_loss`, `attack.surrogate_num_steps` PGD steps (0:
    `num_steps`)."""
    a = config.attack
    return settings_of(
        config,
        loss=a.surrogate_loss,
        num_steps=a.get("surrogate_num_steps", 0) or a.num_steps,
        grad_steps=k_def,
        checkpoint_every=a.checkpoint_every,
        surrogate_beta=float(beta),
    )


def spsa_settings(config):
    """The gradient-free attack: SPSA with `attack.spsa_samples` pairs of
    size `spsa_delta` (pixel units, doubled as eps), loss `spsa_loss`."""
    a = config.attack
    return settings_of(
        config,
        loss=a.spsa_loss,
        num_steps=a.spsa_num_steps or a.num_steps,
        adv_replicates=a.spsa_replicates or a.adv_replicates,
        spsa_samples=a.spsa_samples,
        spsa_delta=2 * a.spsa_delta,
        momentum=a.get("spsa_momentum", 0.0),
    )


@dataclasses.dataclass(frozen=True)
class Planned:
    """One defended attack of a report.

    Attributes:
        name: its row in the report.
        settings: `attack.AttackSettings`.
        seeds: the seeds it runs with.
        count: the first so many images; None = all.
        cascade: attack only the images every attack planned before it left
            standing with the same seed (AutoAttack's order: the worst case
            is the same, the cost that of the survivors).
        longer_run_of: the attack this one repeats with more PGD steps (its
            gradient is that attack's: the gradient check skips it).
    """

    name: str
    settings: attack.AttackSettings
    seeds: tuple
    count: int = None
    cascade: bool = False
    longer_run_of: str = ""


def defended_attacks(config, k_def):
    """`[Planned]`: every attack on the defended classifier that
    `config.attack` asks for, in order: BPDA+EOT; the full gradient
    (`adaptive`); the surrogate at each of `surrogate_betas` (`surrogate`);
    SPSA (`spsa`; on the survivors of the others with `spsa_cascade`);
    then (`long_steps` > 0) each gradient attack again, `long_steps` PGD
    steps with its first seed, on what all of these left standing
    (`<name>_n<long_steps>`)."""
    a = config.attack
    seeds = tuple(attack_seeds(config))
    plan = [Planned("bpda_eot", settings_of(config), seeds)]
    if a.adaptive:
        s = full_gradient_settings(config, k_def)
        count = a.adaptive_images or None
        plan.append(
            Planned(adaptive_name(s, k_def), s, seeds[: a.adaptive_seeds], count)
        )
    if a.get("surrogate"):
        for beta in a.surrogate_betas:
            plan.append(
                Planned(
                    f"surrogate_b{beta:g}",
                    surrogate_settings(config, k_def, beta),
                    seeds[: a.surrogate_seeds],
                    a.surrogate_images or None,
                )
            )
    if a.get("spsa"):
        plan.append(
            Planned(
                "spsa",
                spsa_settings(config),
                seeds[: a.spsa_seeds],
                a.spsa_images or None,
                cascade=bool(a.get("spsa_cascade", False)),
            )
        )
    long_steps = a.get("long_steps", 0)
    if long_steps:
        # A monotone record under fresh verification noise keeps falling a
        # little with every iterate; whether the attacks had converged is
        # seen only past their end, where it matters (on the survivors).
        plan += [
            Planned(
                f"{p.name}_n{long_steps}",
                dataclasses.replace(p.settings, num_steps=long_steps),
                p.seeds[:1],
                p.count,
                cascade=True,
                longer_run_of=p.name,
            )
            for p in list(plan)
            if p.settings.estimator != "spsa"
        ]
    return plan


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


def report(config, workdir, model, classifier, step, images, labels, shard=None):
    """Runs the attacks of `config.attack` on `images`, `labels` and writes
    the report: the undefended classifier and every defended attack
    (`defended_attacks`) with their seeds, their mean and spread over seeds
    beside the per-seed 95% intervals, the per-image worst case of the
    defended attacks, the gradient check and the K_def curves.

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
    started = time.perf_counter()
    plain = purify.DefendedClassifier(model, classifier, 0)  # no purification
    defended = defended_classifier(config, model, classifier, k_def)

    def each_seed(name, d, settings, seed_list, count=None, **subset):
        x = subset.get("images", images[: count or len(images)])
        y = subset.get("labels", labels[: count or len(labels)])
        # A cascade needs every earlier result: the chief runs it alone.
        worker = attack.Shard() if subset else shard
        return [
            run_attack(name, d, x, y, settings, out, config, step, seed, worker)
            for seed in seed_list
        ]

    plan = defended_attacks(config, k_def)
    runs = {
        "undefended": each_seed(
            "undefended", plain, undefended_settings(config), attack_seeds(config)
        )
    }
    for planned in plan:
        if planned.cascade and not shard.wait:
            continue  # the chief runs it once the others' results are in
        defended_so_far = {k: r for k, r in runs.items() if k != "undefended"}
        results = run_planned(
            planned, defended, images, labels, defended_so_far, each_seed
        )
        if results:
            runs[planned.name] = results
    curve = k_def_curve(config, model, classifier, plain, each_seed)
    check = None
    if a.get("gradient_check_images", 0):
        check = gradient_check(config, defended, images, labels, plan, out)
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
        seeds=attack_seeds(config),
        attacks=attacks,
        worst_case=worst,
        disjoint=disjoint_from_undefended(attacks, worst),
        gradient_check=check,
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


def k_def_curve(config, model, classifier, plain, each_seed):
    """Natural and robust accuracy for each of `attack.k_def_curve` (paper
    Figure 6) on the first `curve_images`, with the first seed, under
    BPDA+EOT and (`adaptive`) the full-gradient attack. Named as the main
    attacks, so K_def 0 and K_def = defense.num_steps reuse their batches."""
    a = config.attack
    k_def = config.defense.num_steps
    seed = attack_seeds(config)[:1]
    count = a.curve_images or None
    # The curve's adaptive points carry the main adaptive attack's name.
    adaptive_label = adaptive_name(full_gradient_settings(config, k_def), k_def)
    curve = []
    for k in a.k_def_curve:
        if not k:
            r = each_seed("undefended", plain, undefended_settings(config), seed, count)
            curve.append(dict(k_def=0, attack="bpda_eot", **_summary(r[0])))
            if a.adaptive:
                curve.append(dict(k_def=0, attack=adaptive_label, **_summary(r[0])))
            continue
        d = defended_classifier(config, model, classifier, int(k))
        r = each_seed("bpda_eot", d, settings_of(config), seed, count)
        curve.append(dict(k_def=int(k), attack="bpda_eot", **_summary(r[0])))
        if a.adaptive:
            s = full_gradient_settings(config, int(k))
            r = each_seed(adaptive_name(s, int(k)), d, s, seed, count)
            curve.append(dict(k_def=int(k), attack=adaptive_label, **_summary(r[0])))
    return curve


def gradient_check(config, defended, images, labels, plan, out):
    """`gradients.gradient_check` of every defended attack's estimator at
    the first `attack.gradient_check_images` images plus a random start in
    the ball (PGD's first iterate, drawn after `set_seed(attack.seed)`),
    deltas in pixel units doubled as eps; cached in `out` under a key of
    everything it depends on (a rerun of the report reads it back)."""
    import tensorflow as tf

    a = config.attack
    n = a.gradient_check_images
    estimators = {p.name: p.settings for p in plan if not p.longer_run_of}
    params = dict(
        loss=a.gradient_check_loss,
        replicates=a.gradient_check_replicates,
        delta=2 * a.gradient_check_delta,
        draws=a.gradient_check_draws,
        seed=a.seed,
    )
    x = np.asarray(images[:n], np.float32)
    y = np.asarray(labels[:n], np.int32)
    tf.random.set_seed(a.seed)
    start = attack.random_start(tf.constant(x), settings_of(config)).numpy()
    tf.random.set_seed(None)  # as attack.evaluate: no global seed left set
    points = np.clip(x + start, -1.0, 1.0)
    blob = json.dumps(
        dict(
            estimators={k: dataclasses.asdict(v) for k, v in estimators.items()},
            defended=defended.digest(),
            k_def=int(defended.num_steps),
            points=hashlib.sha256(points.tobytes() + y.tobytes()).hexdigest(),
            **params,
        ),
        sort_keys=True,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    path = os.path.join(out, f"gradient_check_{key}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    reference = finite_differences(defended, points, y, params, out)
    result = gradients.gradient_check(
        defended, points, y, estimators, reference=reference, **params
    )
    files.write_json(path, result)
    return result


def finite_differences(defended, points, labels, params, out):
    """The gradient check's reference (`gradients.finite_difference_gradient`,
    the costly part), cached in `out` under a key of what it depends on, so
    that checking other attacks reuses it."""
    import tensorflow as tf

    fields = ("loss", "replicates", "delta", "seed")
    blob = json.dumps(
        dict(
            defended=defended.digest(),
            k_def=int(defended.num_steps),
            points=hashlib.sha256(points.tobytes() + labels.tobytes()).hexdigest(),
            **{k: params[k] for k in fields},
        ),
        sort_keys=True,
    )
    path = os.path.join(
        out, f"fd_reference_{hashlib.sha256(blob.encode()).hexdigest()[:12]}.npz"
    )
    if os.path.exists(path):
        with np.load(path) as f:
            return f["full"], f["half_a"], f["half_b"]
    full, a, b = gradients.finite_difference_gradient(
        defended,
        points,
        labels,
        replicates=params["replicates"],
        delta=params["delta"],
        loss=params["loss"],
        seed=tf.constant([params["seed"], 1000]),
    )
    files.atomic_write(
        path,
        lambda tmp: np.savez(tmp, full=full, half_a=a, half_b=b),
        "rerun the same command",
    )
    return full, a, b


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
