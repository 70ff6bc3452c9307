"""The attack gradients of Langevin purification, and how good they are.

The attacker ascends the loss of the replicate-averaged logits,
`L(x) = loss(y, (1/H) sum_h f(T_h(x)))`; what it needs is the gradient of
the expected loss `E_xi L(x)` over the purification noise xi. Estimators:

- **pathwise** (`eot_logits_and_grad`): d L / dx along each noise path,
  summed over the H replicates (EOT). The first `K_def - m` Langevin steps
  are straight-through (BPDA, Athalye et al. 2018), the last m = `grad_steps`
  differentiated (checkpointed, memory O(sqrt(m))): exactly (`surrogate_beta`
  0; m = K_def is the full gradient, MEFA) or through the smooth twin of the
  EBM at the true chain states (`surrogate_beta` > 0: every ReLU as
  softplus(beta z)/beta; `sampling.surrogate_potential`).
  On a ReLU EBM each path's purified map is piecewise a translation, so the
  pathwise exact gradient is BPDA's; the noise smooths the drift's jumps
  into a contraction that only the expected loss shows ("shattered
  gradients"). The surrogate sees it, at the cost of a bias that vanishes
  as the twin approaches the EBM (beta -> inf gives BPDA back).
- **SPSA** (`spsa_logits_and_grad`, Uesato et al. 2018): gradient-free,
  from the defended logits alone,
  `g = (1/N) sum_i (L(x + delta v_i; xi_i) - L(x - delta v_i; xi_i)) / (2 delta) v_i`
  with Rademacher v_i and the purification noise xi_i common to the two
  halves of a pair (common random numbers: the difference sees the input,
  not the noise). Unbiased for `grad E L` up to O(delta^2).

`gradient_check` measures each estimator's cosine to a finite-difference
gradient of the expected loss, the reference no estimator is built on.
"""

import dataclasses

import numpy as np
import tensorflow as tf


def _fold(seed, i):
    return tf.random.experimental.stateless_fold_in(seed, i)


def attack_loss(logits, labels, kind):
    """Per-image loss the attacker ascends: `CE(y, z)` or the margin
    `max_{c != y} z_c - z_y`."""
    if kind == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    true = tf.gather(logits, labels, batch_dims=1)
    others = logits - 1e9 * tf.one_hot(labels, tf.shape(logits)[-1])
    return tf.reduce_max(others, axis=-1) - true


def segment_length(num_steps, checkpoint_every=0):
    """S: the checkpoint spacing of an exact gradient through `num_steps`
    Langevin steps (`checkpoint_every`, or ceil(sqrt(num_steps)), which
    minimizes the number of checkpoints plus the length of one segment)."""
    if checkpoint_every > 0:
        return int(checkpoint_every)
    return max(1, int(np.ceil(np.sqrt(num_steps))))


def checkpointed_vjp(step_fn, x, num_steps, segment, loss_fn, backward_step_fn=None):
    """`(loss_fn(x_m), d sum(loss_fn(x_m)) / dx)` for the chain
    `x_{i+S} = step_fn(x_i, i, S)` of `num_steps` = m steps, exactly, in
    memory O(m / S + S) chain states instead of O(m).

    `backward_step_fn`, if given, is what the backward pass re-runs and
    differentiates: a step with the same value and another Jacobian (the
    surrogate's); the forward chain runs the cheaper `step_fn`.

    Forward: run the chain without a tape and keep `x_0, x_S, x_2S, ...`.
    Backward: for each segment, last first, re-run it from its checkpoint
    under a tape and pull the gradient back through it (the vector-Jacobian
    product of the segment, second order through the Langevin drift).
    `step_fn(x, first, n)` must be a deterministic function of its
    arguments (stateless noise of steps `first .. first + n - 1`), so the
    recomputed segment is the forward one.

    Returns:
        `(value, grad)`: `loss_fn` of the last state (any structure, e.g.
        `(per-image loss, logits)`; the gradient is taken of its first
        element's sum) and the gradient with respect to `x`.
    """
    num_segments = -(-num_steps // segment)

    def length(j):
        return tf.minimum(segment, num_steps - j * segment)

    checkpoints = tf.TensorArray(x.dtype, size=num_segments, element_shape=x.shape)

    def forward(j, x, checkpoints):
        checkpoints = checkpoints.write(j, x)
        return j + 1, step_fn(x, j * segment, length(j)), checkpoints

    _, x_last, checkpoints = tf.while_loop(
        lambda j, *_: j < num_segments,
        forward,
        (tf.constant(0), x, checkpoints),
    )
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x_last)
        value = loss_fn(x_last)
        total = tf.reduce_sum(value[0])
    grad = tape.gradient(total, x_last)

    backward_step_fn = backward_step_fn or step_fn

    def backward(j, grad):
        x_j = checkpoints.read(j)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_j)
            x_next = backward_step_fn(x_j, j * segment, length(j))
        return j - 1, tape.gradient(x_next, x_j, output_gradients=grad)

    _, grad = tf.while_loop(
        lambda j, _: j >= 0, backward, (tf.constant(num_segments - 1), grad)
    )
    return value, grad


