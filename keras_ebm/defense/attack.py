"""Adaptive attacks on Langevin purification (paper Section 3.2, Algorithm 2).

The attacker runs PGD (l_inf, or l_2) with a random start on the defended
classifier `F(x) = argmax_c (1/H) sum_h f(T_h(x))_c`:

- EOT: each PGD step purifies `H_adv` replicates of the current image and
  ascends the loss of the replicate-averaged logits,
  `L(x) = CE(y, (1/H_adv) sum_h f(T_h(x)))` (the paper's eq. 8), or the
  margin `max_{c != y} z_c - z_y` (`loss="margin"`);
- the gradient (`keras_ebm.defense.gradients`): BPDA (straight through the
  purification, the reference), exact through the last `grad_steps`
  Langevin steps (all K_def: the full gradient, MEFA), the same through the
  EBM's smooth twin (`surrogate_beta`), or SPSA from the defended logits
  alone (`spsa_samples`);
- the record is monotone per image, as the reference's `attack.py`: row 0
  verifies every natural image with `H_def` replicates; at each of the
  `num_steps + 1` PGD iterates an image whose `H_adv` replicates are
  misclassified is verified with `H_def` fresh replicates, and once a
  verification fails the image stays broken (evaluate-while-optimizing).
  Natural accuracy is row 0, robust accuracy the last row.

The PGD update is cleverhans' (`optimize_linear`, `clip_eta`): with
purification off and H = 1 the attack is cleverhans' PGD (tested).
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, optimize_linear, random_lp_vector

from keras_ebm.defense import gradients
from keras_ebm.runs import files, interrupt

NORMS = {"linf": np.inf, "l2": 2}
LOSSES = ("ce", "margin")


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """One attack. `eps` and `step_size` are in [-1, 1] image units (the
    reference's /255 values times 2/255).

    Attributes:
        eps: radius of the threat ball.
        step_size: PGD step eta.
        num_steps: PGD steps (the record has `num_steps + 2` rows).
        norm: "linf" or "l2".
        adv_replicates: H_adv, replicates per attack gradient (EOT).
        def_replicates: H_def, replicates per verification.
        random_start: start uniformly in the ball (cleverhans' draw).
        loss: "ce" (the reference) or "margin".
        grad_steps: last Langevin steps differentiated (0 = BPDA;
            K_def or more = the full gradient).
        checkpoint_every: segment length S of the differentiated part's
            checkpoints; 0 = ceil(sqrt(grad_steps)).
        surrogate_beta: 0 = the `grad_steps` steps differentiated exactly;
            > 0 = through the EBM's smooth twin (ReLU as
            softplus(beta z)/beta) at the true chain states.
        spsa_samples: 0 = a pathwise gradient (the fields above); N > 0 =
            the SPSA estimate from N pairs of Rademacher perturbations.
        spsa_delta: SPSA's perturbation size (image units).
        momentum: PGD steps along MI-FGSM's accumulated direction
            (`accumulate`); 0 = plain PGD.
    """

    eps: float
    step_size: float
    num_steps: int
    norm: str = "linf"
    adv_replicates: int = 1
    def_replicates: int = 1
    random_start: bool = True
    loss: str = "ce"
    grad_steps: int = 0
    checkpoint_every: int = 0
    surrogate_beta: float = 0.0
    spsa_samples: int = 0
    spsa_delta: float = 0.0
    momentum: float = 0.0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {self.norm!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0 < self.step_size <= self.eps:
            raise ValueError(
                f"need 0 < step_size <= eps, got {self.step_size} and {self.eps}"
            )
        if min(self.num_steps, self.grad_steps, self.checkpoint_every) < 0:
            raise ValueError("num_steps, grad_steps and checkpoint_every must be >= 0")
        if self.adv_replicates < 1 or self.def_replicates < 1:
            raise ValueError("adv_replicates and def_replicates must be >= 1")
        if self.surrogate_beta < 0 or (self.surrogate_beta and not self.grad_steps):
            raise ValueError(
                "surrogate_beta must be >= 0, and > 0 only with grad_steps > 0 "
                f"(the steps it differentiates), got {self.surrogate_beta}"
            )
        if self.spsa_samples < 0:
            raise ValueError(f"spsa_samples must be >= 0, got {self.spsa_samples}")
        if self.spsa_samples and (self.grad_steps or self.surrogate_beta):
            raise ValueError("SPSA uses no gradient: grad_steps and surrogate_beta 0")
        if self.spsa_samples and not self.spsa_delta > 0:
            raise ValueError(f"SPSA needs spsa_delta > 0, got {self.spsa_delta}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"need 0 <= momentum < 1, got {self.momentum}")

    @property
    def estimator(self):
        """What the gradient is: bpda, exact, surrogate or spsa."""
        if self.spsa_samples:
            return "spsa"
        if not self.grad_steps:
            return "bpda"
        return "surrogate" if self.surrogate_beta else "exact"


def _fold(seed, i):
    return tf.random.experimental.stateless_fold_in(seed, i)


def accumulate(velocity, grad, momentum):
    """MI-FGSM's accumulated direction (Dong et al. 2018),
    `v <- momentum v + g / mean|g|` per image: with momentum 0 the step is
    plain PGD's (the normalization changes no sign or l2 direction); with
    momentum > 0 noisy estimates (SPSA's) average over steps, as Adam does
    in Uesato et al.'s SPSA."""
    axes = tuple(range(1, len(grad.shape)))
    scale = tf.reduce_mean(tf.abs(grad), axis=axes, keepdims=True)
    return momentum * velocity + grad / tf.maximum(scale, 1e-12)


def pgd_step(x_adv, grad, x, settings):
    """cleverhans' PGD iterate: `x + clip_eta(clip(x_adv + eta * d) - x)`,
    d = sign(grad) (l_inf) or grad/||grad|| (l_2), clipped to [-1, 1]."""
    norm = NORMS[settings.norm]
    x_adv = tf.clip_by_value(
        x_adv + optimize_linear(grad, settings.step_size, norm), -1.0, 1.0
    )
    return tf.clip_by_value(x + clip_eta(x_adv - x, norm, settings.eps), -1.0, 1.0)


def random_start(x, settings):
    """cleverhans' random start: uniform in the ball, projected and clipped.
    Drawn eagerly from TensorFlow's global seed, exactly as cleverhans'
    `projected_gradient_descent(rand_init=True)` draws it."""
    if not settings.random_start:
        return tf.zeros_like(x)
    norm = NORMS[settings.norm]
    eta = random_lp_vector(tf.shape(x), norm, tf.cast(settings.eps, x.dtype), x.dtype)
    return clip_eta(eta, norm, settings.eps)


class BatchResult(NamedTuple):
    """What `batch_attack` returns for one batch of B images.

    Attributes:
        record: `[num_steps + 2, B]` bool, the monotone defended record.
        adv_correct: `[num_steps + 1, B]` bool, whether the H_adv replicates
            classified each PGD iterate correctly.
        x_broken: each image's first verified-broken iterate (the natural
            image where none broke it).
        x_adv: the last PGD iterate.
        nonfinite: how many image-gradients were not finite (each replaced
            by zero: that image does not move at that step).
    """

    record: tf.Tensor
    adv_correct: tf.Tensor
    x_broken: tf.Tensor
    x_adv: tf.Tensor
    nonfinite: tf.Tensor


def batch_attack(defended, settings, on_step=None):
    """A compiled attack on one batch.

    Returns `run(x, labels, eta0, seed)` -> `BatchResult`.
    `on_step(iterate, accuracy)`, if given, is called from inside the
    compiled loop after each iterate (a progress bar on long batches).
    """
    if getattr(defended, "gradient_free_only", False) and not settings.spsa_samples:
        raise ValueError(
            f"a {settings.estimator} attack needs the EBM itself; against an "
            "export, attack with SPSA (spsa_samples > 0)"
        )
    h_def = settings.def_replicates

    def verify(x, labels, seed):
        """H_def-averaged prediction == label, for the images that need it
        only (none most of the time; no Python loop per image)."""
        logits = defended.logits(x, h_def, seed)
        return tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)

    @tf.function(reduce_retracing=True)
    def run(x, labels, eta0, seed):
        n = settings.num_steps
        defended_now = verify(x, labels, _fold(seed, 0))
        record = tf.TensorArray(tf.bool, size=n + 2).write(0, defended_now)
        adv_correct = tf.TensorArray(tf.bool, size=n + 1)
        x_adv = tf.clip_by_value(x + eta0, -1.0, 1.0)
        x_broken = x
        nonfinite = tf.constant(0)
        velocity = tf.zeros_like(x)
        for i in tf.range(n + 1):
            step_seed = _fold(seed, i + 1)
            logits, grad = gradients.logits_and_grad(
                defended, x_adv, labels, settings, _fold(step_seed, 0)
            )
            grad, bad = _finite_or_zero(grad)
            nonfinite += bad
            velocity = accumulate(velocity, grad, settings.momentum)
            correct = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
            rows = tf.where(tf.logical_and(tf.logical_not(correct), defended_now))
            if tf.size(rows) > 0:
                ok = verify(
                    tf.gather_nd(x_adv, rows),
                    tf.gather_nd(labels, rows),
                    _fold(step_seed, 1),
                )
                broken = tf.scatter_nd(
                    rows, tf.logical_not(ok), tf.shape(defended_now, tf.int64)
                )
                x_broken = tf.where(
                    tf.reshape(broken, (-1,) + (1,) * (len(x.shape) - 1)),
                    x_adv,
                    x_broken,
                )
                defended_now = tf.logical_and(defended_now, tf.logical_not(broken))
            record = record.write(i + 1, defended_now)
            adv_correct = adv_correct.write(i, correct)
            if on_step is not None:
                accuracy = tf.reduce_mean(tf.cast(defended_now, tf.float32))
                # The next iterate waits for the hook: hooks run in order,
                # and a hook that stops the batch stops it here.
                hooked = tf.py_function(_hook(on_step), [i, accuracy], tf.int32)
                with tf.control_dependencies([hooked]):
                    x_adv = tf.identity(x_adv)
            # The update after the last evaluation is discarded (as the
            # reference), so x_adv ends as the num_steps-th PGD iterate.
            if i < n:
                x_adv = pgd_step(x_adv, velocity, x, settings)
        return BatchResult(
            record.stack(), adv_correct.stack(), x_broken, x_adv, nonfinite
        )

    return run


def _finite_or_zero(grad):
    """`grad` with each image's gradient replaced by zero where any entry
    is not finite (a surrogate's product of step Jacobians can overflow),
    and how many were."""
    axes = tuple(range(1, len(grad.shape)))
    ok = tf.reduce_all(tf.math.is_finite(grad), axis=axes)
    mask = tf.reshape(ok, (-1,) + (1,) * len(axes))
    return tf.where(mask, grad, tf.zeros_like(grad)), tf.reduce_sum(
        tf.cast(tf.logical_not(ok), tf.int32)
    )


def _hook(on_step):
    """`on_step` as a `tf.py_function` with an output (0), on which the
    next iterate can wait."""

    def hook(iterate, accuracy):
        on_step(iterate, accuracy)
        return 0

    return hook


def proportion_ci(successes, n, level=0.95):
    """Exact (Clopper-Pearson) interval of a binomial proportion."""
    from scipy import stats

    ci = stats.binomtest(int(successes), int(n)).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def identity(settings):
    """The settings that name an attack: every field, except those at
    their default that a later version added (`ADDED`), so that adding a
    field keeps the finished attacks of earlier versions valid."""
    values = dataclasses.asdict(settings)
    defaults = {f.name: f.default for f in dataclasses.fields(AttackSettings)}
    return {k: v for k, v in values.items() if k not in ADDED or v != defaults[k]}


# Fields added after attacks had been cached (issue 24).
ADDED = ("surrogate_beta", "spsa_samples", "spsa_delta", "momentum")


def settings_key(settings, **extra):
    """A short hash of everything that changes an attack's result."""
    blob = json.dumps(dict(identity(settings), **extra), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Shard:
    """One worker's share of an attack: batch b is worker `b % count`'s.

    Batches are independent (each its own random start and noise), so
    workers need no communication: each writes its batch files into the
    shared output folder. The chief (`wait`) also waits for the others'
    files and summarizes; the other workers (`wait=False`) stop after their
    own batches. A killed worker, restarted, resumes its own share.
    """

    index: int = 0
    count: int = 1
    wait: bool = True
    poll_seconds: float = 5.0

    def owns(self, batch):
        return batch % self.count == self.index


def evaluate(
    defended,
    images,
    labels,
    settings,
    out_dir,
    *,
    batch_size,
    seed=0,
    progress=None,
    on_step=None,
    shard=Shard(),
):
    """Runs the attack over `images` in batches and summarizes it.

    Each finished batch is saved to
    `out_dir/batch_<index>_<size>_<hash of its images and labels>.npz`, so a
    killed evaluation resumes at the first missing batch and other images
    are never mistaken for these; `out_dir/partial.json` holds the accuracy
    so far. Batch b draws its random start after
    `tf.random.set_seed(seed * 100003 + b)` and its Langevin noise from the
    stateless seed `[seed, b]`, so a resumed run equals an uninterrupted one.

    With a `shard` of several workers, this worker attacks only its own
    batches (`Shard`); a non-waiting worker returns None.

    Returns:
        dict: natural and robust accuracy with 95% Clopper-Pearson
        intervals, the accuracy over attack steps (`curve`, the record's
        mean per row; robust accuracy is its last row), the H_adv accuracy
        per PGD iterate, the Langevin image-steps of the forward
        purifications (`langevin_image_steps`) and timings.
    """
    os.makedirs(out_dir, exist_ok=True)
    # Batches depend on their index only, so runs over a prefix of the same
    # images share a folder (the K_def curve reuses the main attack's).
    meta = dict(
        settings=identity(settings),
        num_steps_defense=int(defended.num_steps),
        batch_size=batch_size,
        seed=seed,
    )
    meta_path = os.path.join(out_dir, "settings.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f) != meta:
                raise ValueError(
                    f"{out_dir} holds an attack with other settings; remove it or "
                    "choose another output folder"
                )
    else:  # atomic: the workers of a shard write the same file
        _write_json(meta_path, meta)

    def step_hook(iterate, accuracy):
        # Runs between PGD iterates, inside the compiled batch: a signal
        # abandons the batch (the finished ones are saved).
        if interrupt.requested():
            raise _Stop()
        if on_step is not None:
            on_step(iterate, accuracy)

    run = batch_attack(defended, settings, step_hook)
    starts = range(0, len(images), batch_size)
    records, corrects, times = [], [], []
    steps = nonfinite = 0
    for b, start in enumerate(starts):
        count = min(batch_size, len(images) - start)
        x_np = np.asarray(images[start : start + batch_size], np.float32)
        y_np = np.asarray(labels[start : start + batch_size], np.int32)
        digest = hashlib.sha256(x_np.tobytes() + y_np.tobytes()).hexdigest()[:10]
        path = os.path.join(out_dir, f"batch_{b:05d}_{count}_{digest}.npz")
        saved = _load_batch(path)
        if saved is None and not shard.owns(b):
            if not shard.wait:
                continue
            _wait_for(path, f"batch {b} (worker {b % shard.count})", shard)
            saved = _load_batch(path)
        if saved is None:
            x, y = tf.constant(x_np), tf.constant(y_np)
            tf.random.set_seed(seed * 100003 + b)
            eta0 = random_start(x, settings)
            # A global seed left set breaks tf.data's tensor-seeded shuffles
            # (keras_ebm.runs.training clears it for the same reason).
            tf.random.set_seed(None)
            t0 = time.perf_counter()
            try:
                result = run(x, y, eta0, tf.constant([seed, b]))
            except tf.errors.OpError:
                if interrupt.requested():
                    raise interrupt.stop(
                        f"the attack in batch {b} of {len(starts)}",
                        f"batches 0-{b - 1} are saved in {out_dir}"
                        if b
                        else "no batch was finished",
                    ) from None
                raise
            saved = dict(
                record=result.record.numpy(),
                adv_correct=result.adv_correct.numpy(),
                broken=result.x_broken.numpy(),
                nonfinite=result.nonfinite.numpy(),
                seconds=time.perf_counter() - t0,
            )
            files.atomic_write(
                path,
                lambda tmp, arrays=saved: np.savez(tmp, **arrays),
                f"the finished batches in {out_dir} are intact; free space and "
                "run the same command to resume",
            )
        if not shard.wait:
            continue
        records.append(saved["record"])
        corrects.append(saved["adv_correct"])
        times.append(float(saved["seconds"]))
        nonfinite += int(saved.get("nonfinite", 0))
        steps += purification_image_steps(
            saved["record"], saved["adv_correct"], settings, defended.num_steps
        )
        record = np.concatenate(records, axis=1)
        _write_json(
            os.path.join(out_dir, "partial.json"),
            dict(
                images_done=int(record.shape[1]),
                natural_accuracy=float(record[0].mean()),
                robust_accuracy=float(record[-1].mean()),
            ),
        )
        if progress is not None:
            progress(b + 1, len(starts), record)
    if not shard.wait:
        mine = sum(shard.owns(b) for b in range(len(starts)))
        print(
            f"worker {shard.index} of {shard.count}: {mine} of {len(starts)} "
            f"batches in {os.path.basename(out_dir)}",
            flush=True,
        )
        return None
    record = np.concatenate(records, axis=1)
    correct = np.concatenate(corrects, axis=1)
    n = record.shape[1]
    natural, robust = int(record[0].sum()), int(record[-1].sum())
    per_step = sum(times) / max(1, len(times) * (settings.num_steps + 1))
    return dict(
        meta,
        num_images=n,
        natural_accuracy=natural / n,
        natural_ci95=proportion_ci(natural, n),
        robust_accuracy=robust / n,
        robust_ci95=proportion_ci(robust, n),
        curve=record.mean(axis=1).tolist(),
        adv_replicate_accuracy=correct.mean(axis=1).tolist(),
        seconds=sum(times),
        seconds_per_attack_step=per_step,
        langevin_image_steps=steps,
        nonfinite_gradients=nonfinite,
        per_image_robust=record[-1].astype(int).tolist(),
        seed=seed,
    )


def purification_image_steps(record, adv_correct, settings, k_def):
    """Langevin image-steps of the forward purifications of one batch:
    K_def x (H_adv x B x (1 + 2N) per PGD evaluation, N the SPSA pairs (0
    for a gradient), + H_def per verified image), where every natural image
    is verified and, at iterate i, each still-defended image whose H_adv
    replicates were wrong (row i of the record holds the images defended
    before iterate i)."""
    b = record.shape[1]
    verified = b + int(np.sum(np.logical_and(~adv_correct, record[:-1])))
    evaluations = b * adv_correct.shape[0] * (1 + 2 * settings.spsa_samples)
    return int(k_def) * (
        settings.adv_replicates * evaluations + settings.def_replicates * verified
    )


class _Stop(Exception):
    """Raised inside the compiled batch to abandon it on a signal."""


def _load_batch(path):
    """A finished batch's arrays, or None (not there; unreadable: set aside
    with a warning naming it, and attacked again)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # truncated, bad CRC, not a zip at all
        files.quarantine(path, f"the batch file does not load ({e})")
        return None


def _wait_for(path, what, shard):
    """Polls for another worker's batch file (the chief's summary needs
    every batch); says once what it waits for."""
    print(f"waiting for {what}: {os.path.basename(path)}", flush=True)
    while not os.path.exists(path):
        time.sleep(shard.poll_seconds)


def _write_json(path, value):
    files.write_json(path, value)
