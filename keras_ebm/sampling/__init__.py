"""Langevin sampling and persistent sample banks."""

from keras_ebm.sampling.langevin import (
    LangevinStats,
    langevin,
    potential,
    surrogate_potential,
)
from keras_ebm.sampling.sample_bank import SampleBank

__all__ = [
    "LangevinStats",
    "SampleBank",
    "langevin",
    "potential",
    "surrogate_potential",
]
