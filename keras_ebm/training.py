"""What every regime shares: model building, the workdir, checkpoints and
resume, and the fit loop (config checks: `keras_ebm.checks`, re-exported).

A run directory holds `config.json`, `checkpoints/`, `tensorboard/` and
`samples/`. Running the same command again resumes from the newest
checkpoint.
"""

import copy
import dataclasses
import json
import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import (
    callbacks,
    checkpoints,
    data,
    distribute,
    files,
    guard,
    interrupt,
    networks,
)
from keras_ebm.checks import (  # noqa: F401  (regimes use them from here)
    check_config,
    check_frozen_generator,
    is_run,
    require,
)
from keras_ebm.errors import ConfigError, Diverged
from keras_ebm.models import EnergyModel
from keras_ebm.sampling import SampleBank

log = logging.getLogger("keras_ebm")


# === Building ===


def state_shape(config):
    if config.data.name == "toy2d":
        return (2,)
    size = config.data.image_size
    return (size, size, config.data.channels)


def learning_rate(schedule, scale=1.0):
    """A `{steps, rates}` schedule as a Keras piecewise-constant schedule,
    every rate times `scale`."""
    rates = [float(r) * scale for r in schedule.rates]
    if len(rates) == 1:
        return rates[0]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        list(schedule.steps[1:]), rates
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


# Fields that do not change what a run computes: its length, and where it
# runs (a mirrored or multi-worker step is the one-device step).
RUN_INDEPENDENT_TRAIN_FIELDS = ("num_steps", "strategy")


def check_workdir(config, workdir):
    """Refuses to mix runs: a workdir's config may differ only in length,
    in the devices it runs on (`RUN_INDEPENDENT_TRAIN_FIELDS`), in how it
    is evaluated (`EVALUATION_SECTIONS`) and in how it is guarded (`guard`:
    a halted run may resume with `guard.action=rollback`)."""
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
    (`keras_ebm.checkpoints.restore`) or bank initialization, and `fit`
    with progress, summaries, checkpoints and the divergence guard
    (`keras_ebm.guard`). SIGINT and SIGTERM end the run after the current
    step with a checkpoint of it (`keras_ebm.errors.Interrupted`).

    Args:
        extra_callbacks: Keras callbacks run on every worker besides ours.

    Returns:
        The trained model.

    Raises:
        Interrupted: SIGINT or SIGTERM; the checkpoint is written.
        Diverged: the guard halted the run (`guard.action`).
        WriteError: a checkpoint could not be written (disk full).
        CheckpointError: the workdir's checkpoints are all unreadable.
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

    with interrupt.handled():
        run_state = _resume_or_start(config, workdir, model, source, chief)
        _fit_guarded(config, workdir, model, source, run_state, chief, extra_callbacks)
    if strategy.num_replicas_in_sync > 1:
        # Cheap insurance for long distributed runs: one global state means
        # every replica's copy is bit-identical.
        n = distribute.check_replicas_agree(state_variables(model), strategy)
        if chief:
            print(f"All {n} replicas hold identical weights, optimizers and banks.")
    return model


def _resume_or_start(config, workdir, model, source, chief):
    """Restores the newest readable checkpoint (with the run state of its
    manifest), or initializes the banks and writes checkpoint 0."""
    restored = checkpoints.restore(model, workdir, quarantine=chief)
    if restored is None:
        run_state = guard.RunState()
        if model.banks:
            model.initialize_bank(initial_data(config, model, source))
        if chief:
            _save(config, workdir, model, 0, run_state)
        return run_state
    step, path, manifest = restored
    run_state = guard.RunState.from_manifest(manifest)
    if run_state.lr_scale != 1.0:
        scale_learning_rates(model, config, run_state.lr_scale)
    digest = manifest.get("state_digest")
    verified = f" (state {digest} verified)" if digest else ""
    log.info("resumed from step %d (%s)%s", step, path, verified)
    print(f"Resumed from step {step}: {path}{verified}", flush=True)
    return run_state


def _fit_guarded(config, workdir, model, source, run_state, chief, extra=()):
    """`fit` to `train.num_steps`; a guard event rolls back and continues,
    or halts (`_after_divergence`); a signal saves and stops."""
    tr = config.train
    writer = (
        tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        if chief
        else tf.summary.create_noop_writer()
    )
    watch = guard.Guard(
        tuple(config.guard.gap_band),
        config.guard.patience,
        stop=config.guard.action != "off",
        report=lambda event: _report(event, writer, chief, run_state),
    )
    stops = [watch, callbacks.StopOnSignal(), *extra]
    progress = callbacks.ProgressBar(tr.num_steps)
    writers = [
        progress,
        callbacks.Summaries(workdir, tr.image_every, tr.num_steps, writer=writer),
        callbacks.Checkpointer(
            workdir,
            tr.checkpoint_every,
            tr.num_steps,
            tr.keep_checkpoints,
            guard=watch,
            run_state=run_state,
        ),
    ]
    while True:
        step = int(model.ebm_optimizer.iterations.numpy())
        if step >= tr.num_steps:
            if step == 0 or not interrupt.requested():
                log.info("trained for %d steps", step)
                return
        else:
            try:
                _fit(config, model, source, step, stops + (writers if chief else []))
            finally:
                progress.close()
        if watch.event is not None and config.guard.action != "off":
            _after_divergence(config, workdir, model, watch.event, run_state, chief)
            continue
        if interrupt.requested():
            raise _save_and_stop(config, workdir, model, run_state, chief)
        return


