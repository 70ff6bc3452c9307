"""The divergence guard: stops the damage of a diverging EBM.

EBM training diverges in two ways: it produces non-finite numbers (energies
or gradients), or the energy gap `mean E(x+) - mean E(x-)` runs away (the
noise-initialized ablation of the demo reached -1e15 before its chains
became non-finite). The guard watches every step: a non-finite step, or a
gap outside `guard.gap_band` for `guard.patience` consecutive steps, is an
event. By `guard.action` the run then

- `rollback`: reloads the newest checkpoint from before the trouble began,
  multiplies both learning rates by `guard.lr_factor` and continues (at
  most `guard.max_rollbacks` times; after that it halts);
- `halt`: stops with a message naming the step, the cause and the last
  good checkpoint (nothing of the diverged state is saved);
- `off`: only reports.

Banks never keep non-finite states whatever the action: such rows restart
from the init source (`SampleBank.update`), counted by the
`reinitialized_rows` metric (over every replica).
"""

import dataclasses
import math

import keras

ACTIONS = ("rollback", "halt", "off")


@dataclasses.dataclass
class RunState:
    """What a run carries besides its variables (saved with each checkpoint,
    in its manifest and in the record inside the file, so that a lost
    manifest does not reset it): the guard's learning-rate scale and
    rollback count."""

    lr_scale: float = 1.0
    rollbacks: int = 0

    @classmethod
    def from_manifest(cls, manifest):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (manifest or {}).items() if k in names})


@dataclasses.dataclass(frozen=True)
class Event:
    """A divergence: the step it was detected at (optimizer steps done),
    the first bad step (`first`), and what happened."""

    step: int
    first: int
    cause: str


class Guard(keras.callbacks.Callback):
    """Detects divergence after every training step and stops `fit`.

    Reads the per-step values of `energy_gap` and `nonfinite` (1 when the
    step's energies or gradients were not all finite, on any replica) from
    the running epoch means Keras reports: `v_b = (b + 1) m_b - b m_(b-1)`.

    Args:
        gap_band: `(low, high)` bounds of a healthy energy gap.
        patience: consecutive out-of-band steps that make an event.
        stop: end `fit` at an event (the caller rolls back or halts);
            False: report and go on.
        report: called with each `Event`.
    """

    def __init__(self, gap_band, patience, stop=True, report=None):
        super().__init__()
        self.low, self.high = gap_band
        self.patience = patience
        self.stop = stop
        self.report = report
        self.event = None
        self._streak = None
        self._means = {}

    def on_train_begin(self, logs=None):
        self.event, self._streak = None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._means = {}

    def _step_value(self, logs, name, batch):
        mean = float(logs[name])
        previous = self._means.get(name, 0.0)
        self._means[name] = mean
        return (batch + 1) * mean - batch * previous

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "energy_gap" not in logs:
            return
        step = int(self.model.ebm_optimizer.iterations.numpy())
        gap = self._step_value(logs, "energy_gap", batch)
        nonfinite = self._step_value(logs, "nonfinite", batch) > 0.5
        if nonfinite or not math.isfinite(gap):
            self._stop(Event(step, step, "non-finite energies or gradients"))
            return
        if self.low <= gap <= self.high:
            self._streak = None
            return
        if self._streak is None:
            self._streak = step
        if step - self._streak + 1 >= self.patience:
            self._stop(
                Event(
                    step,
                    self._streak,
                    f"energy gap {gap:.3g} outside [{self.low:g}, {self.high:g}] "
                    f"for {step - self._streak + 1} steps",
                )
            )

    def _stop(self, event):
        self._streak = None
        if self.report is not None:
            self.report(event)
        if self.stop:
            self.event = event
            self.model.stop_training = True


def rollback_bound(event):
    """Checkpoints of a step below this are good: the first bad step was
    computed from the state after `first - 1` steps, so that state is
    suspect too."""
    return event.first - 1
