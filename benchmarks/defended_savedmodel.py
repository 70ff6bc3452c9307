"""The exported defended classifier, loaded where keras_ebm cannot be
imported, against the natural accuracy the attack evaluation reported (the
mean and spread over its seeds).

    python benchmarks/defended_savedmodel.py --workdir=runs/midrun/digits

Exports `<workdir>/export_defended` if it is missing, saves the evaluation's
test images (same split, order and count as `evaluate.py`), and runs
`predict(x, H_def)` in a fresh Python without keras_ebm. Prints and writes
`<workdir>/eval/attack/savedmodel_check.json`.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_ebm import run  # noqa: E402
from keras_ebm.cli import answers, parse  # noqa: E402
from keras_ebm.defense import attack, purify, report  # noqa: E402
from tests.standalone import run_without_keras_ebm  # noqa: E402

flags.DEFINE_integer("batch_size", 32, "images per predict call")


def main(argv):
    with answers.one_line_errors():
        check(*parse.resolved())


def check(config, workdir):
    config = run.run_config(config, workdir)
    path = os.path.join(workdir, "export_defended")
    if not os.path.exists(path):
        run.export(config, workdir)
    report_dir = os.path.join(workdir, "eval", "attack", config.attack.report_name)
    with open(os.path.join(report_dir, "results.json")) as f:
        reported = json.load(f)
    # Only an export of the report's settings can agree with its figures.
    purify.matching_settings(path, reported)
    images, labels = report.test_set(config)
    h = config.attack.def_replicates
    with tempfile.TemporaryDirectory() as tmp:
        import numpy as np

        np.save(os.path.join(tmp, "x.npy"), images)
        np.save(os.path.join(tmp, "y.npy"), labels)
        started = time.perf_counter()
        out = run_without_keras_ebm(
            f"""
            r = tf.saved_model.load({os.path.abspath(path)!r})
            x, y = np.load("x.npy"), np.load("y.npy")
            right, b = 0, {flags.FLAGS.batch_size}
            for i in range(0, len(x), b):
                logits = r.predict(tf.constant(x[i:i + b]), tf.constant({h}))
                right += int(np.sum(np.argmax(logits, -1) == y[i:i + b]))
            print(json.dumps(dict(correct=right, n=len(x))))
            """,
            tmp,
            timeout=6 * 3600,
        )
        seconds = time.perf_counter() - started
    acc = out["correct"] / out["n"]
    natural = reported["attacks"]["bpda_eot"]
    lo, hi = attack.proportion_ci(out["correct"], out["n"])
    seeds = [p["natural_accuracy"] for p in natural["per_seed"]]
    # The seeds' spread: their range, widened to mean +- 2 std where that is
    # wider (three seeds may happen to agree).
    mean, std = natural["natural_accuracy"], natural["natural_std"]
    band = [min(min(seeds), mean - 2 * std), max(max(seeds), mean + 2 * std)]
    check = dict(
        savedmodel_natural_accuracy=acc,
        savedmodel_ci95=[lo, hi],
        reported_natural_accuracy=mean,
        reported_natural_std=std,
        reported_per_seed=seeds,
        reported_seeds=natural["seeds"],
        within_seed_spread=band[0] <= acc <= band[1],
        seed_spread=band,
        def_replicates=h,
        num_images=out["n"],
        seconds=seconds,
    )
    with open(os.path.join(report_dir, "savedmodel_check.json"), "w") as f:
        json.dump(check, f, indent=2)
    print(json.dumps(check, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=parse.parse_flags)
