"""Which digits the evaluation chains show: class counts along a trajectory.

FID mixes realism and coverage; this separates them. For a digits run
evaluated with `evaluate.py` (FID along one trajectory), the digits
classifier labels the chain states saved by that evaluation: the first 64
chains at every milestone, and all chains at the step the saved state
reached. A realistic but collapsing model keeps confident predictions while
its class counts concentrate on a few digits. Prints a Markdown table and
writes `<workdir>/eval/sample_classes.csv`.

    python benchmarks/digits_sample_classes.py --workdir=runs/longrun/digits \
        --classifier=runs/classifier/digits
"""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", None, "an evaluated digits run", required=True)
flags.DEFINE_string("classifier", "runs/classifier/digits", "classifier run")
flags.DEFINE_string("state", "", "trajectory file; default: the newest in eval/")
FLAGS = flags.FLAGS


def main(_):
    import numpy as np

    from configs import classifier as clf_configs
    from keras_ebm import classify

    with open(os.path.join(FLAGS.workdir, "config.json")) as f:
        size = json.load(f)["data"]["image_size"]
    clf_config = clf_configs.get_config("digits")
    clf_config.data.image_size = size
    clf = classify.load(clf_config, FLAGS.classifier)
    states = sorted(
        glob.glob(os.path.join(FLAGS.workdir, "eval", "trajectory_*.npz")),
        key=os.path.getmtime,
    )
    path = FLAGS.state or (states[-1] if states else "")
    if not path:
        raise SystemExit(f"no trajectory in {FLAGS.workdir}/eval; run evaluate.py")
    with np.load(path) as f:
        step = int(f["step"])
        sets = {f"{m} (first 64)": f[f"s{m}"] for m in f["milestones"] if f"s{m}" in f}
        sets[f"{step} (all {f['x'].shape[0] * f['x'].shape[1]})"] = np.concatenate(
            f["x"]
        )
    rows = []
    for name, x in sets.items():
        p = clf.predict(x, batch_size=256, verbose=0)
        p = np.exp(p - p.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        counts = np.bincount(p.argmax(1), minlength=10) / len(x)
        nonzero = counts[counts > 0]
        rows.append(
            (
                name,
                counts,
                float(p.max(1).mean()),
                float(-(nonzero * np.log(nonzero)).sum()),
            )
        )
    head = "| Langevin steps | " + " | ".join(map(str, range(10)))
    print(head + " | mean confidence | class entropy (max 2.303) |")
    print("|---" * 13 + "|")
    for name, counts, conf, ent in rows:
        cells = " | ".join(f"{c:.2f}" for c in counts)
        print(f"| {name} | {cells} | {conf:.3f} | {ent:.3f} |")
    out = os.path.join(FLAGS.workdir, "eval", "sample_classes.csv")
    with open(out, "w") as f:
        f.write("states," + ",".join(f"class_{k}" for k in range(10)))
        f.write(",mean_confidence,class_entropy\n")
        for name, counts, conf, ent in rows:
            f.write(f"{name}," + ",".join(f"{c:.4f}" for c in counts))
            f.write(f",{conf:.4f},{ent:.4f}\n")
    print(f"wrote {out} (from {path})")


if __name__ == "__main__":
    app.run(main)
