"""The command line: flags (`parse`), which config they mean (`presets`),
one-line answers to mistakes (`answers`) and a quiet TensorFlow import
(`quiet`). `train.py`, `evaluate.py` and `python -m keras_ebm.convert` are
built from these. Nothing is imported here, so that the library's own
`import keras_ebm` (which needs only `quiet`) defines no flags.
"""
