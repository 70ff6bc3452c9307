"""The one Langevin sampler of keras_ebm.

Every regime (shortrun training, midrun purification, longrun burn-in,
evaluation) calls `langevin` with a different potential; nothing else in the
library updates chain states.
"""

from typing import Callable, NamedTuple, Optional

import keras
import tensorflow as tf
from keras import ops

from keras_ebm import distribute

EnergyFn = Callable[[tf.Tensor], tf.Tensor]


class LangevinStats(NamedTuple):
    """Diagnostics of one call of `langevin`, each a scalar tensor.

    Attributes:
        drift_norm: mean over steps and samples of the per-sample drift norm
            `||(eps^2/2) grad U(x)||_2` (the ancestors' path average).
        last_drift_norm: the same at the last step only (what ebm-life-cycle
            logs as its "grad norm").
        energy: mean of the potential `U` over steps and samples.
    """

    drift_norm: tf.Tensor
    last_drift_norm: tf.Tensor
    energy: tf.Tensor


def potential(
    energy_fn: EnergyFn,
    *,
    temperature: float = 1.0,
    prior_fn: Optional[EnergyFn] = None,
    prior_temperature: float = 1.0,
    tau: float = 0.0,
) -> EnergyFn:
    """Builds the per-sample potential that Langevin descends.

    `U(x) = E(x)/T + E_prior(x)/T_prior + ||x||^2 / (2 tau^2)`

    The prior term is present only when `prior_fn` is given and the Gaussian
    term only when `tau > 0`. As in ebm-life-cycle, the Gaussian term is not
    divided by any temperature.

    Args:
        energy_fn: maps `[B, ...]` states to energies of shape `[B]` or
            `[B, 1]`.
        temperature: T.
        prior_fn: optional frozen prior energy, same signature.
        prior_temperature: T_prior.
        tau: standard deviation of the Gaussian term; 0 disables it.

    Returns:
        A function mapping `[B, ...]` states to `[B]` potentials.
    """
    if temperature <= 0 or prior_temperature <= 0 or tau < 0:
        raise ValueError(
            "temperatures must be positive and tau non-negative, got "
            f"T={temperature}, T_prior={prior_temperature}, tau={tau}"
        )

    def flat(e):
        return ops.reshape(e, (-1,))

    def u(x):
        value = flat(energy_fn(x)) / temperature
        if prior_fn is not None:
            value = value + flat(prior_fn(x)) / prior_temperature
        if tau > 0:
            axes = tuple(range(1, len(x.shape)))
            value = value + ops.sum(ops.square(x), axis=axes) / (2 * tau**2)
        return value

    return u


def surrogate_potential(potential_fn: EnergyFn, smooth_fn: EnergyFn) -> EnergyFn:
    """`U~`: the value and gradient of `potential_fn` (U), the Hessian of
    `smooth_fn` (U_s, e.g. U of a smooth twin of the network).

    `U~(x) = U_s(x) + <g, x> + sg(U(x) - U_s(x) - <g, x>)`, with
    `g = sg(grad U(x) - grad U_s(x))` (sg: stop-gradient), so that
    `U~ = U`, `grad U~ = grad U` and `hess U~ = hess U_s`. Langevin under U~
    moves exactly as under U, and differentiating its steps gives the
    Jacobian `I - (eps^2 / 2) hess U_s(x_k)` of each step, evaluated at the
    true chain states x_k: the surrogate backward pass of an attack.
    """

    def u(x):
        fixed = tf.stop_gradient(x)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fixed)
            gap = potential_fn(fixed) - smooth_fn(fixed)
            total = ops.sum(gap)
        g = tf.stop_gradient(tape.gradient(total, fixed))
        axes = tuple(range(1, len(x.shape)))
        linear = ops.sum(g * x, axis=axes)
        return smooth_fn(x) + linear + tf.stop_gradient(gap - linear)

    return u


def langevin(
    potential_fn: EnergyFn,
    x: tf.Tensor,
    *,
    num_steps: int,
    step_size: float,
    noise: Optional[tf.Tensor] = None,
    seed: Optional[tf.Tensor] = None,
    max_drift_norm: float = 0.0,
    first_step=0,
) -> tuple:
    """Runs unadjusted Langevin dynamics from `x`.

    `x_{k+1} = x_k - (eps^2 / 2) * grad U(x_k) + eps * xi_k`,
    `xi_k ~ N(0, I)`, with `eps = step_size` the noise standard deviation
    (the paper's eta, the reference's `epsilon`). States are never clipped.
    With `max_drift_norm > 0` each sample's drift `(eps^2/2) grad U` is
    rescaled to at most that l2 norm (the reference's `max_langevin_norm`).

    Noise comes from exactly one of two places: `noise`, a tensor of shape
    `[num_steps, *x.shape]` (tests inject it to compare compile modes), or
    `seed`, a stateless seed of shape `[2]` from which step k draws with
    `stateless_fold_in(seed, first_step + k)`, so long chains need no
    pre-drawn buffer, and a chain cut into segments (`first_step` = the
    steps already taken) draws exactly the noise of the uncut chain.
    Under a `tf.distribute` strategy each replica takes its rows of the
    global batch's draw, so the chains do not depend on the replica count.

    Args:
        potential_fn: per-sample potential `U`, e.g. from `potential`.
        x: initial states `[B, ...]`.
        num_steps: K, a Python int or an int32 scalar tensor (one trace for
            every K).
        step_size: eps.
        noise: optional injected noise.
        seed: optional stateless seed.
        max_drift_norm: per-sample drift clip; 0 disables it.
        first_step: index of this call's first step in a longer chain (an
            int or int32 scalar tensor; seeded noise only).

    Returns:
        `(x_K, LangevinStats)`.
    """
    if (noise is None) == (seed is None):
        raise ValueError("pass exactly one of `noise` and `seed`")
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    if isinstance(num_steps, int) and num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    x = ops.convert_to_tensor(x)
    drift_scale = step_size**2 / 2
    axes = tuple(range(1, len(x.shape)))
    zero = ops.zeros((), x.dtype)
    shape = tuple(x.shape) if x.shape.is_fully_defined() else tf.shape(x)

    def step_noise(i):
        if noise is not None:
            return noise[i]
        step_seed = tf.random.experimental.stateless_fold_in(seed, first_step + i)
        return distribute.replica_rows(
            lambda shape: tf.random.stateless_normal(shape, step_seed, dtype=x.dtype),
            shape,
        )

    def body(i, carry):
        x, drift_sum, _, energy_sum = carry
        with tf.GradientTape() as tape:
            tape.watch(x)
            u = potential_fn(x)
            total = ops.sum(u)
        grad = tape.gradient(total, x)
        drift = drift_scale * grad
        norms = ops.sqrt(ops.sum(ops.square(drift), axis=axes))
        if max_drift_norm > 0:
            factor = ops.minimum(1.0, max_drift_norm / (norms + 1e-12))
            drift = drift * ops.reshape(factor, (-1,) + (1,) * len(axes))
            norms = norms * factor
        x = x - drift + step_size * step_noise(i)
        mean_norm = ops.mean(norms)
        return x, drift_sum + mean_norm, mean_norm, energy_sum + ops.mean(u)

    x, drift_sum, last, energy_sum = keras.ops.fori_loop(
        0, num_steps, body, (x, zero, zero, zero)
    )
    steps = ops.maximum(ops.cast(num_steps, x.dtype), 1.0)
    return x, LangevinStats(drift_sum / steps, last, energy_sum / steps)
