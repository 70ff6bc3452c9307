"""Callbacks for long runs: progress, TensorBoard summaries, sample grids,
checkpoints, stops on signals."""

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_ebm.runs import checkpoints, interrupt

# === Checkpoints and stops ===


class Checkpointer(keras.callbacks.Callback):
    """Saves every `every` steps and at the end of training
    (`keras_ebm.runs.checkpoints.save`), never a state the divergence `guard`
    has flagged; `run_state` goes into each manifest."""

    def __init__(self, workdir, every, last_step, keep=3, guard=None, run_state=None):
        super().__init__()
        self.workdir, self.every, self.last_step = workdir, every, last_step
        self.keep, self.guard, self.run_state = keep, guard, run_state

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.event is not None:
            return
        step = int(self.model.ebm_optimizer.iterations.numpy())
        if step % self.every == 0 or step >= self.last_step:
            checkpoints.save(self.model, self.workdir, step, self.keep, self.extra())

    def extra(self):
        return dataclasses.asdict(self.run_state) if self.run_state else None


class StopOnSignal(keras.callbacks.Callback):
    """Ends `fit` after the step during which SIGINT or SIGTERM arrived
    (`keras_ebm.runs.interrupt`); the caller saves and says so."""

    def on_train_batch_end(self, batch, logs=None):
        if interrupt.requested():
            self.model.stop_training = True


# === Progress ===


class ProgressBar(keras.callbacks.Callback):
    """One bar over the whole run (Keras' own bar restarts every epoch)."""

    def __init__(self, total):
        super().__init__()
        self.total = total

    def on_train_begin(self, logs=None):
        from tqdm.auto import tqdm

        start = int(self.model.ebm_optimizer.iterations.numpy())
        self.bar = tqdm(
            total=self.total, initial=start, unit="step", dynamic_ncols=True
        )

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and batch % 10 == 0:
            shown = ("loss", "energy_gap", "drift_norm", "gen_loss", "transferred")
            self.bar.set_postfix(
                {k: f"{float(logs[k]):.3g}" for k in shown if k in logs}
            )

    def on_train_end(self, logs=None):
        self.close()

    def close(self):
        """Ends the bar's line (also when `fit` ends in an exception, for
        which Keras calls no `on_train_end`)."""
        bar = getattr(self, "bar", None)
        if bar is not None:
            bar.close()
            self.bar = None


# === Images ===


def image_grid(images, columns=8, scale=1):
    """`[N, H, W, C]` in [-1, 1] -> uint8 grid `[rows*H, columns*W, C]`.

    Only display clips; the chains themselves are never clipped.
    """
    images = np.clip((np.asarray(images) + 1.0) * 127.5, 0, 255).astype("uint8")
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, "uint8")
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[
            1 + r * (h + 1) : 1 + r * (h + 1) + h,
            1 + col * (w + 1) : 1 + col * (w + 1) + w,
        ] = image
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    keras.utils.save_img(path, array, scale=False)


def scatter_png(path, points, title=""):
    """A scatter plot of 2-D states (the toy2d analogue of an image grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    ax.set_title(title)
    ax.set_aspect("equal")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# === Summaries ===


class Summaries(keras.callbacks.Callback):
    """TensorBoard scalars every epoch (= `log_every` steps), image grids and
    PNGs every `image_every` steps.

    Scalars: every train-step metric (loss, energy_gap, drift_norm, bank_age,
    gen_loss, ...), both learning rates and the wall time per step. Images:
    the grids of `snapshot` (banks, raw init, init + K steps).
    """

    def __init__(self, workdir, image_every, last_step, num_images=64, writer=None):
        super().__init__()
        self.workdir = workdir
        self.image_every = image_every
        self.last_step = last_step
        self.num_images = num_images
        self.writer = writer or tf.summary.create_file_writer(
            os.path.join(workdir, "tensorboard")
        )
        self._time = None

    def on_epoch_begin(self, epoch, logs=None):
        self._time = time.time()
        self._start = int(self.model.ebm_optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        step = int(model.ebm_optimizer.iterations.numpy())
        with self.writer.as_default(step=step):
            for name, value in (logs or {}).items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("learning_rate/ebm", _lr(model.ebm_optimizer))
            if model.gen_optimizer is not None:
                tf.summary.scalar("learning_rate/gen", _lr(model.gen_optimizer))
            steps = max(step - self._start, 1)
            tf.summary.scalar("seconds_per_step", (time.time() - self._time) / steps)
            for name, bank in model.banks.items():
                tf.summary.histogram(f"{name}_counts", bank.counts.numpy())
            if step % self.image_every == 0 or step >= self.last_step:
                self.write_images(step)
        self.writer.flush()

    def write_images(self, step):
        # 2-D states are shown as a scatter plot, which needs many more points.
        num = self.num_images if len(self.model.state_shape) > 1 else 2000
        for kind, x in snapshot(self.model, num).items():
            path = os.path.join(self.workdir, "samples", f"{kind}_{step:08d}.png")
            if x.ndim == 2:
                scatter_png(path, x, f"{kind}, step {step}")
                continue
            scale = max(1, 64 // x.shape[1])
            grid = image_grid(x, scale=scale)
            save_png(path, grid)
            tf.summary.image(kind, grid[None])


def snapshot(model, num):
    """What to look at: `{kind: states}` from the model's current state.

    Each persistent bank as it is (`bank`; longrun: `update_bank`, the
    states that alone train the model, and `burnin_bank`), the raw init
    (`generator`), and the init after K Langevin steps under the current
    model: `negatives` where that is what training sees (shortrun, midrun),
    `<init>_plus_<K>_steps` for longrun, whose training states come from
    the update bank instead.
    """
    seed = tf.constant([model.seed, 3])
    longrun = getattr(model, "burnin_bank", None) is not None
    out = {}
    for name, bank in model.banks.items():
        kind = "update_bank" if longrun and name == "bank" else name
        out[kind] = bank.states[:num].numpy()
    x_init = model.chain_starts(num, seed)
    if x_init is None:
        return out
    if model.init_source == "generator":
        out["generator"] = x_init.numpy()
    chains = f"{model.init_source}_plus_{model.num_steps}_steps"
    out[chains if longrun else "negatives"] = model.sample(x_init)[0].numpy()
    return out


def _lr(optimizer):
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)
