"""Imports TensorFlow without its start-up banner when logs are quieted.

TensorFlow's shared libraries write "oneDNN custom operations are on" (and
absl's "All log messages before absl::InitializeLog()") to file descriptor
2 while they load, twice, whatever `TF_CPP_MIN_LOG_LEVEL` says. Where the
user asked for quiet (`TF_CPP_MIN_LOG_LEVEL` >= 2, the default of train.py
and evaluate.py), descriptor 2 points to /dev/null during the import alone;
an import error still reaches the user as a Python exception.
"""

import os
import sys


def import_tensorflow():
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if "tensorflow" in sys.modules or level < 2:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
