"""Midrun adversarial defense (paper Section 3, Algorithm 3): an
`EnergyModel` with a persistent bank rejuvenated rarely from a frozen
generator or from data, no lifetime cap and an annealed learning rate,
trained with the shared loop; evaluated by BPDA+EOT attacks on the defended
classifier (`keras_ebm.defense.report`); exported with a defended classifier
(`keras_ebm.defense.purify`)."""

import os

from keras_ebm import classify, distribute
from keras_ebm.defense import adapter, attack, purify, report
from keras_ebm.evaluation import chains
from keras_ebm.regimes import common
from keras_ebm.regimes.shortrun import build
from keras_ebm.runs import training

require = training.require


def check(config):
    training.check_config(config)
    require(config.init.persistent, "init.persistent", "midrun keeps a bank")
    require(
        config.bank.max_updates == 0,
        "bank.max_updates",
        "midrun has no lifetime cap (states live K_def steps on average)",
    )
    require(
        not config.generator.trainable,
        "generator.trainable",
        "the midrun generator is frozen",
    )
    require(config.defense.num_steps >= 1, "defense.num_steps", "must be >= 1")
    d = config.defense
    low, high = tuple(d.get("classifier_input_range", (-1.0, 1.0)))
    require(
        d.get("classifier_input_size", 0) >= 0 and low < high,
        "defense.classifier_input_size",
        "the classifier's input size must be >= 0 (0: the EBM's) and its "
        "classifier_input_range (low, high) with low < high",
    )
    training.check_frozen_generator(config, config.data.name)


train, _, _ = common.entry_points(check, build)


def evaluate(config, workdir):
    """BPDA+EOT (and on request a stronger adaptive attack) against the
    classifier of `defense.classifier_workdir` behind K_def purification
    steps of the newest checkpoint, beside the undefended classifier."""
    check_attack(config)
    model, step = training.load_trained(config, workdir, build)
    classifier = classifier_of(config)
    images, labels = report.test_set(config)
    # multi_worker: the attacks' batches are spread over the workers.
    index, count, chief = distribute.worker_task(config.train.strategy)
    shard = attack.Shard(index, count, wait=chief)
    return report.report(
        config, workdir, model, classifier, step, images, labels, shard
    )


def check_attack(config):
    a = config.attack
    require(a.norm in ("linf", "l2"), "attack.norm", "linf or l2")
    require(0 < a.step_size <= a.eps, "attack.step_size", "need 0 < step_size <= eps")
    require(a.num_images >= 1 and a.batch_size >= 1, "attack.num_images", ">= 1")
    require(a.adaptive_loss in ("ce", "margin"), "attack.adaptive_loss", "ce or margin")
    require(all(k >= 0 for k in a.k_def_curve), "attack.k_def_curve", "steps >= 0")
    require(
        min(a.curve_images, a.adaptive_images, a.checkpoint_every) >= 0,
        "attack.curve_images",
        "image counts and checkpoint_every must be >= 0",
    )
    require(
        a.adaptive_grad_steps >= -1,
        "attack.adaptive_grad_steps",
        "-1 (every purification step: the full gradient) or a number of steps",
    )
    require(a.num_seeds >= 1, "attack.num_seeds", "at least one seed")
    for field in ("surrogate_loss", "spsa_loss", "gradient_check_loss"):
        require(a[field] in ("ce", "margin"), f"attack.{field}", "ce or margin")
    require(
        all(b > 0 for b in a.surrogate_betas) and len(a.surrogate_betas) >= 1,
        "attack.surrogate_betas",
        "one or more betas > 0 (softplus(beta z) / beta)",
    )
    require(
        a.spsa_samples >= 1 and a.spsa_delta > 0 and 0 <= a.spsa_momentum < 1,
        "attack.spsa_samples",
        "SPSA needs spsa_samples >= 1 pairs, spsa_delta > 0 and 0 <= spsa_momentum < 1",
    )
    require(
        min(
            a.spsa_replicates,
            a.spsa_num_steps,
            a.spsa_images,
            a.surrogate_images,
            a.get("surrogate_num_steps", 0),
        )
        >= 0,
        "attack.spsa_replicates",
        "spsa_replicates, spsa_num_steps, surrogate_num_steps and the image "
        "counts must be >= 0",
    )
    require(
        a.get("long_steps", 0) == 0 or a.long_steps > a.num_steps,
        "attack.long_steps",
        f"long_steps must be 0 (off) or more than num_steps ({a.num_steps})",
    )
    require(
        a.gradient_check_images >= 0
        and a.gradient_check_replicates >= 2
        and a.gradient_check_replicates % 2 == 0
        and a.gradient_check_delta > 0
        and a.gradient_check_draws >= 1,
        "attack.gradient_check_replicates",
        "gradient_check_images >= 0, an even number of replicates >= 2, "
        "delta > 0 and draws >= 1",
    )
    d = config.defense
    require(d.step_size >= 0, "defense.step_size", ">= 0 (0: the training eps)")
    require(d.temperature >= 0, "defense.temperature", ">= 0 (0: the training T)")
    for field in ("adaptive_seeds", "surrogate_seeds", "spsa_seeds"):
        require(
            1 <= a[field] <= a.num_seeds,
            f"attack.{field}",
            f"between 1 and attack.num_seeds ({a.num_seeds})",
        )


def classifier_of(config):
    """The classifier of `defense.classifier_workdir` behind its input
    adapter (`defense.classifier_input_size`, `classifier_input_range`)."""
    d = config.defense
    return adapter.adapted(
        classify.load_to_defend(d.classifier_workdir),
        d.get("classifier_input_size", 0),
        tuple(d.get("classifier_input_range", (-1.0, 1.0))),
    )


def export(config, workdir):
    """`<workdir>/export` (the EBM's endpoints, `purify` with K_def steps)
    and `<workdir>/export_defended` (`classify`, `purify`, `predict`)."""
    model, step = training.load_trained(config, workdir, build)
    classifier = classifier_of(config)
    chains.export(
        config,
        workdir,
        model,
        step,
        purify_steps=config.defense.num_steps,
        purify_step_size=config.defense.get("step_size") or None,
        purify_temperature=config.defense.get("temperature") or None,
    )
    defended = report.defended_classifier(
        config, model, classifier, config.defense.num_steps
    )
    path = os.path.join(workdir, "export_defended")
    purify.export_defended(defended, path)
    print(f"Defended classifier of step {step} written to {path}")
    return path
