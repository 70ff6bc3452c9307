"""What every regime shares: model building, the workdir, checkpoints and
resume, and the fit loop (config checks: `keras_ebm.runs.checks`, re-exported).

A run directory holds `config.json`, `checkpoints/`, `tensorboard/` and
`samples/`. Running the same command again resumes from the newest
checkpoint.
"""

import copy
import json
import logging
import os

import keras
import tensorflow as tf

from keras_ebm import data, distribute, networks
from keras_ebm.runs import checkpoints, files, fit_loop, interrupt
from keras_ebm.runs.checks import (  # noqa: F401  (regimes use them from here)
    check_config,
    check_frozen_generator,
    is_run,
    require,
)
from keras_ebm.errors import ConfigError, Diverged, Interrupted
from keras_ebm.runs.fit_loop import (  # noqa: F401  (the regimes' and tests' names)
    initial_data,
    learning_rate,
    scale_learning_rates,
)
from keras_ebm.models import EnergyModel
from keras_ebm.sampling import SampleBank

log = logging.getLogger("keras_ebm")


# === Building ===


def state_shape(config):
    if config.data.name == "toy2d":
        return (2,)
    size = config.data.image_size
    return (size, size, config.data.channels)


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
    with networks.precision(config.train.get("precision", "float32")):
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
    if generator is not None and config.generator.weights:
        load_generator(generator, config.generator.weights)
    bank = None
    if config.init.persistent:
        bank = SampleBank(
            config.bank.size,
            config.train.batch_size,
            shape,
            latent_dim=generator.latent_dim if generator is not None else 0,
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


# Fields that do not change what a run computes: its length, where it runs
# (a mirrored or multi-worker step is the one-device step), and how often it
# logs, draws grids and checkpoints (batch t of the stream and the draws of
# step t are functions of t alone, whatever the epochs).
RUN_INDEPENDENT_TRAIN_FIELDS = (
    "num_steps",
    "strategy",
    "log_every",
    "image_every",
    "grid_images",
    "checkpoint_every",
    "keep_checkpoints",
)


def check_is_folder(workdir):
    """A `ConfigError` when `workdir` (or a parent) is a file."""
    path = os.path.abspath(workdir)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    if path and not os.path.isdir(path):
        raise ConfigError(
            f"--workdir={workdir}: {path} is a file, not a folder; choose another "
            "--workdir"
        )


def check_workdir(config, workdir):
    """Refuses to mix runs: a workdir's config may differ only in length,
    in the devices it runs on, in how often it logs and checkpoints
    (`RUN_INDEPENDENT_TRAIN_FIELDS`), in how it
    is evaluated (`EVALUATION_SECTIONS`) and in how it is guarded (`guard`:
    a halted run may resume with `guard.action=rollback`)."""
    check_is_folder(workdir)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    new = json.loads(config.to_json_best_effort())
    for c in (old, new):
        for field in RUN_INDEPENDENT_TRAIN_FIELDS:
            c.get("train", {}).pop(field, None)
        for section in EVALUATION_SECTIONS + ("preset", "guard"):
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


def train(config, workdir, build, check, extra_callbacks=()):
    """Trains (or resumes) the model `build(config)` in `workdir`.

    The loop every EBM regime shares: checks (`check(config)` raises
    `ConfigError`) and data access before anything is written, then the
    run's `config.json`, resume from the newest readable checkpoint
    (`keras_ebm.runs.checkpoints.restore`) or bank initialization, and `fit`
    with progress, summaries, checkpoints and the divergence guard
    (`keras_ebm.runs.guard`). SIGINT and SIGTERM end the run after the current
    step with a checkpoint of it (`keras_ebm.errors.Interrupted`).

    Args:
        extra_callbacks: Keras callbacks run on every worker besides ours.

    Returns:
        The trained model.

    Raises:
        Interrupted: SIGINT or SIGTERM; the checkpoint is written.
        Diverged: the guard halted the run (`guard.action`).
        WriteError: a checkpoint could not be written (disk full).
        CheckpointError: none of the workdir's checkpoints is verified.
        RuntimeError: replicas of a distributed run disagree (checked at
            the end, and after `Interrupted` or `Diverged`, raised from it).
    """
    # Everything that can fail on bad input runs before anything is written.
    # The shared fields, then the dataset (its error says how to get it),
    # then the regime's own fields and resources (prior run, generator).
    check_config(config)
    # Before any TensorFlow op: a multi-worker strategy configures the
    # runtime's collectives and must come first.
    strategy = distribute.get_strategy(config.train.strategy)
    source = data.images(config)
    check(config)
    check_workdir(config, workdir)
    # Initial weights are a function of the seed too: two runs of one config
    # are the same run. Only Keras' seed is kept: TF's global seed (which
    # set_random_seed also sets) of 0 breaks tensor-seeded tf.data shuffles,
    # and every TF draw of ours is stateless and seeded anyway.
    keras.utils.set_random_seed(config.seed)
    tf.random.set_seed(None)
    with strategy.scope():
        model = build(config)
    # Multi-worker: every worker trains, the chief alone writes (the others
    # read the same workdir to resume, so it must be shared by all hosts).
    chief = distribute.is_chief(strategy)
    if chief:
        os.makedirs(workdir, exist_ok=True)
        files.write_json(
            os.path.join(workdir, "config.json"),
            json.loads(config.to_json_best_effort(sort_keys=True)),
        )
        checkpoints.remove_temporaries(workdir)
    log.info("config: %s", config.to_json_best_effort(sort_keys=True))
    for name, bank in model.banks.items():
        log.info("%s: %d states (requested %d)", name, bank.num_states, bank.size)

    try:
        with interrupt.handled():
            run_state = fit_loop.resume_or_start(config, workdir, model, source, chief)
            fit_loop.fit_guarded(
                config, workdir, model, source, run_state, chief, extra_callbacks
            )
    except (Interrupted, Diverged):
        # A stopped or diverged run's checkpoint is resumed from too: check
        # it as a finished run's (a disagreement is raised from the stop).
        _check_replicas(model, strategy, chief)
        raise
    _check_replicas(model, strategy, chief)
    return model


def _check_replicas(model, strategy, chief):
    """Cheap insurance for long distributed runs: one global state means
    every replica's copy is bit-identical (`distribute.check_replicas_agree`,
    collective: every worker calls it)."""
    if strategy.num_replicas_in_sync > 1:
        n = distribute.check_replicas_agree(state_variables(model), strategy)
        if chief:
            print(f"All {n} replicas hold identical weights, optimizers and banks.")


state_variables = checkpoints.state_variables


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
    # Where it runs is the caller's choice, not the run's.
    if "train" in config and "strategy" in config.train:
        saved.train.strategy = config.train.strategy
    return saved


def load_trained(config, workdir, build=None, strategy=None):
    """`(model, step)`: the model of a run directory at its newest checkpoint.

    `build` defaults to `build_model`; with a `strategy` the model is built
    in its scope (its sampler can then spread chains over the replicas).
    """
    if not checkpoints.list_checkpoints(workdir):
        raise FileNotFoundError(
            f"no checkpoint in {workdir}/checkpoints; train first with the same flags"
        )
    precision = config.get("eval", {}).get("precision", "")
    if precision:  # evaluate in another precision than the run trained in
        config = copy.deepcopy(config)
        config.train.precision = precision
    with (strategy or tf.distribute.get_strategy()).scope():
        model = (build or build_model)(config)
    # Evaluation reads, never renames: a run may be writing the workdir.
    step, _, _ = checkpoints.restore(model, workdir, quarantine=False)
    return model, step
