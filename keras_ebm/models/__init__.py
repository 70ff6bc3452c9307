"""Keras models with custom `train_step`s."""

from keras_ebm.models.energy_model import EnergyModel

__all__ = ["EnergyModel"]
