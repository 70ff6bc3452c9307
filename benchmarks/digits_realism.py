"""Realism and coverage along an evaluated trajectory of digits chains.

FID mixes two things the longrun claim keeps apart: whether samples stay
realistic, and whether they keep covering the data. For a digits run
evaluated with `evaluate.py` (FID along one trajectory), this reads the
features that evaluation saved for all chains at every milestone and
reports, against the same reference images (`evaluate.py` reports the
first four itself, in `eval/realism.csv`; this adds the class counts and
works on evaluations made before it did):

- precision and recall (Kynkaanniemi et al. 2019) and density and coverage
  (Naeem et al. 2020), `keras_ebm.evaluation.fid.realism`, k = 5 nearest neighbours in
  the digits classifier's feature space: precision / density measure how
  many samples lie on the real-data manifold (realism), recall / coverage how
  much of the data they reach;
- the digits classifier's class counts, mean confidence and class entropy
  (the first 64 chains at every milestone; all chains at the saved step).

A held-out real row (the next N images of the same source) gives the values
real data reach at this N. Prints Markdown tables and writes
`<workdir>/eval/realism.csv`.

    python benchmarks/digits_realism.py --workdir=runs/longrun/digits \
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
flags.DEFINE_integer("nearest_k", 5, "k of the k-NN manifolds")
FLAGS = flags.FLAGS


def main(_):
    import ml_collections
    import numpy as np

    from keras_ebm import classify, data
    from keras_ebm.configs import classifier as clf_configs
    from keras_ebm.evaluation import fid

    with open(os.path.join(FLAGS.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.eval.classifier_workdir = FLAGS.classifier
    clf_config = clf_configs.get_config("digits")
    clf_config.data.image_size = config.data.image_size
    clf = classify.load(clf_config, FLAGS.classifier)
    net = fid.backbone(config)
    states = sorted(
        glob.glob(os.path.join(FLAGS.workdir, "eval", "trajectory_*.npz")),
        key=os.path.getmtime,
    )
    path = FLAGS.state or (states[-1] if states else "")
    if not path:
        raise SystemExit(f"no trajectory in {FLAGS.workdir}/eval; run evaluate.py")
    with np.load(path) as f:
        step = int(f["step"])
        n = f["x"].shape[0] * f["x"].shape[1]
        reached = [int(m) for m in f["milestones"] if f"f{m}" in f]
        feats = {m: f[f"f{m}"] for m in reached}
        firsts = {m: f[f"s{m}"] for m in reached}
        final = np.concatenate(f["x"])
    # The FID reference set and the held-out floor images, as evaluate.py.
    images = data.take_array(data.images(config), 2 * n)
    real = np.concatenate([net(b) for b in np.array_split(images[:n], 4)])
    held = np.concatenate([net(b) for b in np.array_split(images[n:], 4)])

    def manifold(fake):
        return fid.realism(real, fake, FLAGS.nearest_k)

    def classes(x):
        p = clf.predict(x, batch_size=256, verbose=0)
        p = np.exp(p - p.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        counts = np.bincount(p.argmax(1), minlength=10) / len(x)
        nz = counts[counts > 0]
        return counts, float(p.max(1).mean()), float(-(nz * np.log(nz)).sum())

    rows = [("held-out real", manifold(held), classes(images[n:]))]
    for m in reached:
        rows.append((f"{m}", manifold(feats[m]), classes(firsts[m])))
    if step not in reached:
        rows.append((f"{step} (saved)", None, classes(final)))

    keys = ("precision", "recall", "density", "coverage")
    print(f"\n{n} chains, k = {FLAGS.nearest_k} ({path})\n")
    print("| Langevin steps | " + " | ".join(keys) + " | confidence | entropy |")
    print("|---" * 7 + "|")
    for name, pr, (_, conf, ent) in rows:
        cells = " | ".join(f"{pr[k]:.3f}" if pr else "-" for k in keys)
        print(f"| {name} | {cells} | {conf:.3f} | {ent:.3f} |")
    print("\n| Langevin steps | " + " | ".join(map(str, range(10))) + " |")
    print("|---" * 11 + "|")
    for name, _, (counts, _, _) in rows:
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in counts) + " |")
    out = os.path.join(FLAGS.workdir, "eval", "realism.csv")
    with open(out, "w") as f:
        f.write("states," + ",".join(keys) + ",mean_confidence,class_entropy,")
        f.write(",".join(f"class_{k}" for k in range(10)) + "\n")
        for name, pr, (counts, conf, ent) in rows:
            vals = [f"{pr[k]:.4f}" if pr else "" for k in keys]
            vals += [f"{conf:.4f}", f"{ent:.4f}", *(f"{c:.4f}" for c in counts)]
            f.write(f"{name}," + ",".join(vals) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
