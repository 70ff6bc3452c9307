"""keras_ebm: energy-based models with Langevin MCMC in Keras 3."""

__version__ = "0.1.0"
