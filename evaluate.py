"""Evaluates a trained run: FID along the chains (toy2d: the exact steady
state against the truth), sample grids, energy and drift traces.

    python evaluate.py                                  # the digits demo run
    python evaluate.py --regime=shortrun --dataset=cifar10 \
        --config.eval.inception_graph=/path/classify_image_graph_def.pb
    python evaluate.py --workdir=runs/mine --config.eval.milestones='(0,100,1000)'
    python evaluate.py --regime=longrun --dataset=celeb_a    # FID along 100K steps
    python evaluate.py --workdir=runs/shortrun/toy2d         # steady state vs truth
    python evaluate.py --export       # SavedModel with energy/sample/purify/generate

Takes the same flags as train.py; the workdir's newest checkpoint is used.
Outputs go to <workdir>/eval/ (results.json, fid_curve.csv/png, sample grids).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # see BUILD_NOTES: TF logging

from absl import app, flags  # noqa: E402

from keras_ebm import run  # noqa: E402
from keras_ebm.cli import parse  # noqa: E402

flags.DEFINE_bool("export", False, "write a SavedModel to <workdir>/export instead")


def evaluate(config, workdir):
    if flags.FLAGS.export:
        run.export(config, workdir)
        return
    run.evaluate(config, workdir)
    out = os.path.join(workdir, "eval")
    if os.path.isdir(out):
        print(f"Results in {out}")


# --help lists the shared flags (--regime, --dataset, --workdir, --config,
# --list_fields) as this script's own.
flags.adopt_module_key_flags(parse)
main = parse.command(evaluate)

if __name__ == "__main__":
    app.run(main, flags_parser=parse.parse_flags)
