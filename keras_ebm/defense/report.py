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
from keras_ebm.defense import attack, gradients, outputs, plan, purify, summary
from keras_ebm.runs import files


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

    planned_attacks = plan.defended_attacks(config, k_def)
    runs = {
        "undefended": each_seed(
            "undefended",
            plain,
            plan.undefended_settings(config),
            plan.attack_seeds(config),
        )
    }
    for planned in planned_attacks:
        if planned.cascade and not shard.wait:
            continue  # the chief runs it once the others' results are in
        defended_so_far = {k: r for k, r in runs.items() if k != "undefended"}
        results = summary.run_planned(
            planned, defended, images, labels, defended_so_far, each_seed
        )
        if results:
            runs[planned.name] = results
    curve = k_def_curve(config, model, classifier, plain, each_seed)
    check = None
    if a.get("gradient_check_images", 0):
        check = gradient_check(config, defended, images, labels, planned_attacks, out)
    if not shard.wait:
        return None
    results = _results(config, defended, runs, len(images), step)
    results.update(
        gradient_check=check,
        k_def_curve=curve,
        seconds_total=time.perf_counter() - started,
    )
    with open(os.path.join(report_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    outputs.write_steps(report_dir, results["attacks"])
    if curve:
        outputs.write_curve(report_dir, curve, a)
    outputs.write_tensorboard(
        workdir, step, results["attacks"], curve, outputs.tensorboard_run(config)
    )
    outputs.print_results(results)
    return results


def _results(config, defended, runs, num_images, step):
    """The report's figures: the settings, each attack over its seeds, the
    worst case over the defended attacks and whose intervals clear the
    undefended classifier's."""
    a = config.attack
    defended_runs = {k: r for k, r in runs.items() if k != "undefended"}
    worst = summary.worst_case(defended_runs) if len(defended_runs) > 1 else None
    attacks = {k: summary.aggregate(r) for k, r in runs.items()}
    return dict(
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
        num_images=num_images,
        split=a.split,
        seeds=plan.attack_seeds(config),
        attacks=attacks,
        worst_case=worst,
        disjoint=summary.disjoint_from_undefended(attacks, worst),
    )


def k_def_curve(config, model, classifier, plain, each_seed):
    """Natural and robust accuracy for each of `attack.k_def_curve` (paper
    Figure 6) on the first `curve_images`, with the first seed, under
    BPDA+EOT and (`adaptive`) the full-gradient attack. Named as the main
    attacks, so K_def 0 and K_def = defense.num_steps reuse their batches."""
    a = config.attack
    k_def = config.defense.num_steps
    seed = plan.attack_seeds(config)[:1]
    count = a.curve_images or None
    # The curve's adaptive points carry the main adaptive attack's name.
    adaptive_label = plan.adaptive_name(
        plan.full_gradient_settings(config, k_def), k_def
    )
    curve = []
    for k in a.k_def_curve:
        if not k:
            r = each_seed(
                "undefended", plain, plan.undefended_settings(config), seed, count
            )
            curve.append(dict(k_def=0, attack="bpda_eot", **summary.run_summary(r[0])))
            if a.adaptive:
                curve.append(
                    dict(k_def=0, attack=adaptive_label, **summary.run_summary(r[0]))
                )
            continue
        d = defended_classifier(config, model, classifier, int(k))
        r = each_seed("bpda_eot", d, plan.settings_of(config), seed, count)
        curve.append(dict(k_def=int(k), attack="bpda_eot", **summary.run_summary(r[0])))
        if a.adaptive:
            s = plan.full_gradient_settings(config, int(k))
            r = each_seed(plan.adaptive_name(s, int(k)), d, s, seed, count)
            curve.append(
                dict(k_def=int(k), attack=adaptive_label, **summary.run_summary(r[0]))
            )
    return curve


def gradient_check(config, defended, images, labels, planned, out):
    """`gradients.gradient_check` of every defended attack's estimator at
    the first `attack.gradient_check_images` images plus a random start in
    the ball (PGD's first iterate, drawn after `set_seed(attack.seed)`),
    deltas in pixel units doubled as eps; cached in `out` under a key of
    everything it depends on (a rerun of the report reads it back)."""
    import tensorflow as tf

    a = config.attack
    n = a.gradient_check_images
    estimators = {p.name: p.settings for p in planned if not p.longer_run_of}
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
    start = attack.random_start(tf.constant(x), plan.settings_of(config)).numpy()
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
