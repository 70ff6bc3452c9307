"""Evaluates a trained run (FID, sample grids, export).

Evaluation comes with the evaluation issue; until then this script only says
so. It takes the same flags as `train.py`.
"""

from absl import app

from keras_ebm import cli


def main(argv):
    del argv
    _, workdir = cli.resolved()
    print(
        f"evaluate.py: evaluation of {workdir} comes with evaluation "
        "(FID, trajectory FID, SavedModel export); nothing was done."
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
