"""Start-up checks of a config: every field that can be wrong is checked
before anything is written, with a message that names the field."""

import os

import tensorflow as tf

from keras_ebm import data, networks
from keras_ebm.runs import checkpoints, guard
from keras_ebm.errors import ConfigError


def require(ok, field, message):
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


PRECISIONS = ("float32", "bfloat16")


def check_config(config):
    """Validates the fields every EBM regime uses, before anything is built
    or written (a regime's own `check` adds its fields)."""
    check_data_and_model(config)
    check_sampling(config)
    check_train(config)
    check_optim(config)
    check_guard(config)


def check_data_and_model(config):
    """`data` and `model`: known names, sizes that make sense."""
    require(
        config.data.name in data.NAMES,
        "data.name",
        f"unknown dataset {config.data.name!r}; known: {', '.join(data.NAMES)}",
    )
    require(
        config.data.name != "toy2d" or config.data.toy in data.TOY_DENSITIES,
        "data.toy",
        f"unknown toy density {config.data.toy!r}; use "
        f"{' or '.join(data.TOY_DENSITIES)}",
    )
    require(config.data.image_size > 0, "data.image_size", "must be positive")
    require(config.data.noise_std >= 0, "data.noise_std", "must be >= 0")
    require(
        config.model.ebm in networks.NAMES,
        "model.ebm",
        f"unknown network {config.model.ebm!r}",
    )
    require(
        not config.model.generator or config.model.generator in networks.NAMES,
        "model.generator",
        f"unknown network {config.model.generator!r}",
    )


def check_sampling(config):
    """`langevin`, `init` and `bank`: positive steps, a known init, a bank
    that holds a batch."""
    lv = config.langevin
    require(
        lv.num_steps >= 1, "langevin.num_steps", f"must be >= 1, got {lv.num_steps}"
    )
    require(
        lv.step_size > 0, "langevin.step_size", f"must be positive, got {lv.step_size}"
    )
    require(
        lv.temperature > 0,
        "langevin.temperature",
        f"must be positive, got {lv.temperature}",
    )
    require(lv.tau >= 0, "langevin.tau", "must be >= 0")
    require(lv.max_drift_norm >= 0, "langevin.max_drift_norm", "must be >= 0")
    require(
        config.init.source in ("noise", "data", "generator"),
        "init.source",
        "must be noise, data or generator",
    )
    require(
        config.init.source != "generator" or config.model.generator,
        "init.source",
        "'generator' needs config.model.generator",
    )
    batch = config.train.batch_size
    if config.init.persistent:
        require(
            config.bank.size >= batch,
            "bank.size",
            f"bank ({config.bank.size}) is smaller than the batch ({batch})",
        )
    require(
        0 <= config.bank.rejuvenation_prob <= 1,
        "bank.rejuvenation_prob",
        "must be in [0, 1]",
    )
    require(config.bank.max_updates >= 0, "bank.max_updates", "must be >= 0")


def check_train(config):
    """`train` (and `eval.precision`): cadences that divide the run, known
    compile, strategy and precision settings."""
    tr = config.train
    require(tr.batch_size >= 1, "train.batch_size", "must be >= 1")
    require(tr.num_steps >= 1, "train.num_steps", "must be >= 1")
    require(
        tr.log_every >= 1 and tr.num_steps % tr.log_every == 0,
        "train.log_every",
        "must divide train.num_steps",
    )
    for field in ("checkpoint_every", "image_every"):
        every = tr[field]
        require(
            every >= 1 and every % tr.log_every == 0,
            f"train.{field}",
            "must be a positive multiple of train.log_every",
        )
    require(
        str(tr.jit_compile) in ("auto", "on", "off"),
        "train.jit_compile",
        "must be auto, on or off",
    )
    require(
        tr.strategy in ("default", "mirrored", "multi_worker", "tpu"),
        "train.strategy",
        "must be default, mirrored, multi_worker or tpu",
    )
    require(
        tr.get("precision", "float32") in PRECISIONS,
        "train.precision",
        "must be float32 or bfloat16",
    )
    require(
        config.get("eval", {}).get("precision", "") in ("",) + PRECISIONS,
        "eval.precision",
        "must be '' (the training precision), float32 or bfloat16",
    )


def check_optim(config):
    """`optim`: piecewise-constant schedules of positive rates from step 0."""
    for field in ("ebm_lr", "gen_lr"):
        steps, rates = config.optim[field].steps, config.optim[field].rates
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in tuple(steps) + tuple(rates)
        )
        require(
            numbers and isinstance(steps, (tuple, list)),
            f"optim.{field}",
            f"steps and rates must be tuples of numbers, e.g. "
            f"--config.optim.{field}.rates='(1e-4,)'; got {steps!r} and {rates!r}",
        )
        require(
            len(steps) == len(rates) > 0 and steps[0] == 0,
            f"optim.{field}",
            "needs as many steps as rates, the first at step 0",
        )
        require(all(v > 0 for v in rates), f"optim.{field}", "must be positive")
        require(
            list(steps) == sorted(set(steps)), f"optim.{field}", "steps must increase"
        )
    require(config.optim.clip_norm >= 0, "optim.clip_norm", "must be >= 0")


def check_guard(config):
    """The `guard` section (`keras_ebm.runs.guard`)."""
    g = config.guard
    actions = ", ".join(guard.ACTIONS)
    require(g.action in guard.ACTIONS, "guard.action", f"must be one of {actions}")
    band = tuple(g.gap_band)
    require(
        len(band) == 2 and band[0] < band[1],
        "guard.gap_band",
        "must be (low, high) with low < high",
    )
    require(g.patience >= 1, "guard.patience", "must be >= 1")
    require(0 < g.lr_factor < 1, "guard.lr_factor", "must be in (0, 1)")
    require(g.max_rollbacks >= 0, "guard.max_rollbacks", "must be >= 0")


def check_frozen_generator(config, dataset):
    """A frozen generator as init source needs weights that exist: a run
    directory, a `.weights.h5` file or a TF checkpoint prefix."""
    if config.init.source != "generator" or config.generator.trainable:
        return
    path = config.generator.weights
    require(
        bool(path),
        "generator.weights",
        "a frozen generator needs weights: a shortrun run directory, a "
        ".weights.h5 file or a TF checkpoint prefix",
    )
    exists = is_run(path) or os.path.isfile(path) or tf.io.gfile.exists(path + ".index")
    source = networks.WEIGHTS_SOURCES.get(config.model.generator)
    require(
        exists or source is None,
        "generator.weights",
        f"no {config.model.generator} weights at {path!r}: {source}; put them "
        "there or pass their prefix",
    )
    require(
        exists,
        "generator.weights",
        f"no trained generator at {path!r}; train one with `python train.py "
        f"--regime=shortrun --dataset={dataset}` (its run directory is "
        f"runs/shortrun/{dataset}) or pass a weights file",
    )


def is_run(path):
    """Whether `path` is a keras_ebm run directory (config + checkpoints)."""
    return os.path.isfile(os.path.join(path, "config.json")) and bool(
        checkpoints.list_checkpoints(path)
    )
