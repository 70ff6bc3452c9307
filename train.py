"""Trains an EBM.

    python train.py                                      # shortrun on digits
    python train.py --regime=shortrun --dataset=cifar10  # the paper's setup
    python train.py --regime=prior --dataset=celeb_a     # longrun's prior EBM
    python train.py --regime=longrun --dataset=celeb_a   # density modeling
    python train.py --config.langevin.num_steps=60       # any field
    python train.py --workdir=runs/mine                  # output folder
    python train.py --regime=longrun --list_fields       # every field, datasets

Re-running the same command resumes from the newest checkpoint.
"""

import glob
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # see BUILD_NOTES: TF logging

from absl import app, flags  # noqa: E402

from keras_ebm import run  # noqa: E402
from keras_ebm.cli import parse  # noqa: E402


def train(config, workdir):
    logging.getLogger("keras_ebm").setLevel(logging.INFO)
    run.train(config, workdir)
    grids = sorted(glob.glob(os.path.join(workdir, "samples", "*.png")))
    print(f"Done. Outputs in {workdir} (tensorboard --logdir {workdir})")
    if grids:
        print(f"Latest samples: {max(grids, key=os.path.getmtime)}")


# --help lists the shared flags (--regime, --dataset, --workdir, --config,
# --list_fields) as this script's own.
flags.adopt_module_key_flags(parse)
main = parse.command(train)

if __name__ == "__main__":
    app.run(main, flags_parser=parse.parse_flags)
