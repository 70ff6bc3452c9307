"""`--config=configs/longrun.py:<preset>`: the longrun presets, which live in
`keras_ebm.configs.longrun` (installed with the package)."""

from keras_ebm.configs.longrun import get_config  # noqa: F401
