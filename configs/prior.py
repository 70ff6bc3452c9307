"""`--config=configs/prior.py:<preset>`: the prior presets, which live in
`keras_ebm.configs.prior` (installed with the package)."""

from keras_ebm.configs.prior import get_config  # noqa: F401
