"""Which config a command line means: `--regime=R --dataset=D` is
`--config=<package>/configs/R.py:D`; a `--workdir` holding a run chooses
them when neither is given; the default output folder; the field listing.
"""

import os

from absl import app

from keras_ebm import regimes

# The preset files, inside the package so that an installed keras_ebm has
# them too (the repository's configs/*.py re-export them).
CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"
)
DEFAULT_REGIME, DEFAULT_DATASET = "shortrun", "digits"


def presets_by_regime():
    """`{regime: datasets}` of every config module (`PRESETS`)."""
    import importlib

    return {
        name: importlib.import_module(f"keras_ebm.configs.{name}").PRESETS
        for name in regimes.NAMES
    }


def datasets_help():
    return "; ".join(f"{r}: {', '.join(d)}" for r, d in presets_by_regime().items())


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


def default_workdir(config, dataset=None):
    """`runs/<regime>/<dataset>`, the dataset being `--dataset` or the
    config's preset (`--config=configs/shortrun.py:smoke` runs in
    runs/shortrun/smoke, not in the digits demo's folder); toy2d adds its
    density (`runs/shortrun/toy2d_rings`), so each density has its own run."""
    dataset = dataset or config.get("preset") or config.data.name
    if config.data.name == "toy2d":
        dataset = f"{dataset}_{config.data.toy}"
    return os.path.join("runs", config.regime, dataset)


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
