"""Defaults shared by every regime, readable in one place.

Field names follow docs/style (reference key -> field):
`epsilon` -> langevin.step_size, `mcmc_temp` -> langevin.temperature,
`mcmc_step_info[0][0]` -> langevin.num_steps, `[0][2]` ->
bank.rejuvenation_prob, `max_mcmc_updates` -> bank.max_updates,
`persistent_size` -> bank.size, `mcmc_init` -> init.source + init.persistent,
`data_epsilon` -> data.noise_std, `ebm_lr_info` -> optim.ebm_lr,
`gen_lr_info` -> optim.gen_lr, `max_grad_norm` -> optim.clip_norm,
`gen_batch_norm` -> generator.batch_stats_in_training.
"""

import ml_collections

Config = ml_collections.ConfigDict


class UnknownPreset(ValueError):
    """`get_config(arg)` of a dataset the regime has no preset for."""

    def __init__(self, regime, arg, presets):
        self.regime, self.arg, self.presets = regime, arg, tuple(presets)
        super().__init__(
            f"unknown dataset {arg!r} for {regime}; {regime} takes {', '.join(presets)}"
        )


def schedule(*pairs):
    """Piecewise-constant learning rate: `schedule((0, 1e-4), (50000, 1e-5))`.

    Stored as parallel tuples so that flags can override it:
    `--config.optim.ebm_lr.rates='(2e-4,)'`.
    """
    return Config(
        dict(steps=tuple(s for s, _ in pairs), rates=tuple(v for _, v in pairs))
    )


def get_base_config():
    """Shared defaults, sized for digits at 16x16 on 2 CPU cores (the
    midrun digits preset; the demo itself adds `digits_demo`).

    Relative to the reference CIFAR-10 values (K 100, eps 5e-3, T 1e-4,
    bank 10000, LR 1e-4 / 1e-4) the demo takes K 40, eps 1e-2 (drift
    eps^2/(2T) = 0.5 instead of 0.125), a bank of 2048 (32 batches, so
    states cycle within a short run) and larger learning rates (EBM 2e-4,
    generator 1e-3), so that 1200 updates give recognizable digits.
    """
    c = Config()
    c.regime = "shortrun"
    c.preset = "digits"
    c.seed = 0

    c.data = Config(
        dict(
            name="digits",
            image_size=16,
            channels=1,
            split="train",
            data_dir="",  # tfds data dir; "" = ~/tensorflow_datasets
            manual_dir="",  # imagenet2012 archives
            path="",  # image folder for name="folder"
            toy="gmm",  # toy2d density: gmm or rings
            num_examples=10000,  # toy2d samples
            noise_std=1e-2,  # std of noise added to data (data_epsilon)
        )
    )
    c.model = Config(
        dict(
            ebm="ebm_small",
            ebm_kwargs=Config(dict(width=16, activation="relu")),
            generator="gen_small",  # "" for none
            generator_kwargs=Config(dict(width=32)),
            latent_dim=32,
        )
    )
    c.langevin = Config(
        dict(
            num_steps=40,  # K
            step_size=1e-2,  # eps: noise std; the drift is (eps^2/2) grad U
            temperature=1e-4,  # T
            tau=0.0,  # std of the Gaussian term; 0 = off
            max_drift_norm=0.0,  # per-sample drift clip; 0 = off
        )
    )
    c.init = Config(
        dict(
            # hybrid = generator + persistent; `persistent` ablation = noise +
            # persistent; `coop` = generator, not persistent;
            # `data_persistent` = data + persistent.
            source="generator",
            persistent=True,
        )
    )
    c.bank = Config(
        dict(
            size=2048,
            rejuvenation_prob=0.5,
            max_updates=2,  # lifetime cap w; 0 = off
        )
    )
    c.generator = Config(
        dict(
            trainable=True,
            batch_stats_in_training=True,
            weights="",  # local .weights.h5, or a TF checkpoint prefix
        )
    )
    c.optim = Config(
        dict(
            ebm_lr=schedule((0, 2e-4)),
            gen_lr=schedule((0, 1e-3)),
            clip_norm=0.0,  # per-tensor gradient clip; 0 = off
        )
    )
    c.train = Config(
        dict(
            num_steps=1200,
            batch_size=64,
            log_every=50,  # steps between scalar summaries
            image_every=300,  # steps between sample grids
            grid_images=64,  # images per sample grid
            checkpoint_every=300,
            keep_checkpoints=3,
            jit_compile="auto",  # auto (XLA on GPU/TPU only), on, off
            strategy="default",  # default, mirrored, multi_worker, tpu
            # float32, or bfloat16: the networks compute in bfloat16 (Keras
            # mixed_bfloat16), chain states, banks, energies, the Langevin
            # update and the losses stay float32.
            precision="float32",
        )
    )
    # The divergence guard (keras_ebm.runs.guard): a step with non-finite
    # energies or gradients, or an energy gap outside gap_band for patience
    # steps in a row, rolls the run back to the last good checkpoint with
    # both learning rates times lr_factor (at most max_rollbacks times),
    # or halts it. Healthy runs here keep |gap| below 1 (digits 0.2).
    c.guard = Config(
        dict(
            action="rollback",  # rollback, halt, off
            gap_band=(-1e3, 1e3),  # energies' units (before / T)
            patience=20,
            lr_factor=0.5,
            max_rollbacks=3,
        )
    )
    c.eval = Config(
        dict(
            # Networks' precision when a run is evaluated, purified, attacked
            # or exported: "" = the training precision, or float32/bfloat16.
            precision="",
            num_samples=512,  # chains for FID (compare FIDs at equal N)
            batch_size=128,
            num_steps=40,  # Langevin steps of the headline FID
            milestones=(0, 10, 40, 100, 300, 1000),  # FID along the chains
            save_every=1000,  # chain states saved every so many steps (resume)
            # k of the precision/recall/density/coverage manifolds reported
            # beside FID at every milestone (realism vs coverage); 0 = off.
            realism_k=5,
            mala=False,  # toy2d: also MALA chains (tfp), exact for exp(-U)
            step_size=1e-2,
            temperature=1e-4,
            joint_temperature=1.0,  # longrun FID: 1.005 / 1.01 on network terms
            backbone="digits",  # digits, inception_ttur, inception_keras
            classifier_workdir="runs/classifier/digits",  # digits backbone
            inception_graph="",  # local classify_image_graph_def.pb
            download=False,  # fetch the TTUR graph (machines with network)
            inception_sha256="",  # expected archive hash; "" = record on first use
            inception_weights="imagenet",  # inception_keras weights (path ok)
            cache_dir="",  # data statistics; "" = <workdir>/fid_cache
            data_split="train",  # reference set, as the reference
        )
    )
    return c


