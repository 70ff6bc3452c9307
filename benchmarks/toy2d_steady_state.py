"""Shortrun against longrun on the 2-D toy densities: the exact steady state.

For each density (rings, gmm) and regime (shortrun, longrun) this trains the
toy2d preset (same ToyNet, same number of EBM updates) and evaluates it:
the model density exp(-U) normalized on a 200x200 grid against the truth (TV,
KL), and histograms against the truth of the training sampler's states and of
chains run `eval.num_steps` steps from data. Prints a Markdown table and
writes it to `<root>/toy2d_steady_state.md`.

    python benchmarks/toy2d_steady_state.py --root=runs/toy2d_study
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("root", "runs/toy2d_study", "where the runs go")
flags.DEFINE_integer("eval_steps", 100000, "Langevin steps of the chains from data")
flags.DEFINE_integer("train_steps", 0, "EBM updates; 0 = the presets'")
flags.DEFINE_list("densities", ["rings", "gmm"], "toy densities")
flags.DEFINE_list("regimes", ["shortrun", "longrun"], "regimes to compare")
FLAGS = flags.FLAGS


def main(_):
    from keras_ebm import run
    from keras_ebm.configs import longrun, shortrun

    rows = []
    presets = {"shortrun": shortrun, "longrun": longrun}
    for density in FLAGS.densities:
        for name in FLAGS.regimes:
            configs = presets[name]
            config = configs.get_config("toy2d")
            config.data.toy = density
            if FLAGS.train_steps:
                config.train.num_steps = FLAGS.train_steps
            config.eval.num_steps = FLAGS.eval_steps
            workdir = os.path.join(FLAGS.root, f"{name}_{density}")
            start = time.time()
            run.train(config, workdir)
            trained = time.time() - start
            results = run.evaluate(config, workdir)
            rows.append((density, name, config.train.num_steps, trained, results))
    lines = [
        "| density | regime | updates | train s | TV grid | KL grid | TV sampler "
        "hist | TV chains hist | TV true-sample hist (floor) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for density, name, steps, seconds, r in rows:
        lines.append(
            f"| {density} | {name} | {steps} | {seconds:.0f} | {r['tv_grid']:.3f} "
            f"| {r['kl_grid']:.3f} | {r['tv_sampler_histogram']:.3f} "
            f"| {r['tv_chains_histogram']:.3f} | {r['tv_true_samples_histogram']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(FLAGS.root, "toy2d_steady_state.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(FLAGS.root, "toy2d_steady_state.json"), "w") as f:
        json.dump([dict(density=r[0], regime=r[1], **r[4]) for r in rows], f)


if __name__ == "__main__":
    app.run(main)
