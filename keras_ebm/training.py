"""What every regime shares: config checks, model building, the workdir,
checkpoints and resume, and the fit loop.

A run directory holds `config.json`, `checkpoints/`, `tensorboard/` and
`samples/`. Running the same command again resumes from the newest
checkpoint.
"""

import json
import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import callbacks, data, distribute, networks
from keras_ebm.errors import ConfigError
from keras_ebm.models import EnergyModel
from keras_ebm.sampling import SampleBank

log = logging.getLogger("keras_ebm")


# === Config checks ===


def require(ok, field, message):
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def check_config(config):
    """Validates the fields every EBM regime uses, before anything is built
    or written (a regime's own `check` adds its fields)."""
    require(
        config.data.name in data.NAMES,
        "data.name",
        f"unknown dataset {config.data.name!r}; known: {', '.join(data.NAMES)}",
    )
    require(config.data.image_size > 0, "data.image_size", "must be positive")
    require(config.data.noise_std >= 0, "data.noise_std", "must be >= 0")
    planned = networks.PLANNED.get(config.model.ebm)
    require(
        planned is None,
        "model.ebm",
        f"{config.model.ebm} is not built yet (it comes with {planned})",
    )
    require(
        config.model.ebm in networks.NAMES,
        "model.ebm",
        f"unknown network {config.model.ebm!r}",
    )
    planned = networks.PLANNED.get(config.model.generator)
    require(
        planned is None,
        "model.generator",
        f"{config.model.generator} is not built yet (it comes with {planned}); "
        "choose an SNGAN generator of the same size, e.g. "
        "--config.model.generator=gen_sngan64 with its weights in "
        "--config.generator.weights",
    )
    require(
        not config.model.generator or config.model.generator in networks.NAMES,
        "model.generator",
        f"unknown network {config.model.generator!r}",
    )
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
    tr = config.train
    require(tr.batch_size >= 1, "train.batch_size", "must be >= 1")
    if config.init.persistent:
        require(
            config.bank.size >= tr.batch_size,
            "bank.size",
            f"bank ({config.bank.size}) is smaller than the batch ({tr.batch_size})",
        )
    require(
        0 <= config.bank.rejuvenation_prob <= 1,
        "bank.rejuvenation_prob",
        "must be in [0, 1]",
    )
    require(config.bank.max_updates >= 0, "bank.max_updates", "must be >= 0")
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
    for field in ("ebm_lr", "gen_lr"):
        steps, rates = config.optim[field].steps, config.optim[field].rates
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
    require(
        exists,
        "generator.weights",
        f"no trained generator at {path!r}; train one with `python train.py "
        f"--regime=shortrun --dataset={dataset}` (its run directory is "
        f"runs/shortrun/{dataset}) or pass a weights file",
    )


# === Building ===


def state_shape(config):
    if config.data.name == "toy2d":
        return (2,)
    size = config.data.image_size
    return (size, size, config.data.channels)


def learning_rate(schedule):
    """A `{steps, rates}` schedule as a Keras piecewise-constant schedule."""
    if len(schedule.rates) == 1:
        return schedule.rates[0]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        list(schedule.steps[1:]), list(schedule.rates)
    )


def _optimizer(schedule, clip_norm):
    # Keras Adam defaults (beta 0.9/0.999, eps 1e-7) are the reference's;
    # `clipnorm` clips each gradient tensor on its own, as the reference does.
    return keras.optimizers.Adam(learning_rate(schedule), clipnorm=clip_norm or None)


