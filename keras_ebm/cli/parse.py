"""Flags shared by `train.py` and `evaluate.py`.

`--regime=R --dataset=D` is shorthand for `--config=configs/R.py:D`; every
config field can then be overridden with `--config.<field>=<value>`.
`--workdir` defaults to `runs/<regime>/<dataset>` (toy2d:
`runs/<regime>/toy2d_<density>`). Mistakes end with one `error:` line.
"""

import sys

from absl import flags
from ml_collections import config_flags

from keras_ebm import errors, regimes
from keras_ebm.cli import presets
from keras_ebm.cli.answers import flag_error, one_line_errors

FLAGS = flags.FLAGS

flags.DEFINE_string("regime", None, f"one of {', '.join(regimes.NAMES)}")
flags.DEFINE_string(
    "dataset",
    None,
    f"the config's dataset preset, by regime: {presets.datasets_help()}",
)
flags.DEFINE_string("workdir", None, "output folder; default runs/<regime>/<dataset>")
flags.DEFINE_bool(
    "list_fields",
    False,
    "print every config field of --regime/--dataset with its value (each is "
    "set with --config.<field>=<value>), the datasets of each regime, and exit",
)
config_flags.DEFINE_config_file(
    "config",
    None,
    "config file[:preset]; fields are overridden with --config.<field>=<value> "
    "(--list_fields lists them)",
    lock_config=True,
)


def parse_flags(argv):
    """absl `flags_parser` for `app.run`: a mistake in the flags ends the
    command with one `error:` line (exit 1), not a traceback."""
    try:
        argv = presets.resolve_argv(argv)
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (each kind is mapped below)
        message = flag_error(e, argv)
        if message is None:
            raise
        sys.exit(f"error: {message}")


def command(body):
    """The absl `main` of a script: `body(config, workdir)` after the flags,
    with one-line errors; `--list_fields` prints the fields instead."""

    def main(argv):
        with one_line_errors():
            if len(argv) > 1:
                raise errors.ConfigError(
                    f"unexpected arguments {' '.join(argv[1:])}; flags take the "
                    "form --name=value"
                )
            if FLAGS.list_fields:
                print(presets.list_fields(FLAGS.config))
                return
            body(*resolved())

    return main


def resolved():
    """`(config, workdir)` after parsing; checks explicit flags agree."""
    try:
        config = FLAGS.config
        config.regime  # noqa: B018 (ml_collections defers a load failure to here)
    except OSError as e:
        cause = " ".join(str(e.__cause__ or e).split())
        raise errors.ConfigError(f"--config: {cause}") from None
    if FLAGS.regime and FLAGS.regime != config.regime:
        raise errors.ConfigError(
            f"--regime={FLAGS.regime} disagrees with the config's {config.regime}"
        )
    return config, FLAGS.workdir or presets.default_workdir(config, FLAGS.dataset)