def _fit(config, model, source, step, callback_list):
    """Keras `fit` from `step` to `train.num_steps`, epochs of `log_every`
    steps aligned to multiples of it (a run stopped mid-epoch by a signal
    first completes its epoch)."""
    tr = config.train

    def stream(start):
        return data.train_stream(
            source,
            tr.batch_size,
            config.seed,
            with_init=config.init.source == "data",
            start_step=start,
        )

    fit = dict(verbose=0, shuffle=False, callbacks=callback_list)
    if step % tr.log_every:
        rest = tr.log_every - step % tr.log_every
        model.fit(stream(step), epochs=1, steps_per_epoch=rest, **fit)
        if model.stop_training:
            return
        step += rest
    if step < tr.num_steps:
        model.fit(
            stream(step),
            epochs=tr.num_steps // tr.log_every,
            steps_per_epoch=tr.log_every,
            initial_epoch=step // tr.log_every,
            **fit,
        )


def _save_and_stop(config, workdir, model, run_state, chief):
    """Checkpoints the current step (unless saved already) and returns the
    `Interrupted` to raise."""
    step = int(model.ebm_optimizer.iterations.numpy())
    path = checkpoints.checkpoint_path(workdir, step)
    saved = [s for s, _ in checkpoints.list_checkpoints(workdir)]
    if chief and step not in saved:
        _save(config, workdir, model, step, run_state)
    return interrupt.stop(f"training at step {step}", f"checkpoint {path} written")


def _save(config, workdir, model, step, run_state):
    return checkpoints.save(
        model,
        workdir,
        step,
        config.train.keep_checkpoints,
        dataclasses.asdict(run_state),
    )


def _report(event, writer, chief, run_state):
    """The guard's event on the console and in TensorBoard."""
    if not chief:
        return
    print(f"\ndivergence guard: step {event.step}: {event.cause}", flush=True)
    with writer.as_default(step=event.step):
        tf.summary.text("guard", f"step {event.step}: {event.cause}")
        tf.summary.scalar("guard/events", 1.0)
    writer.flush()


def _after_divergence(config, workdir, model, event, run_state, chief):
    """Rolls back to the newest checkpoint before the trouble began with
    lower learning rates, or raises `Diverged`."""
    g = config.guard
    bound = guard.rollback_bound(event)
    rollback = g.action == "rollback" and run_state.rollbacks < g.max_rollbacks
    good = [(s, p) for s, p in checkpoints.list_checkpoints(workdir) if s < bound]
    if rollback and good:
        step, path, _ = checkpoints.restore(model, workdir, before=bound)
        if chief:
            checkpoints.set_aside(workdir, after=step)
        run_state.rollbacks += 1
        run_state.lr_scale *= g.lr_factor
        scale_learning_rates(model, config, run_state.lr_scale)
        if chief:
            _save(config, workdir, model, step, run_state)
            print(
                f"divergence guard: rolled back to step {step} ({path}); learning "
                f"rates x{run_state.lr_scale:g} (rollback {run_state.rollbacks} of "
                f"{g.max_rollbacks})",
                flush=True,
            )
        return
    if chief and good:
        checkpoints.set_aside(workdir, after=good[-1][0])
    last = (
        f"the last good checkpoint is {good[-1][1]}"
        if good
        else ("no checkpoint from before it is left")
    )
    if g.action == "rollback":
        why = f" after {run_state.rollbacks} rollbacks (guard.max_rollbacks)"
        retry = "raise guard.max_rollbacks"
    else:
        why, retry = "", "set guard.action=rollback"
    raise Diverged(
        f"training diverged at step {event.step} ({event.cause}); halted{why}; "
        f"{last}. Run the same command with {retry} to resume from it, or lower "
        "the learning rates (optim.ebm_lr) or the Langevin step size in a new "
        "--workdir"
    )


def scale_learning_rates(model, config, scale):
    """Sets both optimizers' learning rates to `scale` x the config's
    schedules (the guard's rollbacks lower them)."""
    pairs = ((model.ebm_optimizer, "ebm_lr"), (model.gen_optimizer, "gen_lr"))
    for optimizer, field in pairs:
        if optimizer is not None:
            optimizer.learning_rate = learning_rate(config.optim[field], scale)
    # A schedule is a Python object of the traced step: trace it anew.
    model.train_function = None


state_variables = checkpoints.state_variables


def initial_data(config, model, source):
    """The data rows that fill the banks of a data-initialized model (None
    otherwise): as many as all its banks hold together, so each bank takes
    rows of its own (longrun: the update bank the first, the burn-in bank
    the next), as the reference draws them separately; a small dataset is
    repeated."""
    if config.init.source != "data":
        return None
    n = sum(bank.num_states for bank in model.banks.values())
    return _tile(data.take_array(source, n), n)


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