def build_model(config, model_class=EnergyModel, **extra):
    """The compiled model of `config` (call inside `strategy.scope()`).

    `model_class` is `EnergyModel` or a subclass of it; `extra` are the
    subclass's own constructor arguments (a regime's extra terms).
    """
    shape = state_shape(config)
    energy_net = networks.build(
        config.model.ebm, image_shape=shape, **config.model.ebm_kwargs
    )
    generator = None
    if config.model.generator and config.init.source == "generator":
        generator = networks.build(
            config.model.generator,
            image_shape=shape,
            latent_dim=config.model.latent_dim,
            **config.model.generator_kwargs,
        )
        if config.generator.weights:
            load_generator(generator, config.generator.weights)
    bank = None
    if config.init.persistent:
        bank = SampleBank(
            config.bank.size,
            config.train.batch_size,
            shape,
            latent_dim=config.model.latent_dim if generator is not None else 0,
            rejuvenation_prob=config.bank.rejuvenation_prob,
            max_updates=config.bank.max_updates,
        )
    model = model_class(
        energy_net,
        num_steps=config.langevin.num_steps,
        step_size=config.langevin.step_size,
        temperature=config.langevin.temperature,
        data_noise_std=config.data.noise_std,
        bank=bank,
        generator=generator,
        init_source=config.init.source,
        train_generator=config.generator.trainable,
        generator_batch_stats=config.generator.batch_stats_in_training,
        max_drift_norm=config.langevin.max_drift_norm,
        tau=config.langevin.tau,
        seed=config.seed,
        **extra,
    )
    jit = {"auto": "auto", "on": True, "off": False}[str(config.train.jit_compile)]
    model.compile(
        _optimizer(config.optim.ebm_lr, config.optim.clip_norm),
        _optimizer(config.optim.gen_lr, config.optim.clip_norm)
        if model.train_generator
        else None,
        jit_compile=jit,
    )
    return model


def is_run(path):
    """Whether `path` is a keras_ebm run directory (config + checkpoints)."""
    return os.path.isfile(os.path.join(path, "config.json")) and bool(
        callbacks.list_checkpoints(path)
    )


def network_of_run(workdir, attribute, build=None):
    """A network (`energy_net`, `generator`) of another run at its newest
    checkpoint, rebuilt from that run's `config.json` with `build` (default
    `build_model`: a shortrun, prior or midrun run)."""
    import ml_collections

    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model, _ = load_trained(config, workdir, build)
    net = getattr(model, attribute, None)
    if net is None:
        raise ConfigError(f"the run in {workdir} has no {attribute}")
    return net


def load_generator(generator, path):
    """Loads generator weights from a run directory (its newest checkpoint),
    a `.weights.h5` file or a reference TF checkpoint prefix.

    Raises:
        ConfigError: a source whose generator does not fit `generator`.
        FileNotFoundError: nothing at `path`.
    """
    if os.path.isdir(path):
        if not is_run(path):
            raise FileNotFoundError(f"{path} is not a run directory with checkpoints")
        source = network_of_run(path, "generator")
        if source.image_shape != generator.image_shape or [
            w.shape for w in source.weights
        ] != [w.shape for w in generator.weights]:
            raise ConfigError(
                f"config.generator.weights: the generator of {path} makes "
                f"{source.image_shape} states with other layer shapes than this "
                f"config's {generator.image_shape} generator"
            )
        generator.set_weights(source.get_weights())
        return
    networks.load_weights(generator, path)


# === Training ===


