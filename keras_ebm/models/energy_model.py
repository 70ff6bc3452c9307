"""`EnergyModel`: maximum-likelihood EBM training with Langevin negatives."""

from typing import NamedTuple

import keras
import tensorflow as tf
from keras import ops

from keras_ebm import distribute, networks
from keras_ebm.models import inputs
from keras_ebm.sampling import LangevinStats, langevin, potential

INIT_SOURCES = ("noise", "data", "generator")


class StepSeeds(NamedTuple):
    """The independent stateless seeds of one training step."""

    draw: tf.Tensor  # which bank states
    mask: tf.Tensor  # which of them are rejuvenated
    fresh: tf.Tensor  # fresh states and latents
    langevin: tf.Tensor  # Langevin noise
    data_noise: tf.Tensor  # noise added to the positives
    burnin_draw: tf.Tensor  # which burn-in states (longrun)
    burnin: tf.Tensor  # burn-in Langevin noise (longrun)


@keras.saving.register_keras_serializable(package="keras_ebm")
class EnergyModel(keras.Model):
    """An energy-based model trained by maximum likelihood.

    The gradient of the negative log-likelihood of `p(x) ~ exp(-E(x)/T)` is
    estimated with negatives `x-` from K Langevin steps:

    `loss = (mean E(x+ + s * n) - mean E(x-)) / T`,  `n ~ N(0, I)`,

    with `s = data_noise_std`. The chains start from a persistent `bank`
    (rejuvenated at draw time from `init_source`) or, when `bank` is None,
    from fresh `init_source` samples every step. With a `generator` the model
    is cooperative (paper Alg. 1): rejuvenation draws a latent z from the
    generator's own distribution (`networks.sample_latent`: `N(0, I)`, or
    BigGAN-deep's truncated normal and class) and `gen(z)`, and the
    generator learns to reproduce the revised states,

    `gen_loss = sum ||x- - gen(z)||^2 / B`,

    with no latent inference (z is kept, straight-through). One train step:
    draw, rejuvenate, Langevin, EBM update, generator update, write back.
    Shortrun and midrun are configurations of this class.

    Args:
        energy_net: a Keras network `[B, *state_shape] -> [B, 1]` (or
            `[B]`): any functional or Sequential model with a fixed input
            shape, or a network with an `image_shape` attribute.
        num_steps: K.
        step_size: Langevin noise std eps; the drift is `(eps^2/2) grad U`.
        temperature: T.
        data_noise_std: std of the noise added to data.
        bank: optional `SampleBank`; its `latent_dim` must be the
            generator's when the generator rejuvenates it (checked at
            `fit`).
        generator: optional `z -> x` network.
        init_source: `noise` (U[-1, 1]), `data` (a second data stream, fed
            as `x_init` in the batch dict) or `generator`.
        train_generator: update the generator (False: frozen, midrun).
        generator_batch_stats: call the generator with `training=True`
            (batch statistics), as the reference's CIFAR-10 shortrun.
        max_drift_norm: per-sample Langevin drift clip; 0 disables it.
        prior_net, prior_temperature, tau: optional extra potential terms
            (see `keras_ebm.sampling.potential`); the prior is frozen.
        seed: base of the stateless seeds; step t uses `fold_in(seed, t)`,
            so a resumed run continues the same random stream.
    """

    def __init__(
        self,
        energy_net,
        num_steps,
        step_size,
        temperature=1.0,
        data_noise_std=0.0,
        bank=None,
        generator=None,
        init_source="noise",
        train_generator=True,
        generator_batch_stats=False,
        max_drift_norm=0.0,
        prior_net=None,
        prior_temperature=1.0,
        tau=0.0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if init_source not in INIT_SOURCES:
            raise ValueError(
                f"init_source must be one of {INIT_SOURCES}, got {init_source!r}"
            )
        if init_source == "generator" and generator is None:
            raise ValueError("init_source='generator' needs a generator")
        self.energy_net = energy_net
        self.num_steps = num_steps
        self.step_size = step_size
        self.temperature = temperature
        self.data_noise_std = data_noise_std
        self.bank = bank
        self.generator = generator
        self.init_source = init_source
        self.train_generator = train_generator and generator is not None
        self.generator_batch_stats = generator_batch_stats
        self.max_drift_norm = max_drift_norm
        self.prior_net = prior_net
        self.prior_temperature = prior_temperature
        self.tau = tau
        self.seed = seed
        self.state_shape = inputs.state_shape_of(energy_net)
        if generator is not None:
            generator.trainable = self.train_generator
        if prior_net is not None:
            prior_net.trainable = False
        self.potential = self.potential_at(temperature)

        self.trackers = {n: keras.metrics.Mean(name=n) for n in self.metric_names()}
        # Compiled samplers by settings. Not model state: Keras and TF
        # track a plain dict of tf.functions, and export then fails on it.
        self._samplers = _Untracked()
        self.build((None,) + self.state_shape)

    def build(self, input_shape):
        self.built = True

    def metric_names(self):
        """Names of the train-step metrics (subclasses add theirs)."""
        names = ["loss", "energy_gap", "energy_pos", "energy_neg"]
        names += ["drift_norm", "drift_norm_path", "nonfinite"]
        if self.bank is not None:
            names += ["bank_age", "rejuvenated", "reinitialized_rows"]
        if self.train_generator:
            names += ["gen_loss"]
        return names

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def banks(self):
        """`{name: SampleBank}` of every persistent bank (for summaries)."""
        return {} if self.bank is None else {"bank": self.bank}

    def call(self, x):
        return ops.cast(self.energy_net(x, training=False), "float32")

    def energy(self, x):
        """Raw energies `E(x)` of shape `[B]`, float32 whatever precision
        the network computes in (the potential, its gradient, the chains
        and the loss stay float32)."""
        return ops.reshape(self.call(x), (-1,))

    def prior_energy(self, x):
        e = self.prior_net(x, training=False)
        return ops.reshape(ops.cast(e, "float32"), (-1,))

    # === Compilation ===

    def compile(self, ebm_optimizer, gen_optimizer=None, **kwargs):
        """Stores both optimizers and builds their slots now.

        Building here, not lazily, lets a checkpoint written after step t be
        loaded into a fresh model before its first step.
        """
        super().compile(optimizer=ebm_optimizer, **kwargs)
        self.ebm_optimizer = self.optimizer
        self.ebm_optimizer.build(self.energy_net.trainable_variables)
        self.gen_optimizer = None
        if self.train_generator:
            if gen_optimizer is None:
                raise ValueError("a trained generator needs gen_optimizer")
            self.gen_optimizer = gen_optimizer
            gen_optimizer.build(self.generator.trainable_variables)

    def get_compile_config(self):
        """Keras' compile config (the EBM optimizer as `optimizer`, jit
        mode, ...) and the generator's optimizer, so that a `.keras` file
        reloads both optimizers with their state (step counter, moments)."""
        config = super().get_compile_config()
        if config is not None and self.gen_optimizer is not None:
            ser = keras.saving.serialize_keras_object(self.gen_optimizer)
            config = dict(config, gen_optimizer=ser)
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(
            config.pop("optimizer"), config.pop("gen_optimizer", None), **config
        )

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """Keras `fit`, after checks that would otherwise fail deep in the
        traced step or not at all: a bank that keeps the generator's
        latents when the generator rejuvenates it, every bank filled
        (`initialize_bank`), and data in whole batches of the banks' batch
        size (a `tf.data.Dataset` batched with `drop_remainder=True`, or an
        array whose length is a multiple of `batch_size`).

        Raises:
            ValueError: naming what to do.
        """
        inputs.check_bank_latents(self.bank, self.generator, self.init_source)
        inputs.check_banks_filled(self.banks, self.init_source)
        inputs.check_batches(x, batch_size, self.bank)
        # A dataset comes shuffled or not as its maker chose (Keras would
        # warn that it ignores shuffle=True).
        kwargs.setdefault("shuffle", not isinstance(x, tf.data.Dataset))
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    # === Initialization sources ===

    def step_seeds(self, step=None):
        """The stateless seeds of training step `step` (default: the next).

        A function of `(seed, step)` alone: a resumed run continues the same
        stream, and tests can reproduce any draw of a step. Every draw is made
        for the global batch and sliced per replica (`replica_rows`).
        """
        if step is None:
            step = self.ebm_optimizer.iterations
        seed = tf.random.experimental.stateless_fold_in(
            [self.seed, 0], ops.cast(step, "int32")
        )
        seeds = tf.random.experimental.stateless_split(seed, len(StepSeeds._fields))
        return StepSeeds(*tf.unstack(seeds))

    def latent(self, batch_size, seed):
        """The generator's latents (`z ~ N(0, I)` unless it has its own
        distribution) of shape `[batch_size, latent_dim]`."""
        return distribute.replica_rows(
            lambda shape: networks.sample_latent(self.generator, shape, seed),
            (batch_size, self.generator.latent_dim),
        )

    def generate(self, z, training=False):
        """`gen(z)` as float32 states."""
        return ops.cast(self.generator(z, training=training), "float32")

    def fresh_states(self, batch_size, seed, x_data=None):
        """`(x, z)` from the init source; z is None without a generator."""
        if self.init_source == "generator":
            z = self.latent(batch_size, seed)
            return self.generate(z, self.generator_batch_stats), z
        if self.init_source == "data":
            if x_data is None:
                raise ValueError("init_source='data' needs `x_init` batches")
            return x_data, None
        x = distribute.replica_rows(
            lambda shape: tf.random.stateless_uniform(shape, seed, -1.0, 1.0),
            (batch_size,) + self.state_shape,
        )
        return x, None

    def chain_starts(self, num, seed, start=0):
        """Where inspection and evaluation chains start, or None.

        The generator (with moving BN statistics, as the reference FID, so
        that looking never moves them), uniform noise, or bank states
        `start .. start + num` (cyclically) for data-initialized models.
        None for a data-initialized model without a bank.
        """
        if self.init_source == "generator":
            return self.generate(self.latent(num, seed), training=False)
        if self.init_source == "noise":
            return self.fresh_states(num, seed)[0]
        if self.bank is None:
            return None
        return self.bank.draw(tf.range(start, start + num) % self.bank.num_states)[0]

    def initialize_bank(self, data=None, seed=None):
        """Fills the bank from the init source (data: `[N, ...]` array)."""
        inputs.check_bank_latents(self.bank, self.generator, self.init_source)
        seed = [self.seed, 1] if seed is None else seed
        n, b = self.bank.num_states, self.bank.batch_size
        if self.init_source == "data":
            self.bank.fill(ops.convert_to_tensor(data[:n]))
            return
        xs, zs = [], []
        for i in range(n // b):
            chunk_seed = tf.random.experimental.stateless_fold_in(seed, i)
            x, z = self.fresh_states(b, chunk_seed)
            xs.append(x)
            zs.append(z)
        latents = ops.concatenate(zs, 0) if self.bank.latents is not None else None
        self.bank.fill(ops.concatenate(xs, 0), latents)

    # === Training ===

    def start_chains(self, batch_size, seeds, x_data=None):
        """Where this step's chains start.

        Draws B states from the bank and rejuvenates at draw time, where
        `u < p` or `count > w` (ebm-life-cycle `train.py`; the paper's
        Algorithm 1 rejuvenates after the update): a rejuvenated state
        restarts from the init source (and its latent with it), its count
        from 0; the others keep their state and latent, and count one more
        draw. Without a bank every chain starts fresh.

        Returns:
            `(x_init, z, pending, metrics)`: start states, their latents (or
            None), what `finish_chains` needs, and metrics of the draw.
        """
        x_fresh, z_fresh = self.fresh_states(batch_size, seeds.fresh, x_data)
        if self.bank is None:
            return x_fresh, z_fresh, None, {}
        idx = self.bank.draw_indices(seeds.draw)
        x_old, counts, z = self.bank.draw(idx)
        mask = self.bank.rejuvenation_mask(counts, seeds.mask)
        x_init = ops.where(_rows(mask, x_fresh), x_fresh, x_old)
        if z_fresh is not None and z is not None:
            z = ops.where(mask[:, None], z_fresh, z)
        else:
            z = z_fresh
        metrics = {
            "rejuvenated": ops.mean(ops.cast(mask, "float32")),
            "bank_age": _drawn_age(counts),
        }
        counts = ops.where(mask, 0, counts + 1)
        return x_init, z, (idx, counts, (x_fresh, z_fresh)), metrics

    def run_chains(self, x, num_steps, seed):
        """`num_steps` Langevin steps under the training potential; the
        result carries no gradient to the networks."""
        x, stats = langevin(
            self.potential,
            ops.stop_gradient(x),
            num_steps=num_steps,
            step_size=self.step_size,
            seed=seed,
            max_drift_norm=self.max_drift_norm,
        )
        return ops.stop_gradient(x), stats

    def finish_chains(self, pending, x_neg, z, seeds):
        """Writes the revised states (and latents) back, a non-finite state
        as this step's fresh one (`SampleBank.update`); returns metrics."""
        if self.bank is None:
            return {}
        idx, counts, fresh = pending
        replaced = self.bank.update(idx, x_neg, counts, z, fresh=fresh)
        return {"reinitialized_rows": ops.cast(replaced, "float32")}

    def train_step(self, data):
        """One step: start chains, K Langevin steps, EBM update, generator
        update, write back. Regimes change where chains start and what
        happens to them after (`start_chains`, `finish_chains`), never the
        updates."""
        if isinstance(data, dict):
            x_pos, x_data = data["x"], data.get("x_init")
        else:
            x_pos, x_data = data, None
        # Static where it is known; a multi-worker input pipeline leaves the
        # per-replica batch dimension unknown.
        batch_size = x_pos.shape[0] or tf.shape(x_pos)[0]
        seeds = self.step_seeds()
        x_init, z, pending, metrics = self.start_chains(batch_size, seeds, x_data)
        x_neg, stats = self.run_chains(x_init, self.num_steps, seeds.langevin)

        # ML update of the EBM: one forward pass over positives and negatives.
        noise = distribute.replica_rows(
            lambda shape: tf.random.stateless_normal(shape, seeds.data_noise),
            tf.shape(x_pos),
        )
        x_pos = x_pos + self.data_noise_std * noise
        ebm_vars = self.energy_net.trainable_variables
        with tf.GradientTape() as tape:
            e = self.energy(ops.concatenate([x_pos, x_neg], 0))
            e_pos, e_neg = e[:batch_size], e[batch_size:]
            gap = ops.mean(e_pos) - ops.mean(e_neg)
            loss = gap / self.temperature
            scaled = distribute.scale_for_replicas(loss)
        grads = tape.gradient(scaled, ebm_vars)
        self.ebm_optimizer.apply(grads, ebm_vars)

        if self.train_generator:
            gen_vars = self.generator.trainable_variables
            with tf.GradientTape() as tape:
                x_gen = self.generate(z, self.generator_batch_stats)
                gen_loss = ops.sum(ops.square(x_neg - x_gen)) / ops.cast(
                    batch_size, "float32"
                )
                scaled = distribute.scale_for_replicas(gen_loss)
            gen_grads = tape.gradient(scaled, gen_vars)
            self.gen_optimizer.apply(gen_grads, gen_vars)
            metrics["gen_loss"] = gen_loss
            grads = grads + gen_grads

        metrics.update(self.finish_chains(pending, x_neg, z, seeds))
        metrics.update(
            loss=loss,
            energy_gap=gap,
            energy_pos=ops.mean(e_pos),
            energy_neg=ops.mean(e_neg),
            drift_norm=stats.last_drift_norm,
            drift_norm_path=stats.drift_norm,
            # The divergence guard's signal (keras_ebm.runs.guard): 1 for a step
            # whose energies or gradients are not all finite on any replica
            # (Keras averages the replicas' values: one bad replica of two
            # would read 0.5).
            nonfinite=distribute.replica_any(
                1.0 - ops.cast(_all_finite([e] + grads), "float32")
            ),
        )
        for name, value in metrics.items():
            # A `(values, weights)` pair is a weighted mean (e.g. over the
            # states a step transferred, which may be none).
            pair = value if isinstance(value, tuple) else (value,)
            self.trackers[name].update_state(*pair)
        return distribute.step_logs({m.name: m.result() for m in self.metrics})

    # === Sampling ===

    def sample(
        self,
        x,
        num_steps=None,
        seed=None,
        step_size=None,
        temperature=None,
        joint_temperature=1.0,
        spread=False,
    ):
        """Langevin from `x` under the model's potential (compiled, cached).

        Args:
            x: initial states `[B, *state_shape]`, float32 (images: NHWC
                in [-1, 1]).
            num_steps: K >= 0; defaults to the training K.
            seed: stateless seed `[2]`; defaults to the model seed.
            step_size, temperature: override the training eps and T
                (evaluation configs may differ).
            joint_temperature: extra temperature of the network terms.
            spread: run the chains on all replicas of the strategy the model
                was built under (each its rows of `x`); every draw is made
                for the whole batch, so the chains equal one device's.

        Returns:
            `(x_K, LangevinStats)`.
        """
        step_size = step_size or self.step_size
        temperature = temperature or self.temperature
        key = (step_size, temperature, joint_temperature)
        if key not in self._samplers:
            jit = self.jit_compile if self.compiled else False
            u = self.potential_at(temperature, joint_temperature)

            def run(x, num_steps, seed):
                return langevin(
                    u,
                    x,
                    num_steps=num_steps,
                    step_size=step_size,
                    seed=seed,
                    max_drift_norm=self.max_drift_norm,
                )

            self._samplers[key] = tf.function(
                run, jit_compile=bool(jit), reduce_retracing=True
            )
        num_steps = self.num_steps if num_steps is None else num_steps
        if isinstance(num_steps, int) and num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        seed = tf.constant([self.seed, 2] if seed is None else seed)
        num_steps = tf.constant(num_steps, tf.int32)
        x = ops.convert_to_tensor(x, "float32")
        if tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(
                f"sample expects states of shape [B, "
                f"{', '.join(map(str, self.state_shape))}], got {list(x.shape)}"
            )
        strategy = self.distribute_strategy
        replicas = strategy.num_replicas_in_sync
        if spread and replicas > 1 and x.shape[0] % replicas == 0:
            out, stats = distribute.run_on_rows(
                strategy, self._samplers[key], x, num_steps, seed
            )
            return out, LangevinStats(*stats)
        return self._samplers[key](x, num_steps, seed)

    def potential_at(self, temperature, joint_temperature=1.0):
        """`U` with the network terms at `temperature`.

        `joint_temperature` further divides both network terms (the
        reference's longrun FID `joint_temp`); tau stays untempered.
        """
        return potential(
            self.energy,
            temperature=temperature * joint_temperature,
            prior_fn=None if self.prior_net is None else self.prior_energy,
            prior_temperature=self.prior_temperature * joint_temperature,
            tau=self.tau,
        )

    # === Serialization ===

    def get_config(self):
        config = super().get_config()
        ser = keras.saving.serialize_keras_object
        config.update(
            energy_net=ser(self.energy_net),
            num_steps=self.num_steps,
            step_size=self.step_size,
            temperature=self.temperature,
            data_noise_std=self.data_noise_std,
            bank=ser(self.bank) if self.bank is not None else None,
            generator=ser(self.generator) if self.generator is not None else None,
            init_source=self.init_source,
            train_generator=self.train_generator,
            generator_batch_stats=self.generator_batch_stats,
            max_drift_norm=self.max_drift_norm,
            prior_net=ser(self.prior_net) if self.prior_net is not None else None,
            prior_temperature=self.prior_temperature,
            tau=self.tau,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("energy_net", "bank", "generator", "prior_net"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


class _Untracked:
    """A cache that Keras and TensorFlow do not track (neither a dict nor a
    list, which they wrap, nor a `Trackable`)."""

    def __init__(self):
        self._items = {}

    def __contains__(self, key):
        return key in self._items

    def __getitem__(self, key):
        return self._items[key]

    def __setitem__(self, key, value):
        self._items[key] = value


def _drawn_age(counts):
    """`bank_age`: the mean count of the states drawn this step, before it
    counts them. The draw is uniform, so this estimates the bank's mean
    count without reading the whole bank (a dense read every step would
    make the write-back O(N), `SampleBank.draw`)."""
    return ops.mean(ops.cast(counts, "float32"))


def _all_finite(tensors):
    return ops.all(
        ops.stack([ops.all(ops.isfinite(t)) for t in tensors if t is not None])
    )


def _rows(mask, x):
    """Broadcasts a `[B]` mask against `[B, ...]`."""
    return ops.reshape(mask, (-1,) + (1,) * (len(x.shape) - 1))
