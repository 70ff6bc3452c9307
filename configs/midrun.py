"""`--config=configs/midrun.py:<preset>`: the midrun presets, which live in
`keras_ebm.configs.midrun` (installed with the package)."""

from keras_ebm.configs.midrun import get_config  # noqa: F401
