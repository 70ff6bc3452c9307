"""Longrun density modeling (paper Section 4, Algorithm 4; ebm-life-cycle
`train_longrun.py`, `configs_lr/` and `configs_fid/fid_longrun_*.py`).

A fresh EBM trained against a frozen prior EBM,
`U(x) = E(x)/T + E_prior(x)/T_prior + ||x||^2 / (2 tau^2)`, with a burn-in
bank (counts uniform in 0..D-1, `burnin.steps` Langevin steps per draw) whose
states move, after D draws, into the update bank that alone feeds the ML
gradient.

    python train.py --regime=prior --dataset=celeb_a      # the prior first
    python train.py --regime=longrun --dataset=celeb_a    # then this
    python evaluate.py --regime=longrun --dataset=celeb_a # FID to 100K steps

`get_config(arg)`: cifar10, cifar10_data (data-initialized), celeb_a,
imagenet2012 (64x64), digits, toy2d or smoke. The paper presets need the
prior run (`prior.workdir`, default `runs/prior/<dataset>`) and the frozen
generator (`generator.weights`); digits, toy2d and smoke default to no prior.
"""

from keras_ebm.configs import common

ANNEAL = ((50000, 1e-5), (75000, 1e-6), (100000, 1e-7), (125000, 1e-8))


def _paper(c, *, name, size, ebm, gen, temperature, noise_std, bank, lr0, joint):
    c.data.update(name=name, image_size=size, channels=3, noise_std=noise_std)
    c.model.update(ebm=ebm, generator=gen, latent_dim=128)
    c.model.ebm_kwargs = common.Config()
    c.model.generator_kwargs = common.Config(dict(bn_epsilon=1e-3))
    c.langevin.update(num_steps=100, step_size=1e-2, temperature=temperature, tau=0.15)
    c.prior.update(workdir=f"runs/prior/{name}", temperature=temperature)
    c.burnin.update(size=1000, steps=100, length=750)
    c.bank.size = bank
    c.generator.weights = f"runs/shortrun/{name}"
    c.optim.ebm_lr = common.schedule((0, lr0), *ANNEAL)
    common.paper_training(c, 250000)
    # fid_longrun_*: 53 rounds x 96 = 5,088 chains from the fixed generator;
    # 100K steps by default, 1M with --config.eval.num_steps=1000000.
    c.eval.update(
        num_samples=5088,
        batch_size=96,
        num_steps=100000,
        milestones=(0, 1000, 10000, 100000),
        step_size=1e-2,
        temperature=temperature,
        joint_temperature=joint,
        backbone="inception_ttur",
    )


# The datasets (presets) of this regime: `--dataset` or `:<preset>`.
PRESETS = (
    "digits",
    "smoke",
    "toy2d",
    "cifar10",
    "cifar10_data",
    "celeb_a",
    "imagenet2012",
)


def get_config(arg="digits"):
    arg = {"imagenet": "imagenet2012"}.get(arg, arg)
    c = common.get_base_config()
    c.regime = "longrun"
    c.preset = arg  # the config's argument; `--workdir` alone finds it again
    c.data.name = arg
    c.prior = common.Config(
        dict(
            workdir="",  # a prior-regime run; "" = no prior term
            temperature=1e-4,  # T_prior
        )
    )
    c.burnin = common.Config(
        dict(
            size=256,  # burn-in bank (rounded down to a multiple of the batch)
            steps=40,  # Langevin steps per draw in the burn-in bank
            length=20,  # D: draws before a state moves to the update bank
        )
    )
    c.bank.update(size=1024, rejuvenation_prob=0.0, max_updates=0)  # update bank
    c.generator.update(trainable=False, batch_stats_in_training=False)
    c.optim.ebm_lr = common.schedule((0, 1e-4))
    c.eval.milestones = (0, 1000, 10000, 100000)
    c.eval.num_steps = 100000
    preset = _PRESETS.get(arg)
    if preset is None:
        raise common.UnknownPreset("longrun", arg, PRESETS)
    preset(c, arg)
    return c


def _digits(c, arg):
    # The demo's resolution and networks, its generator frozen (`python
    # train.py` first), a narrower EBM of its own (width 32).
    common.digits_demo(c)
    c.generator.weights = "runs/shortrun/digits"
    c.model.ebm_kwargs.width = 32
    # D 200: 8,040 Langevin steps before a state updates the model (D 20
    # lost realism by 10K steps; BUILD_NOTES, issue 7).
    c.burnin.length = 200
    # The annealed rate keeps the class weights still: at a constant 1e-4
    # the lowest-energy class changes between checkpoints (6s at 1K, 7s at
    # 4K updates) and long chains gather on it (BUILD_NOTES, issue 25).
    c.optim.ebm_lr = common.schedule((0, 1e-4), (2500, 1e-5), (3250, 1e-6))
    c.train.update(num_steps=4000, image_every=500, checkpoint_every=500)
    c.eval.num_samples = 256
    c.eval.batch_size = 128


def _toy2d(c, arg):
    common.toy2d(c)
    c.model.generator = ""
    c.init.source = "noise"
    c.prior.temperature = 1.0
    # A long burn-in (D 1000 draws x 20 steps: ~20K steps before a state
    # updates the model) aligns the steady state; D 50 (~1K steps) did
    # not. The Gaussian term bounds the tails (BUILD_NOTES, toy2d study).
    c.langevin.tau = 2.0
    c.burnin.update(size=500, steps=20, length=1000)
    c.bank.size = 1000


def _smoke(c, arg):
    common.smoke(c)
    c.model.generator = ""
    c.init.source = "noise"
    c.burnin.update(size=16, steps=2, length=2)


def _cifar10(c, arg):
    _paper(
        c,
        name="cifar10",
        size=32,
        ebm="ebm_sngan32",
        gen="gen_sngan32",
        temperature=1e-4,
        noise_std=2e-2,
        bank=10000,
        lr0=2.5e-5,
        joint=1.005,
    )
    if arg == "cifar10_data":  # cifar10_conv_sngan_data: no generator
        c.init.source = "data"
        c.model.generator = ""
        c.generator.weights = ""


def _celeb_a(c, arg):
    _paper(
        c,
        name="celeb_a",
        size=64,
        ebm="ebm_sngan64",
        gen="gen_sngan64",
        temperature=1e-4,
        noise_std=2e-2,
        bank=15000,
        lr0=2.5e-5,
        joint=1.01,
    )


def _imagenet2012(c, arg):
    # 64x64; the reference resizes a BigGAN-deep-128 generator to 64.
    _paper(
        c,
        name="imagenet2012",
        size=64,
        ebm="ebm_sngan64",
        gen="gen_biggan_deep128",
        temperature=1e-5,
        noise_std=1.5e-2,
        bank=15000,
        lr0=1e-4,
        joint=1.01,
    )
    # DeepMind's BigGAN-deep-128 (tf2-model-clones layout), resized to 64.
    c.model.generator_kwargs = common.Config()
    c.generator.weights = "weights/biggan-tf2-128/weights"


_PRESETS = {
    "digits": _digits,
    "toy2d": _toy2d,
    "smoke": _smoke,
    "cifar10": _cifar10,
    "cifar10_data": _cifar10,
    "celeb_a": _celeb_a,
    "imagenet2012": _imagenet2012,
}
