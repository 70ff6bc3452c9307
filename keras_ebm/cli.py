"""Flags shared by `train.py` and `evaluate.py`.

`--regime=R --dataset=D` is shorthand for `--config=configs/R.py:D`; every
config field can then be overridden with `--config.<field>=<value>`.
`--workdir` defaults to `runs/<regime>/<dataset>` (toy2d:
`runs/<regime>/toy2d_<density>`). Mistakes end with one `error:` line.
"""

import contextlib
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from keras_ebm import errors, regimes

# The preset files, inside the package so that an installed keras_ebm has
# them too (the repository's configs/*.py re-export them).
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_REGIME, DEFAULT_DATASET = "shortrun", "digits"

FLAGS = flags.FLAGS


def presets_by_regime():
    """`{regime: datasets}` of every config module (`PRESETS`)."""
    import importlib

    return {
        name: importlib.import_module(f"keras_ebm.configs.{name}").PRESETS
        for name in regimes.NAMES
    }


def _datasets_help():
    return "; ".join(f"{r}: {', '.join(d)}" for r, d in presets_by_regime().items())


flags.DEFINE_string("regime", None, f"one of {', '.join(regimes.NAMES)}")
flags.DEFINE_string(
    "dataset", None, f"the config's dataset preset, by regime: {_datasets_help()}"
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
    """Inserts `--config=<CONFIGS>/<regime>.py:<dataset>` if absent;
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
    path = os.path.join(CONFIGS, f"{regime}.py")
    return argv[:1] + [f"--config={path}:{dataset or DEFAULT_DATASET}"] + argv[1:]


def parse_flags(argv):
    """absl `flags_parser` for `app.run`: a mistake in the flags ends the
    command with one `error:` line (exit 1), not a traceback."""
    try:
        argv = resolve_argv(argv)
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (each kind is mapped below)
        message = flag_error(e, argv)
        if message is None:
            raise
        sys.exit(f"error: {message}")


def flag_error(e, argv):
    """The one-line message of a flag mistake, or None for a bug."""
    from keras_ebm.configs.common import UnknownPreset

    if isinstance(e, app.UsageError):
        return str(e)
    preset = _in_chain(e, UnknownPreset)
    if preset is not None and preset.arg is not None:
        e = preset
        others = [r for r, d in presets_by_regime().items() if e.arg in d]
        where = (
            f"; {e.arg!r} is a dataset of {', '.join(others)}"
            if others
            else "; --list_fields shows the datasets of every regime"
        )
        return f"--dataset={e.arg}: {e}{where}"
    if isinstance(e, (AttributeError, KeyError)):
        return _field_error(e, argv)
    if isinstance(e, flags.Error):
        return " ".join(str(e).split())
    if isinstance(e, (OSError, ImportError, ValueError, TypeError)):
        return f"--config: {' '.join(str(e).split())}"
    return None


def _in_chain(e, kind):
    """The first exception of type `kind` among `e` and its causes."""
    while e is not None:
        if isinstance(e, kind):
            return e
        e = e.__cause__ or e.__context__
    return None


def _field_error(e, argv):
    """A misspelt `--config.<path>` override: name it and the field meant."""
    text = str(e)
    key = re.search(r"'([^'\\]+)\\*'", text)
    key = key.group(1) if key else text
    suggestion = re.search(r'Did you mean \\*"([^"\\]+)', text)
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    flag = next(
        (a for a in overrides if key in a[len("--config.") :].split(".")),
        overrides[0] if overrides else "--config",
    )
    parts = flag[2:].split(".")
    section = ".".join(parts[: parts.index(key)] if key in parts else parts[:-1])
    hint = f"; did you mean {suggestion.group(1)}?" if suggestion else ""
    return (
        f"{flag}: {section} has no field {key!r}{hint} (--list_fields lists the fields)"
    )


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
                print(list_fields(FLAGS.config))
                return
            body(*resolved())

    return main


def list_fields(config):
    """Every field of `config` as `--config.<field>=<value>` lines, then the
    datasets of each regime."""
    lines = [f"Fields of {config.regime} ({config.get('preset', '')}):"]

    def walk(node, prefix):
        for key in sorted(node.keys()):
            value = node[key]
            if hasattr(value, "keys"):
                walk(value, f"{prefix}{key}.")
            else:
                lines.append(f"  --config.{prefix}{key}={value!r}")

    walk(config, "")
    lines.append("Datasets (--dataset) by regime:")
    lines += [f"  {r}: {', '.join(d)}" for r, d in presets_by_regime().items()]
    return "\n".join(lines)


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
    return config, FLAGS.workdir or default_workdir(config, FLAGS.dataset)


def default_workdir(config, dataset=None):
    """`runs/<regime>/<dataset>`, the dataset being `--dataset` or the
    config's preset (`--config=configs/shortrun.py:smoke` runs in
    runs/shortrun/smoke, not in the digits demo's folder); toy2d adds its
    density (`runs/shortrun/toy2d_rings`), so each density has its own run."""
    dataset = dataset or config.get("preset") or config.data.name
    if config.data.name == "toy2d":
        dataset = f"{dataset}_{config.data.toy}"
    return os.path.join("runs", config.regime, dataset)


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
        errors.DatasetNotFoundError,
        errors.WriteError,
        errors.CheckpointError,
        errors.Diverged,
        FileNotFoundError,
        *expected,
    ) as e:
        raise SystemExit(f"error: {e}") from None
