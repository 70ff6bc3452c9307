"""Longrun density modeling (paper Section 4, Algorithm 4): a
`LongrunEnergyModel` (burn-in and update banks) against a frozen prior EBM,
trained with the shared loop; evaluated along one long trajectory."""

from keras_ebm.models import LongrunEnergyModel
from keras_ebm.regimes import common
from keras_ebm.runs import training
from keras_ebm.sampling import SampleBank

require = training.require


def check(config):
    training.check_config(config)
    b = config.burnin
    require(b.length >= 1, "burnin.length", "D must be >= 1")
    require(b.steps >= 0, "burnin.steps", "must be >= 0")
    require(
        b.size >= config.train.batch_size,
        "burnin.size",
        f"burn-in bank ({b.size}) is smaller than the batch",
    )
    require(
        config.init.persistent,
        "init.persistent",
        "longrun keeps an update bank; it must be True",
    )
    require(
        config.bank.rejuvenation_prob == 0 and config.bank.max_updates == 0,
        "bank",
        "the update bank is never rejuvenated: rejuvenation_prob and "
        "max_updates must be 0",
    )
    require(
        not config.generator.trainable,
        "generator.trainable",
        "the longrun generator is frozen",
    )
    require(config.prior.temperature > 0, "prior.temperature", "must be positive")
    prior = config.prior.workdir
    require(
        not prior or training.is_run(prior),
        "prior.workdir",
        f"no prior run in {prior!r}; train it with `python train.py "
        f"--regime=prior --dataset={config.data.name}` (or set "
        "--config.prior.workdir, or '' for no prior)",
    )
    training.check_frozen_generator(config, config.data.name)


def build(config):
    prior = None
    if config.prior.workdir:
        prior = training.network_of_run(config.prior.workdir, "energy_net")
        require(
            tuple(prior.image_shape) == training.state_shape(config),
            "prior.workdir",
            f"the prior takes {prior.image_shape} states, not "
            f"{training.state_shape(config)}",
        )
    burnin = SampleBank(
        config.burnin.size, config.train.batch_size, training.state_shape(config)
    )
    return training.build_model(
        config,
        LongrunEnergyModel,
        prior_net=prior,
        prior_temperature=config.prior.temperature,
        burnin_bank=burnin,
        burnin_steps=config.burnin.steps,
        burnin_length=config.burnin.length,
    )


train, evaluate, export = common.entry_points(check, build)
