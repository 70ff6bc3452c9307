"""Shortrun image synthesis (paper Section 2, Algorithm 1).

Hybrid persistent/cooperative initialization: a bank of states paired with
latents, rejuvenated from the jointly trained generator with probability p
and after w updates, K Langevin steps per draw.

    python train.py                                      # digits, CPU
    python train.py --regime=shortrun --dataset=cifar10  # reference setup
    python train.py --regime=shortrun --dataset=cifar10 \
        --config.init.source=noise                       # persistent ablation

`get_config(arg)`: arg is a dataset (digits, toy2d, cifar10, celeb_a,
imagenet2012, folder) or `smoke` (CI-sized). Values for cifar10, celeb_a and
imagenet2012 are those of ebm-life-cycle `configs/*_nonconv_sngan.py` and
`configs_fid/fid_shortrun_*.py`.
"""

from keras_ebm.configs import common


def _reference(
    c,
    *,
    size,
    ebm,
    gen,
    num_steps,
    step_size,
    temperature,
    gen_lr,
    batch_stats,
    train_steps,
    clip_norm,
    eval_steps,
):
    c.data.update(image_size=size, channels=3, noise_std=1e-2)
    c.model.update(ebm=ebm, generator=gen, latent_dim=128)
    c.model.ebm_kwargs = common.Config()
    c.model.generator_kwargs = common.Config(dict(bn_epsilon=1e-3))
    c.langevin.update(num_steps=num_steps, step_size=step_size, temperature=temperature)
    c.bank.update(size=10000, rejuvenation_prob=0.5, max_updates=2)
    c.generator.batch_stats_in_training = batch_stats
    c.optim.ebm_lr = common.schedule((0, 1e-4))
    c.optim.gen_lr = common.schedule((0, gen_lr))
    c.optim.clip_norm = clip_norm
    common.paper_training(c, train_steps)
    c.eval.update(
        num_samples=49920,
        batch_size=96,
        num_steps=eval_steps,
        milestones=(0, 50, 100, 200, eval_steps, 1000, 10000),
        step_size=step_size,
        temperature=temperature,
        backbone="inception_ttur",
    )


# The datasets (presets) of this regime: `--dataset` or `:<preset>`.
PRESETS = ("digits", "smoke", "toy2d", "cifar10", "celeb_a", "imagenet2012", "folder")


def get_config(arg="digits"):
    arg = {"imagenet": "imagenet2012"}.get(arg, arg)
    c = common.get_base_config()
    c.regime = "shortrun"
    c.preset = arg  # the config's argument; `--workdir` alone finds it again
    c.data.name = arg
    if arg == "digits":
        common.digits_demo(c)
    elif arg == "smoke":
        common.smoke(c)
    elif arg == "toy2d":
        common.toy2d(c)
    elif arg == "cifar10":
        _reference(
            c,
            size=32,
            ebm="ebm_sngan32",
            gen="gen_sngan32",
            num_steps=100,
            step_size=5e-3,
            temperature=1e-4,
            gen_lr=1e-4,
            batch_stats=True,
            train_steps=150000,
            clip_norm=0.0,
            eval_steps=350,
        )
    elif arg == "celeb_a":
        _reference(
            c,
            size=64,
            ebm="ebm_sngan64",
            gen="gen_sngan64",
            num_steps=75,
            step_size=3e-3,
            temperature=1e-6,
            gen_lr=1e-4,
            batch_stats=False,
            train_steps=200000,
            clip_norm=0.0,
            eval_steps=300,
        )
    elif arg == "imagenet2012":
        _reference(
            c,
            size=128,
            ebm="ebm_sngan128",
            gen="gen_sngan128",
            num_steps=50,
            step_size=3e-3,
            temperature=1e-7,
            gen_lr=5e-5,
            batch_stats=False,
            train_steps=300000,
            clip_norm=50.0,
            eval_steps=320,
        )
    elif arg == "folder":
        c.data.update(image_size=32, channels=3)
    else:
        raise common.UnknownPreset("shortrun", arg, PRESETS)
    return c
