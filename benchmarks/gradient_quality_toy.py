"""Which attack gradient points where the expected loss rises, on a small
random ReLU energy (8-D, the review's setting of issue 24): BPDA (= the
pathwise exact gradient), the surrogate at several betas and SPSA against
central differences of the expected loss with common noise
(`keras_ebm.defense.gradients.gradient_check`), at K_def 20 with a weak
drift and K_def 100 with stronger ones.

    python benchmarks/gradient_quality_toy.py [--points=3] [--replicates=2000]

Prints one table per setting (cosine of the mean of `--draws` draws, the
reference's ceiling, norm ratios).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("points", 3, "points (random inputs) per setting")
flags.DEFINE_integer("replicates", 2000, "purifications per finite difference")
flags.DEFINE_integer("draws", 8, "draws of each attack gradient (their mean)")
flags.DEFINE_float("delta", 0.05, "finite-difference step")
flags.DEFINE_list("betas", ["5", "20", "100"], "surrogate betas")

DIM = 8


def defense(k_def, temperature, seed=0):
    import keras

    from keras_ebm.defense import purify
    from keras_ebm.models import EnergyModel

    keras.utils.set_random_seed(seed)
    energy = keras.Sequential(
        [
            keras.Input((DIM,)),
            keras.layers.Dense(32, "relu"),
            keras.layers.Dense(32, "relu"),
            keras.layers.Dense(1),
        ]
    )
    energy.image_shape = (DIM,)
    classifier = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(3)])
    model = EnergyModel(energy, num_steps=1, step_size=0.1, temperature=temperature)
    return purify.DefendedClassifier(model, classifier, k_def)


def main(argv):
    import dataclasses

    import numpy as np

    from keras_ebm.defense import attack, gradients, outputs

    f = flags.FLAGS
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, (f.points, DIM)).astype("float32")
    labels = rng.integers(0, 3, f.points).astype("int32")
    base = attack.AttackSettings(eps=0.3, step_size=0.1, num_steps=1, adv_replicates=32)
    for k_def, temperature in ((20, 1.0), (100, 0.2), (100, 0.05)):
        estimators = {"bpda": base}
        for beta in f.betas:
            estimators[f"surrogate_b{beta}"] = dataclasses.replace(
                base, grad_steps=k_def, surrogate_beta=float(beta)
            )
        estimators["spsa"] = dataclasses.replace(
            base, spsa_samples=64, spsa_delta=f.delta
        )
        check = gradients.gradient_check(
            defense(k_def, temperature),
            points,
            labels,
            estimators,
            loss="margin",
            replicates=f.replicates,
            delta=f.delta,
            draws=f.draws,
            seed=0,
        )
        print(f"\nK_def {k_def}, T {temperature} (drift scale 0.005 / T)")
        outputs.print_gradient_check(check)


if __name__ == "__main__":
    app.run(main)
