"""Midrun adversarial defense (paper Section 3, Algorithm 3): an
`EnergyModel` with a persistent bank rejuvenated rarely from a frozen
generator or from data, no lifetime cap and an annealed learning rate,
trained with the shared loop. (Purification and the BPDA+EOT evaluation
come with the rest of the midrun issue.)"""

from keras_ebm import training
from keras_ebm.regimes import common
from keras_ebm.regimes.shortrun import build

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
    training.check_frozen_generator(config, config.data.name)


train, evaluate, export = common.entry_points(check, build)