def _mean_over_replicates(out, h):
    return tf.reduce_mean(tf.reshape(out, (-1, h, tf.shape(out)[-1])), axis=1)


def eot_logits_and_grad(defended, x, labels, settings, seed):
    """Replicate-averaged logits `[B, classes]` of `f(T(x))` over H_adv
    replicates, and the pathwise attack gradient `dL/dx`: BPDA (straight
    through) for the first `K_def - m` Langevin steps, differentiated
    (checkpointed) for the last m = `grad_steps`, exactly or through the
    smooth twin (`surrogate_beta`); all K_def steps form one chain drawn
    from `seed`, whatever m, so the purification is the same for every m."""
    h = settings.adv_replicates
    k = int(defended.num_steps)
    m = min(settings.grad_steps, k)
    x_rep = tf.repeat(x, h, axis=0)
    potential = None
    if m and settings.surrogate_beta > 0:
        potential = defended.surrogate_potential(settings.surrogate_beta)

    def loss_fn(states):
        logits = _mean_over_replicates(defended.classifier(states, training=False), h)
        return attack_loss(logits, labels, settings.loss), logits

    def steps(states, first, n, potential=None):
        return defended.purify(
            states, seed, num_steps=n, first_step=first, potential=potential
        )

    # The BPDA part runs outside any tape: its gradient is the identity, and
    # nothing of it is kept, so memory does not grow with K_def - m.
    head = defended.purify(x_rep, seed, num_steps=k - m) if k - m else x_rep
    if m:
        segment = segment_length(m, settings.checkpoint_every)
        (_, logits), grad = checkpointed_vjp(
            lambda s, first, n: steps(s, k - m + first, n),
            head,
            m,
            segment,
            loss_fn,
            lambda s, first, n: steps(s, k - m + first, n, potential),
        )
    else:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(head)
            loss, logits = loss_fn(head)
        grad = tape.gradient(loss, head)
    grad = tf.reduce_sum(tf.reshape(grad, (-1, h) + tuple(x.shape[1:])), axis=1)
    return logits, grad


def paired_differences(logits_fn, x, labels, directions, delta, loss, seed):
    """`(L(x + delta v) - L(x - delta v)) / (2 delta)` for each direction.

    Args:
        logits_fn: `(states [N, ...], seed) -> averaged logits [N, classes]`
            whose noise is a function of the seed and the row (the two
            calls below then share it row by row: common random numbers).
        x: `[B, ...]`; directions: `[D, B, ...]`; labels `[B]`.

    Returns:
        `[D, B]` central differences.
    """
    count = tf.shape(directions)[0]
    shape = tf.concat([[-1], tf.shape(x)[1:]], 0)
    plus = tf.reshape(x[None] + delta * directions, shape)
    minus = tf.reshape(x[None] - delta * directions, shape)
    tiled = tf.tile(labels, [count])
    gain = attack_loss(logits_fn(plus, seed), tiled, loss) - attack_loss(
        logits_fn(minus, seed), tiled, loss
    )
    return tf.reshape(gain, (count, -1)) / (2.0 * delta)


