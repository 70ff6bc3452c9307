"""Flags shared by `train.py` and `evaluate.py`.

`--regime=R --dataset=D` is shorthand for `--config=configs/R.py:D`; every
config field can then be overridden with `--config.<field>=<value>`.
`--workdir` defaults to `runs/<regime>/<dataset>`.
"""

import contextlib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from keras_ebm import errors, regimes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REGIME, DEFAULT_DATASET = "shortrun", "digits"

FLAGS = flags.FLAGS
flags.DEFINE_string("regime", None, f"one of {', '.join(regimes.NAMES)}")
flags.DEFINE_string(
    "dataset",
    None,
    "the config's dataset preset, e.g. "
    "digits, toy2d, cifar10, celeb_a, imagenet2012, smoke",
)
flags.DEFINE_string("workdir", None, "output folder; default runs/<regime>/<dataset>")
config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)


def _flag_value(argv, name):
    """The value of `--name=v` or `--name v` in argv, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _saved_run(workdir):
    """`(regime, dataset)` of an existing run directory, or `(None, None)`:
    `--workdir=runs/x` alone then takes the defaults of the regime and
    dataset it was trained with (e.g. a midrun run's attack settings)."""
    import json

    path = os.path.join(workdir or "", "config.json")
    if not workdir or not os.path.isfile(path):
        return None, None
    with open(path) as f:
        saved = json.load(f)
    regime = saved.get("regime")
    if regime not in regimes.NAMES:
        return None, None
    return regime, saved.get("preset") or saved.get("data", {}).get("name")


def resolve_argv(argv):
    """Inserts `--config=<repo>/configs/<regime>.py:<dataset>` if absent;
    with neither `--regime` nor `--dataset`, a `--workdir` holding a run
    chooses them."""
    argv = list(argv)
    regime = _flag_value(argv, "regime")
    dataset = _flag_value(argv, "dataset")
    if _flag_value(argv, "config") is not None:
        return argv
    if regime is None and dataset is None:
        regime, dataset = _saved_run(_flag_value(argv, "workdir"))
    regime = regime or DEFAULT_REGIME
    if regime not in regimes.NAMES:
        planned = regimes.PLANNED.get(regime)
        hint = f" (it comes with {planned})" if planned else ""
        raise app.UsageError(
            f"unknown --regime={regime}{hint}; known: {', '.join(regimes.NAMES)}"
        )
    path = os.path.join(REPO, "configs", f"{regime}.py")
    return argv[:1] + [f"--config={path}:{dataset or DEFAULT_DATASET}"] + argv[1:]


def parse_flags(argv):
    """absl `flags_parser` for `app.run`."""
    try:
        argv = resolve_argv(argv)
    except app.UsageError as e:
        sys.exit(f"FATAL Flags parsing error: {e}")
    return FLAGS(argv)


def resolved():
    """`(config, workdir)` after parsing; checks explicit flags agree."""
    config = FLAGS.config
    if FLAGS.regime and FLAGS.regime != config.regime:
        raise app.UsageError(
            f"--regime={FLAGS.regime} disagrees with the config's {config.regime}"
        )
    dataset = FLAGS.dataset or config.data.name
    workdir = FLAGS.workdir or os.path.join("runs", config.regime, dataset)
    return config, workdir


@contextlib.contextmanager
def one_line_errors(*expected):
    """Expected failures end the command with one line and a non-zero
    exit: `error: <message>` (exit 1) for bad input, a full disk or a
    diverged run; a signal's message (exit 128 + signal) after the state
    was saved (`keras_ebm.interrupt`)."""
    try:
        yield
    except errors.Interrupted as e:
        print(e, file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except (
        errors.ConfigError,
        errors.WriteError,
        errors.CheckpointError,
        errors.Diverged,
        FileNotFoundError,
        *expected,
    ) as e:
        raise SystemExit(f"error: {e}") from None
