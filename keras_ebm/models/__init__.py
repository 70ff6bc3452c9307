"""Keras models with custom `train_step`s."""

from keras_ebm.models.energy_model import EnergyModel
from keras_ebm.models.longrun_model import LongrunEnergyModel

__all__ = ["EnergyModel", "LongrunEnergyModel"]