def rademacher(shape, seed, dtype=tf.float32):
    """Independent +-1 entries, a function of `seed`."""
    bits = tf.random.stateless_uniform(shape, seed, 0, 2, dtype=tf.int32)
    return tf.cast(2 * bits - 1, dtype)


def spsa_logits_and_grad(logits_fn, x, labels, settings, seed):
    """The H_adv-averaged logits at `x` and the SPSA estimate of
    `grad E L(x)` from `settings.spsa_samples` = N pairs of Rademacher
    perturbations of size `settings.spsa_delta` (module docstring).

    `logits_fn(states, num_replicates, seed)` is the defended classifier's
    averaged logits (`DefendedClassifier.logits`, or an export's
    `predict`); 2N + 1 of its evaluations per image and step."""
    h = settings.adv_replicates
    logits = logits_fn(x, h, _fold(seed, 0))
    n = settings.spsa_samples
    v = rademacher(tf.concat([[n], tf.shape(x)], 0), _fold(seed, 1), x.dtype)
    diffs = paired_differences(
        lambda states, s: logits_fn(states, h, s),
        x,
        labels,
        v,
        settings.spsa_delta,
        settings.loss,
        _fold(seed, 2),
    )
    weights = tf.reshape(
        diffs, tf.concat([tf.shape(diffs), tf.ones_like(tf.shape(x)[1:])], 0)
    )
    return logits, tf.reduce_mean(weights * v, axis=0)


def logits_and_grad(defended, x, labels, settings, seed):
    """The attack's logits at `x` (H_adv replicates) and its gradient, by
    the estimator `settings` names (SPSA when `spsa_samples` > 0, else
    pathwise)."""
    if settings.spsa_samples > 0:
        return spsa_logits_and_grad(defended.logits, x, labels, settings, seed)
    return eot_logits_and_grad(defended, x, labels, settings, seed)


# === The finite-difference reference ===


def replicate_logits(defended, x, replicates, seed):
    """`[B, R, classes]`: the logits of R purified replicates of each
    image (noise from `seed`, a function of the row)."""
    out = defended.classifier(
        defended.purify(tf.repeat(x, replicates, axis=0), seed), training=False
    )
    return tf.reshape(out, (-1, replicates, tf.shape(out)[-1]))


