"""`--config=configs/shortrun.py:<preset>`: the shortrun presets, which live in
`keras_ebm.configs.shortrun` (installed with the package)."""

from keras_ebm.configs.shortrun import get_config  # noqa: F401
