"""Runs a script in a fresh Python where keras_ebm cannot be imported (it
is blocked), as a user who only has TensorFlow and an exported SavedModel
would."""

import json
import os
import subprocess
import sys
import textwrap

PRELUDE = """
import json, sys
# keras_ebm is installed in the venv (make installs it): block it, so that
# nothing below can use it, even indirectly.
sys.modules["keras_ebm"] = None
import numpy as np
import tensorflow as tf
try:
    import keras_ebm  # noqa: F401
    sys.exit("keras_ebm must not be importable here")
except ImportError:
    pass
"""


def run_without_keras_ebm(body, cwd, timeout=300):
    """Runs `PRELUDE + body` in `cwd`; `body` must print one JSON line last.

    Returns:
        That JSON, parsed.
    """
    script = PRELUDE + textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
