"""A persistent bank of MCMC states, kept in Keras variables."""

import keras
import tensorflow as tf
from keras import ops

from keras_ebm import distribute


@keras.saving.register_keras_serializable(package="keras_ebm")
class SampleBank(keras.layers.Layer):
    """Persistent chain states with per-state update counts and latents.

    Each training step draws `B` distinct states uniformly, decides which to
    rejuvenate, runs Langevin on them and writes them back in place with a
    scatter. A state is rejuvenated when `u < p` (`u ~ U(0, 1)`), or when its
    count exceeds the lifetime cap `w` (if `w > 0`); its count then restarts
    at 0, otherwise it grows by one per draw (ebm-life-cycle `train.py`).

    The effective size is `B * floor(size / B)`, as in the reference, so that
    a bank of 10000 at batch 128 holds 9984 states. The same type serves the
    longrun burn-in and update banks.

    Args:
        size: requested number of states.
        batch_size: states drawn per step (the global batch).
        state_shape: shape of one state, e.g. `(32, 32, 3)`.
        latent_dim: width of the paired latent bank; 0 for none.
        rejuvenation_prob: p.
        max_updates: lifetime cap w; 0 disables it.
    """

    def __init__(
        self,
        size,
        batch_size,
        state_shape,
        latent_dim=0,
        rejuvenation_prob=0.0,
        max_updates=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if batch_size <= 0 or size < batch_size:
            raise ValueError(
                f"bank size ({size}) must be at least the batch size ({batch_size})"
            )
        if not 0.0 <= rejuvenation_prob <= 1.0:
            raise ValueError(
                f"rejuvenation_prob must be in [0, 1], got {rejuvenation_prob}"
            )
        self.size = size
        self.batch_size = batch_size
        self.state_shape = tuple(state_shape)
        self.latent_dim = latent_dim
        self.rejuvenation_prob = rejuvenation_prob
        self.max_updates = max_updates
        self.num_states = batch_size * (size // batch_size)

        def var(name, shape, dtype="float32"):
            return self.add_weight(
                name=name,
                shape=shape,
                dtype=dtype,
                initializer="zeros",
                trainable=False,
                autocast=False,
                # Every replica applies the same all-gathered scatter to its
                # own copy (`update`), so the copies stay identical without
                # a merge: "none" keeps the write local and O(B).
                aggregation="none",
            )

        n = self.num_states
        self.states = var("states", (n,) + self.state_shape)
        self.counts = var("counts", (n,), "int32")
        self.latents = var("latents", (n, latent_dim)) if latent_dim else None
        self.built = True

    def draw_indices(self, seed):
        """`B / R` distinct indices for this replica, uniform over the bank.

        The top-k of i.i.d. uniforms is a uniform draw without replacement.
        The `B` global indices are drawn identically on every replica and
        replica r takes its r-th share (`distribute.replica_rows`), so
        replicas never collide on a state and the draw is the one a single
        device would make.
        """

        def top_b(shape):
            u = tf.random.stateless_uniform((self.num_states,), seed)
            return tf.math.top_k(u, shape[0], sorted=False).indices

        local = self.batch_size // distribute.replica_info()[1]
        return distribute.replica_rows(top_b, (local,))

    def rejuvenation_mask(self, counts, seed):
        """Boolean `[B]`: `u < p`, or `counts > w` when the cap is on."""
        u = distribute.replica_rows(
            lambda shape: tf.random.stateless_uniform(shape, seed), tf.shape(counts)
        )
        mask = u < self.rejuvenation_prob
        if self.max_updates > 0:
            mask = mask | (counts > self.max_updates)
        return mask

    def draw(self, indices):
        """Returns `(states, counts, latents or None)` at `indices`.

        A sparse read of this replica's copy: a dense read of a variable
        that is also scattered into makes TensorFlow copy the whole bank
        every step (and `tf.gather` of a mirrored variable reads it densely).
        """

        def take(variable):
            return tf.gather(_local_copy(variable), indices)

        latents = take(self.latents) if self.latents is not None else None
        return take(self.states), take(self.counts), latents

    def update(self, indices, states, counts, latents=None, fresh=None):
        """Writes rows back in place, O(B) whatever the bank size.

        Under a `tf.distribute` strategy the rows of every replica are
        gathered first and every replica scatters the same B rows into its
        own copy, so the one global bank stays identical everywhere (and is
        saved whole) with no copy of the bank per step.

        Args:
            fresh: optional `(states, latents or None)` from the init
                source: a row of `states` that is not all finite (a chain
                that blew up) is written as the fresh row instead, with
                count 0; where the fresh row is not finite either (a
                diverged generator) the bank keeps the row it held. So
                the bank never holds a non-finite state.

        Returns:
            The number of rows of the global batch (every replica's) not
            written as given.
        """
        replaced = ops.zeros((), "int32")
        if fresh is not None:
            fresh_states, fresh_latents = fresh
            finite = _finite_rows(states)
            states = ops.where(_rows(finite, states), states, fresh_states)
            states = ops.where(
                _rows(_finite_rows(states), states),
                states,
                tf.gather(_local_copy(self.states), indices),
            )
            counts = ops.where(finite, counts, ops.zeros_like(counts))
            if latents is not None and fresh_latents is not None:
                latents = ops.where(finite[:, None], latents, fresh_latents)
            replaced = ops.sum(ops.cast(ops.logical_not(finite), "int32"))
            # A total, not this replica's share (Keras averages replicas).
            replaced = distribute.replica_sum(replaced)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            indices, states, counts = ctx.all_gather([indices, states, counts], axis=0)
            if latents is not None:
                latents = ctx.all_gather(latents, axis=0)
        _scatter(self.states, indices, states)
        _scatter(self.counts, indices, counts)
        if latents is not None:
            _scatter(self.latents, indices, latents)
        return replaced

    def fill(self, states, latents=None, counts=None):
        """Overwrites the whole bank (initialization)."""
        self.states.assign(states)
        self.counts.assign(
            ops.zeros((self.num_states,), "int32") if counts is None else counts
        )
        if latents is not None:
            self.latents.assign(latents)

    def mean_age(self):
        """The mean count over the whole bank: a dense read of `counts`, for
        use outside the training step (which estimates it from its draw,
        O(B))."""
        return ops.mean(ops.cast(self.counts, "float32"))

    def get_config(self):
        config = super().get_config()
        config.update(
            size=self.size,
            batch_size=self.batch_size,
            state_shape=self.state_shape,
            latent_dim=self.latent_dim,
            rejuvenation_prob=self.rejuvenation_prob,
            max_updates=self.max_updates,
        )
        return config


def _finite_rows(x):
    """Boolean `[B]`: row b of `x` is all finite."""
    return ops.all(ops.isfinite(x), axis=tuple(range(1, len(x.shape))))


def _rows(mask, x):
    """Broadcasts a `[B]` mask against `[B, ...]`."""
    return ops.reshape(mask, (-1,) + (1,) * (len(x.shape) - 1))


def _local_copy(variable):
    """The TensorFlow variable this replica reads: its own copy of a
    mirrored variable (TF offers no public sparse read of one: `tf.gather`
    of a `MirroredVariable` reads all of it). On TPUs, where XLA compiles
    the step and no read copies the bank, the variable itself."""
    v = variable.value
    if isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
        return v
    return getattr(v, "_get_on_device_or_primary", lambda: v)()


def _scatter(variable, indices, rows):
    """Writes `rows` at `indices` of a bank variable in place.

    The TensorFlow variable's own sparse update touches only those rows, on
    one device and on each replica's local copy of a mirrored variable
    (aggregation "none"); Keras variables offer only whole assigns.
    """
    variable.value.scatter_update(tf.IndexedSlices(rows, indices))
