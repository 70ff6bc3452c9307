"""Is a longrun collapse the model's or the sampler's? (issue 25)

For a trained digits run (longrun, or any regime with banks), with every
image labelled (real ones by their label, generated ones by the digits
classifier of the FID backbone):

1. the density: the mean energy E(x) of real images per class, train and
   held-out. With U = E/T, a class whose real images sit at E lower by d
   has exp(d/T) more density per image; if the chains' favourite class is
   the one the EBM gives the lowest energy, the density itself is wrong,
   not the chains;
2. the banks: class shares and per-class mean energy of the burn-in and
   update banks' states (what the model trains against);
3. the sampler: the same chains (the evaluation's starts) run `--steps`
   steps by the library's Langevin (ULA) and by tensorflow-probability's
   MALA (exact for exp(-U)): if MALA keeps the classes and ULA does not,
   the discretization drives the collapse; if both lose them, the density
   does.

Prints Markdown tables and writes `<workdir>/eval/diagnosis.json`.

    python benchmarks/longrun_diagnosis.py --workdir=runs/longrun/digits
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_ebm import run  # noqa: E402
from keras_ebm.cli import parse  # noqa: E402

flags.DEFINE_integer("steps", 2000, "ULA and MALA steps from the chain starts")
flags.DEFINE_integer("chains", 128, "chains per sampler")
flags.DEFINE_multi_float(
    "mala_step_size", [], "MALA step sizes eps (default: the evaluation's)"
)
FLAGS = flags.FLAGS

CLASSES = 10


def per_class(energy, labels):
    """`(counts, mean energy)` per class; NaN for a class with no image."""
    import numpy as np

    counts = np.bincount(labels, minlength=CLASSES)
    sums = np.bincount(labels, weights=energy, minlength=CLASSES)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, sums / counts


def row(name, images, labels, model, temperature):
    import numpy as np

    from keras_ebm.evaluation import metrics

    energy = np.concatenate(
        [np.asarray(model.energy(b)) for b in np.array_split(images, 8) if len(b)]
    )
    counts, means = per_class(energy, labels)
    return dict(
        name=name,
        num=int(len(images)),
        shares=(counts / len(images)).tolist(),
        # The class entropy over log 10 (1: every class equally often).
        entropy=metrics.class_balance(labels, np.arange(CLASSES), CLASSES)["entropy"],
        mean_energy=means.tolist(),
        # In nats of U = E/T: how far each class's mean sits above the
        # lowest class's.
        gap_nats=((means - np.nanmin(means)) / temperature).tolist(),
    )


def print_rows(title, rows):
    print(f"\n{title}\n")
    print("| images | N | " + " | ".join(map(str, range(CLASSES))) + " |")
    print("|---" * (CLASSES + 2) + "|")
    for r in rows:
        shares = " | ".join(f"{s:.2f}" for s in r["shares"])
        head = f"{r['name']} (share; entropy {r['entropy']:.3f})"
        print(f"| {head} | {r['num']} | {shares} |")
        gaps = " | ".join(f"{g:.0f}" for g in r["gap_nats"])
        print(f"| {r['name']} (mean E - min, nats) | | {gaps} |")


def main(_):
    import numpy as np
    import tensorflow as tf

    from keras_ebm import data
    from keras_ebm.evaluation import fid, steady_state
    from keras_ebm.runs import training

    config, workdir = parse.resolved()
    config = run.run_config(config, workdir)
    model, step = training.load_trained(config, workdir, run.build_model)
    net = fid.backbone(config)
    temperature = config.langevin.temperature

    def labelled(x):
        return net.classes(net(x))

    rows = []
    for split in ("classifier_train", "test"):
        images, labels = data.digits_split(split, config.data.image_size)
        rows.append(row(f"real {split}", images, labels, model, temperature))
    for name, bank in model.banks.items():
        if bank is None:
            continue
        states = np.asarray(bank.states)
        rows.append(row(name, states, labelled(states), model, temperature))
    print_rows(f"Energies per class, {workdir} step {step}, T {temperature}", rows)

    starts = np.concatenate(
        [
            np.asarray(model.chain_starts(64, tf.constant([config.seed + 1000, b])))
            for b in range(-(-FLAGS.chains // 64))
        ]
    )[: FLAGS.chains]
    config.eval.num_steps = FLAGS.steps
    chains = [row("chain starts", starts, labelled(starts), model, temperature)]
    acceptance = {}
    eps = config.eval.step_size
    runs = [("ula", eps)] + [("mala", e) for e in FLAGS.mala_step_size or [eps]]
    for sampler, step_size in runs:
        config.eval.step_size = step_size
        x, rate = steady_state.long_chains(
            config, workdir, model, starts, sampler=sampler
        )
        name = f"{sampler} eps {step_size:g}, {FLAGS.steps} steps"
        acceptance[name] = rate
        chains.append(row(name, x, labelled(x), model, temperature))
    config.eval.step_size = eps
    print_rows(f"The same {FLAGS.chains} chains, ULA and MALA", chains)
    for name, rate in acceptance.items():
        if name.startswith("mala"):
            print(f"\n{name}: acceptance {rate:.3f}")
    out = os.path.join(workdir, "eval", "diagnosis.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            dict(
                step=step,
                temperature=temperature,
                rows=rows,
                chains=chains,
                acceptance=acceptance,
            ),
            f,
            indent=2,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse.parse_flags)
