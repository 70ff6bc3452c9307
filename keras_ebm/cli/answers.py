"""One-line answers to expected mistakes: a flag, a preset or a config
field that does not exist, bad input, a full disk, a diverged or
interrupted run. Anything else is a bug and keeps its traceback.
"""

import contextlib
import re
import sys

from absl import app, flags

from keras_ebm import errors
from keras_ebm.cli import presets


def flag_error(e, argv):
    """The one-line message of a flag mistake, or None for a bug."""
    from keras_ebm.configs.common import UnknownPreset

    if isinstance(e, app.UsageError):
        return str(e)
    preset = _in_chain(e, UnknownPreset)
    if preset is not None and preset.arg is not None:
        e = preset
        others = [r for r, d in presets.presets_by_regime().items() if e.arg in d]
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


@contextlib.contextmanager
def one_line_errors(*expected):
    """Expected failures end the command with one line and a non-zero
    exit: `error: <message>` (exit 1) for bad input, a full disk or a
    diverged run; a signal's message (exit 128 + signal) after the state
    was saved (`keras_ebm.runs.interrupt`)."""
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
