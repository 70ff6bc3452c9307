"""`--config=configs/classifier.py:<preset>`: the classifier presets, which live in
`keras_ebm.configs.classifier` (installed with the package)."""

from keras_ebm.configs.classifier import get_config  # noqa: F401
