"""keras_ebm: energy-based models with Langevin MCMC in Keras 3.

The library API (states are float32 arrays `[B, *state_shape]`; images are
NHWC in [-1, 1]):

- `EnergyModel`: ML training of `p(x) ~ exp(-E(x)/T)` with Langevin
  negatives from a persistent `SampleBank` (shortrun, midrun);
  `LongrunEnergyModel` adds burn-in and update banks (longrun);
- `SampleBank`: persistent chain states, counts and latents;
- `langevin`, `potential`, `LangevinStats`: the one Langevin sampler;
- `DefendedClassifier`: Langevin purification in front of any Keras
  classifier; `export_defended` its SavedModel;
- `export_savedmodel`: the EBM's SavedModel (energy, sample, purify,
  generate), loadable with plain TensorFlow;
- `networks`: the registered networks (`networks.build(name)`);
- `configs`: the presets of `train.py` (`configs.shortrun.get_config()`);
- `run`: `train`, `evaluate` and `export` of a config and a workdir, what
  the command-line scripts call.

See "Use it as a library" in the README.
"""

from keras_ebm.cli import quiet

quiet.import_tensorflow()

from keras_ebm import configs, networks, run  # noqa: E402
from keras_ebm.defense.purify import DefendedClassifier, export_defended  # noqa: E402
from keras_ebm.errors import ConfigError  # noqa: E402
from keras_ebm.export import export as export_savedmodel  # noqa: E402
from keras_ebm.models import EnergyModel, LongrunEnergyModel  # noqa: E402
from keras_ebm.sampling import LangevinStats, SampleBank, langevin, potential  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DefendedClassifier",
    "EnergyModel",
    "LangevinStats",
    "LongrunEnergyModel",
    "SampleBank",
    "configs",
    "export_defended",
    "export_savedmodel",
    "langevin",
    "networks",
    "potential",
    "run",
]