def check_workdir(config, workdir):
    """Refuses to mix runs: a workdir's config may differ only in length
    and in how it is evaluated (`EVALUATION_SECTIONS`)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    new = json.loads(config.to_json_best_effort())
    for c in (old, new):
        c.get("train", {}).pop("num_steps", None)
        for section in EVALUATION_SECTIONS + ("preset",):
            c.pop(section, None)
    if old != new:
        diff = sorted(_diff(old, new))
        raise ConfigError(
            f"{workdir} holds a run with another config (differs in "
            f"{', '.join(diff)}); choose another --workdir or remove it"
        )


def _diff(a, b, prefix=""):
    for key in set(a) | set(b):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            yield from _diff(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            yield f"{prefix}{key}"


def train(config, workdir, build, check):
    """Trains (or resumes) the model `build(config)` in `workdir`.

    The loop every EBM regime shares: checks (`check(config)` raises
    `ConfigError`) and data access before anything is written, then the
    run's `config.json`, resume from the newest checkpoint or bank
    initialization, and `fit` with progress, summaries and checkpoints.

    Returns:
        The trained model.
    """
    # Everything that can fail on bad input runs before anything is written.
    # The shared fields, then the dataset (its error says how to get it),
    # then the regime's own fields and resources (prior run, generator).
    check_config(config)
    source = data.images(config)
    check(config)
    check_workdir(config, workdir)
    strategy = distribute.get_strategy(config.train.strategy)
    # Initial weights are a function of the seed too: two runs of one config
    # are the same run. Only Keras' seed is kept: TF's global seed (which
    # set_random_seed also sets) of 0 breaks tensor-seeded tf.data shuffles,
    # and every TF draw of ours is stateless and seeded anyway.
    keras.utils.set_random_seed(config.seed)
    tf.random.set_seed(None)
    with strategy.scope():
        model = build(config)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    log.info("config: %s", config.to_json_best_effort(sort_keys=True))
    for name, bank in model.banks.items():
        log.info("%s: %d states (requested %d)", name, bank.num_states, bank.size)

    saved = callbacks.list_checkpoints(workdir)
    if saved:
        step, path = saved[-1]
        model.load_weights(path)
        log.info("resumed from step %d (%s)", step, path)
        print(f"Resumed from step {step}: {path}")
    else:
        step = 0
        if model.banks:
            init = None
            if config.init.source == "data":
                n = max(bank.num_states for bank in model.banks.values())
                init = _tile(data.take_array(source, n), n)
            model.initialize_bank(init)
        callbacks.save_checkpoint(model, workdir, 0, config.train.keep_checkpoints)

    tr = config.train
    if step >= tr.num_steps:
        log.info("already trained for %d steps", step)
        return model
    stream = data.train_stream(
        source,
        tr.batch_size,
        config.seed,
        with_init=config.init.source == "data",
        start_step=step,
    )
    model.fit(
        stream,
        epochs=tr.num_steps // tr.log_every,
        steps_per_epoch=tr.log_every,
        initial_epoch=step // tr.log_every,
        verbose=0,
        shuffle=False,  # the stream is shuffled already
        callbacks=[
            callbacks.ProgressBar(step, tr.num_steps),
            callbacks.Summaries(workdir, tr.image_every, tr.num_steps),
            callbacks.Checkpointer(
                workdir, tr.checkpoint_every, tr.num_steps, tr.keep_checkpoints
            ),
        ],
    )
    return model


def _tile(array, num):
    """Repeats a small dataset to fill a larger bank."""
    reps = math.ceil(num / len(array))
    return np.concatenate([array] * reps)[:num]


# === Loading a run ===


# Sections that say how to evaluate, not what was trained: taken from the
# flags when a run directory is evaluated.
EVALUATION_SECTIONS = ("eval", "attack", "defense")


def run_config(config, workdir):
    """The config a run was trained with, with the evaluation sections
    (`eval`, `attack`, `defense`) taken from `config` where it has them.

    Evaluating `runs/x` then needs no repetition of its training overrides:
    the model is rebuilt from `<workdir>/config.json`; the flags choose only
    how to evaluate it.
    """
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return config
    with open(path) as f:
        saved = ml_collections.ConfigDict(json.load(f))
    for section in EVALUATION_SECTIONS:
        if section in config:
            saved[section] = config[section]
    return saved


def load_trained(config, workdir, build=None):
    """`(model, step)`: the model of a run directory at its newest checkpoint.

    `build` defaults to `build_model`.
    """
    saved = callbacks.list_checkpoints(workdir)
    if not saved:
        raise FileNotFoundError(
            f"no checkpoint in {workdir}/checkpoints; train first with the same flags"
        )
    step, path = saved[-1]
    model = (build or build_model)(config)
    model.load_weights(path)
    return model, step