def finite_difference_gradient(
    defended, x, labels, *, replicates, delta, loss, seed, max_chains=8192
):
    """Central differences of the R-averaged loss along every coordinate of
    each image of `x` `[B, ...]`, each pair with common noise: an estimate
    of `grad E L(x)` that trusts no gradient of the model.

    Returns `(full, half_a, half_b)`, each `[B, ...]`: the estimate from all
    R replicates and from each half (their cosine measures the estimate's
    own noise; R must be even).
    """
    shape = tuple(x.shape[1:])
    dim = int(np.prod(shape))
    eye = tf.reshape(tf.eye(dim, dtype=tf.float32), (dim,) + shape)
    r = replicates
    per_call = max(1, max_chains // r)
    halves = (slice(0, r), slice(0, r // 2), slice(r // 2, r))

    @tf.function(reduce_retracing=True)
    def chunk(x, label, directions, seed):
        count = tf.shape(directions)[0]
        labels = tf.fill([count], label)
        points = {
            sign: replicate_logits(defended, x + sign * delta * directions, r, seed)
            for sign in (1.0, -1.0)
        }
        return [
            (
                attack_loss(tf.reduce_mean(points[1.0][:, part], 1), labels, loss)
                - attack_loss(tf.reduce_mean(points[-1.0][:, part], 1), labels, loss)
            )
            / (2.0 * delta)
            for part in halves
        ]

    from tqdm import tqdm

    starts = range(0, dim, per_call)
    # Minutes per image on a CPU: one tick per chunk of directions.
    bar = tqdm(total=len(x) * len(starts), desc="finite differences", unit="chunk")
    out = [[], [], []]
    for i in range(len(x)):
        parts = [[], [], []]
        for start in starts:
            gains = chunk(
                tf.constant(np.asarray(x[i : i + 1], np.float32)),
                tf.constant(int(labels[i]), tf.int32),
                eye[start : start + per_call],
                _fold(_fold(seed, i), start),
            )
            for part, g in zip(parts, gains, strict=True):
                part.append(g.numpy())
            bar.update()
        for o, part in zip(out, parts, strict=True):
            o.append(np.concatenate(part).reshape(shape))
    bar.close()
    return tuple(np.stack(o) for o in out)


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def reliability(split_half):
    """The cosine a noisy reference can reach with the truth, from the
    cosine of its two half-sample estimates (Spearman-Brown:
    `rho = 2 r / (1 + r)` for the full sample; ceiling `sqrt(rho)`)."""
    r = max(float(split_half), 0.0)
    return float(np.sqrt(2 * r / (1 + r)))


def gradient_check(
    defended,
    points,
    labels,
    estimators,
    *,
    loss,
    replicates,
    delta,
    draws,
    seed,
    reference=None,
):
    """How well each estimator's gradient points where the expected loss
    rises, at a few points (e.g. images plus the attack's random start).

    At each point the reference is `finite_difference_gradient` of `loss`
    (R = `replicates`, step `delta`); each estimator (`{name:
    AttackSettings}`, its loss replaced by `loss` so that all are compared
    on one function) gives its gradient as its attack computes it (one
    draw: H_adv replicates, N SPSA pairs), and the mean of `draws`
    independent draws (its expectation). The reference is itself noisy:
    `ceiling` is the cosine it can reach with the truth (`reliability` of
    its split halves); `cos / ceiling` corrects a cosine for it.
    `reference`, if given, is that reference already computed (`(full,
    half_a, half_b)` of `finite_difference_gradient` at these settings).

    Returns:
        `{"points", "loss", "replicates", "delta", "draws",
        "fd_split_half", "ceiling": [per point], "estimators": {name:
        {"cos_one_draw", "cos_mean", "norm_ratio"}}}`, lists per point
        (`norm_ratio`: the mean draw's norm over the reference's).
    """
    from tqdm import tqdm

    points = np.asarray(points, np.float32)
    labels = np.asarray(labels, np.int32)
    n = len(points)
    bar = tqdm(total=1 + len(estimators), desc="gradient check")
    ref, a, b = reference or finite_difference_gradient(
        defended,
        points,
        labels,
        replicates=replicates,
        delta=delta,
        loss=loss,
        seed=tf.constant([seed, 1000]),
    )
    split = [cosine(a[i], b[i]) for i in range(n)]
    out = dict(
        points=n,
        loss=loss,
        replicates=replicates,
        delta=delta,
        draws=draws,
        fd_split_half=split,
        ceiling=[reliability(r) for r in split],
        estimators={},
    )
    bar.update(1)
    x, y = tf.constant(points), tf.constant(labels)
    for name, settings in estimators.items():
        settings = dataclasses.replace(settings, loss=loss)
        fn = tf.function(
            lambda s, settings=settings: logits_and_grad(defended, x, y, settings, s)[1]
        )
        # [draws, n, ...]: each draw all points at once, with its own noise.
        grads = np.stack([fn(tf.constant([seed, 2000 + d])) for d in range(draws)])
        mean = grads.mean(0)
        out["estimators"][name] = dict(
            cos_one_draw=[
                float(np.mean([cosine(g[i], ref[i]) for g in grads])) for i in range(n)
            ],
            cos_mean=[cosine(mean[i], ref[i]) for i in range(n)],
            norm_ratio=[
                float(np.linalg.norm(mean[i]) / max(np.linalg.norm(ref[i]), 1e-30))
                for i in range(n)
            ],
        )
        bar.update(1)
    bar.close()
    return out