def digits_demo(c):
    """The digits demo (shortrun) and its longrun preset: the digits at
    their native 8x8, an EBM and generator of width 64 in bfloat16, EBM
    learning rate 4e-4, 1,400 updates.

    A quarter of the pixels buys the width: at 16x16 no setting that fits
    the demo's 10 minutes reached precision 0.7 (width 32, 2,000 updates:
    0.57, 15 min); at 8x8 width 64 with 1,400 updates at LR 4e-4 reaches
    0.73 at the 40 evaluation steps (BUILD_NOTES, issue 25). Its samples
    are measured by the 16x16 digits classifier through the resize the data
    took (`data.resize_digits`): one yardstick for every digits run.
    """
    c.data.image_size = 8
    c.model.ebm_kwargs.width = 64
    c.model.generator_kwargs.width = 64
    c.train.update(
        num_steps=1400, precision="bfloat16", checkpoint_every=350, image_every=350
    )
    c.optim.ebm_lr = schedule((0, 4e-4))


def smoke(c):
    """CI-sized: digits at 8x8, networks of width 8, 4 steps of batch 8."""
    c.data.update(name="digits", image_size=8)
    c.model.ebm_kwargs.width = 8
    c.model.generator_kwargs.width = 8
    c.model.latent_dim = 8
    c.langevin.num_steps = 3
    c.bank.size = 32
    c.train.update(
        num_steps=4, batch_size=8, log_every=2, image_every=2, checkpoint_every=2
    )
    c.eval.update(num_samples=16, batch_size=8, num_steps=3, milestones=(0, 3))


def toy2d(c):
    """The 2-D toy densities: ToyNet energy, 2-D MLP generator, eps 0.05,
    T 1, K 20, Adam 1e-3, 10K steps of batch 100 (a few minutes on a CPU).

    Evaluation measures the steady state: exact on the grid, and histograms
    of 5000 chains run 100K steps from data (ULA and MALA) at the training
    step size and temperature.
    """
    c.data.update(image_size=2, channels=1, noise_std=0.0)
    c.model.update(ebm="ebm_toy", generator="gen_toy", latent_dim=2)
    c.model.ebm_kwargs = Config()
    c.model.generator_kwargs = Config()
    c.langevin.update(num_steps=20, step_size=0.05, temperature=1.0)
    c.generator.batch_stats_in_training = False
    c.optim.ebm_lr = schedule((0, 1e-3))
    c.optim.gen_lr = schedule((0, 1e-3))
    c.train.update(
        num_steps=10000,
        batch_size=100,
        log_every=500,
        image_every=2500,
        checkpoint_every=500,
    )
    c.eval.update(
        num_samples=5000, num_steps=100000, step_size=0.05, temperature=1.0, mala=True
    )


def paper_training(c, num_steps, batch_size=128):
    """The reference's accelerator-scale loop: logs every 500 steps, grids
    and checkpoints every 5000."""
    c.train.update(
        num_steps=num_steps,
        batch_size=batch_size,
        log_every=500,
        image_every=5000,
        checkpoint_every=5000,
    )
