"""The fit loop of a training run: resume or start, `fit` in epochs of
`train.log_every` steps, and what stops it -- a signal (save, then
`Interrupted`) or the divergence guard (roll back with lower learning
rates, or `Diverged`). `keras_ebm.runs.training.train` sets up and calls it.
"""

import dataclasses
import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import data
from keras_ebm.runs import callbacks, checkpoints, guard, interrupt
from keras_ebm.errors import Diverged

log = logging.getLogger("keras_ebm")


def learning_rate(schedule, scale=1.0):
    """A `{steps, rates}` schedule as a Keras piecewise-constant schedule,
    every rate times `scale`."""
    rates = [float(r) * scale for r in schedule.rates]
    if len(rates) == 1:
        return rates[0]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        list(schedule.steps[1:]), rates
    )


def resume_or_start(config, workdir, model, source, chief):
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
    step, path, record = restored
    # The record that verified the checkpoint (its manifest, or the one
    # inside the file when the manifest was lost) carries the run state.
    run_state = guard.RunState.from_manifest(record)
    if run_state.lr_scale != 1.0:
        scale_learning_rates(model, config, run_state.lr_scale)
    digest = record.get("state_digest")
    verified = f" (state {digest} verified)" if digest else " (accepted unverified)"
    log.info("resumed from step %d (%s)%s", step, path, verified)
    print(f"Resumed from step {step}: {path}{verified}", flush=True)
    return run_state


def fit_guarded(config, workdir, model, source, run_state, chief, extra=()):
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
        callbacks.Summaries(
            workdir,
            tr.image_every,
            tr.num_steps,
            num_images=tr.get("grid_images", 64),
            writer=writer,
        ),
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
