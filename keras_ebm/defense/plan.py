"""Which attacks a config asks for (`config.attack`): each attack's
`AttackSettings` and seeds, in the report's order (`defended_attacks`).
"""

import dataclasses

from keras_ebm.defense import attack


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
