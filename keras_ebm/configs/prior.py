"""The prior EBM of the longrun regime (ebm-life-cycle
`configs/*_prior_sngan.py`): hybrid persistent initialization from a frozen
generator, p 0.2, no lifetime cap, the Gaussian term tau 0.15 in the
Langevin potential, constant LR 1e-4, 150K steps.

    python train.py --regime=prior --dataset=cifar10 \\
        --config.generator.weights=runs/shortrun/cifar10   # or a weights file
    python train.py --regime=longrun --dataset=cifar10     # uses runs/prior/cifar10

`get_config(arg)`: cifar10, celeb_a, imagenet2012, digits, toy2d or smoke.
"""

from keras_ebm.configs import common


def _paper(c, *, size, ebm, gen, num_steps, temperature, noise_std):
    c.data.update(image_size=size, channels=3, noise_std=noise_std)
    c.model.update(ebm=ebm, generator=gen, latent_dim=128)
    c.model.ebm_kwargs = common.Config()
    c.model.generator_kwargs = common.Config(dict(bn_epsilon=1e-3))
    c.langevin.update(
        num_steps=num_steps, step_size=1e-2, temperature=temperature, tau=0.15
    )
    c.bank.update(size=10000, rejuvenation_prob=0.2, max_updates=0)
    c.optim.ebm_lr = common.schedule((0, 1e-4))
    common.paper_training(c, 150000)


# The datasets (presets) of this regime: `--dataset` or `:<preset>`.
PRESETS = ("digits", "smoke", "toy2d", "cifar10", "celeb_a", "imagenet2012")


def get_config(arg="digits"):
    arg = {"imagenet": "imagenet2012"}.get(arg, arg)
    c = common.get_base_config()
    c.regime = "prior"
    c.preset = arg  # the config's argument; `--workdir` alone finds it again
    c.data.name = arg
    c.generator.update(trainable=False, batch_stats_in_training=False)
    c.bank.update(rejuvenation_prob=0.2, max_updates=0)
    c.langevin.tau = 0.15
    # The frozen generator: a shortrun run directory, a .weights.h5 file or a
    # reference TF checkpoint prefix.
    c.generator.weights = f"runs/shortrun/{arg}"
    if arg == "digits":
        c.langevin.tau = 0.0  # digits fill [-1, 1]: no Gaussian pull at this scale
        c.train.num_steps = 1200
    elif arg == "toy2d":
        common.toy2d(c)
        c.model.generator = ""
        c.init.source = "data"
        c.generator.weights = ""
        c.langevin.tau = 0.0
        c.bank.size = 1000
        c.train.num_steps = 5000
    elif arg == "smoke":
        common.smoke(c)
        c.init.source = "noise"
        c.generator.weights = ""
    elif arg == "cifar10":
        _paper(
            c,
            size=32,
            ebm="ebm_sngan32",
            gen="gen_sngan32",
            num_steps=50,
            temperature=1e-4,
            noise_std=2e-2,
        )
    elif arg == "celeb_a":
        _paper(
            c,
            size=64,
            ebm="ebm_sngan64",
            gen="gen_sngan64",
            num_steps=100,
            temperature=1e-4,
            noise_std=2e-2,
        )
    elif arg == "imagenet2012":
        # 64x64, BigGAN-deep-128 generator resized to 64 in the reference.
        _paper(
            c,
            size=64,
            ebm="ebm_sngan64",
            gen="gen_biggan_deep128",
            num_steps=100,
            temperature=1e-5,
            noise_std=1.5e-2,
        )
        # DeepMind's BigGAN-deep-128 (tf2-model-clones layout), resized to 64.
        c.model.generator_kwargs = common.Config()
        c.generator.weights = "weights/biggan-tf2-128/weights"
    else:
        raise common.UnknownPreset("prior", arg, PRESETS)
    return c
