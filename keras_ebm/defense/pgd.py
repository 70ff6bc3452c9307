"""The adaptive attack's PGD on one batch (paper Section 3.2, Algorithm 2);
`keras_ebm.defense.attack` runs it over resumable batches.

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
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, optimize_linear, random_lp_vector

from keras_ebm.defense import gradients

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
