"""`LongrunEnergyModel`: density modeling with burn-in and update banks."""

import keras
import tensorflow as tf
from keras import ops

from keras_ebm.models.energy_model import EnergyModel, _drawn_age, _rows


@keras.saving.register_keras_serializable(package="keras_ebm")
class LongrunEnergyModel(EnergyModel):
    """An `EnergyModel` whose gradient sees only near-steady-state samples
    (paper Section 4, Algorithm 4; ebm-life-cycle `train_longrun.py`).

    The potential is `U(x) = E(x)/T + E_prior(x)/T_prior + ||x||^2/(2 tau^2)`
    with a frozen prior (optional) and the Gaussian term. Two banks of the
    one `SampleBank` type:

    - the burn-in bank (`burnin_bank`), whose counts start uniform in
      `{0, ..., D-1}` so that states leave it at a steady rate;
    - the update bank (`bank`), whose states alone feed the ML gradient.

    Each step draws B distinct states from each bank, gives the burn-in
    batch `burnin_steps` Langevin steps and the update batch K steps (both
    under the current U, before the update), updates the EBM on the update
    batch only, and transfers every burn-in state whose count reached D
    (tested before incrementing, as the reference: a state transfers at its
    (D+1)-th draw, after (D+1) * burnin_steps steps) into the positionally
    paired update slot; its burn-in slot restarts from the init source
    (generator, data or noise) at count 0. Other burn-in counts grow by one.
    Update-bank counts are draws since the state arrived (its age).

    Args:
        energy_net: the EBM trained here (fresh in the paper).
        burnin_bank: `SampleBank` of burn-in states (no rejuvenation).
        burnin_steps: Langevin steps per draw in the burn-in bank.
        burnin_length: D, draws before transfer.
        **kwargs: `EnergyModel` arguments; `bank` is the update bank and
            must not rejuvenate, `generator` (if any) is frozen.
    """

    def __init__(self, energy_net, burnin_bank, burnin_steps, burnin_length, **kwargs):
        if burnin_length < 1 or burnin_steps < 0:
            raise ValueError(
                f"need burnin_length >= 1 and burnin_steps >= 0, got "
                f"{burnin_length} and {burnin_steps}"
            )
        # Set before EnergyModel.__init__, which builds (and so locks) the
        # model's state.
        self.burnin_bank = burnin_bank
        self.burnin_steps = burnin_steps
        self.burnin_length = burnin_length
        kwargs["train_generator"] = False
        super().__init__(energy_net, **kwargs)
        if self.bank is None:
            raise ValueError("longrun needs an update bank (`bank`)")
        if self.bank.rejuvenation_prob > 0 or self.bank.max_updates > 0:
            raise ValueError("the longrun update bank is never rejuvenated")

    def metric_names(self):
        names = [n for n in super().metric_names() if n != "rejuvenated"]
        return names + ["transferred", "transferred_energy", "burnin_drift_norm"]

    @property
    def banks(self):
        return {"bank": self.bank, "burnin_bank": self.burnin_bank}

    def initialize_bank(self, data=None, seed=None):
        """Fills both banks from the init source (data: `[N, ...]`, the
        update bank from its first rows, the burn-in bank from its last, so
        `N >= ` both banks' sizes together keeps them disjoint); burn-in
        counts uniform in `{0, ..., D-1}` (the reference's "steady stream of
        states")."""
        seed = [self.seed, 1] if seed is None else seed
        super().initialize_bank(data, seed)
        n = self.burnin_bank.num_states
        burnin_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        if self.init_source == "data":
            states = ops.convert_to_tensor(data[-n:])
        else:
            chunks = [
                self.fresh_states(
                    self.burnin_bank.batch_size,
                    tf.random.experimental.stateless_fold_in(burnin_seed, i),
                )[0]
                for i in range(n // self.burnin_bank.batch_size)
            ]
            states = ops.concatenate(chunks, 0)
        counts = tf.random.stateless_uniform(
            (n,),
            tf.random.experimental.stateless_fold_in(burnin_seed, -1),
            0,
            self.burnin_length,
            "int32",
        )
        self.burnin_bank.fill(states, counts=counts)

    def start_chains(self, batch_size, seeds, x_data=None):
        """Draws the update batch (returned, for K steps) and the burn-in
        batch, which takes its `burnin_steps` here, under the same U."""
        x_fresh, _ = self.fresh_states(batch_size, seeds.fresh, x_data)
        idx = self.bank.draw_indices(seeds.draw)
        x_update, counts, _ = self.bank.draw(idx)
        idx_b = self.burnin_bank.draw_indices(seeds.burnin_draw)
        x_burnin, counts_b, _ = self.burnin_bank.draw(idx_b)
        x_burnin, stats = self.run_chains(x_burnin, self.burnin_steps, seeds.burnin)
        transfer = counts_b >= self.burnin_length
        pending = (idx, counts, idx_b, counts_b, x_burnin, x_fresh, transfer)
        metrics = {
            "burnin_drift_norm": stats.last_drift_norm,
            "bank_age": _drawn_age(counts),
        }
        return x_update, None, pending, metrics

    def finish_chains(self, pending, x_neg, z, seeds):
        idx, counts, idx_b, counts_b, x_burnin, x_fresh, transfer = pending
        rows = _rows(transfer, x_neg)
        # A chain that blew up restarts from the init source in either bank.
        replaced = self.bank.update(
            idx,
            ops.where(rows, x_burnin, x_neg),
            ops.where(transfer, 0, counts + 1),
            fresh=(x_fresh, None),
        )
        replaced += self.burnin_bank.update(
            idx_b,
            ops.where(rows, x_fresh, x_burnin),
            ops.where(transfer, 0, counts_b + 1),
            fresh=(x_fresh, None),
        )
        weights = ops.cast(transfer, "float32")
        return {
            "reinitialized_rows": ops.cast(replaced, "float32"),
            "transferred": ops.mean(weights),
            # Energy of the states entering the update bank (none: no weight).
            "transferred_energy": (self.energy(x_burnin), weights),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            burnin_bank=keras.saving.serialize_keras_object(self.burnin_bank),
            burnin_steps=self.burnin_steps,
            burnin_length=self.burnin_length,
        )
        config.pop("train_generator", None)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["burnin_bank"] = keras.saving.deserialize_keras_object(
            config["burnin_bank"]
        )
        return super().from_config(config)
